"""Compare the rules around entitlements: deny rules, people rules, auditors, admins, settings."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime
from typing import Literal, TypeVar

from broker.policy.diff.definitions import describe, match_change
from broker.policy.diff.records import Change, Direction, RuleDiff, Status
from broker.policy.model import DenyRule, Match, PersonRule, PolicySet

T = TypeVar("T")


def match_key(match: Match) -> str:
    """A hashable identity for a match: equal keys select the same people."""
    return match.model_dump_json()


def pair(
    old: Sequence[T], new: Sequence[T], keys: Iterable[Callable[[T], Hashable]]
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pair old and new rules: equal ones, then by each key in turn.

    Returns the pairs of indexes that differ, the unpaired old indexes (removed) and the
    unpaired new indexes (added). Equal pairs are left out: they did not change.
    """
    left = list(range(len(old)))
    right = list(range(len(new)))
    pairs: list[tuple[int, int]] = []
    for index, key in enumerate([repr, *keys]):
        waiting: dict[Hashable, list[int]] = {}
        for j in right:
            waiting.setdefault(key(new[j]), []).append(j)
        unpaired = []
        for i in left:
            candidates = waiting.get(key(old[i]))
            if candidates:
                j = candidates.pop(0)
                right.remove(j)
                if index:  # the first pass pairs equal rules: no change to report
                    pairs.append((i, j))
            else:
                unpaired.append(i)
        left = unpaired
    return pairs, left, right


def _where(policy: PolicySet, key: str) -> str:
    return policy.origins.get(key, "")


def _globs(rule: DenyRule) -> tuple[str, ...]:
    return tuple(sorted(rule.entitlements))


def _covered(rule: DenyRule, policy: PolicySet) -> list[str]:
    pattern = re.compile("|".join(fnmatch.translate(g) for g in rule.entitlements))
    return sorted(e.id for e in policy.entitlements if pattern.match(e.id))


def deny_diffs(old: PolicySet, new: PolicySet) -> list[RuleDiff]:
    """Changed deny rules: removing one or narrowing it widens access."""
    pairs, removed, added = pair(old.deny, new.deny, [lambda r: match_key(r.match), _globs])
    diffs: list[RuleDiff] = []
    for i in removed:
        rule = old.deny[i]
        text = f"{describe(rule.match)} no longer denied {', '.join(rule.entitlements)}"
        change = Change("deny", Direction.WIDENS, text, rule.entitlements, None)
        where = _where(old, f"deny:{i}")
        affects = tuple(_covered(rule, old))
        diffs.append(
            RuleDiff("deny", "removed", describe(rule.match), where, (change,), affects=affects)
        )
    for j in added:
        rule = new.deny[j]
        text = f"{describe(rule.match)} now denied {', '.join(rule.entitlements)}"
        change = Change("deny", Direction.NARROWS, text, None, rule.entitlements)
        where = _where(new, f"deny:{j}")
        affects = tuple(_covered(rule, new))
        diffs.append(
            RuleDiff("deny", "added", describe(rule.match), where, (change,), affects=affects)
        )
    for i, j in pairs:
        before, after = old.deny[i], new.deny[j]
        changes: list[Change | None] = [match_change("match", before.match, after.match, deny=True)]
        lifted = [g for g in before.entitlements if g not in after.entitlements]
        imposed = [g for g in after.entitlements if g not in before.entitlements]
        if lifted:
            text = f"no longer denies {', '.join(lifted)}"
            changes.append(Change("entitlements", Direction.WIDENS, text, tuple(lifted), None))
        if imposed:
            text = f"now also denies {', '.join(imposed)}"
            changes.append(Change("entitlements", Direction.NARROWS, text, None, tuple(imposed)))
        if before.reason != after.reason:
            text = f"reason {before.reason!r} → {after.reason!r}"
            changes.append(Change("reason", Direction.CHANGES, text, before.reason, after.reason))
        diffs.append(
            RuleDiff(
                "deny",
                "changed",
                describe(after.match),
                _where(new, f"deny:{j}"),
                tuple(c for c in changes if c is not None),
                affects=tuple(sorted({*_covered(before, old), *_covered(after, new)})),
            )
        )
    return diffs


def _coverage(policy: PolicySet, ids: Sequence[str], keys: set[str]) -> dict[str, dict[str, str]]:
    """For each id, the deny rules with one of these matches covering it: key → "who (where)"."""
    covered: dict[str, dict[str, str]] = {}
    for number, rule in enumerate(policy.deny):
        key = match_key(rule.match)
        if key not in keys:
            continue
        pattern = re.compile("|".join(fnmatch.translate(g) for g in rule.entitlements))
        where = _where(policy, f"deny:{number}") or f"#{number + 1}"
        label = f"{describe(rule.match)} ({where})"
        for ent_id in ids:
            if pattern.match(ent_id):
                covered.setdefault(ent_id, {})[key] = label
    return covered


def deny_effects(old: PolicySet, new: PolicySet, ids: Iterable[str]) -> dict[str, list[Change]]:
    """Per entitlement (present on both sides), who is no longer or newly denied it."""
    # Only a rule on one side and not the other can change who is denied what; other rules
    # with the same match count too, as they may still deny the same people.
    changed = [r for r in old.deny if r not in new.deny]
    changed += [r for r in new.deny if r not in old.deny]
    if not changed:
        return {}
    keys = {match_key(r.match) for r in changed}
    ids = list(ids)
    before, after = _coverage(old, ids, keys), _coverage(new, ids, keys)
    effects: dict[str, list[Change]] = {}
    for ent_id in sorted({*before, *after}):
        was, now = before.get(ent_id, {}), after.get(ent_id, {})
        changes = [
            Change("deny", Direction.WIDENS, f"no longer denied to {label}", label, None)
            for key, label in was.items()
            if key not in now
        ] + [
            Change("deny", Direction.NARROWS, f"now denied to {label}", None, label)
            for key, label in now.items()
            if key not in was
        ]
        if changes:
            effects[ent_id] = changes
    return effects


def _day(value: datetime | None) -> str | None:
    if value is None:
        return None
    if (value.hour, value.minute, value.second) == (23, 59, 59):
        return f"{value:%Y-%m-%d}"
    return value.isoformat()


def end_date_change(old: datetime | None, new: datetime | None) -> Change | None:
    """A moved engagement end: later (or none) widens, earlier narrows."""
    if old == new:
        return None
    before, after = _day(old), _day(new)
    if new is None:
        return Change(
            "valid_until", Direction.WIDENS, f"no end date any more (was {before})", before
        )
    if old is None:
        return Change("valid_until", Direction.NARROWS, f"engagement now ends {after}", None, after)
    if new > old:
        return Change(
            "valid_until", Direction.WIDENS, f"extended {before} → {after}", before, after
        )
    return Change("valid_until", Direction.NARROWS, f"shortened {before} → {after}", before, after)


def fact_changes(
    old: tuple[str | None, datetime | None, str | None],
    new: tuple[str | None, datetime | None, str | None],
) -> list[Change]:
    """Changes of (kind, valid_until, sponsor), for a people rule or a resolved person."""
    changes: list[Change | None] = []
    if old[0] != new[0]:
        text = f"kind {old[0] or '(not set)'} → {new[0] or '(not set)'}"
        changes.append(Change("kind", Direction.CHANGES, text, old[0], new[0]))
    changes.append(end_date_change(old[1], new[1]))
    if old[2] != new[2]:
        text = f"sponsor {old[2] or '(none)'} → {new[2] or '(none)'}"
        changes.append(Change("sponsor", Direction.CHANGES, text, old[2], new[2]))
    return [c for c in changes if c is not None]


def _facts(rule: PersonRule | None) -> tuple[str | None, datetime | None, str | None]:
    return (rule.kind, rule.valid_until, rule.sponsor) if rule else (None, None, None)


def people_diffs(old: PolicySet, new: PolicySet) -> list[RuleDiff]:
    """Changed people rules: kinds, engagement ends (valid_until) and sponsors."""
    pairs, removed, added = pair(old.people, new.people, [lambda r: match_key(r.match)])
    entries: list[tuple[int | None, int | None, Status]] = [
        *((i, None, "removed") for i in removed),
        *((None, j, "added") for j in added),
        *((i, j, "changed") for i, j in pairs),
    ]
    diffs = []
    for i, j, status in entries:
        before = old.people[i] if i is not None else None
        after = new.people[j] if j is not None else None
        rule = after or before
        assert rule is not None  # noqa: S101 - one side is always there
        where = _where(new, f"people:{j}") if j is not None else _where(old, f"people:{i}")
        changes = fact_changes(_facts(before), _facts(after))
        if changes:
            diffs.append(RuleDiff("people", status, describe(rule.match), where, tuple(changes)))
    return diffs


def role_diffs(
    section: Literal["auditors", "admins"], old: Sequence[Match], new: Sequence[Match]
) -> list[RuleDiff]:
    """Changed auditor or admin matches: anyone added widens the broker role."""
    before = {match_key(m): describe(m) for m in old}
    after = {match_key(m): describe(m) for m in new}
    changes = [
        Change("match", Direction.WIDENS, f"+ {who}", None, who)
        for key, who in after.items()
        if key not in before
    ] + [
        Change("match", Direction.NARROWS, f"− {who}", who, None)
        for key, who in before.items()
        if key not in after
    ]
    if not changes:
        return []
    return [RuleDiff(section, "changed", section, "", tuple(changes))]


_SETTINGS_COMPARED = {
    "entitlements", "people", "deny", "auditors", "admins", "default_kind", "kind_claim",
    "mfa_acr_values", "origins",
}  # fmt: skip


def settings_diffs(old: PolicySet, new: PolicySet) -> list[RuleDiff]:
    """Changed policy-wide settings: default kind, the kind claim, acr values counted as MFA."""
    changes: list[Change] = []
    if old.default_kind != new.default_kind:
        text = f"default_kind {old.default_kind} → {new.default_kind}"
        changes.append(
            Change("default_kind", Direction.CHANGES, text, old.default_kind, new.default_kind)
        )
    old_claim, new_claim = getattr(old, "kind_claim", None), getattr(new, "kind_claim", None)
    if old_claim != new_claim:
        text = f"kind_claim {old_claim or '(none)'} → {new_claim or '(none)'}"
        changes.append(Change("kind_claim", Direction.CHANGES, text, old_claim, new_claim))
    for value in sorted(new.mfa_acr_values - old.mfa_acr_values):
        text = f"acr {value} now counts as MFA"
        changes.append(Change("mfa_acr_values", Direction.WIDENS, text, None, value))
    for value in sorted(old.mfa_acr_values - new.mfa_acr_values):
        text = f"acr {value} no longer counts as MFA"
        changes.append(Change("mfa_acr_values", Direction.NARROWS, text, value, None))
    for item in dataclasses.fields(PolicySet):
        if item.name in _SETTINGS_COMPARED:
            continue
        before, after = getattr(old, item.name), getattr(new, item.name)
        if before != after:
            text = f"{item.name} {before!r} → {after!r} (review it: its effect is not compared)"
            changes.append(Change(item.name, Direction.WIDENS, text, str(before), str(after)))
    if not changes:
        return []
    return [RuleDiff("settings", "changed", "settings", "", tuple(changes))]


def rule_diffs(old: PolicySet, new: PolicySet) -> list[RuleDiff]:
    """Every changed rule that is not an entitlement, deny rules first."""
    return [
        *deny_diffs(old, new),
        *people_diffs(old, new),
        *role_diffs("auditors", old.auditors, new.auditors),
        *role_diffs("admins", old.admins, new.admins),
        *settings_diffs(old, new),
    ]
