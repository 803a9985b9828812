"""plan_policy: expiry, grouping, lossless reductions and every lossy step, without AWS."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.revocation import (
    IAM_INLINE_BUDGET,
    SESSION_TAG,
    DenyEntry,
    plan_policy,
    policy_size,
    role_name_from_arn,
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1, minutes=5)
MAX_SESSION = timedelta(hours=12)


def person(who: str, cutoff: datetime, ref: str = "") -> DenyEntry:
    return DenyEntry("person", cutoff, cutoff + MAX_SESSION, source_identity=who, ref=ref)


def grant(gid: str, who: str | None, cutoff: datetime) -> DenyEntry:
    return DenyEntry("grant", cutoff, cutoff + MAX_SESSION, source_identity=who, grant_id=gid)


def role_wide(cutoff: datetime) -> DenyEntry:
    return DenyEntry("role", cutoff, cutoff + MAX_SESSION)


def denied(
    document: dict[str, Any] | None,
    *,
    who: str,
    issued: datetime,
    tag: str | None = None,
) -> bool:
    """Evaluate our own Deny statements for one session (the shapes plan_policy emits)."""
    if document is None:
        return False
    issued_text = issued.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # whole seconds, as STS
    for st in document["Statement"]:
        cond = st["Condition"]
        ok = True
        if "DateLessThan" in cond:
            ok &= issued_text < cond["DateLessThan"]["aws:TokenIssueTime"]
        equals = cond.get("StringEquals", {})
        if "aws:SourceIdentity" in equals:
            ok &= who in equals["aws:SourceIdentity"]
        if f"aws:PrincipalTag/{SESSION_TAG}" in equals:
            ok &= tag in equals[f"aws:PrincipalTag/{SESSION_TAG}"]
        if ok:
            return True
    return False


def five_hundred(fmt: str) -> list[DenyEntry]:
    """500 people revoked at distinct moments spread over one hour."""
    return [
        person(fmt.format(i), T0 + timedelta(seconds=i * 7.2 + 0.25), ref=str(i))
        for i in range(500)
    ]


def test_policy_size_ignores_whitespace() -> None:
    doc = {"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Deny"}]}
    compact = '{"Version":"2012-10-17","Statement":[{"Sid":"A","Effect":"Deny"}]}'
    assert policy_size(doc) == len(compact)
    assert policy_size({"a": "b c d"}) == len('{"a":"bcd"}')


def test_nothing_live_means_no_policy() -> None:
    expired = person("alice@example.com", T0 - timedelta(hours=13))
    at_boundary = DenyEntry("person", T0, NOW, source_identity="bob@example.com")
    plan = plan_policy([expired, at_boundary], now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is None
    assert plan.size == 0
    assert plan.entries_kept == ()
    assert plan.entries_dropped == (expired, at_boundary)
    assert plan.compaction == ()
    assert plan.role_wide_cutoff is None


def test_expired_entries_are_dropped_and_live_ones_kept() -> None:
    live = person("alice@example.com", T0)
    gone = person("bob@example.com", T0 - timedelta(hours=13))
    plan = plan_policy([live, gone], now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.entries_kept == (live,)
    assert plan.entries_dropped == (gone,)
    assert plan.document is not None
    assert not denied(plan.document, who="bob@example.com", issued=T0 - timedelta(hours=14))


def test_person_statement_rounds_cutoff_up_past_its_second() -> None:
    cutoff = T0 + timedelta(milliseconds=400)
    plan = plan_policy([person("alice@example.com", cutoff)], now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerPeople20261126T100001",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:SourceIdentity": ["alice@example.com"]},
                    "DateLessThan": {"aws:TokenIssueTime": "2026-11-26T10:00:01Z"},
                },
            }
        ],
    }
    assert plan.size == policy_size(plan.document)
    # A session issued in the same second as the revocation is covered; the next second is not.
    assert denied(plan.document, who="alice@example.com", issued=T0 + timedelta(milliseconds=900))
    assert not denied(plan.document, who="alice@example.com", issued=T0 + timedelta(seconds=1))
    assert plan.compaction == ()


def test_exact_whole_second_cutoff_still_covers_that_second() -> None:
    plan = plan_policy([person("alice@example.com", T0)], now=NOW, budget=IAM_INLINE_BUDGET)
    assert denied(plan.document, who="alice@example.com", issued=T0)


def test_people_sharing_a_cutoff_share_a_statement() -> None:
    entries = [
        person("bob@example.com", T0 + timedelta(milliseconds=100)),
        person("alice@example.com", T0 + timedelta(milliseconds=700)),
        person("carol@example.com", T0 + timedelta(minutes=3)),
    ]
    plan = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is not None
    statements = plan.document["Statement"]
    assert [s["Sid"] for s in statements] == [
        "BrokerPeople20261126T100001",
        "BrokerPeople20261126T100301",
    ]
    assert statements[0]["Condition"]["StringEquals"]["aws:SourceIdentity"] == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert plan.compaction == ()


def test_grants_go_into_one_tag_statement() -> None:
    entries = [
        grant("g-2", "alice@example.com", T0),
        grant("g-1", "bob@example.com", T0 + timedelta(minutes=1)),
    ]
    plan = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is not None
    assert plan.document["Statement"] == [
        {
            "Sid": "BrokerGrants",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/broker-grant": ["g-1", "g-2"]}},
        }
    ]
    # The ended grant's sessions die; the same person's other grant keeps working.
    assert denied(plan.document, who="alice@example.com", issued=T0, tag="g-2")
    assert not denied(plan.document, who="alice@example.com", issued=T0, tag="g-3")


def test_role_entry_makes_a_role_wide_statement() -> None:
    plan = plan_policy([role_wide(T0)], now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is not None
    assert plan.document["Statement"] == [
        {
            "Sid": "BrokerRoleWide",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2026-11-26T10:00:01Z"}},
        }
    ]
    assert plan.role_wide_cutoff == T0 + timedelta(seconds=1)
    assert plan.compaction == ()  # asked for, not a fallback


def test_lossless_reductions() -> None:
    entries = [
        role_wide(T0),
        person("early@example.com", T0 - timedelta(minutes=5)),  # covered by the role cutoff
        person("alice@example.com", T0 + timedelta(minutes=1)),
        person("alice@example.com", T0 + timedelta(minutes=9)),  # alice's latest wins
        grant("g-alice", "alice@example.com", T0 + timedelta(minutes=2)),  # covered by alice
        grant("g-bob", "bob@example.com", T0 + timedelta(minutes=2)),
    ]
    plan = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is not None
    sids = [s["Sid"] for s in plan.document["Statement"]]
    assert sids == ["BrokerRoleWide", "BrokerGrants", "BrokerPeople20261126T100901"]
    assert plan.document["Statement"][1]["Condition"]["StringEquals"] == {
        "aws:PrincipalTag/broker-grant": ["g-bob"]
    }
    assert len(plan.entries_kept) == len(entries)
    assert plan.compaction == ()
    for e in entries:
        assert denied(
            plan.document,
            who=e.source_identity or "x@example.com",
            issued=e.cutoff - timedelta(seconds=1),
            tag=e.grant_id,
        )


def test_output_is_deterministic() -> None:
    entries = five_hundred("person-{:04d}@example.com") + [
        grant(f"g-{i}", f"person-{i:04d}@example.com", T0) for i in range(20)
    ]
    plans = []
    for seed in range(3):
        shuffled = list(entries)
        random.Random(seed).shuffle(shuffled)
        plans.append(plan_policy(shuffled, now=NOW, budget=IAM_INLINE_BUDGET))
    assert plans[0].document == plans[1].document == plans[2].document
    assert plans[0].compaction == plans[1].compaction


def test_widening_keeps_each_bucket_at_its_latest_cutoff() -> None:
    entries = [
        person(f"p{i:02d}@example.com", T0 + timedelta(seconds=i * 20 + 0.5)) for i in range(40)
    ]
    exact = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    assert exact.document is not None
    assert len(exact.document["Statement"]) == 40
    plan = plan_policy(entries, now=NOW, budget=exact.size - 1)
    assert plan.document is not None
    assert plan.size <= exact.size - 1
    assert len(plan.document["Statement"]) < 40
    assert plan.compaction and plan.compaction[0].startswith("merged 40 people into ")
    assert plan.role_wide_cutoff is None
    for e in entries:
        assert e.source_identity is not None
        assert denied(plan.document, who=e.source_identity, issued=e.cutoff)
    assert not denied(plan.document, who="other@example.com", issued=T0)


def test_five_hundred_people_fit_without_a_role_wide_cutoff() -> None:
    # ~9,500 characters of names alone: they fit only once merged into a few buckets.
    entries = five_hundred("p{:03d}@example.com")
    plan = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is not None
    assert plan.size <= IAM_INLINE_BUDGET
    assert plan.role_wide_cutoff is None
    assert plan.compaction  # merged into buckets: lossy, and said so
    for e in entries:
        assert e.source_identity is not None
        assert denied(plan.document, who=e.source_identity, issued=e.cutoff)
        assert denied(plan.document, who=e.source_identity, issued=e.cutoff - timedelta(hours=1))
    assert not denied(plan.document, who="carol@example.com", issued=T0)


def test_five_hundred_long_names_fall_back_to_a_partial_role_wide_cutoff() -> None:
    entries = five_hundred("firstname.lastname{:03d}@example.com")
    plan = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    assert plan.document is not None
    assert plan.size <= IAM_INLINE_BUDGET
    assert plan.role_wide_cutoff is not None
    # Only the earliest revocations were absorbed: the cutoff is well before the last one.
    assert plan.role_wide_cutoff < max(e.cutoff for e in entries)
    assert plan.compaction[0].startswith(
        f"fell back to a role-wide cutoff at {plan.role_wide_cutoff:%Y-%m-%dT%H:%M:%SZ}"
    )
    for e in entries:
        assert e.source_identity is not None
        assert denied(plan.document, who=e.source_identity, issued=e.cutoff)
    # Collateral: someone else's session is cut only if issued before the role-wide cutoff.
    assert denied(plan.document, who="carol@example.com", issued=T0)
    assert not denied(plan.document, who="carol@example.com", issued=plan.role_wide_cutoff)


def test_grants_become_person_cutoffs_before_any_role_wide_cutoff() -> None:
    entries = [grant(f"grant-{i:036d}", f"p{i % 3}@example.com", T0) for i in range(6)]
    full = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    plan = plan_policy(entries, now=NOW, budget=full.size - 1)
    assert plan.document is not None
    assert plan.size < full.size
    assert plan.role_wide_cutoff is None
    assert plan.compaction == (
        "converted 6 grant revocation(s) into person-wide cutoffs: those people's other grants "
        "on this role are cut too",
    )
    statement = plan.document["Statement"][0]
    assert statement["Condition"]["StringEquals"]["aws:SourceIdentity"] == [
        "p0@example.com",
        "p1@example.com",
        "p2@example.com",
    ]
    for e in entries:
        assert denied(plan.document, who=e.source_identity or "", issued=T0, tag=e.grant_id)


def test_grant_without_person_cannot_be_converted() -> None:
    entries = [grant(f"grant-{i:036d}", None, T0 + timedelta(minutes=i)) for i in range(6)]
    full = plan_policy(entries, now=NOW, budget=IAM_INLINE_BUDGET)
    plan = plan_policy(entries, now=NOW, budget=full.size - 1)
    assert plan.document is not None
    assert plan.role_wide_cutoff is not None
    assert plan.compaction[0].startswith("fell back to a role-wide cutoff")
    for e in entries:
        assert denied(plan.document, who="x@example.com", issued=e.cutoff, tag=e.grant_id)


def test_tiny_budget_falls_back_to_one_role_wide_statement_at_the_latest_cutoff() -> None:
    entries = [
        person("alice@example.com", T0),
        person("bob@example.com", T0 + timedelta(minutes=30)),
        grant("g-1", "carol@example.com", T0 + timedelta(minutes=50, seconds=10)),
    ]
    plan = plan_policy(entries, now=NOW, budget=190)
    assert plan.document is not None
    assert [s["Sid"] for s in plan.document["Statement"]] == ["BrokerRoleWide"]
    assert plan.role_wide_cutoff == T0 + timedelta(minutes=50, seconds=11)
    assert plan.size <= 190
    assert "(3 revocation(s) absorbed, 0 still targeted)" in plan.compaction[0]


def test_budget_too_small_for_anything_says_so() -> None:
    plan = plan_policy([person("alice@example.com", T0)], now=NOW, budget=20)
    assert plan.size > 20
    assert plan.role_wide_cutoff is not None
    assert plan.compaction[-1].startswith("even the role-wide statement alone")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "person", "cutoff": T0.replace(tzinfo=None)}, "tz-aware"),
        ({"scope": "person"}, "needs source_identity"),
        ({"scope": "grant", "source_identity": "a@example.com"}, "needs grant_id"),
    ],
)
def test_entries_are_validated(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"cutoff": T0, "drop_after": T0 + MAX_SESSION, **kwargs}
    with pytest.raises(ValueError, match=message):
        DenyEntry(**args)


def test_role_name_from_arn() -> None:
    assert role_name_from_arn("arn:aws:iam::111122223333:role/prod-admin") == "prod-admin"
    assert role_name_from_arn("arn:aws:iam::1:role/path/to/name") == "name"
    with pytest.raises(ValueError, match="not an IAM role ARN"):
        role_name_from_arn("arn:aws:iam::1:user/alice")
