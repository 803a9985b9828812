"""Checks for IAM session policies: grammar, the STS size limit, and privilege-escalation smells.

Session policies narrow what an assumed role may do. STS accepts at most 2,048 characters of
plain-text policy, and emulators accept far more than real STS does, so the broker checks before
calling. Each problem carries the path inside the document (e.g. ``("Statement", 1, "Action")``)
so the policy loader can point at the exact line of a YAML file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SESSION_POLICY_MAX_CHARS = 2048
POLICY_VERSIONS = ("2012-10-17", "2008-10-17")

_STATEMENT_KEYS = frozenset(
    {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}
)
_TOP_KEYS = frozenset({"Version", "Id", "Statement"})
_ACTION_RE = re.compile(r"^[a-zA-Z0-9-]+:[A-Za-z0-9*?]+$")
_SID_RE = re.compile(r"^[A-Za-z0-9]*$")
_RESOURCE_RE = re.compile(r"^arn:[^:]*:[^:]*:[^:]*:[^:]*:.+$")
_OPERATOR_RE = re.compile(r"^(ForAllValues:|ForAnyValue:)?[A-Za-z]+(IfExists)?$")
# Action-name prefixes that only read; anything else (including service wildcards) may write.
_READ_PREFIXES = (
    "Get",
    "List",
    "Describe",
    "Head",
    "View",
    "Lookup",
    "Search",
    "Query",
    "Scan",
    "Select",
    "BatchGet",
    "Filter",
    "Read",
    "Check",
    "Validate",
)
_ESCALATION_ACTIONS = {
    "*": "Action '*' allows every action on every service",
    "iam:*": "'iam:*' lets the session change IAM, and so grant itself anything",
    "sts:*": "'sts:*' lets the session assume other roles",
}

PathPart = str | int
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class IamIssue:
    """One problem found in a policy document, at a path inside it."""

    path: tuple[PathPart, ...]
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{where}: {self.message}" if where else self.message


def format_path(path: Sequence[PathPart]) -> str:
    """Render a document path like ``Statement[1].Action``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def policy_json_compact(doc: Mapping[str, Any]) -> str:
    """Return the policy as compact JSON, the form sent to STS and measured against its limit."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def check_session_policy(doc: object) -> tuple[list[str], list[str]]:
    """Check a session policy document; return (errors, warnings) as readable sentences."""
    issues = session_policy_issues(doc)
    errors = [str(i) for i in issues if i.severity == "error"]
    warnings = [str(i) for i in issues if i.severity == "warning"]
    return errors, warnings


def session_policy_issues(doc: object) -> list[IamIssue]:
    """Check a session policy document; return every issue with its path inside the document."""
    issues: list[IamIssue] = []
    if not isinstance(doc, Mapping):
        return [IamIssue((), "a session policy must be a mapping with Version and Statement")]
    for key in doc:
        if key not in _TOP_KEYS:
            issues.append(
                IamIssue(
                    (str(key),), f"unknown policy key {key!r}; allowed: Version, Id, Statement"
                )
            )
    version = doc.get("Version")
    if version not in POLICY_VERSIONS:
        issues.append(
            IamIssue(
                ("Version",),
                f"must be '2012-10-17' (or the legacy '2008-10-17'), not {version!r}",
            )
        )
    statements = doc.get("Statement")
    if isinstance(statements, Mapping):
        issues.extend(_check_statement(statements, ("Statement",)))
    elif isinstance(statements, list) and statements:
        for index, statement in enumerate(statements):
            issues.extend(_check_statement(statement, ("Statement", index)))
    else:
        issues.append(
            IamIssue(("Statement",), "must be a statement or a non-empty list of statements")
        )
    if not any(i.severity == "error" for i in issues):
        size = len(policy_json_compact(doc))
        if size > SESSION_POLICY_MAX_CHARS:
            issues.append(
                IamIssue(
                    (),
                    f"session policy is {size} characters as compact JSON; STS refuses more than "
                    f"{SESSION_POLICY_MAX_CHARS}. Use wildcards, fewer statements, or "
                    "managed_policy_arns",
                )
            )
    return issues


def _check_statement(statement: object, path: tuple[PathPart, ...]) -> list[IamIssue]:
    if not isinstance(statement, Mapping):
        return [IamIssue(path, "a statement must be a mapping with Effect, Action and Resource")]
    issues: list[IamIssue] = []
    for key in statement:
        if key == "Principal" or key == "NotPrincipal":
            issues.append(IamIssue((*path, key), f"session policies cannot name a {key}"))
        elif key not in _STATEMENT_KEYS:
            issues.append(
                IamIssue(
                    (*path, str(key)),
                    f"unknown statement key {key!r}; allowed: {', '.join(sorted(_STATEMENT_KEYS))}",
                )
            )
    sid = statement.get("Sid")
    if sid is not None and not (isinstance(sid, str) and _SID_RE.match(sid)):
        issues.append(IamIssue((*path, "Sid"), "must contain only letters and digits"))
    effect = statement.get("Effect")
    if effect not in ("Allow", "Deny"):
        issues.append(IamIssue((*path, "Effect"), f"must be Allow or Deny, not {effect!r}"))
    issues.extend(_check_pair(statement, path, "Action", "NotAction", _check_action))
    issues.extend(_check_pair(statement, path, "Resource", "NotResource", _check_resource))
    if "Condition" in statement:
        issues.extend(_check_condition(statement["Condition"], (*path, "Condition")))
    if effect == "Allow":
        issues.extend(_escalation_warnings(statement, path))
    return issues


def _check_pair(
    statement: Mapping[str, Any],
    path: tuple[PathPart, ...],
    key: str,
    not_key: str,
    check_one: Callable[[object], str | None],
) -> list[IamIssue]:
    present = [k for k in (key, not_key) if k in statement]
    if len(present) != 1:
        problem = "has both" if present else "needs one of"
        return [IamIssue(path, f"statement {problem} {key} and {not_key}; give exactly one")]
    name = present[0]
    value = statement[name]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        return [IamIssue((*path, name), "must be a string or a non-empty list of strings")]
    issues: list[IamIssue] = []
    for index, item in enumerate(values):
        item_path = (*path, name) if isinstance(value, str) else (*path, name, index)
        found = check_one(item)
        if found:
            issues.append(IamIssue(item_path, found))
    return issues


def _check_action(action: object) -> str | None:
    if isinstance(action, str) and (action == "*" or _ACTION_RE.match(action)):
        return None
    return f"{action!r} is not an action; write service:Action (e.g. s3:GetObject) or *"


def _check_resource(resource: object) -> str | None:
    if isinstance(resource, str) and (resource == "*" or _RESOURCE_RE.match(resource)):
        return None
    return f"{resource!r} is not a resource; write an ARN (arn:aws:s3:::bucket/*) or *"


def _check_condition(condition: object, path: tuple[PathPart, ...]) -> list[IamIssue]:
    if not isinstance(condition, Mapping) or not condition:
        return [IamIssue(path, "Condition must map operators (e.g. StringEquals) to key: value")]
    issues: list[IamIssue] = []
    for operator, block in condition.items():
        op_path = (*path, str(operator))
        if not (isinstance(operator, str) and _OPERATOR_RE.match(operator)):
            issues.append(IamIssue(op_path, f"{operator!r} is not a condition operator"))
            continue
        if not isinstance(block, Mapping) or not block:
            issues.append(IamIssue(op_path, f"{operator} must map condition keys to values"))
            continue
        for key, value in block.items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str | bool | int | float) for v in values):
                issues.append(
                    IamIssue((*op_path, str(key)), "a condition value must be a string or a list")
                )
    return issues


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _may_write(action: str) -> bool:
    if action == "*":
        return True
    name = action.partition(":")[2]
    return not name.startswith(_READ_PREFIXES)


def _escalation_warnings(
    statement: Mapping[str, Any], path: tuple[PathPart, ...]
) -> list[IamIssue]:
    warnings: list[IamIssue] = []
    actions = _as_list(statement.get("Action"))
    for action in actions:
        reason = _ESCALATION_ACTIONS.get(action.lower() if action != "*" else action)
        if reason:
            warnings.append(IamIssue((*path, "Action"), reason, "warning"))
    if "NotAction" in statement:
        warnings.append(
            IamIssue(
                (*path, "NotAction"),
                "Allow with NotAction grants every action not listed, including future ones; "
                "list the allowed actions instead",
                "warning",
            )
        )
    if "NotResource" in statement:
        warnings.append(
            IamIssue(
                (*path, "NotResource"),
                "Allow with NotResource grants every resource not listed; list resources instead",
                "warning",
            )
        )
    writes = [a for a in actions if a != "*" and _may_write(a)]
    if writes and "*" in _as_list(statement.get("Resource")):
        warnings.append(
            IamIssue(
                (*path, "Resource"),
                f"Resource '*' with actions that can change things ({', '.join(writes[:3])}"
                f"{', ...' if len(writes) > 3 else ''}); name the resources they may touch",
                "warning",
            )
        )
    return warnings
