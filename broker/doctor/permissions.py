"""Whether the broker may do what it needs on a role: read and write its revocation policy,
and (when the trust policy names only its account) assume it.

Reading is checked by reading (``ListRolePolicies``, ``GetRolePolicy``); writing by asking IAM's
policy simulator about the broker's own principal (``SimulatePrincipalPolicy``), never by a trial
``PutRolePolicy``, which could overwrite a revocation the scheduler writes at the same moment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from broker.doctor import Check
from broker.doctor.trust import BrokerPrincipal
from broker.iam_setup import (
    ROLE_READ_ACTIONS,
    ROLE_WRITE_ACTIONS,
    TRUST_ACTIONS,
    TargetRole,
    broker_policy,
)
from broker.revocation import IAM_INLINE_BUDGET, POLICY_NAME, RoleRevoker

AWS_ERRORS = (ClientError, BotoCoreError, ResponseParserError)
"""What a boto3 call raises when AWS (or something posing as it) does not answer as expected."""
REVOCATION_ROOM = 2_048
"""Characters of the role's inline budget that should stay free for revocations."""


def permission_checks(
    iam: Any, principal: BrokerPrincipal, role: TargetRole, needs_identity_policy: bool
) -> list[Check]:
    """The revocation policy check, the assume check when needed, and the inline budget."""
    state = _read_revocation_state(iam, principal, role)
    if isinstance(state, Check):
        return [state]
    others, present = state
    actions = list(ROLE_READ_ACTIONS + ROLE_WRITE_ACTIONS)
    if needs_identity_policy:
        actions += TRUST_ACTIONS
    decisions, error = simulate(iam, principal, actions, role.arn)
    checks = [_revocation_check(principal, role, decisions, error, present, others)]
    if needs_identity_policy and decisions:
        checks.append(_assume_check(principal, role, decisions))
    if IAM_INLINE_BUDGET - others < REVOCATION_ROOM:
        checks.append(
            Check(
                "inline policy budget",
                "warn",
                f"the role's other inline policies use {others} of IAM's {IAM_INLINE_BUDGET} "
                f"characters, leaving {IAM_INLINE_BUDGET - others} for {POLICY_NAME}: "
                "revocations will soon fall back to role-wide cutoffs",
                subject=role.arn,
                fix="Move the role's inline policies into managed policies.",
            )
        )
    return checks


def _read_revocation_state(
    iam: Any, principal: BrokerPrincipal, role: TargetRole
) -> tuple[int, str] | Check:
    """(characters the role's other inline policies use, whether ours is there), by reading."""
    name = role.parts.name
    try:
        others = RoleRevoker(iam, clock=lambda: datetime.now(UTC)).other_policies_size(name)
        try:
            iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME)
            present = f"{POLICY_NAME} is in place"
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise
            present = f"no {POLICY_NAME} yet"
    except ClientError as exc:
        return Check(
            "revocation policy",
            "fail",
            f"the broker cannot read the role's inline policies ({exc}): it could neither "
            f"budget nor update {POLICY_NAME}, so revocations would stay pending",
            subject=role.arn,
            fix=identity_policy_fix(principal, role, ("ReadTargetRoles", "WriteRevocationPolicy")),
        )
    except AWS_ERRORS as exc:
        return Check("revocation policy", "fail", f"IAM read failed: {exc}", subject=role.arn)
    return others, present


def simulate(
    iam: Any, principal: BrokerPrincipal, actions: Sequence[str], resource: str
) -> tuple[dict[str, str], str | None]:
    """IAM's policy simulator on the broker's own identity policies: action -> decision."""
    if principal.kind not in ("user", "role"):
        return {}, f"{principal.caller_arn} is not an IAM user or role"
    decisions: dict[str, str] = {}
    kwargs: dict[str, Any] = {
        "PolicySourceArn": principal.principal_arn,
        "ActionNames": list(actions),
        "ResourceArns": [resource],
    }
    try:
        while True:
            page = iam.simulate_principal_policy(**kwargs)
            for result in page.get("EvaluationResults", []):
                decisions[str(result["EvalActionName"])] = str(result["EvalDecision"])
            if not page.get("IsTruncated"):
                break
            kwargs["Marker"] = page["Marker"]
    except AWS_ERRORS as exc:
        return {}, str(exc).splitlines()[0]
    return decisions, None


def _revocation_check(
    principal: BrokerPrincipal,
    role: TargetRole,
    decisions: dict[str, str],
    error: str | None,
    present: str,
    others: int,
) -> Check:
    budget = f"other inline policies use {others} of {IAM_INLINE_BUDGET} characters"
    if error is not None:
        return Check(
            "revocation policy",
            "warn",
            f"the broker reads the role's inline policies ({present}; {budget}); whether it "
            f"may write {POLICY_NAME} is not verified: IAM's policy simulator did not answer "
            f"({error})",
            subject=role.arn,
            fix=f"Allow the broker iam:SimulatePrincipalPolicy on {principal.principal_arn} "
            "(`broker iam-policies` includes it), or check by hand:\n"
            f"aws iam simulate-principal-policy --policy-source-arn {principal.principal_arn} "
            f"--action-names {' '.join(ROLE_WRITE_ACTIONS)} --resource-arns {role.arn}",
        )
    wanted = ROLE_READ_ACTIONS + ROLE_WRITE_ACTIONS
    denied = [
        f"{a} ({decisions.get(a, 'not simulated')})" for a in wanted if _refused(decisions, a)
    ]
    if denied:
        return Check(
            "revocation policy",
            "fail",
            f"the broker's identity policy does not allow {', '.join(denied)} on this role: "
            f"revocations could not be put in place ({present})",
            subject=role.arn,
            fix=identity_policy_fix(principal, role, ("ReadTargetRoles", "WriteRevocationPolicy")),
        )
    return Check(
        "revocation policy",
        "ok",
        f"the broker may read and write {POLICY_NAME} (IAM policy simulator); {present}; {budget}",
        subject=role.arn,
    )


def _assume_check(principal: BrokerPrincipal, role: TargetRole, decisions: dict[str, str]) -> Check:
    denied = [
        f"{a} ({decisions.get(a, 'not simulated')})"
        for a in TRUST_ACTIONS
        if _refused(decisions, a)
    ]
    if denied:
        return Check(
            "assume permission",
            "fail",
            f"the trust policy names the broker's account, not the broker, so its identity "
            f"policy must allow {', '.join(denied)} on this role, and does not",
            subject=role.arn,
            fix=identity_policy_fix(principal, role, ("AssumeTargetRoles",)),
        )
    return Check(
        "assume permission",
        "ok",
        f"the broker's identity policy allows {', '.join(TRUST_ACTIONS)} on this role",
        subject=role.arn,
    )


def identity_policy_fix(principal: BrokerPrincipal, role: TargetRole, sids: Sequence[str]) -> str:
    """The broker identity policy statements (by Sid) for one role, and how to attach them."""
    statements = [s for s in broker_policy([role.arn])["Statement"] if s["Sid"] in sids]
    document = {"Version": "2012-10-17", "Statement": statements}
    where = _attach_command(principal)
    return (
        f"Add to the broker's identity policy (all target roles: `broker iam-policies "
        f"--broker-principal {principal.principal_arn} --output-dir DIR` writes "
        f"broker-policy.json{where}):\n" + json.dumps(document, indent=2)
    )


def _attach_command(principal: BrokerPrincipal) -> str:
    name = principal.principal_arn.rsplit("/", 1)[-1]
    if principal.kind == "role":
        return (
            f"; then aws iam put-role-policy --role-name {name} --policy-name broker "
            "--policy-document file://broker-policy.json"
        )
    if principal.kind == "user":
        return (
            f"; then aws iam put-user-policy --user-name {name} --policy-name broker "
            "--policy-document file://broker-policy.json"
        )
    return ""


def _refused(decisions: dict[str, str], action: str) -> bool:
    return decisions.get(action, "").lower() != "allowed"
