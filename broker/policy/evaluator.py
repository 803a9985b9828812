"""Decide, for a person and a request, which entitlements they may use and why.

Order of evaluation, first failure wins: the entitlement must exist; a matching deny rule beats
any allow; a person whose engagement has ended gets nothing; the allow match must select them;
then MFA and network requirements (all failures are reported together); approval turns an allow
into "needs an approver". Everything not allowed this way is denied.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from broker.policy.matching import CompiledMatch
from broker.policy.model import KINDS, Entitlement, PolicySet

# RFC 8176 authentication method references that prove more than a password.
STRONG_AMR = frozenset(
    {"mfa", "otp", "hwk", "swk", "sc", "pop", "fpt", "face", "iris", "retina", "vbm"}
)


@dataclass(frozen=True)
class Identity:
    """Who is asking, as the identity provider says."""

    issuer: str
    subject: str
    email: str
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    amr: tuple[str, ...] = ()
    acr: str | None = None


@dataclass(frozen=True)
class Person:
    """An identity resolved against the policy's people rules."""

    identity: Identity
    kind: str
    valid_until: datetime | None = None
    sponsor: str | None = None

    def ended(self, now: datetime) -> bool:
        """True when the person's engagement is over at ``now``."""
        return self.valid_until is not None and now > self.valid_until


@dataclass(frozen=True)
class RequestContext:
    """Facts about one request: when, and from where."""

    now: datetime
    source_ip: str | None = None
    source_vpc: str | None = None

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("RequestContext.now must be timezone-aware (UTC), not a naive time")


class Verdict(StrEnum):
    """The outcome of a decision."""

    ALLOW = "allow"
    APPROVAL = "approval"  # allowed, once an approver agrees
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    """A verdict on one entitlement, with plain-English reasons (the first is the main one)."""

    entitlement_id: str
    verdict: Verdict
    reasons: tuple[str, ...]
    entitlement: Entitlement | None
    require_reason: bool
    max_duration: timedelta
    max_grant: timedelta

    @property
    def allowed(self) -> bool:
        """True for ALLOW and APPROVAL."""
        return self.verdict != Verdict.DENY


Args = tuple[str, Set[str], str, Mapping[str, Any]]


def _args(person: Person) -> Args:
    ident = person.identity
    return ident.email.lower(), ident.groups, person.kind, ident.claims


class _Asker:
    """What one evaluation call knows about the person and request, worked out once."""

    __slots__ = ("person", "ctx", "args", "mfa", "amr_used", "_address", "_networks")

    def __init__(self, person: Person, ctx: RequestContext, mfa_acr_values: Set[str]) -> None:
        ident = person.identity
        self.person = person
        self.ctx = ctx
        self.args = _args(person)
        strong = sorted(STRONG_AMR.intersection(ident.amr))
        self.mfa: str | None = None
        if strong:
            self.mfa = f"signed in with multi-factor ({', '.join(strong)})"
        elif ident.acr is not None and ident.acr in mfa_acr_values:
            self.mfa = f"signed in with multi-factor (acr {ident.acr})"
        self.amr_used = ", ".join(ident.amr) or "nothing recorded"
        self._address: ipaddress.IPv4Address | ipaddress.IPv6Address | None | bool = False
        self._networks: dict[tuple[object, ...], tuple[bool, str]] = {}

    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The request's source address, parsed once (None when absent or invalid)."""
        if self._address is False:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
            if self.ctx.source_ip:
                try:
                    address = ipaddress.ip_address(self.ctx.source_ip)
                except ValueError:
                    address = None
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
            self._address = address
        return self._address if not isinstance(self._address, bool) else None

    def network(self, ent: _Ent) -> tuple[bool, str]:
        """Whether the request comes from one of the entitlement's networks, and a sentence."""
        key = (ent.networks, ent.vpcs)
        found = self._networks.get(key)
        if found is None:
            found = self._networks[key] = _network(self, ent)
        return found


class _Ent:
    """An entitlement prepared for evaluation (a plain slotted class: thousands are built)."""

    __slots__ = ("index", "entitlement", "allow", "approvers", "networks", "vpcs", "where")

    def __init__(self, index: int, entitlement: Entitlement, where: str) -> None:
        network = entitlement.network
        self.index = index
        self.entitlement = entitlement
        self.allow = CompiledMatch(entitlement.allow)
        approval = entitlement.approval
        self.approvers = CompiledMatch(approval.approvers) if approval else None
        self.networks = network.source_ip if network else ()
        self.vpcs = frozenset(network.source_vpc) if network else frozenset()
        self.where = where


@dataclass(frozen=True)
class _Deny:
    match: CompiledMatch
    covers: frozenset[int]
    reason: str
    where: str


def _at(origin: str | None) -> str:
    return f" ({origin})" if origin else ""


class Evaluator:
    """Answers policy questions about people; build once per loaded policy and share."""

    def __init__(self, policy: PolicySet) -> None:
        self.policy = policy
        origins = policy.origins
        ordered = sorted(policy.entitlements, key=lambda e: e.id)
        self._ents: list[_Ent] = []
        self._by_id: dict[str, _Ent] = {}
        self._by_group: dict[str, list[int]] = {}
        unindexed: list[int] = []
        for index, ent in enumerate(ordered):
            compiled = _Ent(index, ent, _at(origins.get(f"entitlement:{ent.id}")))
            self._ents.append(compiled)
            self._by_id[ent.id] = compiled
            # An allow that names groups can only select members of one of them.
            if ent.allow.groups and not ent.allow.everyone:
                for group in ent.allow.groups:
                    self._by_group.setdefault(group, []).append(index)
            else:
                unindexed.append(index)
        self._unindexed = tuple(unindexed)
        self._deny: list[_Deny] = []
        for number, rule in enumerate(policy.deny):
            pattern = re.compile("|".join(fnmatch.translate(g) for g in rule.entitlements))
            covers = frozenset(e.index for e in self._ents if pattern.match(e.entitlement.id))
            where = _at(origins.get(f"deny:{number}")) or f" #{number + 1}"
            self._deny.append(_Deny(CompiledMatch(rule.match), covers, rule.reason or "", where))
        self._people = [(CompiledMatch(rule.match), rule) for rule in policy.people]
        self._auditors = [CompiledMatch(m) for m in policy.auditors]
        self._admins = [CompiledMatch(m) for m in policy.admins]

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        """Return the entitlement with this id, or None."""
        found = self._by_id.get(entitlement_id)
        return found.entitlement if found else None

    def resolve(self, identity: Identity) -> Person:
        """Apply the people rules (in order, later ones override) to an identity."""
        # The provider's word on kind counts only where the policy names the claim to read.
        claimed = identity.claims.get(self.policy.kind_claim) if self.policy.kind_claim else None
        kind = claimed if isinstance(claimed, str) and claimed in KINDS else None
        kind = kind or self.policy.default_kind
        valid_until: datetime | None = None
        sponsor: str | None = None
        email = identity.email.lower()
        for match, rule in self._people:
            if match.matches(email, identity.groups, kind, identity.claims):
                kind = rule.kind or kind
                valid_until = rule.valid_until or valid_until
                sponsor = rule.sponsor or sponsor
        return Person(identity=identity, kind=kind, valid_until=valid_until, sponsor=sponsor)

    def decide(self, person: Person, entitlement_id: str, ctx: RequestContext) -> Decision:
        """Decide one entitlement for a person; unknown ids are denied."""
        found = self._by_id.get(entitlement_id)
        if found is None:
            return _decision(
                entitlement_id,
                Verdict.DENY,
                (f"no such entitlement {entitlement_id!r}; check the id against the policy files",),
                None,
            )
        asker = self._asker(person, ctx)
        return self._decide(asker, found, self._denials(asker.args))

    def decide_all(self, person: Person, ctx: RequestContext) -> list[Decision]:
        """Decide every entitlement for a person, sorted by id."""
        asker = self._asker(person, ctx)
        denials = self._denials(asker.args)
        return [self._decide(asker, ent, denials) for ent in self._ents]

    def eligible(self, person: Person, ctx: RequestContext) -> list[Decision]:
        """Return only the entitlements a person may use (now or after approval), sorted by id."""
        if person.ended(ctx.now):
            return []
        asker = self._asker(person, ctx)
        blocked: set[int] = set()
        for rule in self._denials(asker.args):
            blocked |= rule.covers
        candidates = set(self._unindexed)
        by_group = self._by_group
        for group in person.identity.groups:
            candidates.update(by_group.get(group, ()))
        decisions = []
        ents = self._ents
        for index in sorted(candidates - blocked):
            decision = self._decide(asker, ents[index], ())
            if decision.verdict is not Verdict.DENY:
                decisions.append(decision)
        return decisions

    def is_auditor(self, person: Person, now: datetime | None = None) -> bool:
        """True when the policy names this person an auditor (and their engagement is live)."""
        return self._any(self._auditors, person, now)

    def is_admin(self, person: Person, now: datetime | None = None) -> bool:
        """True when the policy names this person an admin (and their engagement is live)."""
        return self._any(self._admins, person, now)

    def can_approve(self, person: Person, entitlement_id: str, now: datetime | None = None) -> bool:
        """True when this person is among the entitlement's approvers."""
        found = self._by_id.get(entitlement_id)
        if found is None or found.approvers is None:
            return False
        return self._any([found.approvers], person, now)

    def _asker(self, person: Person, ctx: RequestContext) -> _Asker:
        return _Asker(person, ctx, self.policy.mfa_acr_values)

    def _any(self, matches: Sequence[CompiledMatch], person: Person, now: datetime | None) -> bool:
        if person.ended(now or datetime.now(UTC)):
            return False
        args = _args(person)
        return any(m.matches(*args) for m in matches)

    def _denials(self, args: Args) -> list[_Deny]:
        return [rule for rule in self._deny if rule.match.matches(*args)]

    def _decide(self, asker: _Asker, ent: _Ent, denials: Sequence[_Deny]) -> Decision:
        e = ent.entitlement
        args = asker.args
        for rule in denials:
            if ent.index in rule.covers:
                because = rule.reason or f"{rule.match.describe()} may not use {e.id}"
                return _decision(
                    e.id,
                    Verdict.DENY,
                    (
                        f"denied by deny rule{rule.where}: {because}",
                        f"the deny rule applies because: {rule.match.why(*args)}",
                    ),
                    e,
                )
        person = asker.person
        if person.valid_until is not None and asker.ctx.now > person.valid_until:
            sponsor = f"ask your sponsor {person.sponsor}" if person.sponsor else "ask an admin"
            return _decision(
                e.id,
                Verdict.DENY,
                (
                    f"engagement ended on {person.valid_until:%Y-%m-%d %H:%M} UTC; "
                    f"{sponsor} to extend valid_until in the policy",
                ),
                e,
            )
        if not ent.allow.matches(*args):
            return _decision(
                e.id,
                Verdict.DENY,
                (f"not allowed by entitlement {e.id}{ent.where}: {ent.allow.misses(*args)}",),
                e,
            )
        because = f"entitlement {e.id}{ent.where}: {ent.allow.why(*args)}"
        problems: list[str] = []
        notes: list[str] = []
        if e.require_mfa:
            if asker.mfa:
                notes.append(asker.mfa)
            else:
                problems.append(
                    f"{e.id} requires multi-factor sign-in, and this sign-in used "
                    f"{asker.amr_used}; sign in again with MFA"
                )
        if ent.networks or ent.vpcs:
            ok, text = asker.network(ent)
            if ok:
                notes.append(text)
            else:
                problems.append(f"{e.id} {text}")
        if problems:
            return _decision(e.id, Verdict.DENY, (*problems, f"otherwise eligible by {because}"), e)
        if ent.approvers is not None:
            return _decision(
                e.id,
                Verdict.APPROVAL,
                (
                    f"needs approval by {ent.approvers.describe()} before use",
                    f"eligible by {because}",
                    *notes,
                ),
                e,
            )
        return _decision(e.id, Verdict.ALLOW, (f"allowed by {because}", *notes), e)


def _network(asker: _Asker, ent: _Ent) -> tuple[bool, str]:
    ctx = asker.ctx
    if ctx.source_vpc is not None and ctx.source_vpc in ent.vpcs:
        return True, f"request comes from {ctx.source_vpc}"
    address = asker.address()
    if address is not None:
        for network in ent.networks:
            if address.version == network.version and address in network:
                return True, f"source IP {address} is in {network}"
    allowed = [str(n) for n in ent.networks] + sorted(ent.vpcs)
    seen = f"source IP {ctx.source_ip}" if ctx.source_ip else "an unknown source address"
    return False, (
        f"may only be used from {', '.join(allowed)}, and this request came from {seen}; "
        "connect from an allowed network (office or VPN) and retry"
    )


def _decision(
    entitlement_id: str, verdict: Verdict, reasons: tuple[str, ...], ent: Entitlement | None
) -> Decision:
    # Filled through __dict__: a frozen dataclass' __init__ pays one object.__setattr__ per
    # field, which dominates eligible() when it returns hundreds of decisions. Still frozen after.
    decision = object.__new__(Decision)
    decision.__dict__.update(
        entitlement_id=entitlement_id,
        verdict=verdict,
        reasons=reasons,
        entitlement=ent,
        require_reason=ent.require_reason if ent else False,
        max_duration=ent.max_duration if ent else timedelta(0),
        max_grant=(ent.max_grant or ent.max_duration) if ent else timedelta(0),
    )
    return decision
