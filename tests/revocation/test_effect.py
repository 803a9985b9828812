"""What the planned deny policy really does, read back from IAM (moto) and evaluated by
@cloud-copilot/iam-simulate: the revoked sessions are denied and nobody else's are."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from iamsim import NODE_DIR, simulate

from broker.revocation import (
    IAM_INLINE_BUDGET,
    POLICY_NAME,
    SESSION_TAG,
    DenyEntry,
    RoleRevoker,
    policy_size,
)

if TYPE_CHECKING:  # fixtures' types only; conftest is not imported at run time
    from conftest import Clock, Role

pytestmark = pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir(),
    reason=f"IAM simulator not installed: run `npm ci` in {NODE_DIR}",
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Session:
    """One assumed-role session as IAM sees it on each request."""

    def __init__(self, who: str, issued: datetime, grant: str | None = None) -> None:
        self.context: dict[str, str] = {
            "aws:SourceIdentity": who,
            "aws:TokenIssueTime": issued.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if grant is not None:
            self.context[f"aws:PrincipalTag/{SESSION_TAG}"] = grant


def role_policies(iam: Any, role: Role) -> list[dict[str, Any]]:
    """Every inline policy on the role, as IAM returns it (ours included, if present)."""
    names = iam.list_role_policies(RoleName=role.name)["PolicyNames"]
    return [iam.get_role_policy(RoleName=role.name, PolicyName=n)["PolicyDocument"] for n in names]


def results(iam: Any, role: Role, sessions: list[Session]) -> list[str]:
    """Evaluate one S3 read per session against the role's current policies."""
    requests = [
        {"action": "s3:GetObject", "resource": "arn:aws:s3:::data/key", "context": s.context}
        for s in sessions
    ]
    # The session name in the ARN plays no part in these policies, so one principal serves all.
    principal = f"arn:aws:sts::123456789012:assumed-role/{role.name}/broker-session"
    return simulate(role_policies(iam, role), None, requests, principal)


def person(who: str, cutoff: datetime) -> DenyEntry:
    return DenyEntry("person", cutoff, cutoff + HOUR, source_identity=who, ref=who)


def test_person_scope(iam: Any, role: Role, clock: Clock) -> None:
    cutoff = T0 - timedelta(minutes=10, milliseconds=-300)  # 09:50:00.300
    RoleRevoker(iam, clock=clock).apply(role.arn, [person("alice@example.com", cutoff)])
    assert POLICY_NAME in iam.list_role_policies(RoleName=role.name)["PolicyNames"]
    sessions = [
        Session("alice@example.com", cutoff - timedelta(minutes=30)),
        Session("alice@example.com", cutoff),  # same second as the revocation
        Session("alice@example.com", cutoff + timedelta(seconds=1)),
        Session("bob@example.com", cutoff - timedelta(minutes=30)),
    ]
    assert results(iam, role, sessions) == [
        "ExplicitlyDenied",
        "ExplicitlyDenied",
        "Allowed",
        "Allowed",
    ]


def test_grant_scope_spares_the_persons_other_grant(iam: Any, role: Role, clock: Clock) -> None:
    ended = DenyEntry(
        "grant",
        T0 - timedelta(minutes=5),
        T0 + timedelta(minutes=55),
        source_identity="alice@example.com",
        grant_id="grant-ended",
    )
    RoleRevoker(iam, clock=clock).apply(role.arn, [ended])
    issued = T0 - timedelta(minutes=20)
    sessions = [
        Session("alice@example.com", issued, grant="grant-ended"),
        Session("alice@example.com", issued, grant="grant-active"),
        Session("bob@example.com", issued, grant="grant-bob"),
    ]
    assert results(iam, role, sessions) == ["ExplicitlyDenied", "Allowed", "Allowed"]


@pytest.mark.slow
def test_five_hundred_people(iam: Any, role: Role, clock: Clock) -> None:
    entries = [
        person(f"p{i:03d}@example.com", T0 + timedelta(seconds=i * 7.2 + 0.25)) for i in range(500)
    ]
    clock.now = max(e.cutoff for e in entries)  # when the last one was revoked
    revoker = RoleRevoker(iam, clock=clock)
    result = revoker.apply(role.arn, entries)
    assert result.plan.role_wide_cutoff is None
    ours = iam.get_role_policy(RoleName=role.name, PolicyName=POLICY_NAME)["PolicyDocument"]
    total = sum(policy_size(doc) for doc in role_policies(iam, role))
    assert total == policy_size(ours) + revoker.other_policies_size(role.name)
    assert total <= IAM_INLINE_BUDGET
    sessions = [
        Session(e.source_identity or "", e.cutoff - timedelta(minutes=m))
        for e in entries
        for m in (0, 45)
    ]
    sessions.append(Session("carol@example.com", T0))
    sessions.append(Session("p000@example.com", T0 + timedelta(hours=2)))
    got = results(iam, role, sessions)
    assert got[:-2] == ["ExplicitlyDenied"] * 1000
    assert got[-2:] == ["Allowed", "Allowed"]


@pytest.mark.slow
def test_five_hundred_long_names_fall_back_without_sparing_anyone(
    iam: Any, role: Role, clock: Clock
) -> None:
    entries = [
        person(f"firstname.lastname{i:03d}@example.com", T0 + timedelta(seconds=i * 7.2 + 0.25))
        for i in range(500)
    ]
    clock.now = max(e.cutoff for e in entries)  # when the last one was revoked
    result = RoleRevoker(iam, clock=clock).apply(role.arn, entries)
    rc = result.plan.role_wide_cutoff
    assert rc is not None
    assert sum(policy_size(doc) for doc in role_policies(iam, role)) <= IAM_INLINE_BUDGET
    sessions = [Session(e.source_identity or "", e.cutoff) for e in entries]
    sessions.append(Session("carol@example.com", rc - timedelta(seconds=1)))
    sessions.append(Session("carol@example.com", rc))
    got = results(iam, role, sessions)
    assert got[:-2] == ["ExplicitlyDenied"] * 500
    assert got[-2:] == ["ExplicitlyDenied", "Allowed"]  # collateral only before the cutoff


def test_time_travel(iam: Any, role: Role, clock: Clock) -> None:
    alice = person("alice@example.com", T0 - timedelta(minutes=50))
    bob = person("bob@example.com", T0 - timedelta(minutes=10))
    revoker = RoleRevoker(iam, clock=clock)
    revoker.apply(role.arn, [alice, bob])
    before = [
        Session("alice@example.com", alice.cutoff - timedelta(minutes=1)),
        Session("bob@example.com", bob.cutoff - timedelta(minutes=1)),
    ]
    assert results(iam, role, before) == ["ExplicitlyDenied", "ExplicitlyDenied"]

    clock.now = alice.drop_after
    result = revoker.apply(role.arn, [alice, bob])
    assert result.plan.entries_dropped == (alice,)
    assert result.plan.entries_kept == (bob,)
    ours = iam.get_role_policy(RoleName=role.name, PolicyName=POLICY_NAME)["PolicyDocument"]
    assert "alice@example.com" not in json.dumps(ours)
    assert results(iam, role, before) == ["Allowed", "ExplicitlyDenied"]

    clock.now = bob.drop_after
    result = revoker.apply(role.arn, [alice, bob])
    assert result.plan.document is None
    assert iam.list_role_policies(RoleName=role.name)["PolicyNames"] == ["TeamPolicy"]
    assert results(iam, role, before) == ["Allowed", "Allowed"]
