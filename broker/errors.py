"""Errors that know how to explain themselves to a person."""

from __future__ import annotations

# How `broker` commands exit (docs/cli.md): scripts can tell these apart without parsing text.
EXIT_ERROR = 1  # anything else that went wrong
EXIT_USAGE = 2  # the command line itself is wrong (click's own code)
EXIT_NOT_SIGNED_IN = 3  # no valid sign-in: run `broker login`
EXIT_DENIED = 4  # the policy (or an admin) says no
EXIT_UNAVAILABLE = 5  # the broker, its database, the identity provider or AWS did not answer


def exit_code_for(status: int) -> int:
    """The command's exit code for an HTTP status (or a BrokerError's)."""
    if status == 401:
        return EXIT_NOT_SIGNED_IN
    if status == 403:
        return EXIT_DENIED
    if status in (429, 502, 503, 504):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


class BrokerError(Exception):
    """Base error: a message for people, a stable code for machines, an HTTP status."""

    code = "broker_error"
    status = 500

    @property
    def exit_code(self) -> int:
        """How a `broker` command that fails with this error exits."""
        return exit_code_for(self.status)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def explain(self) -> str:
        """The message and, when there is one, what to do next."""
        return f"{self.message} {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, str]:
        """JSON body for the API: `{code, message}` (and `hint` when known)."""
        body = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class ConfigError(BrokerError):
    """A setting is missing or wrong; startup stops."""

    code = "config_error"


class BadRequest(BrokerError):
    """The request itself is malformed."""

    code = "bad_request"
    status = 400


class Unauthenticated(BrokerError):
    """No valid credentials came with the request."""

    code = "unauthenticated"
    status = 401


class Forbidden(BrokerError):
    """The caller is known but not allowed to do this."""

    code = "forbidden"
    status = 403


class PolicyDenied(Forbidden):
    """The policy denies this person this entitlement."""

    code = "policy_denied"


class NotFound(BrokerError):
    """The thing asked for does not exist (or is not the caller's)."""

    code = "not_found"
    status = 404


class Conflict(BrokerError):
    """The request clashes with the current state (e.g. a grant already ended)."""

    code = "conflict"
    status = 409


class TooManyRequests(BrokerError):
    """The caller is rate limited."""

    code = "rate_limited"
    status = 429


class AuditUnavailable(BrokerError):
    """The audit trail could not be written, so nothing was done (fail closed)."""

    code = "audit_unavailable"
    status = 503


class UpstreamError(BrokerError):
    """AWS (or another dependency) refused or failed."""

    code = "upstream_error"
    status = 502


class ServiceUnavailable(BrokerError):
    """A dependency is down or throttling; try again later."""

    code = "service_unavailable"
    status = 503


class DatabaseUnavailable(BrokerError):
    """The database did not answer (down, hung past its timeouts, or out of space)."""

    code = "database_unavailable"
    status = 503
    retry_after = 5  # seconds, sent as Retry-After
