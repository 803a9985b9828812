"""Plain-English accounts of people and decisions, for `broker policy explain` and the UI."""

from __future__ import annotations

from datetime import datetime

from broker.policy.durations import format_duration
from broker.policy.evaluator import STRONG_AMR, Decision, Evaluator, Person, Verdict

_VERDICT_WORDS = {
    Verdict.ALLOW: "ALLOW",
    Verdict.APPROVAL: "NEEDS APPROVAL",
    Verdict.DENY: "DENY",
}


def describe_person(evaluator: Evaluator, person: Person, now: datetime) -> list[str]:
    """Say who the policy takes this person to be: kind, groups, engagement, broker roles."""
    ident = person.identity
    groups = ", ".join(sorted(ident.groups)) or "none"
    lines = [f"{ident.email} is {person.kind}; groups: {groups}"]
    if person.valid_until is not None:
        state = "ended" if person.ended(now) else "ends"
        sponsor = f" (sponsor {person.sponsor})" if person.sponsor else ""
        lines.append(f"engagement {state} {person.valid_until:%Y-%m-%d %H:%M} UTC{sponsor}")
    elif person.sponsor:
        lines.append(f"sponsor {person.sponsor}")
    strong = sorted(STRONG_AMR.intersection(ident.amr))
    acr_mfa = ident.acr is not None and ident.acr in evaluator.policy.mfa_acr_values
    if strong or acr_mfa:
        lines.append(f"multi-factor sign-in: yes ({', '.join(strong) or 'acr ' + str(ident.acr)})")
    else:
        lines.append("multi-factor sign-in: no")
    roles = [
        name
        for name, held in (
            ("auditor", evaluator.is_auditor(person, now)),
            ("admin", evaluator.is_admin(person, now)),
        )
        if held
    ]
    if roles:
        lines.append(f"broker roles: {', '.join(roles)}")
    return lines


def describe_decision(decision: Decision) -> list[str]:
    """Render a decision as a headline and one indented line per reason."""
    head = f"{decision.entitlement_id}: {_VERDICT_WORDS[decision.verdict]}"
    if decision.allowed:
        limits = (
            f"sessions up to {format_duration(decision.max_duration)}, "
            f"grant lasts up to {format_duration(decision.max_grant)}"
        )
        if decision.require_reason:
            limits += ", a reason is required"
        head += f" ({limits})"
    return [head, *(f"  - {reason}" for reason in decision.reasons)]
