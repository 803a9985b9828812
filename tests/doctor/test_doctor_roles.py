"""`broker doctor`'s AWS checks against moto: the broker's identity and every target role."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from doctorbed import ACCOUNT, BrokerUser, unique
from schedbed import needs_iamsim

from broker.doctor import Check
from broker.doctor.aws import check_chaining, check_identity, check_role
from broker.doctor.trust import BrokerPrincipal, broker_principal
from broker.iam_setup import TargetRole, trust_policy

pytestmark = needs_iamsim
MakeRole = Callable[..., TargetRole]


def by_check(checks: list[Check]) -> dict[str, Check]:
    """One check per name (the role checks name each once)."""
    found = {c.check: c for c in checks}
    assert len(found) == len(checks), checks
    return found


def principal_of(user: BrokerUser) -> BrokerPrincipal:
    principal, checks = check_identity(user.sts, user.iam)
    assert principal is not None and [c.status for c in checks] == ["ok"], checks
    return principal


def trust_without(action: str, principal: str) -> dict[str, Any]:
    """The broker's trust statements with one action left out."""
    document = trust_policy(principal)
    for statement in document["Statement"]:
        actions = statement["Action"]
        if isinstance(actions, list) and action in actions:
            statement["Action"] = [a for a in actions if a != action]
    return document


def test_a_correctly_set_up_account_passes(broker_user: BrokerUser, make_role: MakeRole) -> None:
    role = make_role(max_session=7200, durations=(timedelta(hours=2), timedelta(hours=1)))
    broker_user.allow_roles(role.arn)
    principal = principal_of(broker_user)
    assert principal.principal_arn == broker_user.arn and not principal.chaining

    checks = check_role(broker_user.iam, principal, role)

    assert [(c.check, c.status) for c in checks] == [
        ("role", "ok"),
        ("trust policy", "ok"),
        ("max session duration", "ok"),
        ("revocation policy", "ok"),
    ], checks
    assert all(c.subject == role.arn and c.fix is None for c in checks)
    found = by_check(checks)
    assert "sts:SetSourceIdentity" in found["trust policy"].message
    assert "7200 s (2h)" in found["max session duration"].message
    assert "no BrokerRevocations yet" in found["revocation policy"].message
    assert check_chaining(principal, [role]).status == "ok"
    # The write permission was asked of IAM's simulator, on the broker itself, for this role.
    (asked,) = broker_user.iam.simulations
    assert asked["principal"] == broker_user.arn and asked["resources"] == [role.arn]
    assert {"iam:PutRolePolicy", "iam:DeleteRolePolicy"} <= set(asked["actions"])


def test_trust_without_set_source_identity_fails_with_the_statements_to_add(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    role = make_role(trust=trust_without("sts:SetSourceIdentity", broker_user.arn))
    broker_user.allow_roles(role.arn)

    trust = by_check(check_role(broker_user.iam, principal_of(broker_user), role))["trust policy"]

    assert trust.status == "fail"
    assert trust.message.startswith(f"does not let {broker_user.arn} use sts:SetSourceIdentity (")
    assert "sts:TagSession" not in trust.message
    assert trust.fix is not None and role.trust_file in trust.fix
    snippet = json.loads(trust.fix[trust.fix.index("{") :])
    assert snippet == trust_policy(broker_user.arn)


def test_trust_without_tag_session_fails_with_its_own_message(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    role = make_role(trust=trust_without("sts:TagSession", broker_user.arn))
    broker_user.allow_roles(role.arn)

    trust = by_check(check_role(broker_user.iam, principal_of(broker_user), role))["trust policy"]

    assert trust.status == "fail"
    assert trust.message.endswith("use sts:TagSession (no statement allows it)")
    assert "SetSourceIdentity" not in trust.message


def test_trust_for_someone_else_fails_for_every_action(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    role = make_role(trust=trust_policy(f"arn:aws:iam::{ACCOUNT}:role/somebody-else"))
    broker_user.allow_roles(role.arn)

    trust = by_check(check_role(broker_user.iam, principal_of(broker_user), role))["trust policy"]

    assert trust.status == "fail"
    assert trust.message.endswith(
        "use sts:AssumeRole, sts:SetSourceIdentity, sts:TagSession (no statement allows it)"
    )


def test_too_short_max_session_duration_fails_with_the_update_command(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    role = make_role(max_session=3600, durations=(timedelta(hours=4), timedelta(minutes=30)))
    broker_user.allow_roles(role.arn)

    found = by_check(check_role(broker_user.iam, principal_of(broker_user), role))

    duration = found["max session duration"]
    assert duration.status == "fail"
    assert "MaxSessionDuration is 3600 s (1h)" in duration.message
    assert f"{role.entitlements[0][0]} 4h" in duration.message
    assert duration.fix == (
        f"aws iam update-role --role-name {role.parts.name} --max-session-duration 14400"
    )
    assert found["trust policy"].status == "ok"


def test_a_missing_role_fails_with_the_create_command(broker_user: BrokerUser) -> None:
    name = unique("missing")
    role = TargetRole(f"arn:aws:iam::{ACCOUNT}:role/team/{name}", (("x", timedelta(hours=2)),))
    broker_user.allow_roles(role.arn)

    (check,) = check_role(broker_user.iam, principal_of(broker_user), role)

    assert (check.check, check.status) == ("role", "fail")
    assert check.message == f"no role named {name} in account {ACCOUNT}"
    assert check.fix is not None
    assert check.fix.startswith(
        f"aws iam create-role --role-name {name} --path /team/ --max-session-duration 7200 "
        f"--assume-role-policy-document file://trust-{ACCOUNT}-{name}.json"
    )
    assert f"--broker-principal {broker_user.arn}" in check.fix


def test_no_revocation_permission_fails_with_the_statement_to_add(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    role = make_role()
    policy: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "sts:*", "Resource": role.arn},
            {
                "Effect": "Allow",
                "Action": ["iam:GetRole", "iam:ListRolePolicies", "iam:GetRolePolicy"],
                "Resource": role.arn,
            },
        ],
    }
    broker_user.allow(policy)

    found = by_check(check_role(broker_user.iam, principal_of(broker_user), role))

    revocation = found["revocation policy"]
    assert revocation.status == "fail"
    assert "does not allow iam:PutRolePolicy (implicitDeny), iam:DeleteRolePolicy" in (
        revocation.message
    )
    assert "iam:GetRolePolicy" not in revocation.message
    assert revocation.fix is not None
    assert f"aws iam put-user-policy --user-name {broker_user.name}" in revocation.fix
    statements = json.loads(revocation.fix[revocation.fix.index("{") :])["Statement"]
    write = next(s for s in statements if s["Sid"] == "WriteRevocationPolicy")
    assert write["Resource"] == [role.arn]
    assert [found[c].status for c in ("role", "trust policy", "max session duration")] == ["ok"] * 3


def test_an_explicit_deny_on_revocation_writes_fails(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    role = make_role()
    broker_user.allow_roles(role.arn)
    broker_user.moto_iam.put_user_policy(
        UserName=broker_user.name,
        PolicyName="guardrail",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Deny", "Action": "iam:Put*", "Resource": "*"}],
            }
        ),
    )

    revocation = by_check(check_role(broker_user.iam, principal_of(broker_user), role))[
        "revocation policy"
    ]

    assert revocation.status == "fail"
    assert "iam:PutRolePolicy (explicitDeny)" in revocation.message


def test_without_the_policy_simulator_the_write_permission_is_a_warning(
    broker_user: BrokerUser, make_role: MakeRole, moto_server: Any
) -> None:
    deny = {"Effect": "Deny", "Action": "*", "Resource": "*"}
    role = make_role(revocation={"Version": "2012-10-17", "Statement": [deny]})
    broker_user.allow_roles(role.arn)
    plain = moto_server.client("iam")  # moto answers SimulatePrincipalPolicy with an error

    found = by_check(check_role(plain, principal_of(broker_user), role))

    revocation = found["revocation policy"]
    assert revocation.status == "warn"
    assert "BrokerRevocations is in place" in revocation.message
    assert "not verified" in revocation.message
    assert (
        revocation.fix is not None
        and (
            f"aws iam simulate-principal-policy --policy-source-arn {broker_user.arn} "
            f"--action-names iam:PutRolePolicy iam:DeleteRolePolicy --resource-arns {role.arn}"
        )
        in revocation.fix
    )


def test_trust_through_the_account_needs_the_identity_policy_too(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    root_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
            }
        ],
    }
    allowed = make_role(trust=root_trust)
    refused = make_role(trust=root_trust)
    broker_user.allow_roles(allowed.arn)  # names only the first role
    principal = principal_of(broker_user)

    ok = by_check(check_role(broker_user.iam, principal, allowed))
    bad = by_check(check_role(broker_user.iam, principal, refused))

    assert ok["trust policy"].status == "ok" and f"account {ACCOUNT}" in ok["trust policy"].message
    assert ok["assume permission"].status == "ok"
    assert bad["assume permission"].status == "fail"
    assert "sts:AssumeRole (implicitDeny)" in bad["assume permission"].message
    assert bad["assume permission"].fix is not None
    assert "AssumeTargetRoles" in bad["assume permission"].fix


def test_a_role_arn_with_the_wrong_path_is_a_warning_naming_the_right_one(
    broker_user: BrokerUser, make_role: MakeRole
) -> None:
    real = make_role(path="/team/")
    named = TargetRole(real.arn.replace("/team/", "/"), real.entitlements)
    broker_user.allow_roles(real.arn, named.arn)

    role = by_check(check_role(broker_user.iam, principal_of(broker_user), named))["role"]

    assert role.status == "warn" and f"IAM knows this role as {real.arn}" in role.message
    assert role.fix == f"Set role_arn: {real.arn} in the policy."


def test_crowded_inline_policies_leave_too_little_room_for_revocations(
    broker_user: BrokerUser, make_role: MakeRole, moto_server: Any
) -> None:
    role = make_role()
    broker_user.allow_roles(role.arn)
    buckets = [f"arn:aws:s3:::bucket-{i:04d}-with-a-long-name/*" for i in range(200)]
    big = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": buckets}],
    }
    moto_server.client("iam").put_role_policy(
        RoleName=role.parts.name, PolicyName="app", PolicyDocument=json.dumps(big)
    )

    found = by_check(check_role(broker_user.iam, principal_of(broker_user), role))

    assert found["revocation policy"].status == "ok"
    budget = found["inline policy budget"]
    assert budget.status == "warn" and "of IAM's 10240 characters" in budget.message
    assert budget.fix == "Move the role's inline policies into managed policies."


def test_a_role_in_another_account_is_refused_with_the_reason(broker_user: BrokerUser) -> None:
    role = TargetRole("arn:aws:iam::111122223333:role/elsewhere", (("x", timedelta(hours=1)),))

    (check,) = check_role(broker_user.iam, principal_of(broker_user), role)

    assert (check.check, check.status) == ("role", "fail")
    assert "in account 111122223333, the broker's credentials in 123456789012" in check.message


def test_a_broker_on_a_role_session_is_role_chaining(moto_server: Any) -> None:
    iam = moto_server.client("iam")
    name = unique("broker-host")
    role_arn = iam.create_role(
        RoleName=name,
        Path="/services/",
        AssumeRolePolicyDocument=json.dumps(trust_policy(f"arn:aws:iam::{ACCOUNT}:root")),
    )["Role"]["Arn"]
    creds = moto_server.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="broker")[
        "Credentials"
    ]
    sts = moto_server.client(
        "sts",
        access_key_id=creds["AccessKeyId"],
        secret_access_key=creds["SecretAccessKey"],
        session_token=creds["SessionToken"],
    )

    principal, checks = check_identity(sts, iam)

    assert principal is not None and principal.chaining
    assert principal.caller_arn.endswith(f":assumed-role/{name}/broker")
    assert principal.principal_arn == role_arn  # with its path, as IAM knows it
    assert f"trust policies name it as {role_arn}" in checks[0].message
    short = TargetRole(role_arn, (("short", timedelta(hours=1)),))
    long = TargetRole(role_arn, (("short", timedelta(hours=1)), ("long", timedelta(hours=4))))
    assert check_chaining(principal, [short]).status == "ok"
    chained = check_chaining(principal, [long])
    assert chained.status == "fail"
    assert "refuses sessions longer than 1 h" in chained.message
    assert chained.message.endswith("ask for more: long (4h)")
    assert chained.fix is not None and "max_duration: 1h" in chained.fix


def test_aws_identity_unknown_fails_with_what_to_check(moto_server: Any) -> None:
    from aws import closed_port

    from broker.aws import make_client

    endpoint = f"http://127.0.0.1:{closed_port()}"
    sts = make_client("sts", region="us-east-1", endpoint_url=endpoint, timeout=2)

    principal, (check,) = check_identity(sts, sts)

    assert principal is None
    assert (check.check, check.status) == ("aws identity", "fail")
    assert check.fix is not None and "aws sts get-caller-identity" in check.fix


def test_moto_default_identity_is_matched_exactly_or_by_account() -> None:
    principal = broker_principal(f"arn:aws:sts::{ACCOUNT}:user/moto")
    assert principal.kind == "other" and principal.account == ACCOUNT
    assert principal.matches(f"arn:aws:iam::{ACCOUNT}:root") == "account"
