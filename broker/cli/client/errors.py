"""Errors the CLI shows a person: what happened, and the next step."""

from __future__ import annotations

from typing import IO, Any

import click

from broker.errors import EXIT_NOT_SIGNED_IN, EXIT_UNAVAILABLE, exit_code_for


class ClientError(click.ClickException):
    """A failure explained for a person; click prints it to stderr and exits non-zero."""

    def __init__(self, message: str, *, hint: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code

    def format_message(self) -> str:
        """The message and, on its own line, what to do next."""
        return f"{self.message}\n  {self.hint}" if self.hint else self.message

    def show(self, file: IO[Any] | None = None) -> None:
        """Print as `Error: ...` on stderr (click's format, with the hint indented below)."""
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class NotSignedIn(ClientError):
    """No usable broker token on this machine."""

    exit_code = EXIT_NOT_SIGNED_IN


class Unreachable(ClientError):
    """The broker did not answer (network, DNS, TLS, timeout)."""

    exit_code = EXIT_UNAVAILABLE


class ApiError(ClientError):
    """The broker answered with an error `{code, message, hint}`."""

    def __init__(
        self, message: str, *, hint: str | None = None, code: str = "", status: int = 0
    ) -> None:
        super().__init__(message, hint=hint, code=code)
        self.status = status

    @property  # click reads it per instance; the status decides
    def exit_code(self) -> int:  # type: ignore[override]
        """3 not signed in, 4 denied, 5 unavailable, else 1 (docs/cli.md)."""
        return exit_code_for(self.status)
