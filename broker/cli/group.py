"""The top-level `broker` group: the engineer's commands up front, admin commands apart.

Admin commands are known by name and summary and imported only when one runs: they load Flask
and the broker app, which `broker --help` and the engineer's commands (run by every `aws` call
through `credential_process`) must never pay for. Admin commands find the app through Flask's
`ScriptInfo`, as under `flask`; it is put in place for them alone, so nothing Flask sets (such
as `FLASK_RUN_FROM_CLI`) reaches the engineer's commands or the programs they start.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flask import Flask

ADMIN_SECTION = "Admin commands (where the broker runs)"


@dataclass(frozen=True)
class LazyCommand:
    """A command known by its `module:attribute` and a one-line summary until it runs."""

    target: str
    summary: str

    def load(self) -> click.Command:
        """Import the command."""
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class CommandFailed(click.ClickException):
    """A BrokerError as click shows it, exiting with the error's code (docs/cli.md)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self._code = code

    @property  # click reads it per instance
    def exit_code(self) -> int:  # type: ignore[override]
        """The BrokerError's exit code."""
        return self._code


class BrokerCli(click.Group):
    """Engineer commands (added eagerly, kept light) and lazily imported admin commands."""

    def __init__(
        self,
        *args: Any,
        admin: Mapping[str, LazyCommand],
        create_app: Callable[[], Flask],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.admin = dict(admin)
        self.create_app = create_app
        self.engineer: set[str] = set()
        self._loaded: dict[str, click.Command] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, admin ones included, without importing any."""
        return sorted(set(self.commands) | set(self.admin))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command; an admin command is imported on first use."""
        found = self.commands.get(cmd_name) or self._loaded.get(cmd_name)
        if found is None and cmd_name in self.admin:
            found = self._loaded[cmd_name] = self.admin[cmd_name].load()
        return found

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Find the command to run; an admin command gets the app through Flask's ScriptInfo."""
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and command.name not in self.engineer:
            from flask.cli import ScriptInfo

            if not isinstance(ctx.obj, ScriptInfo):
                ctx.obj = ScriptInfo(
                    create_app=self.create_app, set_debug_flag=False, load_dotenv_defaults=False
                )
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a BrokerError is shown as its explanation with its exit code, and a
        database that does not answer as exit 5 (docs/cli.md), never as a traceback."""
        from broker.errors import EXIT_ERROR, EXIT_UNAVAILABLE, BrokerError

        try:
            return super().invoke(ctx)
        except BrokerError as exc:
            raise CommandFailed(exc.explain(), exc.exit_code) from exc
        except Exception as exc:
            # Only admin commands load SQLAlchemy; the engineer's must not import it to check.
            sa_exc = sys.modules.get("sqlalchemy.exc")
            down = (sa_exc.OperationalError, sa_exc.InterfaceError) if sa_exc else ()
            if not down or not isinstance(exc, down):
                raise
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            first = cause[0][:200] if cause else ""
            if "no such table" in first:
                raise CommandFailed(
                    "The broker's database has no tables yet: run `broker db upgrade`.",
                    EXIT_ERROR,
                ) from exc
            raise CommandFailed(
                f"The broker's database did not answer ({first}). Check BROKER_DATABASE_URL "
                "and that the database is running.",
                EXIT_UNAVAILABLE,
            ) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The engineer's commands in the order they were added, then the admin commands."""
        names = [n for n in self.commands if n in self.engineer]
        names += sorted(n for n in self.list_commands(ctx) if n not in self.engineer)
        if not names:
            return
        width = max(len(name) for name in names)
        limit = formatter.width - 6 - width
        mine: list[tuple[str, str]] = []
        admin: list[tuple[str, str]] = []
        for name in names:
            command = self.commands.get(name) or self._loaded.get(name)
            if command is not None and command.hidden:
                continue
            if command is None:  # not imported: its summary, shortened as click would
                command = click.Command(name, help=self.admin[name].summary)
            line = command.get_short_help_str(limit)
            # Padded names keep both sections in one column.
            (mine if name in self.engineer else admin).append((name.ljust(width), line))
        if mine:
            with formatter.section("Commands"):
                formatter.write_dl(mine)
        if admin:
            with formatter.section(ADMIN_SECTION):
                formatter.write_dl(admin)
