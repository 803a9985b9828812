"""Who the broker is on AWS, and whether a role's trust policy lets it in.

This is a reading of the trust policy document, not IAM's evaluation: it finds the statements
that name the broker (its exact ARN, its account, or ``*``) for an action, and says ok when an
unconditional Allow (or one requiring only a source identity, which every broker session has)
covers it, warn when only conditions it cannot evaluate or a wildcard principal do, and fail when
nothing allows it or a Deny refuses it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

PrincipalKind = Literal["user", "role", "root", "other"]
Match = Literal["exact", "account", "any"]

_ARN_RE = re.compile(
    r"^arn:(?P<partition>[\w-]+):(?P<service>iam|sts)::(?P<account>\d{12}):(?P<resource>.+)$"
)
# (operator, key, values) every broker request meets: it always sets a source identity.
_MET_CONDITIONS = frozenset(
    {
        ("StringLike", "sts:sourceidentity", ("*",)),
        ("Null", "sts:sourceidentity", ("false",)),
    }
)


@dataclass(frozen=True)
class BrokerPrincipal:
    """The broker's identity from ``sts get-caller-identity``, as a trust policy names it."""

    caller_arn: str
    account: str
    partition: str
    kind: PrincipalKind
    principal_arn: str
    """The IAM ARN a trust policy (and the policy simulator) names: the role for a session."""
    role_name: str | None = None

    @property
    def chaining(self) -> bool:
        """True when the broker runs on a role session: its AssumeRole calls are role chaining."""
        return self.kind == "role"

    def matches(self, value: str) -> Match | None:
        """How a trust policy's ``Principal.AWS`` value names the broker, if it does."""
        if value == "*":
            return "any"
        if value in (self.account, f"arn:{self.partition}:iam::{self.account}:root"):
            return "account"
        if value in (self.principal_arn, self.caller_arn):
            return "exact"
        if self.role_name is not None:
            pattern = rf"arn:{re.escape(self.partition)}:iam::{self.account}:role/(?:.*/)?"
            if re.fullmatch(pattern + re.escape(self.role_name), value):
                return "exact"
        return None


def broker_principal(caller_arn: str, *, role_arn: str | None = None) -> BrokerPrincipal:
    """Read the caller ARN; `role_arn` is the session's role with its path, when IAM said it."""
    match = _ARN_RE.match(caller_arn)
    if match is None:
        return BrokerPrincipal(caller_arn, "", "aws", "other", caller_arn)
    partition, service, account = match["partition"], match["service"], match["account"]
    resource = match["resource"]
    if service == "iam" and resource == "root":
        return BrokerPrincipal(caller_arn, account, partition, "root", caller_arn)
    if service == "iam" and resource.startswith("user/"):
        return BrokerPrincipal(caller_arn, account, partition, "user", caller_arn)
    if service == "sts" and resource.startswith("assumed-role/"):
        name = resource.split("/")[1]
        role = role_arn or f"arn:{partition}:iam::{account}:role/{name}"
        return BrokerPrincipal(caller_arn, account, partition, "role", role, name)
    return BrokerPrincipal(caller_arn, account, partition, "other", caller_arn)


@dataclass(frozen=True)
class TrustVerdict:
    """Whether the trust policy lets the broker perform one action, and why."""

    action: str
    status: Literal["ok", "warn", "fail"]
    reason: str
    via: Match | None = None


def parse_document(document: str | Mapping[str, Any]) -> dict[str, Any]:
    """A policy document as IAM returns it: parsed JSON, or URL-encoded JSON text."""
    if isinstance(document, Mapping):
        return dict(document)
    text = document if document.lstrip().startswith("{") else urllib.parse.unquote(document)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def check_trust(
    document: Mapping[str, Any], principal: BrokerPrincipal, action: str
) -> TrustVerdict:
    """What the trust policy says about `principal` performing `action` on the role."""
    allows: list[tuple[Match, dict[str, Any], str]] = []
    for index, statement in enumerate(_statements(document)):
        match = _principal_match(statement, principal)
        if match is None or not _action_match(statement, action):
            continue
        sid = str(statement.get("Sid") or f"statement {index + 1}")
        if statement.get("Effect") == "Deny":
            if statement.get("Condition"):
                return TrustVerdict(action, "warn", f"{sid} denies it under conditions", match)
            return TrustVerdict(action, "fail", f"{sid} denies it", match)
        if statement.get("Effect") == "Allow":
            allows.append((match, statement, sid))
    if not allows:
        return TrustVerdict(action, "fail", "no statement allows it")
    unconditional = [a for a in allows if _conditions_met(a[1].get("Condition"))]
    named = [a for a in unconditional if a[0] != "any"]
    if named:
        match, _, sid = min(named, key=lambda a: a[0] != "exact")
        if match == "account":
            return TrustVerdict(
                action,
                "ok",
                f"{sid} allows the account {principal.account}; the broker's own identity "
                "policy must allow it too",
                match,
            )
        return TrustVerdict(action, "ok", f"{sid} allows it", match)
    if unconditional:
        sid = unconditional[0][2]
        return TrustVerdict(
            action, "warn", f"{sid} allows it to every AWS principal ('*'), not only the broker"
        )
    match, statement, sid = allows[0]
    condition = json.dumps(statement.get("Condition"), sort_keys=True)
    return TrustVerdict(
        action,
        "warn",
        f"{sid} allows it only under conditions doctor cannot evaluate: {condition}",
        match,
    )


def _statements(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    return [dict(s) for s in statements if isinstance(s, Mapping)]


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _principal_match(statement: Mapping[str, Any], principal: BrokerPrincipal) -> Match | None:
    value = statement.get("Principal")
    names = (
        ["*"] if value == "*" else _listed(value.get("AWS")) if isinstance(value, Mapping) else []
    )
    found = {m for m in (principal.matches(n) for n in names) if m is not None}
    for best in ("exact", "account", "any"):
        if best in found:
            return best
    return None


def _action_match(statement: Mapping[str, Any], action: str) -> bool:
    def covers(patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)

    if "NotAction" in statement:
        return not covers(_listed(statement["NotAction"]))
    return covers(_listed(statement.get("Action")))


def _conditions_met(condition: Any) -> bool:
    if not condition:
        return True
    if not isinstance(condition, Mapping):
        return False
    return all(
        isinstance(tests, Mapping)
        and all(
            (operator, str(key).lower(), tuple(_listed(values))) in _MET_CONDITIONS
            for key, values in tests.items()
        )
        for operator, tests in condition.items()
    )
