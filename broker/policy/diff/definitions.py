"""Compare two definitions of an entitlement condition by condition, and who matches select."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta

from broker.policy.diff.records import Change, Direction
from broker.policy.diff.statements import statement_changes
from broker.policy.durations import format_duration
from broker.policy.matching import CompiledMatch, claim_strings
from broker.policy.model import Entitlement, Match, Network


def describe(match: Match | None) -> str:
    """Say who a match selects, e.g. ``group sre or developers, kind staff``."""
    return CompiledMatch(match).describe() if match is not None else "nobody"


def _set_delta(
    label: str, old: Collection[str], new: Collection[str]
) -> tuple[list[str], list[str]]:
    wider: list[str] = []
    narrower: list[str] = []
    if set(old) == set(new):
        return wider, narrower
    if not old:
        narrower.append(f"now requires {label} {', '.join(new)}")
    elif not new:
        wider.append(f"no longer requires {label} {', '.join(old)}")
    else:
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        wider.extend(f"+ {label} {value}" for value in added)
        narrower.extend(f"− {label} {value}" for value in removed)
    return wider, narrower


def match_delta(old: Match, new: Match) -> tuple[list[str], list[str]]:
    """What selects more people, and what selects fewer, going from ``old`` to ``new``."""
    if old.everyone or new.everyone:
        if old.everyone and not new.everyone:
            return [], [f"no longer everyone, only {describe(new)}"]
        if new.everyone and not old.everyone:
            return ["now everyone"], []
        return [], []
    wider: list[str] = []
    narrower: list[str] = []
    for label, before, after in (
        ("group", old.groups, new.groups),
        ("email", old.email_globs, new.email_globs),
        ("kind", old.kinds, new.kinds),
    ):
        more, fewer = _set_delta(label, before, after)
        wider += more
        narrower += fewer
    for name in sorted({*old.claims, *new.claims}):
        more, fewer = _set_delta(
            f"claim {name} =",
            claim_strings(old.claims[name]) if name in old.claims else (),
            claim_strings(new.claims[name]) if name in new.claims else (),
        )
        wider += more
        narrower += fewer
    return wider, narrower


def match_change(field: str, old: Match, new: Match, *, deny: bool = False) -> Change | None:
    """A change of who a rule selects; for a deny rule, selecting more people narrows access."""
    if old == new:
        return None
    wider, narrower = match_delta(old, new)
    if deny:
        wider, narrower = narrower, wider
    direction = Direction.WIDENS if wider else Direction.NARROWS
    parts = "; ".join([*wider, *narrower] if not deny else [*narrower, *wider])
    text = f"{field}: {describe(old)} → {describe(new)}" + (f" ({parts})" if parts else "")
    return Change(field, direction, text, describe(old), describe(new))


def _flag(field: str, old: bool, new: bool, dropped: str, added: str) -> Change | None:
    if old == new:
        return None
    if old:
        return Change(field, Direction.WIDENS, dropped, old, new)
    return Change(field, Direction.NARROWS, added, old, new)


def _networks(network: Network | None) -> tuple[str, ...]:
    if network is None:
        return ()
    return (*(str(n) for n in network.source_ip), *network.source_vpc)


def network_change(old: Network | None, new: Network | None) -> Change | None:
    """A change of the networks an entitlement may be used from."""
    before, after = _networks(old), _networks(new)
    if set(before) == set(after):
        return None
    if old is None:
        return Change("network", Direction.NARROWS, f"now bound to {', '.join(after)}", None, after)
    if new is None:
        text = f"no longer bound to a network (was {', '.join(before)})"
        return Change("network", Direction.WIDENS, text, before, None)
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    new_ips = [n for n in new.source_ip if str(n) in added]
    widens = any(n.startswith("vpc-") for n in added) or any(
        not any(ip.version == o.version and ip.subnet_of(o) for o in old.source_ip)  # type: ignore[arg-type]
        for ip in new_ips
    )
    parts = [f"+ {n}" for n in added] + [f"− {n}" for n in removed]
    direction = Direction.WIDENS if widens else Direction.NARROWS
    return Change("network", direction, f"network: {' '.join(parts)}", before, after)


def _restricted(ent: Entitlement) -> bool:
    return ent.session_policy is not None or bool(ent.managed_policy_arns)


def scope_changes(old: Entitlement, new: Entitlement) -> list[Change]:
    """Changes of the session policy and managed policies that narrow the role."""
    changes: list[Change] = []
    if old.session_policy is None and new.session_policy is not None:
        # Session policies are a union intersected with the role: adding one narrows an
        # unrestricted role, but widens a role already narrowed by managed policies.
        widens = bool(old.managed_policy_arns)
        changes.append(
            Change(
                "session_policy",
                Direction.WIDENS if widens else Direction.NARROWS,
                "session policy added" + (" beside the managed policies" if widens else ""),
            )
        )
    elif old.session_policy is not None and new.session_policy is None:
        widens = not _restricted(new)
        text = "session policy removed" + (
            ": the role's own permissions apply in full" if widens else ""
        )
        changes.append(
            Change("session_policy", Direction.WIDENS if widens else Direction.NARROWS, text)
        )
    else:
        changes += statement_changes(old.session_policy, new.session_policy)
    added = [a for a in new.managed_policy_arns if a not in old.managed_policy_arns]
    removed = [a for a in old.managed_policy_arns if a not in new.managed_policy_arns]
    if added or removed:
        widens = (bool(added) and _restricted(old)) or not _restricted(new)
        parts = [f"+ {a}" for a in added] + [f"− {a}" for a in removed]
        changes.append(
            Change(
                "managed_policy_arns",
                Direction.WIDENS if widens else Direction.NARROWS,
                f"managed policies: {' '.join(parts)}",
                old.managed_policy_arns,
                new.managed_policy_arns,
            )
        )
    return changes


def _longer(field: str, label: str, old: timedelta, new: timedelta) -> Change | None:
    if old == new:
        return None
    direction = Direction.WIDENS if new > old else Direction.NARROWS
    before, after = format_duration(old), format_duration(new)
    return Change(field, direction, f"{label} {before} → {after}", before, after)


_FLAGS = (
    ("require_mfa", "MFA no longer required", "MFA now required"),
    ("require_reason", "a reason is no longer required", "a reason is now required"),
)


def entitlement_changes(old: Entitlement, new: Entitlement) -> list[Change]:
    """Every changed condition of an entitlement, in the order a reviewer reads them."""
    found: list[Change | None] = []
    if old.role_arn != new.role_arn:
        text = f"role {old.role_arn} → {new.role_arn} (another role: review its permissions)"
        found.append(Change("role_arn", Direction.WIDENS, text, old.role_arn, new.role_arn))
    found.append(match_change("allow", old.allow, new.allow))
    found.append(_longer("max_duration", "max session", old.max_duration, new.max_duration))
    found.append(_longer("max_grant", "grant length", old.grant_length, new.grant_length))
    for name, dropped, added in _FLAGS:
        found.append(_flag(name, getattr(old, name), getattr(new, name), dropped, added))
    found += _approval_changes(old, new)
    found.append(network_change(old.network, new.network))
    found += scope_changes(old, new)
    found += _other_fields(old, new)
    if old.sensitive != new.sensitive:
        # Dropping the mark widens what may pass review unnoticed; adding it changes no access.
        direction = Direction.WIDENS if old.sensitive else Direction.CHANGES
        text = "no longer marked sensitive" if old.sensitive else "now marked sensitive"
        found.append(Change("sensitive", direction, text, old.sensitive, new.sensitive))
    return [c for c in found if c is not None]


_COMPARED = {
    "id", "role_arn", "allow", "max_duration", "max_grant", "require_mfa", "require_reason",
    "approval", "network", "session_policy", "managed_policy_arns", "sensitive",
}  # fmt: skip
_NO_ACCESS = {"description": None, "region": "default region"}
"""Fields that change no access: left out, or shown as a neutral change under this name."""


def _other_fields(old: Entitlement, new: Entitlement) -> list[Change]:
    """Fields compared above are skipped; any other field that differs is shown, and one whose
    meaning for access this module does not know counts as widening, so a reviewer looks."""
    changes = []
    for name in type(old).model_fields:
        if name in _COMPARED or getattr(old, name) == getattr(new, name):
            continue
        before, after = getattr(old, name), getattr(new, name)
        if name in _NO_ACCESS:
            label = _NO_ACCESS[name]
            if label:
                text = f"{label} {before or '(none)'} → {after or '(none)'}"
                changes.append(Change(name, Direction.CHANGES, text, _value(before), _value(after)))
            continue
        text = f"{name} {before!r} → {after!r} (review it: its effect on access is not compared)"
        changes.append(Change(name, Direction.WIDENS, text, _value(before), _value(after)))
    return changes


def _value(value: object) -> str | None:
    return None if value is None else str(value)


def _approval_changes(old: Entitlement, new: Entitlement) -> Sequence[Change | None]:
    before, after = old.approval, new.approval
    if before is not None and after is not None:
        return [match_change("approvers", before.approvers, after.approvers)]
    if after is not None:
        who = describe(after.approvers)
        return [Change("approval", Direction.NARROWS, f"now needs approval by {who}", None, who)]
    if before is not None:
        who = describe(before.approvers)
        text = f"no longer needs approval (was by {who})"
        return [Change("approval", Direction.WIDENS, text, who, None)]
    return []


def conditions(ent: Entitlement) -> str:
    """Say under which conditions an entitlement is used, e.g. ``sessions up to 1h, MFA``."""
    parts = [f"role {ent.role_arn}", f"sessions up to {format_duration(ent.max_duration)}"]
    if ent.require_mfa:
        parts.append("MFA")
    if ent.approval is not None:
        parts.append(f"approval by {describe(ent.approval.approvers)}")
    if ent.network is not None:
        parts.append(f"from {', '.join(_networks(ent.network))}")
    if ent.session_policy is None and not ent.managed_policy_arns:
        parts.append("no session policy")
    return ", ".join(parts)


def added_or_removed(ent: Entitlement, *, added: bool) -> Change:
    """The one change of an entitlement that appears or disappears."""
    who = describe(ent.allow)
    if added:
        text = f"new entitlement for {who} ({conditions(ent)})"
        return Change("entitlement", Direction.WIDENS, text, None, who)
    return Change("entitlement", Direction.NARROWS, f"entitlement removed (was for {who})", who)
