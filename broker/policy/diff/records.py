"""What a policy diff is made of: changed conditions, entitlements, rules and people."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

EXIT_SENSITIVE_WIDENED = 3
"""Exit code of `broker policy diff` when access widens on a sensitive entitlement."""

Status = Literal["added", "removed", "changed"]
Value = str | bool | tuple[str, ...] | None


class Direction(StrEnum):
    """Which way a change moves access."""

    WIDENS = "widens"  # more people, fewer conditions, or a change whose effect cannot be told
    NARROWS = "narrows"
    CHANGES = "changes"  # neither, e.g. a sponsor or a deny rule's reason


@dataclass(frozen=True)
class Change:
    """One changed condition or fact, e.g. ``max_duration 1h → 4h``."""

    field: str
    direction: Direction
    text: str
    old: Value = None
    new: Value = None


@dataclass(frozen=True)
class EntitlementDiff:
    """How one entitlement changed: its definition, and (with a directory) who gains or loses it."""

    id: str
    status: Status
    where: str
    sensitive: bool
    changes: tuple[Change, ...] = ()
    gained: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    approvers_gained: tuple[str, ...] = ()
    approvers_lost: tuple[str, ...] = ()
    affected: tuple[str, ...] = ()
    """People who may use it on both sides, and so meet its changed conditions."""

    @property
    def widens(self) -> bool:
        """True when anyone gains it or any of its conditions loosens."""
        if self.gained or self.approvers_gained:
            return True
        return any(c.direction is Direction.WIDENS for c in self.changes)


@dataclass(frozen=True)
class RuleDiff:
    """A changed rule that is not an entitlement: deny, people, auditors, admins, settings."""

    section: Literal["deny", "people", "auditors", "admins", "settings"]
    status: Status
    rule: str
    where: str
    changes: tuple[Change, ...]
    gained: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    affects: tuple[str, ...] = ()
    """For a deny rule: the entitlements it covered or covers."""


@dataclass(frozen=True)
class PersonDiff:
    """A person in the directory whose kind, end date or sponsor moved."""

    email: str
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class PolicyDiff:
    """The change in access from one policy to another."""

    entitlements: tuple[EntitlementDiff, ...]
    rules: tuple[RuleDiff, ...]
    people: tuple[PersonDiff, ...]
    risks: tuple[str, ...]
    """Why access widens on sensitive entitlements, one sentence each; empty when it does not."""
    directory_size: int | None = None
    """How many people the directory held; None when the diff is stated per rule."""

    @property
    def empty(self) -> bool:
        """True when nothing about access changed."""
        return not (self.entitlements or self.rules or self.people)

    @property
    def exit_code(self) -> int:
        """0, or EXIT_SENSITIVE_WIDENED when access widens on a sensitive entitlement."""
        return EXIT_SENSITIVE_WIDENED if self.risks else 0
