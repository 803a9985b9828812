"""Put a policy diff together: definitions, deny effects, rules, and (with a directory) people."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from broker.policy.diff.access import AccessChanges, ChangedEntitlements, access_changes
from broker.policy.diff.definitions import added_or_removed, entitlement_changes
from broker.policy.diff.directory import DirectoryPerson
from broker.policy.diff.records import Change, Direction, EntitlementDiff, PolicyDiff, RuleDiff
from broker.policy.diff.rules import deny_effects, rule_diffs
from broker.policy.evaluator import Evaluator
from broker.policy.model import Entitlement, PolicySet
from broker.policy.yamlsource import paused_gc


def diff_policies(
    old: Evaluator,
    new: Evaluator,
    *,
    people: Sequence[DirectoryPerson] | None = None,
    sensitive: Sequence[str] = (),
    now: datetime | None = None,
) -> PolicyDiff:
    """Say how access changes from the ``old`` policy to the ``new`` one.

    With ``people`` (a directory), gains and losses are stated per person; without, per rule.
    An entitlement is sensitive when either side marks it ``sensitive: true`` or its id matches
    one of the ``sensitive`` globs. ``now`` (default: the current time) decides whose
    engagement has ended.
    """
    # Thousands of small records on top of two loaded policies: without a pause, the cyclic
    # collector would walk both policies again and again and take most of the time.
    with paused_gc():
        return _diff(old, new, people, sensitive, now or datetime.now(UTC))


def _diff(
    old: Evaluator,
    new: Evaluator,
    people: Sequence[DirectoryPerson] | None,
    sensitive: Sequence[str],
    now: datetime,
) -> PolicyDiff:
    before = {e.id: e for e in old.policy.entitlements}
    after = {e.id: e for e in new.policy.entitlements}
    common = [i for i in before if i in after]
    definitions: dict[str, list[Change]] = {}
    for ent_id in sorted({*before, *after}):
        was, is_ = before.get(ent_id), after.get(ent_id)
        if was is None and is_ is not None:
            definitions[ent_id] = [added_or_removed(is_, added=True)]
        elif was is not None and is_ is None:
            definitions[ent_id] = [added_or_removed(was, added=False)]
        elif was != is_ and was is not None and is_ is not None:
            changes = entitlement_changes(was, is_)
            if changes:  # e.g. reordered statements or a new description change no access
                definitions[ent_id] = changes
    if old.policy.deny != new.policy.deny:
        for ent_id, changes in deny_effects(old.policy, new.policy, common).items():
            definitions.setdefault(ent_id, []).extend(changes)
    rules = rule_diffs(old.policy, new.policy)
    moved = AccessChanges()
    if people is not None:
        changed = _changed(definitions, old.policy, new.policy)
        moved = access_changes(old, new, people, now, changed)
        rules = _with_roles(rules, moved)
    entitlements = []
    for ent_id in sorted({*definitions, *moved.access, *moved.approvers}):
        was, is_ = before.get(ent_id), after.get(ent_id)
        gained, lost = moved.access.get(ent_id, ([], []))
        approvers_gained, approvers_lost = moved.approvers.get(ent_id, ([], []))
        entitlements.append(
            EntitlementDiff(
                id=ent_id,
                status="added" if was is None else "removed" if is_ is None else "changed",
                where=_where(new.policy, ent_id) or _where(old.policy, ent_id),
                sensitive=_sensitive(ent_id, (was, is_), sensitive),
                changes=tuple(definitions.get(ent_id, ())),
                gained=tuple(sorted(gained)),
                lost=tuple(sorted(lost)),
                approvers_gained=tuple(sorted(approvers_gained)),
                approvers_lost=tuple(sorted(approvers_lost)),
                affected=tuple(sorted(moved.affected.get(ent_id, ()))),
            )
        )
    entitlements.sort(key=lambda e: (not (e.sensitive and e.widens), not e.widens, e.id))
    return PolicyDiff(
        entitlements=tuple(entitlements),
        rules=tuple(rules),
        people=tuple(sorted(moved.people, key=lambda p: p.email)),
        risks=tuple(_risks(entitlements, rules, new.policy, sensitive)),
        directory_size=len(people) if people is not None else None,
    )


def _changed(
    definitions: dict[str, list[Change]], old: PolicySet, new: PolicySet
) -> ChangedEntitlements:
    """Sort the changed entitlements by what a person could notice of each change."""

    def having(*fields: str) -> list[str]:
        return [i for i, changes in definitions.items() if any(c.field in fields for c in changes)]

    who = ("entitlement", "allow", "deny")
    return ChangedEntitlements(
        who=having("entitlement", "allow"),
        deny=having("deny"),
        deny_matches=[
            *(r.match for r in old.deny if r not in new.deny),
            *(r.match for r in new.deny if r not in old.deny),
        ],
        # Conditions that loosen or tighten; not a neutral one such as the default region.
        terms=[
            ent_id
            for ent_id, changes in definitions.items()
            if any(c.field not in who and c.direction is not Direction.CHANGES for c in changes)
        ],
        approvers=having("entitlement", "approval", "approvers"),
    )


def _where(policy: PolicySet, ent_id: str) -> str:
    return policy.origins.get(f"entitlement:{ent_id}", "")


def _sensitive(
    ent_id: str, sides: tuple[Entitlement | None, Entitlement | None], globs: Sequence[str]
) -> bool:
    # Either side counts, so that dropping the flag is itself a change to a sensitive one.
    return any(e is not None and e.sensitive for e in sides) or any(
        fnmatch.fnmatchcase(ent_id, g) for g in globs
    )


def _with_roles(rules: list[RuleDiff], moved: AccessChanges) -> list[RuleDiff]:
    """Add who gains or loses a broker role to the auditors and admins rules."""
    result = list(rules)
    sections: tuple[Literal["auditors", "admins"], ...] = ("auditors", "admins")
    for section in sections:
        gained, lost = moved.roles.get(section, ([], []))
        if not gained and not lost:
            continue
        index = next((i for i, r in enumerate(result) if r.section == section), None)
        if index is None:
            # Nobody edited the role's match, but the people rules changed whom it selects.
            result.append(RuleDiff(section, "changed", section, "", ()))
            index = len(result) - 1
        result[index] = dataclasses.replace(
            result[index], gained=tuple(sorted(gained)), lost=tuple(sorted(lost))
        )
    return result


def _risks(
    entitlements: Sequence[EntitlementDiff],
    rules: Sequence[RuleDiff],
    new: PolicySet,
    globs: Sequence[str],
) -> list[str]:
    """One sentence per sensitive entitlement whose access widens, saying how."""
    risks = []
    for ent in entitlements:
        if not (ent.sensitive and ent.widens):
            continue
        how = [c.text for c in ent.changes if c.direction is Direction.WIDENS]
        if ent.gained:
            n = len(ent.gained)
            how.insert(0, f"+{n} {_people(n)} {'gains' if n == 1 else 'gain'} it")
        if ent.approvers_gained:
            n = len(ent.approvers_gained)
            how.append(f"+{n} {_people(n)} may approve it")
        risks.append(f"{ent.id}: {'; '.join(how)}")
    acr = [
        c.text
        for rule in rules
        if rule.section == "settings"
        for c in rule.changes
        if c.field == "mfa_acr_values" and c.direction is Direction.WIDENS
    ]
    if acr:
        with_mfa = [
            e.id for e in new.entitlements if e.require_mfa and _sensitive(e.id, (e, None), globs)
        ]
        for ent_id in with_mfa:
            risks.append(f"{ent_id}: {'; '.join(acr)}")
    return risks


def _people(count: int) -> str:
    return "person" if count == 1 else "people"
