"""Render a policy diff for a terminal, a pull-request comment (Markdown), or a program (JSON)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from broker.policy.diff.records import (
    EXIT_SENSITIVE_WIDENED,
    Change,
    Direction,
    EntitlementDiff,
    PersonDiff,
    PolicyDiff,
    RuleDiff,
)

SHOWN_PEOPLE = 20
"""Most emails listed per line in text and Markdown; JSON lists everyone."""
SUMMARY_ITEMS = 8
MARKDOWN_BLOCKS = 100
"""Most entitlements and rules detailed in Markdown, so that a comment stays within what code
hosts accept (GitHub: 65,536 characters); the summary line and the risks still cover all."""

# (field, direction) → what an entitlement does, singular and plural, for the summary line.
_PHRASES: dict[tuple[str, Direction], tuple[str, str]] = {
    ("allow", Direction.WIDENS): ("opens to more people", "open to more people"),
    ("require_mfa", Direction.WIDENS): ("loses MFA", "lose MFA"),
    ("max_duration", Direction.WIDENS): ("allows longer sessions", "allow longer sessions"),
    ("max_grant", Direction.WIDENS): ("allows longer grants", "allow longer grants"),
    ("approval", Direction.WIDENS): ("no longer needs approval", "no longer need approval"),
    ("approvers", Direction.WIDENS): ("has more approvers", "have more approvers"),
    ("network", Direction.WIDENS): ("loosens its network binding", "loosen their network binding"),
    ("session_policy", Direction.WIDENS): (
        "widens its session policy",
        "widen their session policy",
    ),
    ("managed_policy_arns", Direction.WIDENS): (
        "widens its managed policies",
        "widen their managed policies",
    ),
    ("role_arn", Direction.WIDENS): ("changes its role", "change their role"),
    ("require_reason", Direction.WIDENS): ("no longer needs a reason", "no longer need a reason"),
    ("sensitive", Direction.WIDENS): ("is no longer sensitive", "are no longer sensitive"),
    ("approvers", Direction.NARROWS): ("has fewer approvers", "have fewer approvers"),
}
_SECTION_WORDS = {
    "deny": "deny rule",
    "people": "people rule",
    "auditors": "auditors",
    "admins": "admins",
    "settings": "settings",
}


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _people(n: int) -> str:
    return _count(n, "person", "people")


def _named(ids: Sequence[str], what: str, plural: str, verb: str) -> list[str]:
    if len(ids) <= 2:
        return [f"{what} {i} {verb}".strip() for i in ids]
    return [f"{len(ids)} {plural} {verb}".strip()]


def _movement(ents: Sequence[EntitlementDiff], gained: bool) -> list[str]:
    """``+3 people gain prod-admin`` for the first few entitlements, then one line for the rest."""
    moving = [e for e in ents if (e.gained if gained else e.lost)]
    sign, one, many = ("+", "gains", "gain") if gained else ("−", "loses", "lose")
    items = []
    for ent in moving[:3]:
        n = len(ent.gained if gained else ent.lost)
        items.append(f"{sign}{_people(n)} {one if n == 1 else many} {ent.id}")
    rest = moving[3:]
    if rest:
        n = len({email for e in rest for email in (e.gained if gained else e.lost)})
        others = _count(len(rest), "other entitlement", "other entitlements")
        items.append(f"{sign}{_people(n)} {one if n == 1 else many} {others}")
    return items


def summary(diff: PolicyDiff) -> str:
    """One line, e.g. ``+3 people gain prod-admin, 1 entitlement loses MFA``."""
    if diff.empty:
        return "No change in access."
    ents = diff.entitlements
    items = _movement(ents, gained=True)
    fresh = [e.id for e in ents if e.status == "added" and not e.gained]
    items += _named(fresh, "new entitlement", "new entitlements", "")
    counts = Counter(
        key
        for ent in ents
        if ent.status == "changed"
        for key in {(c.field, c.direction) for c in ent.changes}  # once per entitlement
        if not (key[0] == "allow" and diff.directory_size is not None)
    )
    for key, (one, many) in _PHRASES.items():
        if counts[key]:
            entitlements = _count(counts[key], "entitlement", "entitlements")
            items.append(f"{entitlements} {one if counts[key] == 1 else many}")
    items += _movement(ents, gained=False)
    gone = [e.id for e in ents if e.status == "removed"]
    items += _named(gone, "entitlement", "entitlements", "removed")
    items += _rule_summary(diff)
    narrowed = sum(
        1
        for e in ents
        if e.status == "changed"
        and not e.widens
        and any(c.direction is Direction.NARROWS and c.field != "deny" for c in e.changes)
    )
    if narrowed:
        items.append(f"{_count(narrowed, 'entitlement', 'entitlements')} narrowed")
    if len(items) > SUMMARY_ITEMS:
        items = [*items[:SUMMARY_ITEMS], f"and {len(items) - SUMMARY_ITEMS} more"]
    return ", ".join(items)


def _rule_summary(diff: PolicyDiff) -> list[str]:
    items = []
    deny = Counter(r.status for r in diff.rules if r.section == "deny")
    for status in ("removed", "added", "changed"):
        if deny[status]:
            items.append(f"{_count(deny[status], 'deny rule', 'deny rules')} {status}")
    records: Sequence[PersonDiff | RuleDiff] = diff.people or diff.rules
    moved = sum(1 for r in records if any(c.field == "valid_until" for c in r.changes))
    if moved:
        items.append(f"{_count(moved, 'end date', 'end dates')} moved")
    for rule in diff.rules:
        if rule.section in ("auditors", "admins"):
            if rule.gained:
                items.append(f"+{_people(len(rule.gained))} become {rule.section}")
            elif any(c.direction is Direction.WIDENS for c in rule.changes):
                items.append(f"more {rule.section}")
        if rule.section == "settings":
            items += [c.text for c in rule.changes if c.direction is Direction.WIDENS]
    return items


def _emails(emails: Sequence[str], limit: int = SHOWN_PEOPLE) -> str:
    shown = ", ".join(emails[:limit])
    return shown + (f", … and {len(emails) - limit} more" if len(emails) > limit else "")


def _movers(record: EntitlementDiff | RuleDiff) -> list[str]:
    """One line per list of people who gain or lose something, e.g. ``+2 people gain it: …``."""
    lists: list[tuple[str, Sequence[str], str, str]] = [
        ("+", record.gained, "gains it", "gain it"),
        ("−", record.lost, "loses it", "lose it"),
    ]
    if isinstance(record, EntitlementDiff):
        lists += [
            ("+", record.approvers_gained, "may now approve it", "may now approve it"),
            ("−", record.approvers_lost, "may no longer approve it", "may no longer approve it"),
            ("", record.affected, "keeps it, on the new terms", "keep it, on the new terms"),
        ]
    if isinstance(record, RuleDiff) and record.affects:
        n = len(record.affects)
        return [f"covers {_count(n, 'entitlement', 'entitlements')}: {_emails(record.affects)}"]
    return [
        f"{sign}{_people(len(emails))} {one if len(emails) == 1 else many}: {_emails(emails)}"
        for sign, emails, one, many in lists
        if emails
    ]


def _heading(ent: EntitlementDiff) -> str:
    flags = " (sensitive)" if ent.sensitive else ""
    where = f", {ent.where}" if ent.where else ""
    status = ent.status if ent.changes else "who may use it changed"
    return f"{ent.id}{flags} {status}{where}"


def _rule_heading(rule: RuleDiff) -> str:
    where = f", {rule.where}" if rule.where else ""
    name = _SECTION_WORDS[rule.section]
    who = f": {rule.rule}" if rule.section in ("deny", "people") else ""
    return f"{name} {rule.status}{where}{who}"


def _only_deny(ent: EntitlementDiff) -> bool:
    """A change the deny rule's own block already tells (shown in JSON, not repeated here)."""
    return (
        not ent.sensitive
        and not (ent.gained or ent.lost or ent.approvers_gained or ent.approvers_lost)
        and all(c.field == "deny" for c in ent.changes)
    )


def _blocks(diff: PolicyDiff) -> Iterable[tuple[str, Sequence[Change], list[str]]]:
    for ent in diff.entitlements:
        if not _only_deny(ent):
            yield _heading(ent), ent.changes, _movers(ent)
    for rule in diff.rules:
        yield _rule_heading(rule), rule.changes, _movers(rule)
    for person in diff.people:
        yield f"person {person.email}", person.changes, []


def _scope(diff: PolicyDiff) -> str:
    if diff.directory_size is None:
        return "No directory given: changes are stated per rule (groups, globs, kinds)."
    return f"People from a directory of {_people(diff.directory_size)}."


def render_text(diff: PolicyDiff, compared: str = "") -> str:
    """For a terminal: summary line, risks, then one block per changed thing."""
    lines = [summary(diff)]
    if compared:
        lines.append(f"Compared {compared}.")
    if not diff.empty:
        lines.append(_scope(diff))
    if diff.risks:
        lines.append(
            f"Access widens on sensitive entitlements (exit code {EXIT_SENSITIVE_WIDENED}):"
        )
        lines += [f"  {risk}" for risk in diff.risks]
    for heading, changes, movers in _blocks(diff):
        lines.append("")
        lines.append(heading)
        lines += [f"  {c.direction.value:<8} {c.text}" for c in changes]
        lines += [f"  {text}" for text in movers]
    return "\n".join(lines) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def render_markdown(diff: PolicyDiff, compared: str = "") -> str:
    """For a pull-request comment: a bold summary line, a warning for risks, then sections."""
    lines = ["### Policy diff", "", f"**{_md(summary(diff))}**", ""]
    if compared:
        lines.append(_md(f"Compared {compared}."))
    if not diff.empty:
        lines.append(_md(_scope(diff)))
    if diff.risks:
        lines += [
            "",
            "> [!WARNING]",
            f"> Access widens on sensitive entitlements; this needs an extra approval "
            f"(exit code {EXIT_SENSITIVE_WIDENED}).",
        ]
        lines += [f"> - {_md(risk)}" for risk in diff.risks]
    blocks = list(_blocks(diff))
    for number, (heading, changes, movers) in enumerate(blocks):
        if number == MARKDOWN_BLOCKS:
            rest = len(blocks) - number
            lines += ["", f"… and {rest} more changed things; `--format json` lists them all."]
            break
        lines += ["", f"#### {_md(heading)}", ""]
        for change in changes:
            word = (
                f"**{change.direction.value}**"
                if change.direction is Direction.WIDENS
                else change.direction.value
            )
            lines.append(f"- {word}: {_md(change.text)}")
        lines += [f"- {_md(text)}" for text in movers]
    return "\n".join(lines) + "\n"


def render_json(diff: PolicyDiff, compared: str = "") -> str:
    """For programs: every record, with full lists of people."""
    document = {
        "summary": summary(diff),
        "compared": compared,
        "exit_code": diff.exit_code,
        "risks": list(diff.risks),
        "directory_size": diff.directory_size,
        "entitlements": [{**dataclasses.asdict(e), "widens": e.widens} for e in diff.entitlements],
        "rules": [dataclasses.asdict(r) for r in diff.rules],
        "people": [dataclasses.asdict(p) for p in diff.people],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


RENDERERS: dict[str, Callable[[PolicyDiff, str], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
}
"""Output format name → renderer, for `broker policy diff --format`."""
