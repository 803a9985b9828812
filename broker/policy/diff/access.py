"""Who gains and who loses what, person by person, as each side's Evaluator decides.

Deciding every entitlement for every person would be 10k × 10k decisions per side. Only what can
differ is decided instead: the entitlements whose definition or deny rules changed, for the
people their allow rules could select (found through a group index, as the evaluator finds
candidates), and everything (through ``Evaluator.eligible``) only for the people whom the people
rules now see differently. Access means "may use, given MFA and the network binding": those
conditions are compared per entitlement, not per person.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.policy.diff.directory import DirectoryPerson
from broker.policy.diff.records import PersonDiff
from broker.policy.diff.rules import fact_changes
from broker.policy.evaluator import Evaluator, Identity, Person, RequestContext
from broker.policy.model import Entitlement, Match, PolicySet

Movers = dict[str, tuple[list[str], list[str]]]
"""Per key (an entitlement id or a broker role): the emails gaining it, and those losing it."""


@dataclass
class AccessChanges:
    """What the directory's people gain and lose between two policies."""

    access: Movers = field(default_factory=dict)
    approvers: Movers = field(default_factory=dict)
    affected: dict[str, list[str]] = field(default_factory=dict)
    roles: Movers = field(default_factory=dict)
    people: list[PersonDiff] = field(default_factory=list)


def _kind_claim(policy: PolicySet) -> str | None:
    # Policies that name the claim carrying a person's kind read it there; older ones read "kind".
    return getattr(policy, "kind_claim", "kind")


def _identity(person: DirectoryPerson, kind_claim: str | None) -> Identity:
    claims = dict(person.claims)
    if person.kind and kind_claim:
        claims[kind_claim] = person.kind
    return Identity(
        issuer="directory",
        subject=person.email,
        email=person.email,
        groups=person.groups,
        claims=claims,
        amr=("mfa",),  # MFA is a condition compared per entitlement, not a question of who
    )


def _context(ent: Entitlement, now: datetime) -> RequestContext:
    """A request that meets the entitlement's network binding."""
    network = ent.network
    if network is None:
        return RequestContext(now=now)
    if network.source_vpc:
        return RequestContext(now=now, source_vpc=network.source_vpc[0])
    return RequestContext(now=now, source_ip=str(network.source_ip[0].network_address))


class _Side:
    """One policy's view of the directory: people resolved once, requests that meet networks."""

    def __init__(self, evaluator: Evaluator, persons: list[Person], now: datetime) -> None:
        self.evaluator = evaluator
        self.persons = persons
        self.now = now
        self.plain = RequestContext(now=now)
        self._contexts: dict[str, RequestContext] = {}
        self._bound: tuple[dict[str, list[str]], list[str]] | None = None

    def allows(self, index: int, ent_id: str) -> bool:
        """True when the person may use the entitlement (now or once approved)."""
        ent = self.evaluator.entitlement(ent_id)
        if ent is None:
            return False
        ctx = self._contexts.get(ent_id)
        if ctx is None:
            ctx = self._contexts[ent_id] = _context(ent, self.now)
        return self.evaluator.decide(self.persons[index], ent_id, ctx).allowed

    def access(self, index: int) -> set[str]:
        """Every entitlement the person may use."""
        person = self.persons[index]
        ids = {d.entitlement_id for d in self.evaluator.eligible(person, self.plain)}
        # eligible() decides for a request from nowhere in particular, so network-bound
        # entitlements come back denied; decide those again from a network they accept.
        by_group, unindexed = self._network_bound()
        candidates = set(unindexed)
        for group in person.identity.groups:
            candidates.update(by_group.get(group, ()))
        ids.update(e for e in candidates - ids if self.allows(index, e))
        return ids

    def _network_bound(self) -> tuple[dict[str, list[str]], list[str]]:
        if self._bound is None:
            by_group: dict[str, list[str]] = {}
            unindexed: list[str] = []
            for ent in self.evaluator.policy.entitlements:
                if ent.network is None:
                    continue
                if ent.allow.groups and not ent.allow.everyone:
                    for group in ent.allow.groups:
                        by_group.setdefault(group, []).append(ent.id)
                else:
                    unindexed.append(ent.id)
            self._bound = (by_group, unindexed)
        return self._bound


class _Directory:
    """The people, with an index from group to the people in it."""

    def __init__(self, people: Sequence[DirectoryPerson]) -> None:
        self.people = people
        self._by_group: dict[str, list[int]] | None = None

    def candidates(self, matches: Iterable[Match | None]) -> Collection[int]:
        """Indexes of the people any of the matches could select (None matches nobody)."""
        present = [m for m in matches if m is not None]
        if any(m.everyone or not m.groups for m in present):
            return range(len(self.people))
        if self._by_group is None:
            self._by_group = {}
            for index, person in enumerate(self.people):
                for group in person.groups:
                    self._by_group.setdefault(group, []).append(index)
        found: set[int] = set()
        for match in present:
            for group in match.groups:
                found.update(self._by_group.get(group, ()))
        return found


def _same_people_rules(old: PolicySet, new: PolicySet) -> bool:
    return (
        old.people == new.people
        and old.default_kind == new.default_kind
        and _kind_claim(old) == _kind_claim(new)
    )


def _record(movers: Movers, key: str, email: str, before: bool, after: bool) -> None:
    if before != after:
        gained, lost = movers.setdefault(key, ([], []))
        (gained if after else lost).append(email)


def access_changes(
    old: Evaluator,
    new: Evaluator,
    people: Sequence[DirectoryPerson],
    now: datetime,
    who_changed: Collection[str],
    terms_changed: Collection[str],
    approvers_changed: Collection[str],
) -> AccessChanges:
    """Compare, for each person, what the old and the new policy let them use or approve.

    ``who_changed`` are the entitlements whose allow or deny rules changed (or that appear or
    go); ``terms_changed`` those whose conditions changed, to list who keeps them on new terms.
    """
    result = AccessChanges()
    persons = [old.resolve(_identity(p, _kind_claim(old.policy))) for p in people]
    before = _Side(old, persons, now)
    if _same_people_rules(old.policy, new.policy):
        after = _Side(new, persons, now)
    else:
        kind_claim = _kind_claim(new.policy)
        after = _Side(new, [new.resolve(_identity(p, kind_claim)) for p in people], now)
    moved = _moved(people, before, after, result) if after.persons is not persons else set()
    for index in sorted(moved):
        held, holds = before.access(index), after.access(index)
        for ent_id in held ^ holds:
            _record(result.access, ent_id, people[index].email, ent_id in held, ent_id in holds)
    directory = _Directory(people)
    for ent_id in sorted({*who_changed, *terms_changed}):
        ents = (old.entitlement(ent_id), new.entitlement(ent_id))
        candidates = set(directory.candidates(e.allow if e else None for e in ents))
        if ent_id not in terms_changed:
            candidates -= moved  # their whole access was compared above
        for index in sorted(candidates):
            had, has = before.allows(index, ent_id), after.allows(index, ent_id)
            if index not in moved:
                _record(result.access, ent_id, people[index].email, had, has)
            if had and has and ent_id in terms_changed:
                result.affected.setdefault(ent_id, []).append(people[index].email)
    for ent_id in sorted(approvers_changed):
        ents = (old.entitlement(ent_id), new.entitlement(ent_id))
        matches = [e.approval.approvers if e and e.approval else None for e in ents]
        for index in sorted({*directory.candidates(matches), *moved}):
            approves = (
                old.can_approve(before.persons[index], ent_id, now),
                new.can_approve(after.persons[index], ent_id, now),
            )
            _record(result.approvers, ent_id, people[index].email, *approves)
    _roles(directory, before, after, moved, result)
    return result


def _moved(
    people: Sequence[DirectoryPerson], before: _Side, after: _Side, result: AccessChanges
) -> set[int]:
    """Note every person whose facts changed; return those whose access may have changed."""
    moved: set[int] = set()
    now = before.now
    for index, (was, is_) in enumerate(zip(before.persons, after.persons, strict=True)):
        facts = fact_changes(
            (was.kind, was.valid_until, was.sponsor), (is_.kind, is_.valid_until, is_.sponsor)
        )
        if facts:
            result.people.append(PersonDiff(people[index].email, tuple(facts)))
        if was.kind != is_.kind or was.ended(now) != is_.ended(now):
            moved.add(index)
    return moved


def _roles(
    directory: _Directory, before: _Side, after: _Side, moved: set[int], result: AccessChanges
) -> None:
    """Who becomes or stops being an auditor or admin of the broker."""
    old, new, now = before.evaluator, after.evaluator, before.now
    for name, was, is_, check in (
        ("auditors", old.policy.auditors, new.policy.auditors, Evaluator.is_auditor),
        ("admins", old.policy.admins, new.policy.admins, Evaluator.is_admin),
    ):
        indexes = set(moved)
        if was != is_:
            indexes.update(directory.candidates([*was, *is_]))
        for index in sorted(indexes):
            held = (check(old, before.persons[index], now), check(new, after.persons[index], now))
            _record(result.roles, name, directory.people[index].email, *held)
