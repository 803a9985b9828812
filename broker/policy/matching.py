"""A `Match` compiled for fast checks, with plain-English words for why it matched or not."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Set
from typing import Any

from broker.policy.model import Match


def claim_strings(value: object) -> frozenset[str]:
    """Normalise a claim value (string, number, boolean or list of them) to a set of strings."""
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    return frozenset(
        ("true" if item else "false") if isinstance(item, bool) else str(item)
        for item in items
        if item is not None
    )


def _or(values: Iterable[str]) -> str:
    items = list(values)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


class CompiledMatch:
    """A Match prepared once, then checked against many people."""

    __slots__ = ("match", "groups", "email_globs", "email_re", "kinds", "claims", "everyone")

    def __init__(self, match: Match) -> None:
        self.match = match
        self.groups = frozenset(match.groups)
        self.email_globs = match.email_globs
        self.email_re = (
            re.compile("|".join(fnmatch.translate(g) for g in self.email_globs))
            if self.email_globs
            else None
        )
        self.kinds = frozenset(match.kinds)
        self.claims = {name: claim_strings(value) for name, value in match.claims.items()}
        self.everyone = match.everyone

    def matches(self, email: str, groups: Set[str], kind: str, claims: Mapping[str, Any]) -> bool:
        """True when every condition holds; ``email`` must already be lowercased."""
        if self.everyone:
            return True
        if self.groups and self.groups.isdisjoint(groups):
            return False
        if self.kinds and kind not in self.kinds:
            return False
        if self.email_re is not None and not self.email_re.match(email):
            return False
        for name, wanted in self.claims.items():
            if name not in claims or wanted.isdisjoint(claim_strings(claims[name])):
                return False
        return True

    def why(self, email: str, groups: Set[str], kind: str, claims: Mapping[str, Any]) -> str:
        """Say which facts made a person match, e.g. ``member of group sre; kind staff``."""
        if self.everyone:
            return "open to everyone"
        parts: list[str] = []
        if self.groups:
            hit = self.groups & groups
            if len(hit) == 1:
                parts.append(f"member of group {next(iter(hit))}")
            else:
                parts.append(f"member of groups {', '.join(sorted(hit))}")
        if self.email_re is not None:
            glob = next(g for g in self.email_globs if fnmatch.fnmatchcase(email, g))
            parts.append(f"email {email}" + ("" if glob == email else f" matches {glob}"))
        if self.kinds:
            parts.append(f"kind {kind}")
        for name in self.claims:
            parts.append(f"claim {name} = {_or(sorted(claim_strings(claims[name])))}")
        return "; ".join(parts)

    def misses(self, email: str, groups: Set[str], kind: str, claims: Mapping[str, Any]) -> str:
        """Say which conditions a person failed, and what would have been needed."""
        parts: list[str] = []
        if self.groups and self.groups.isdisjoint(groups):
            parts.append(f"needs membership in group {_or(sorted(self.groups))}")
        if self.kinds and kind not in self.kinds:
            parts.append(f"needs kind {_or(sorted(self.kinds))} (you are {kind})")
        if self.email_re is not None and not self.email_re.match(email):
            parts.append(f"needs an email matching {_or(self.email_globs)}")
        for name, wanted in self.claims.items():
            if name not in claims or wanted.isdisjoint(claim_strings(claims[name])):
                parts.append(f"needs claim {name} = {_or(sorted(wanted))}")
        return "; ".join(parts)

    def describe(self) -> str:
        """Say who the match selects, e.g. ``group sre or developers, kind staff``."""
        if self.everyone:
            return "everyone"
        parts: list[str] = []
        if self.groups:
            parts.append(f"group {_or(sorted(self.groups))}")
        if self.email_globs:
            parts.append(f"email {_or(self.email_globs)}")
        if self.kinds:
            parts.append(f"kind {_or(sorted(self.kinds))}")
        for name, wanted in self.claims.items():
            parts.append(f"claim {name} = {_or(sorted(wanted))}")
        return ", ".join(parts)
