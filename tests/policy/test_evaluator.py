from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.policy import Evaluator, Identity, Person, PolicySet, RequestContext, Verdict

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CTX = RequestContext(now=NOW)


def entitlement(id: str, allow: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "role_arn": f"arn:aws:iam::111122223333:role/{id}",
        "allow": allow,
        **extra,
    }


POLICY = {
    "version": 1,
    "mfa_acr_values": ["urn:example:mfa"],
    "people": [
        {"match": {"emails": ["*@contractor.example"]}, "kind": "contractor"},
        {
            "match": {"email": "dana@contractor.example"},
            "valid_until": "2026-12-31",
            "sponsor": "lead@example.com",
        },
        {"match": {"email": "old@contractor.example"}, "valid_until": "2026-06-30"},
    ],
    "entitlements": [
        entitlement("dev-readonly", {"groups": ["developers", "sre"], "kinds": ["staff"]}),
        entitlement(
            "prod-readonly",
            {"groups": ["sre", "developers"], "kinds": ["staff"]},
            require_mfa=True,
            max_duration="1h",
            max_grant="8h",
        ),
        entitlement(
            "prod-admin",
            {"groups": ["sre"]},
            require_reason=True,
            approval={"approvers": {"groups": ["security"]}},
        ),
        entitlement(
            "prod-support",
            {"groups": ["support"]},
            network={"source_ip": ["203.0.113.0/24"], "source_vpc": ["vpc-0a1b2c3d4e5f60718"]},
        ),
        entitlement("contractor-sandbox", {"kinds": ["contractor"]}, max_duration="2h"),
        entitlement("wiki-reader", {"everyone": True}, max_duration="15m"),
        entitlement("eng-tools", {"emails": ["*@example.com"], "claims": {"department": "eng"}}),
    ],
    "deny": [
        {
            "match": {"kinds": ["contractor"]},
            "entitlements": ["prod-*"],
            "reason": "Contractors never get production access",
        }
    ],
    "auditors": {"groups": ["compliance"]},
    "admins": {"groups": ["security-admins"]},
}


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(PolicySet.from_document(POLICY))


def person(
    evaluator: Evaluator,
    email: str = "sam@example.com",
    groups: tuple[str, ...] = (),
    amr: tuple[str, ...] = ("pwd",),
    **claims: Any,
) -> Person:
    identity = Identity(
        issuer="https://idp.example.com",
        subject=email,
        email=email,
        groups=frozenset(groups),
        claims=claims,
        amr=amr,
        acr=claims.pop("acr", None),
    )
    return evaluator.resolve(identity)


def test_group_member_is_allowed_and_told_which_rule(evaluator: Evaluator) -> None:
    decision = evaluator.decide(person(evaluator, groups=("sre",)), "dev-readonly", CTX)
    assert decision.verdict is Verdict.ALLOW
    assert decision.allowed
    assert decision.reasons[0] == (
        "allowed by entitlement dev-readonly: member of group sre; kind staff"
    )


def test_default_deny_names_the_groups_that_would_be_needed(evaluator: Evaluator) -> None:
    decision = evaluator.decide(person(evaluator, groups=("marketing",)), "dev-readonly", CTX)
    assert decision.verdict is Verdict.DENY
    assert not decision.allowed
    assert decision.reasons == (
        "not allowed by entitlement dev-readonly: needs membership in group developers or sre",
    )


def test_deny_rule_beats_allow_and_quotes_its_reason(evaluator: Evaluator) -> None:
    dana = person(evaluator, "dana@contractor.example", groups=("sre",), amr=("mfa",))
    decision = evaluator.decide(dana, "prod-admin", CTX)  # allow is by group only
    assert decision.verdict is Verdict.DENY
    assert decision.reasons[0] == (
        "denied by deny rule #1: Contractors never get production access"
    )


def test_engagement_end_cuts_off_everything(evaluator: Evaluator) -> None:
    old = person(evaluator, "old@contractor.example")
    decision = evaluator.decide(old, "contractor-sandbox", CTX)
    assert decision.verdict is Verdict.DENY
    assert decision.reasons[0].startswith("engagement ended on 2026-06-30")
    assert evaluator.eligible(old, CTX) == []
    before = RequestContext(now=datetime(2026, 6, 30, 23, 0, tzinfo=UTC))
    assert evaluator.decide(old, "contractor-sandbox", before).verdict is Verdict.ALLOW


def test_date_valid_until_includes_the_whole_day(evaluator: Evaluator) -> None:
    dana = person(evaluator, "dana@contractor.example")
    last_evening = RequestContext(now=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    next_morning = RequestContext(now=datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert evaluator.decide(dana, "contractor-sandbox", last_evening).allowed
    assert not evaluator.decide(dana, "contractor-sandbox", next_morning).allowed


def test_missing_mfa_is_denied_with_what_to_do(evaluator: Evaluator) -> None:
    decision = evaluator.decide(person(evaluator, groups=("sre",)), "prod-readonly", CTX)
    assert decision.verdict is Verdict.DENY
    assert decision.reasons[0] == (
        "prod-readonly requires multi-factor sign-in, and this sign-in used pwd; "
        "sign in again with MFA"
    )


@pytest.mark.parametrize("amr", [("pwd", "mfa"), ("otp",), ("hwk",), ("swk", "pwd")])
def test_strong_amr_values_count_as_mfa(evaluator: Evaluator, amr: tuple[str, ...]) -> None:
    sam = person(evaluator, groups=("sre",), amr=amr)
    assert evaluator.decide(sam, "prod-readonly", CTX).verdict is Verdict.ALLOW


def test_weak_amr_values_do_not_count_as_mfa(evaluator: Evaluator) -> None:
    sam = person(evaluator, groups=("sre",), amr=("pwd", "sms", "kba"))
    assert evaluator.decide(sam, "prod-readonly", CTX).verdict is Verdict.DENY


def test_listed_acr_counts_as_mfa(evaluator: Evaluator) -> None:
    sam = person(evaluator, groups=("sre",), acr="urn:example:mfa")
    assert evaluator.decide(sam, "prod-readonly", CTX).verdict is Verdict.ALLOW
    other = person(evaluator, groups=("sre",), acr="urn:example:password")
    assert evaluator.decide(other, "prod-readonly", CTX).verdict is Verdict.DENY


@pytest.mark.parametrize(
    ("source_ip", "source_vpc", "allowed"),
    [
        ("203.0.113.7", None, True),
        ("::ffff:203.0.113.7", None, True),
        ("198.51.100.7", None, False),
        (None, None, False),
        ("not-an-ip", None, False),
        (None, "vpc-0a1b2c3d4e5f60718", True),
        (None, "vpc-0000000000000000f", False),
    ],
)
def test_network_binding(
    evaluator: Evaluator, source_ip: str | None, source_vpc: str | None, allowed: bool
) -> None:
    ctx = RequestContext(now=NOW, source_ip=source_ip, source_vpc=source_vpc)
    decision = evaluator.decide(person(evaluator, groups=("support",)), "prod-support", ctx)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reasons[0].startswith(
            "prod-support may only be used from 203.0.113.0/24, vpc-0a1b2c3d4e5f60718"
        )


def test_approval_needed_and_who_may_approve(evaluator: Evaluator) -> None:
    sam = person(evaluator, groups=("sre",))
    decision = evaluator.decide(sam, "prod-admin", CTX)
    assert decision.verdict is Verdict.APPROVAL
    assert decision.allowed
    assert decision.require_reason
    assert decision.reasons[0] == "needs approval by group security before use"
    assert evaluator.can_approve(person(evaluator, "sec@example.com", ("security",)), "prod-admin")
    assert not evaluator.can_approve(sam, "prod-admin")
    assert not evaluator.can_approve(person(evaluator, groups=("security",)), "dev-readonly")


def test_unknown_entitlement_is_denied(evaluator: Evaluator) -> None:
    decision = evaluator.decide(person(evaluator, groups=("sre",)), "prod-everything", CTX)
    assert decision.verdict is Verdict.DENY
    assert decision.entitlement is None
    assert "no such entitlement 'prod-everything'" in decision.reasons[0]


def test_durations_come_from_the_entitlement(evaluator: Evaluator) -> None:
    sam = person(evaluator, groups=("sre",), amr=("mfa",))
    prod = evaluator.decide(sam, "prod-readonly", CTX)
    assert (prod.max_duration, prod.max_grant) == (timedelta(hours=1), timedelta(hours=8))
    dev = evaluator.decide(sam, "dev-readonly", CTX)  # no max_grant: a grant lasts a session
    assert (dev.max_duration, dev.max_grant) == (timedelta(hours=1), timedelta(hours=1))


def test_kind_claim_is_ignored_unless_the_policy_names_it(evaluator: Evaluator) -> None:
    # A provider-sent `kind` must not make a contractor staff, nor anyone else anything.
    assert person(evaluator, "Eve@Contractor.Example", kind="staff").kind == "contractor"
    assert person(evaluator, "kim@example.com", kind="contractor").kind == "staff"
    assert person(evaluator, "kim@example.com").kind == "staff"


def test_kind_comes_from_people_rules_then_named_claim_then_default() -> None:
    named = Evaluator(PolicySet.from_document({**POLICY, "kind_claim": "employee_type"}))
    assert person(named, "Eve@Contractor.Example", employee_type="staff").kind == "contractor"
    assert person(named, "kim@example.com", employee_type="contractor").kind == "contractor"
    assert person(named, "kim@example.com", kind="contractor").kind == "staff"
    assert person(named, "kim@example.com", employee_type="robot").kind == "staff"
    assert person(named, "kim@example.com").kind == "staff"


def test_policy_knows_whether_it_decides_by_group(evaluator: Evaluator) -> None:
    assert evaluator.policy.uses_groups
    by_email = {
        "version": 1,
        "entitlements": [entitlement("wiki", {"emails": ["*@example.com"]})],
    }
    assert not PolicySet.from_document(by_email).uses_groups


def test_later_people_rules_add_to_earlier_ones(evaluator: Evaluator) -> None:
    dana = person(evaluator, "dana@contractor.example")
    assert dana.kind == "contractor"  # from the first rule
    assert dana.valid_until == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert dana.sponsor == "lead@example.com"


def test_email_and_claim_matches(evaluator: Evaluator) -> None:
    eng = person(evaluator, "Kim@Example.com", department="eng")
    decision = evaluator.decide(eng, "eng-tools", CTX)
    assert decision.verdict is Verdict.ALLOW
    assert (
        "email kim@example.com matches *@example.com; claim department = eng"
        in (decision.reasons[0])
    )
    as_list = person(evaluator, "kim@example.com", department=["sales", "eng"])
    assert evaluator.decide(as_list, "eng-tools", CTX).allowed
    sales = person(evaluator, "kim@example.com", department="sales")
    assert "needs claim department = eng" in evaluator.decide(sales, "eng-tools", CTX).reasons[0]


def test_everyone_entitlement_reaches_people_without_groups(evaluator: Evaluator) -> None:
    nobody = person(evaluator, "new@example.com")
    assert [d.entitlement_id for d in evaluator.eligible(nobody, CTX)] == ["wiki-reader"]


@pytest.mark.parametrize(
    ("email", "groups", "amr"),
    [
        ("sam@example.com", ("sre",), ("mfa",)),
        ("sam@example.com", ("sre", "support", "developers"), ("pwd",)),
        ("dana@contractor.example", ("sre", "support"), ("mfa",)),
        ("kim@example.com", (), ("pwd",)),
    ],
)
def test_eligible_is_exactly_the_allowed_part_of_decide_all(
    evaluator: Evaluator, email: str, groups: tuple[str, ...], amr: tuple[str, ...]
) -> None:
    who = person(evaluator, email, groups, amr, department="eng")
    ctx = RequestContext(now=NOW, source_ip="203.0.113.9")
    every = evaluator.decide_all(who, ctx)
    assert [d.entitlement_id for d in every] == sorted(d.entitlement_id for d in every)
    assert evaluator.eligible(who, ctx) == [d for d in every if d.allowed]


def test_auditors_and_admins(evaluator: Evaluator) -> None:
    auditor = person(evaluator, "carol@example.com", ("compliance",))
    admin = person(evaluator, "ann@example.com", ("security-admins",))
    assert evaluator.is_auditor(auditor, NOW) and not evaluator.is_admin(auditor, NOW)
    assert evaluator.is_admin(admin, NOW) and not evaluator.is_auditor(admin, NOW)
    ended = person(evaluator, "old@contractor.example", ("security-admins",))
    assert not evaluator.is_admin(ended, NOW)


def test_request_time_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RequestContext(now=datetime(2026, 1, 1))
