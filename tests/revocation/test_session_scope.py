"""Session-scope revocations: one `aws:userid` pattern per session, reduced and widened safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.revocation import DenyEntry, plan_policy, policy_size

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
HOUR = timedelta(hours=1)


def lost(name: str, grant: str | None = "g1", who: str | None = "alice@example.com") -> DenyEntry:
    return DenyEntry(
        "session", T0, T0 + HOUR, grant_id=grant, source_identity=who, role_session_name=name
    )


def sids(document: dict[str, object] | None) -> list[str]:
    assert document is not None
    return [s["Sid"] for s in document["Statement"]]  # type: ignore[attr-defined]


def test_sessions_share_one_statement_on_aws_userid() -> None:
    plan = plan_policy([lost("broker-g1-bbbb"), lost("broker-g1-aaaa")], now=NOW, budget=10_240)
    assert plan.document == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerSessions",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {
                    "StringLike": {"aws:userid": ["*:broker-g1-aaaa", "*:broker-g1-bbbb"]}
                },
            }
        ],
    }
    assert plan.compaction == () and plan.role_wide_cutoff is None


def test_a_session_is_dropped_when_its_whole_life_is_over() -> None:
    plan = plan_policy([lost("broker-g1-aaaa")], now=T0 + HOUR, budget=10_240)
    assert plan.document is None and len(plan.entries_dropped) == 1


def test_wider_revocations_cover_a_session_without_a_statement_of_its_own() -> None:
    grant = DenyEntry("grant", T0, T0 + HOUR, grant_id="g1", source_identity="alice@example.com")
    later = DenyEntry("person", T0 + HOUR / 2, T0 + HOUR, source_identity="alice@example.com")
    role = DenyEntry("role", T0 + HOUR / 2, T0 + HOUR)
    for covering in (grant, later, role):
        plan = plan_policy([lost("broker-g1-aaaa"), covering], now=NOW, budget=10_240)
        assert "BrokerSessions" not in sids(plan.document), covering.scope
    earlier = DenyEntry("person", T0 - HOUR / 2, T0 + HOUR, source_identity="alice@example.com")
    plan = plan_policy([lost("broker-g1-aaaa"), earlier], now=NOW, budget=10_240)
    assert "BrokerSessions" in sids(plan.document)  # issued after that cutoff: still needed


def test_over_budget_sessions_widen_to_their_grant_before_the_person() -> None:
    entries = [lost(f"broker-g1-{i:08x}") for i in range(40)]
    exact = plan_policy(entries, now=NOW, budget=10_240)
    budget = policy_size(exact.document or {}) - 1
    plan = plan_policy(entries, now=NOW, budget=budget)
    assert sids(plan.document) == ["BrokerGrants"]
    assert plan.compaction[0].startswith("converted 40 session revocation(s) into grant")


def test_a_session_without_a_grant_widens_to_its_person_then_the_role() -> None:
    entries = [lost(f"broker-x-{i:08x}", grant=None) for i in range(40)]
    exact = plan_policy(entries, now=NOW, budget=10_240)
    plan = plan_policy(entries, now=NOW, budget=policy_size(exact.document or {}) - 1)
    assert sids(plan.document) == [f"BrokerPeople{T0 + timedelta(seconds=1):%Y%m%dT%H%M%S}"]
    anonymous = [lost(f"broker-x-{i:08x}", grant=None, who=None) for i in range(40)]
    plan = plan_policy(anonymous, now=NOW, budget=200)
    assert sids(plan.document) == ["BrokerRoleWide"]
    assert plan.role_wide_cutoff == T0 + timedelta(seconds=1)


@pytest.mark.parametrize("name", [None, "", "x", "a*b", "a?b", "role:name", "a" * 65])
def test_a_session_entry_needs_a_plain_session_name(name: str | None) -> None:
    with pytest.raises(ValueError, match="role session name"):
        DenyEntry("session", T0, T0 + HOUR, role_session_name=name)
