"""Who gains and who loses what, person by person, as each side's Evaluator decides.

Deciding every entitlement for every person would be 10k × 10k decisions per side. Only what can
differ is decided instead: the entitlements whose definition or deny rules changed, for the
people their allow rules could select (found through a group index, as the evaluator finds
candidates); everything (through ``Evaluator.eligible``) only for the people whom the people
rules now see differently. Access means "may use, given MFA and the network binding": those
conditions are compared per entitlement, not per person.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.policy.diff.directory import DirectoryPerson
from broker.policy.diff.records import PersonDiff
from broker.policy.diff.rules import fact_changes
from broker.policy.evaluator import Evaluator, Identity, Person, RequestContext
from broker.policy.matching import CompiledMatch
from broker.policy.model import KINDS, Entitlement, Match, PolicySet

Movers = dict[str, tuple[list[str], list[str]]]
"""Per key (an entitlement id or a broker role): the emails gaining it, and those losing it."""
Facts = tuple[str, frozenset[str], str, Mapping[str, object]]
"""What a match looks at: lowercased email, groups, kind, claims."""


@dataclass(frozen=True)
class ChangedEntitlements:
    """Which entitlements changed in a way a person's access or terms could show."""

    who: Collection[str] = ()
    """Added, removed, or with another allow rule."""
    deny: Collection[str] = ()
    """Covered by other deny rules than before."""
    deny_matches: Sequence[Match] = ()
    """Whom the deny rules that changed select (on either side)."""
    terms: Collection[str] = ()
    """With other conditions (MFA, durations, approval, network, session policy...)."""
    approvers: Collection[str] = ()
    """With other approvers (or an approval added or dropped)."""


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


def _facts(person: Person) -> Facts:
    ident = person.identity
    return ident.email.lower(), ident.groups, person.kind, ident.claims


def _context(ent: Entitlement, now: datetime) -> RequestContext:
    """A request that meets the entitlement's network binding."""
    network = ent.network
    if network is None:
        return RequestContext(now=now)
    if network.source_vpc:
        return RequestContext(now=now, source_vpc=network.source_vpc[0])
    return RequestContext(now=now, source_ip=str(network.source_ip[0].network_address))


def _by_group(ents: Iterable[Entitlement]) -> tuple[dict[str, list[str]], list[str]]:
    """Entitlement ids by the groups their allow rule names, and those it names none."""
    by_group: dict[str, list[str]] = {}
    unindexed: list[str] = []
    for ent in ents:
        if ent.allow.groups and not ent.allow.everyone:
            for group in ent.allow.groups:
                by_group.setdefault(group, []).append(ent.id)
        else:
            unindexed.append(ent.id)
    return by_group, unindexed


class _Side:
    """One policy's view of the directory: people resolved once, verdicts from the Evaluator."""

    def __init__(self, evaluator: Evaluator, persons: list[Person], now: datetime) -> None:
        self.evaluator = evaluator
        self.persons = persons
        self.now = now
        self.facts = [_facts(p) for p in persons]
        self._deny = [CompiledMatch(rule.match) for rule in evaluator.policy.deny]
        self._allow: dict[str, CompiledMatch | None] = {}
        self._contexts: dict[str, RequestContext] = {}
        self._standings: dict[int, tuple[bool, tuple[int, ...]]] = {}
        # People the allow rule selects and who stand alike get the same verdict, so each
        # entitlement is decided once per standing rather than once per person.
        self._decided: dict[tuple[str, bool, tuple[int, ...]], bool] = {}
        self._network_bound: tuple[dict[str, list[str]], list[str]] | None = None

    def selects(self, index: int, ent_id: str) -> bool:
        """True when the entitlement's allow rule selects the person: a cheap first check.

        Only the Evaluator's verdict says whether they may use it (deny rules, an ended
        engagement); but whom the allow rule does not select, it never allows.
        """
        if ent_id not in self._allow:
            ent = self.evaluator.entitlement(ent_id)
            self._allow[ent_id] = CompiledMatch(ent.allow) if ent else None
        allow = self._allow[ent_id]
        return allow is not None and allow.matches(*self.facts[index])

    def allows(self, index: int, ent_id: str) -> bool:
        """True when the person may use the entitlement (now or once approved)."""
        return self.selects(index, ent_id) and self.verdict(index, ent_id)

    def verdict(self, index: int, ent_id: str) -> bool:
        """The Evaluator's verdict for a person the entitlement's allow rule selects."""
        key = (ent_id, *self._standing(index))
        allowed = self._decided.get(key)
        if allowed is None:
            ent = self.evaluator.entitlement(ent_id)
            assert ent is not None  # noqa: S101 - the caller checked selects()
            ctx = self._contexts.get(ent_id)
            if ctx is None:
                ctx = self._contexts[ent_id] = _context(ent, self.now)
            decision = self.evaluator.decide(self.persons[index], ent_id, ctx)
            allowed = self._decided[key] = decision.allowed
        return allowed

    def _standing(self, index: int) -> tuple[bool, tuple[int, ...]]:
        """Besides the allow rule, what a verdict depends on: whether the person's engagement
        has ended, and which deny rules select them (MFA and the network are met for all)."""
        standing = self._standings.get(index)
        if standing is None:
            facts = self.facts[index]
            denials = tuple(n for n, rule in enumerate(self._deny) if rule.matches(*facts))
            standing = self._standings[index] = (self.persons[index].ended(self.now), denials)
        return standing

    def access(self, index: int) -> set[str]:
        """Every entitlement the person may use."""
        person = self.persons[index]
        eligible = self.evaluator.eligible(person, RequestContext(now=self.now))
        ids = {d.entitlement_id for d in eligible}
        # eligible() decides for a request from nowhere in particular, so network-bound
        # entitlements come back denied; decide those again from a network they accept.
        if self._network_bound is None:
            bound = (e for e in self.evaluator.policy.entitlements if e.network is not None)
            self._network_bound = _by_group(bound)
        by_group, unindexed = self._network_bound
        candidates = set(unindexed)
        for group in person.identity.groups:
            candidates.update(by_group.get(group, ()))
        ids.update(e for e in candidates - ids if self.allows(index, e))
        return ids


class _Directory:
    """The people, with an index from group to the people in it (for the groups asked about)."""

    def __init__(self, people: Sequence[DirectoryPerson], groups: Iterable[str]) -> None:
        self.people = people
        self._by_group: dict[str, list[int]] = {}
        self._index(set(groups))

    def _index(self, groups: set[str]) -> None:
        for group in groups:
            self._by_group[group] = []
        for index, person in enumerate(self.people):
            for group in person.groups & groups:
                self._by_group[group].append(index)

    def candidates(self, matches: Iterable[Match | None]) -> Collection[int]:
        """Indexes of the people any of the matches could select (None matches nobody)."""
        present = [m for m in matches if m is not None]
        if any(m.everyone or not m.groups for m in present):
            return range(len(self.people))
        missing = {g for m in present for g in m.groups if g not in self._by_group}
        if missing:
            self._index(missing)
        found: set[int] = set()
        for match in present:
            for group in match.groups:
                found.update(self._by_group[group])
        return found


def _groups_named(old: PolicySet, new: PolicySet, changed: ChangedEntitlements) -> set[str]:
    """The groups the comparison will look people up by: those of every changed rule."""
    ids = {*changed.who, *changed.terms, *changed.approvers}
    matches: list[Match] = [*changed.deny_matches]
    for policy in (old, new):
        matches += [p.match for p in policy.people] + [*policy.auditors, *policy.admins]
        for ent in policy.entitlements:
            if ent.id in ids:
                matches.append(ent.allow)
                if ent.approval is not None:
                    matches.append(ent.approval.approvers)
    return {group for match in matches for group in match.groups}


def access_changes(
    old: Evaluator,
    new: Evaluator,
    people: Sequence[DirectoryPerson],
    now: datetime,
    changed: ChangedEntitlements,
) -> AccessChanges:
    """Compare, for each person, what the old and the new policy let them use or approve."""
    directory = _Directory(people, _groups_named(old.policy, new.policy, changed))
    persons = [old.resolve(_identity(p, _kind_claim(old.policy))) for p in people]
    before = _Side(old, persons, now)
    after = _Side(new, _resolved(directory, before, new), now)
    return _Comparison(directory, before, after, changed).run()


def _resolved(directory: _Directory, before: _Side, new: Evaluator) -> list[Person]:
    """The people as the new policy sees them, resolving again only whom a changed rule selects."""
    old, policy, persons = before.evaluator.policy, new.policy, before.persons
    changed: list[Match] | None = None  # None: anyone's kind may differ
    if old.default_kind == policy.default_kind and _kind_claim(old) == _kind_claim(policy):
        gone = [r for r in old.people if r not in policy.people]
        came = [r for r in policy.people if r not in old.people]
        # With the other rules in the same order, only a changed rule can tell anyone apart.
        if [r for r in old.people if r not in gone] == [r for r in policy.people if r not in came]:
            changed = [r.match for r in (*gone, *came)]
    if changed == []:
        return persons
    indexes: Iterable[int] = range(len(persons))
    if changed is not None:
        rules = [CompiledMatch(m) for m in changed]
        indexes = [
            index
            for index in directory.candidates(changed)
            if any(_selects_any_kind(rule, before.facts[index]) for rule in rules)
        ]
    kind_claim = _kind_claim(policy)
    resolved = list(persons)
    for index in indexes:
        resolved[index] = new.resolve(_identity(directory.people[index], kind_claim))
    return resolved


def _selects_any_kind(rule: CompiledMatch, facts: Facts) -> bool:
    # A people rule sees the kind known so far, which the rules before it may have changed.
    email, groups, kind, claims = facts
    kinds = KINDS if rule.kinds else (kind,)
    return any(rule.matches(email, groups, k, claims) for k in kinds)


def _record(movers: Movers, key: str, email: str, before: bool, after: bool) -> None:
    if before != after:
        gained, lost = movers.setdefault(key, ([], []))
        (gained if after else lost).append(email)


class _Comparison:
    """One pass over what changed, filling an AccessChanges."""

    def __init__(
        self, directory: _Directory, before: _Side, after: _Side, changed: ChangedEntitlements
    ) -> None:
        self.directory = directory
        self.people = directory.people
        self.before = before
        self.after = after
        self.changed = changed
        self.result = AccessChanges()
        self.moved: set[int] = set()
        self.denied: set[int] = set()

    def run(self) -> AccessChanges:
        """Compare people, then entitlements, deny rules, terms, approvers and broker roles."""
        self._people()
        self._entitlements()
        self._deny_rules()
        self._terms()
        self._approvers()
        self._roles()
        return self.result

    def _affected(self, ent_id: str, index: int) -> None:
        self.result.affected.setdefault(ent_id, []).append(self.people[index].email)

    def _people(self) -> None:
        """Note every person whose facts changed; compare all access of those it may change."""
        now = self.before.now
        pairs = zip(self.before.persons, self.after.persons, strict=True)
        for index, (was, is_) in enumerate(pairs):
            if was is is_:  # not resolved again: no changed people rule selects them
                continue
            facts = fact_changes(
                (was.kind, was.valid_until, was.sponsor), (is_.kind, is_.valid_until, is_.sponsor)
            )
            if facts:
                self.result.people.append(PersonDiff(self.people[index].email, tuple(facts)))
            if was.kind != is_.kind or was.ended(now) != is_.ended(now):
                self.moved.add(index)
        for index in sorted(self.moved):
            held, holds = self.before.access(index), self.after.access(index)
            email = self.people[index].email
            for ent_id in held ^ holds:
                _record(self.result.access, ent_id, email, ent_id in held, ent_id in holds)

    def _entitlements(self) -> None:
        """Entitlements added, removed or allowed to others, for whom either allow selects."""
        before, after, changed = self.before, self.after, self.changed
        for ent_id in sorted(changed.who):
            ents = (before.evaluator.entitlement(ent_id), after.evaluator.entitlement(ent_id))
            candidates = self.directory.candidates(e.allow if e else None for e in ents)
            denies, terms = ent_id in changed.deny, ent_id in changed.terms
            for index in sorted(set(candidates) - self.moved):
                selected = before.selects(index, ent_id), after.selects(index, ent_id)
                if selected[0] and selected[1] and not denies:
                    # Same person, same deny rules: both sides decide alike, so a decision is
                    # needed only to list who keeps it on new terms.
                    if terms and after.verdict(index, ent_id):
                        self._affected(ent_id, index)
                    continue
                had = selected[0] and before.verdict(index, ent_id)
                has = selected[1] and after.verdict(index, ent_id)
                _record(self.result.access, ent_id, self.people[index].email, had, has)
                if had and has and terms:
                    self._affected(ent_id, index)

    def _deny_rules(self) -> None:
        """Entitlements whose deny rules changed, for the people those rules select.

        A deny rule on ``*`` touches every entitlement but usually few people, so this goes
        person by person, through an index from group to entitlement.
        """
        ids = set(self.changed.deny) - set(self.changed.who)
        if not ids:
            return
        before, after = self.before, self.after
        rules = [CompiledMatch(m) for m in self.changed.deny_matches]
        ents = (after.evaluator.entitlement(i) for i in sorted(ids))
        by_group, unindexed = _by_group(e for e in ents if e is not None)
        for index in sorted(set(self.directory.candidates(self.changed.deny_matches)) - self.moved):
            if not any(r.matches(*before.facts[index]) for r in rules):
                continue  # unmoved, so the same facts on both sides
            self.denied.add(index)
            candidates = set(unindexed)
            for group in before.facts[index][1]:
                candidates.update(by_group.get(group, ()))
            email = self.people[index].email
            for ent_id in sorted(candidates):
                if after.selects(index, ent_id):  # the allow rule is the same on both sides
                    verdicts = before.verdict(index, ent_id), after.verdict(index, ent_id)
                    _record(self.result.access, ent_id, email, *verdicts)

    def _terms(self) -> None:
        """Who keeps an entitlement whose conditions changed (and so meets the new ones)."""
        before, after = self.before, self.after
        for ent_id in sorted(set(self.changed.terms) - set(self.changed.who)):
            ent = after.evaluator.entitlement(ent_id)
            for index in sorted(self.directory.candidates([ent.allow if ent else None])):
                if not after.allows(index, ent_id):
                    continue
                # Whom nothing moved had it before exactly when they have it now.
                unmoved = index not in self.moved and index not in self.denied
                if unmoved or before.allows(index, ent_id):
                    self._affected(ent_id, index)

    def _approvers(self) -> None:
        """Who may newly approve, or no longer approve, requests for an entitlement."""
        old, new, now = self.before.evaluator, self.after.evaluator, self.before.now
        ids = set(self.changed.approvers)
        if self.moved:  # an engagement that ends (or a kind that changes) touches every approval
            ids.update(e.id for p in (old, new) for e in p.policy.entitlements if e.approval)
        for ent_id in sorted(ids):
            ents = (old.entitlement(ent_id), new.entitlement(ent_id))
            matches = [e.approval.approvers if e and e.approval else None for e in ents]
            indexes = self.directory.candidates(matches) if ent_id in self.changed.approvers else ()
            for index in sorted({*indexes, *self.moved}):
                approves = (
                    old.can_approve(self.before.persons[index], ent_id, now),
                    new.can_approve(self.after.persons[index], ent_id, now),
                )
                _record(self.result.approvers, ent_id, self.people[index].email, *approves)

    def _roles(self) -> None:
        """Who becomes or stops being an auditor or admin of the broker."""
        old, new, now = self.before.evaluator, self.after.evaluator, self.before.now
        for name, was, is_, check in (
            ("auditors", old.policy.auditors, new.policy.auditors, Evaluator.is_auditor),
            ("admins", old.policy.admins, new.policy.admins, Evaluator.is_admin),
        ):
            indexes = set(self.moved)
            if was != is_:
                indexes.update(self.directory.candidates([*was, *is_]))
            for index in sorted(indexes):
                held = (
                    check(old, self.before.persons[index], now),
                    check(new, self.after.persons[index], now),
                )
                _record(self.result.roles, name, self.people[index].email, *held)
