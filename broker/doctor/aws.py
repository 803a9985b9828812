"""The AWS side: the broker's identity, role chaining, and every target role of the policy.

For each role: it exists (``GetRole``), its trust policy lets the broker assume it with a source
identity and session tags, its ``MaxSessionDuration`` covers its entitlements, and the broker
may read and write its revocation policy (:mod:`broker.doctor.permissions`). Nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from botocore.exceptions import ClientError

from broker.doctor import Check, Status
from broker.doctor.permissions import AWS_ERRORS, identity_policy_fix, permission_checks
from broker.doctor.trust import BrokerPrincipal, TrustVerdict, broker_principal, check_trust
from broker.doctor.trust import parse_document as parse_policy
from broker.iam_setup import (
    TRUST_ACTIONS,
    TargetRole,
    trust_policy,
)
from broker.policy import format_duration
from broker.revocation import POLICY_NAME
from broker.sts import CHAINING_MAX_DURATION

_RANK: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2}


def check_identity(sts: Any, iam: Any) -> tuple[BrokerPrincipal | None, list[Check]]:
    """Who the broker is (``sts get-caller-identity``); None when AWS cannot say."""
    try:
        caller = str(sts.get_caller_identity()["Arn"])
    except AWS_ERRORS as exc:
        return None, [
            Check(
                "aws identity",
                "fail",
                f"sts get-caller-identity failed: {exc}",
                fix="Give the broker AWS credentials (instance profile, task role, "
                "AWS_PROFILE, ...) and check BROKER_AWS_REGION and BROKER_AWS_ENDPOINT_URL; "
                "the same credentials must pass `aws sts get-caller-identity`.",
            )
        ]
    principal = broker_principal(caller)
    if principal.role_name is not None:
        try:  # the role's ARN with its path (an assumed-role ARN has none)
            role_arn = str(iam.get_role(RoleName=principal.role_name)["Role"]["Arn"])
            principal = broker_principal(caller, role_arn=role_arn)
        except AWS_ERRORS:
            pass
    message = f"the broker runs as {caller}"
    if principal.principal_arn != caller:
        message += f"; trust policies name it as {principal.principal_arn}"
    if principal.kind == "root":
        return principal, [
            Check(
                "aws identity",
                "fail",
                message + ", the account's root user: AWS refuses AssumeRole from root",
                fix="Run the broker as a dedicated IAM role or user with the policy "
                "`broker iam-policies` prints.",
            )
        ]
    return principal, [Check("aws identity", "ok", message)]


def check_chaining(principal: BrokerPrincipal, roles: Sequence[TargetRole]) -> Check:
    """A broker on a role session is chaining: AWS refuses sessions over 1 h it asks for."""
    if not principal.chaining:
        return Check(
            "role chaining",
            "ok",
            "no: the broker's credentials are not a role session, so sessions may last up to "
            "each role's MaxSessionDuration",
        )
    cap = timedelta(seconds=CHAINING_MAX_DURATION)
    longer = [(eid, d) for r in roles for eid, d in r.entitlements if d > cap]
    if not longer:
        return Check(
            "role chaining",
            "ok",
            "yes: the broker runs on a role session, so AWS caps each session it issues at 1 h; "
            "every entitlement's max_duration fits",
        )
    names = ", ".join(f"{eid} ({format_duration(d)})" for eid, d in longer)
    return Check(
        "role chaining",
        "fail",
        f"the broker runs on a role session ({principal.caller_arn}): its AssumeRole calls are "
        f"role chaining, and AWS refuses sessions longer than 1 h; these entitlements ask for "
        f"more: {names}",
        fix="Set max_duration: 1h on these entitlements, or run the broker with credentials "
        "that are not a role session (an IAM user's access keys, kept in a secret store and "
        "rotated: the price is a long-lived key).",
    )


def check_roles(iam: Any, principal: BrokerPrincipal, roles: Sequence[TargetRole]) -> list[Check]:
    """Every check of every role, in the policy's order."""
    checks: list[Check] = []
    for role in roles:
        checks.extend(check_role(iam, principal, role))
    return checks


def check_role(iam: Any, principal: BrokerPrincipal, role: TargetRole) -> list[Check]:
    """Exists, trusts the broker, lasts long enough, lets the broker keep its revocations."""
    parts = role.parts
    if parts.account != principal.account:
        return [
            Check(
                "role",
                "fail",
                f"the role is in account {parts.account}, the broker's credentials in "
                f"{principal.account}: the broker reads MaxSessionDuration and writes "
                f"{POLICY_NAME} with its own credentials, which reach only its own account",
                subject=role.arn,
                fix="Keep the broker's target roles in its own account (one broker per account); "
                "roles in other accounts (hub and spokes) are not supported yet.",
            )
        ]
    try:
        found = iam.get_role(RoleName=parts.name)["Role"]
    except ClientError as exc:
        return [_role_unreadable(role, principal, exc)]
    except AWS_ERRORS as exc:
        return [Check("role", "fail", f"iam get-role failed: {exc}", subject=role.arn)]
    checks = [_role_identity(role, str(found.get("Arn", "")))]
    verdicts = [
        check_trust(parse_policy(found.get("AssumeRolePolicyDocument") or {}), principal, a)
        for a in TRUST_ACTIONS
    ]
    checks.append(_trust_check(role, principal, verdicts))
    checks.append(_duration_check(role, int(found.get("MaxSessionDuration", 3600))))
    needs_identity_policy = any(v.via in ("account", "any") for v in verdicts)
    checks.extend(permission_checks(iam, principal, role, needs_identity_policy))
    return checks


def _role_unreadable(role: TargetRole, principal: BrokerPrincipal, exc: ClientError) -> Check:
    code = exc.response.get("Error", {}).get("Code", "")
    parts = role.parts
    if code == "NoSuchEntity":
        return Check(
            "role",
            "fail",
            f"no role named {parts.name} in account {parts.account}",
            subject=role.arn,
            fix=f"aws iam create-role --role-name {parts.name} --path {parts.path} "
            f"--max-session-duration {role.min_session_seconds} "
            f"--assume-role-policy-document file://{role.trust_file}\n"
            f"(`broker iam-policies --broker-principal {principal.principal_arn} --output-dir "
            f"DIR` writes {role.trust_file}; then give the role its permissions.)",
        )
    return Check(
        "role",
        "fail",
        f"IAM refused GetRole: {exc}",
        subject=role.arn,
        fix=identity_policy_fix(principal, role, ("ReadTargetRoles",)),
    )


def _role_identity(role: TargetRole, found_arn: str) -> Check:
    if found_arn and found_arn != role.arn:
        return Check(
            "role",
            "warn",
            f"IAM knows this role as {found_arn}, not as the policy names it",
            subject=role.arn,
            fix=f"Set role_arn: {found_arn} in the policy.",
        )
    return Check("role", "ok", "exists", subject=role.arn)


def _trust_check(
    role: TargetRole, principal: BrokerPrincipal, verdicts: list[TrustVerdict]
) -> Check:
    status = _worst(v.status for v in verdicts)
    who = principal.principal_arn
    if status == "ok":
        message = f"lets {who} use {', '.join(TRUST_ACTIONS)}"
        if any(v.via == "account" for v in verdicts):
            message += f" (through the account {principal.account}: the broker's identity "
            message += "policy must allow them too)"
        return Check("trust policy", "ok", message, subject=role.arn)
    by_reason: dict[str, list[str]] = {}
    for verdict in verdicts:
        if verdict.status != "ok":
            by_reason.setdefault(verdict.reason, []).append(verdict.action)
    problems = "; ".join(f"{', '.join(actions)} ({why})" for why, actions in by_reason.items())
    return Check(
        "trust policy",
        status,
        f"does not let {who} use {problems}",
        subject=role.arn,
        fix="Add these statements to the role's trust policy, keeping its others "
        f"(`broker iam-policies --broker-principal {who} --output-dir DIR` writes them to "
        f"{role.trust_file}):\n" + json.dumps(trust_policy(who), indent=2),
    )


def _duration_check(role: TargetRole, seconds: int) -> Check:
    needed = role.min_session_seconds
    have = format_duration(timedelta(seconds=seconds))
    if seconds >= needed:
        return Check(
            "max session duration",
            "ok",
            f"{seconds} s ({have}) covers {role.describe_durations() or 'IAM minimum'}",
            subject=role.arn,
        )
    return Check(
        "max session duration",
        "fail",
        f"MaxSessionDuration is {seconds} s ({have}), shorter than its entitlements' "
        f"max_duration ({role.describe_durations()}): their sessions would end after {have}",
        subject=role.arn,
        fix=f"aws iam update-role --role-name {role.parts.name} --max-session-duration {needed}",
    )


def _worst(statuses: Any) -> Status:
    worst: Status = "ok"
    for status in statuses:
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst
