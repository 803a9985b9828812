"""Problems found in policy files, each at a file and line, and the error that carries them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from yaml.nodes import Node

from broker.policy.iam import format_path
from broker.policy.model import SessionPolicyError
from broker.policy.yamlsource import line_of


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy file, at a line (1-based) when one is known."""

    path: str
    line: int | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        label = "warning: " if self.severity == "warning" else ""
        return f"{where}: {label}{self.message}"


class PolicyLoadError(Exception):
    """Policy files did not load; ``issues`` holds every error (and warning) found, in order."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.path, i.line or 0))
        super().__init__("\n".join(str(i) for i in self.issues))

    @property
    def errors(self) -> list[PolicyIssue]:
        """Only the errors, without the warnings."""
        return [i for i in self.issues if i.severity == "error"]


def validation_issues(path: str, node: Node | None, exc: ValidationError) -> list[PolicyIssue]:
    """Turn a pydantic ValidationError into issues at the lines of the offending YAML nodes."""
    return [issue for error in exc.errors() for issue in _issues(path, node, error)]


def _issues(path: str, node: Node | None, error: Any) -> list[PolicyIssue]:
    loc: tuple[str | int, ...] = tuple(error["loc"])

    def line(at: Sequence[str | int]) -> int | None:
        return line_of(node, at) if node is not None else None

    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SessionPolicyError):
        return [
            PolicyIssue(
                path,
                line((*loc, *issue.path)),
                f"{format_path((*loc, *issue.path))}: {issue.message}",
            )
            for issue in cause.issues
        ]
    kind = error["type"]
    if kind == "missing":
        message = f"{format_path(loc[:-1]) or 'the file'}: missing required field {loc[-1]!r}"
    elif kind == "extra_forbidden":
        message = (
            f"unknown field {loc[-1]!r} in {format_path(loc[:-1]) or 'the top level'}; check "
            "the spelling (`broker policy schema` lists every field)"
        )
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        if kind != "value_error" and isinstance(value, str | int | float | bool):
            message += f" (got {value!r})"
        where = format_path(loc)
        message = f"{where}: {message}" if where else message
    return [PolicyIssue(path, line(loc), message)]
