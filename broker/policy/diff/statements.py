"""Compare two session policies statement by statement, and say whether the new one allows more.

"Allows more" is decided conservatively: a new Allow statement must be covered by an old one
(its actions and resources within the old globs, and at least the old conditions), and an old
Deny statement must be covered by a new one. Anything that cannot be shown covered counts as
widening, so a reviewer looks at it.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.policy.diff.records import Change, Direction


@dataclass(frozen=True)
class Statement:
    """One session policy statement in a canonical form."""

    label: str
    effect: str
    action: tuple[str, ...] | None
    not_action: tuple[str, ...] | None
    resource: tuple[str, ...] | None
    not_resource: tuple[str, ...] | None
    conditions: frozenset[tuple[str, str, str]]

    @property
    def key(self) -> tuple[object, ...]:
        """Everything but the label, lists sorted: statements with equal keys mean the same."""
        lists = (self.action, self.not_action, self.resource, self.not_resource)
        return (self.effect, *(tuple(sorted(v)) if v else v for v in lists), self.conditions)

    def describe(self) -> str:
        """Say what it does, e.g. ``Allow s3:GetObject on arn:aws:s3:::b/*``."""
        actions = _values("Action", self.action) or _values("NotAction", self.not_action)
        resources = _values("", self.resource) or _values("NotResource", self.not_resource)
        text = f"{self.effect} {actions} on {resources}".replace("  ", " ")
        return text + (" with conditions" if self.conditions else "")


def _values(label: str, values: tuple[str, ...] | None) -> str:
    if values is None:
        return ""
    return f"{label} {', '.join(values)}".strip()


def _strings(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return tuple(str(item) for item in items)


def statements(policy: Mapping[str, Any] | None) -> list[Statement]:
    """The statements of a session policy (validated by the model), canonical and labelled."""
    if policy is None:
        return []
    raw = policy.get("Statement", [])
    items = raw if isinstance(raw, list) else [raw]
    found = []
    for index, item in enumerate(items):
        conditions = frozenset(
            (str(operator), str(key), json.dumps(value, sort_keys=True))
            for operator, block in (item.get("Condition") or {}).items()
            for key, value in block.items()
        )
        found.append(
            Statement(
                label=str(item["Sid"]) if item.get("Sid") else f"#{index + 1}",
                effect=str(item.get("Effect", "")),
                action=_strings(item.get("Action")),
                not_action=_strings(item.get("NotAction")),
                resource=_strings(item.get("Resource")),
                not_resource=_strings(item.get("NotResource")),
                conditions=conditions,
            )
        )
    return found


def _glob_covers(wide: str, narrow: str) -> bool:
    # With only '*' wildcards in `wide`, matching `narrow` as a literal string proves that
    # everything `narrow` matches, `wide` matches too; a '?' in `wide` needs the same text.
    return wide == narrow or ("?" not in wide and fnmatch.fnmatchcase(narrow, wide))


def _all_covered(wide: Sequence[str], narrow: Sequence[str], fold: bool) -> bool:
    if fold:
        wide, narrow = [w.lower() for w in wide], [n.lower() for n in narrow]
    return all(any(_glob_covers(w, n) for w in wide) for n in narrow)


def _part_covers(
    wide: tuple[tuple[str, ...] | None, tuple[str, ...] | None],
    narrow: tuple[tuple[str, ...] | None, tuple[str, ...] | None],
    fold: bool,
) -> bool:
    (wide_in, wide_out), (narrow_in, narrow_out) = wide, narrow
    if wide_in is not None and narrow_in is not None:
        return _all_covered(wide_in, narrow_in, fold)
    if wide_out is not None and narrow_out is not None:
        return _all_covered(narrow_out, wide_out, fold)  # wide excludes no more than narrow
    return wide_in is not None and "*" in wide_in


def covers(wide: Statement, narrow: Statement) -> bool:
    """True when ``wide`` applies to everything ``narrow`` applies to (same effect)."""
    return (
        wide.effect == narrow.effect
        and wide.conditions <= narrow.conditions
        and _part_covers((wide.action, wide.not_action), (narrow.action, narrow.not_action), True)
        and _part_covers(
            (wide.resource, wide.not_resource), (narrow.resource, narrow.not_resource), False
        )
    )


def _widens(
    old: Statement | None, new: Statement | None, before: list[Statement], after: list[Statement]
) -> bool:
    if new is not None and new.effect == "Allow":
        if not any(covers(o, new) for o in before if o.effect == "Allow"):
            return True
    if old is not None and old.effect == "Deny":
        if not any(covers(n, old) for n in after if n.effect == "Deny"):
            return True
    return False


def _pair(
    before: list[Statement], after: list[Statement]
) -> list[tuple[Statement | None, Statement | None]]:
    """Pair statements by Sid, then unnamed ones in order; unpaired ones are added or removed."""
    old_by_sid = {s.label: s for s in before if not s.label.startswith("#")}
    new_by_sid = {s.label: s for s in after if not s.label.startswith("#")}
    pairs: list[tuple[Statement | None, Statement | None]] = [
        (old_by_sid.get(sid), new_by_sid.get(sid)) for sid in {**old_by_sid, **new_by_sid}
    ]
    old_plain = [s for s in before if s.label.startswith("#")]
    new_plain = [s for s in after if s.label.startswith("#")]
    for index in range(max(len(old_plain), len(new_plain))):
        pairs.append(
            (
                old_plain[index] if index < len(old_plain) else None,
                new_plain[index] if index < len(new_plain) else None,
            )
        )
    return pairs


def _delta(label: str, old: tuple[str, ...] | None, new: tuple[str, ...] | None) -> str | None:
    if old == new:
        return None
    added = [v for v in new or () if v not in (old or ())]
    removed = [v for v in old or () if v not in (new or ())]
    parts = [f"+ {v}" for v in added] + [f"− {v}" for v in removed]
    return f"{label} {' '.join(parts)}" if parts else f"{label} reordered"


def statement_changes(
    old_policy: Mapping[str, Any] | None, new_policy: Mapping[str, Any] | None
) -> list[Change]:
    """One change per added, removed or altered statement, each marked widening or not."""
    before, after = statements(old_policy), statements(new_policy)
    if sorted(map(repr, (s.key for s in before))) == sorted(map(repr, (s.key for s in after))):
        return []
    changes = []
    for old, new in _pair(before, after):
        if old is not None and new is not None and old.key == new.key:
            continue
        direction = Direction.WIDENS if _widens(old, new, before, after) else Direction.NARROWS
        if old is None and new is not None:
            text = f"session policy statement {new.label} added: {new.describe()}"
        elif new is None and old is not None:
            text = f"session policy statement {old.label} removed: {old.describe()}"
        elif old is not None and new is not None:
            parts = [
                f"Effect {old.effect} → {new.effect}" if old.effect != new.effect else None,
                _delta("Action", old.action, new.action),
                _delta("NotAction", old.not_action, new.not_action),
                _delta("Resource", old.resource, new.resource),
                _delta("NotResource", old.not_resource, new.not_resource),
                "Condition changed" if old.conditions != new.conditions else None,
            ]
            text = f"session policy statement {new.label}: " + "; ".join(p for p in parts if p)
        else:  # pragma: no cover - _pair never yields two Nones
            continue
        changes.append(
            Change(
                "session_policy",
                direction,
                text,
                old.describe() if old else None,
                new.describe() if new else None,
            )
        )
    return changes
