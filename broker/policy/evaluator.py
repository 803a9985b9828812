"""Decide, for a person and a request, which entitlements they may use and why.

Order of evaluation, first failure wins: the entitlement must exist; a matching deny rule beats
any allow; a person whose engagement has ended gets nothing; the allow match must select them;
then MFA and network requirements (all failures are reported together); approval turns an allow
into "needs an approver". Everything not allowed this way is denied.
"""

from __future__ import annotations

import fnmatch
import hashlib
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
_SOURCE_IDENTITY_RE = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)


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

    @property
    def stable_id(self) -> str:
        """An identifier fit for STS SourceIdentity (≤ 64 of ``[\\w+=,.@-]``) that never changes."""
        email = self.identity.email.lower()
        if _SOURCE_IDENTITY_RE.match(email):
            return email
        if _SOURCE_IDENTITY_RE.match(self.identity.subject):
            return self.identity.subject
        digest = hashlib.sha256(f"{self.identity.issuer}\n{self.identity.subject}".encode())
        return f"sub-{digest.hexdigest()[:48]}"

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


@dataclass(frozen=True)
class _Facts:
    email: str
    groups: Set[str]
    kind: str
    claims: Mapping[str, Any]

    @classmethod
    def of(cls, person: Person) -> _Facts:
        ident = person.identity
        return cls(ident.email.lower(), ident.groups, person.kind, ident.claims)

    def args(self) -> tuple[str, Set[str], str, Mapping[str, Any]]:
        return self.email, self.groups, self.kind, self.claims


@dataclass(frozen=True)
class _Ent:
    index: int
    entitlement: Entitlement
    allow: CompiledMatch
    approvers: CompiledMatch | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    vpcs: frozenset[str]
    where: str


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
            compiled = _Ent(
                index=index,
                entitlement=ent,
                allow=CompiledMatch(ent.allow),
                approvers=CompiledMatch(ent.approval.approvers) if ent.approval else None,
                networks=ent.network.source_ip if ent.network else (),
                vpcs=frozenset(ent.network.source_vpc if ent.network else ()),
                where=_at(origins.get(f"entitlement:{ent.id}")),
            )
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
            where = origins.get(f"deny:{number}") or f"deny rule #{number + 1}"
            self._deny.append(
                _Deny(CompiledMatch(rule.match), covers, rule.reason or "", _at(where))
            )
        self._people = [(CompiledMatch(rule.match), rule) for rule in policy.people]
        self._auditors = [CompiledMatch(m) for m in policy.auditors]
        self._admins = [CompiledMatch(m) for m in policy.admins]

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        """Return the entitlement with this id, or None."""
        found = self._by_id.get(entitlement_id)
        return found.entitlement if found else None

    def resolve(self, identity: Identity) -> Person:
        """Apply the people rules (in order, later ones override) to an identity."""
        claimed = identity.claims.get("kind")
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
                [f"no such entitlement {entitlement_id!r}; check the id against the policy files"],
                None,
            )
        facts = _Facts.of(person)
        return self._decide(person, facts, found, ctx, self._denials(facts))

    def decide_all(self, person: Person, ctx: RequestContext) -> list[Decision]:
        """Decide every entitlement for a person, sorted by id."""
        facts = _Facts.of(person)
        denials = self._denials(facts)
        return [self._decide(person, facts, ent, ctx, denials) for ent in self._ents]

    def eligible(self, person: Person, ctx: RequestContext) -> list[Decision]:
        """Return only the entitlements a person may use (now or after approval), sorted by id."""
        if person.ended(ctx.now):
            return []
        facts = _Facts.of(person)
        blocked: set[int] = set()
        for rule in self._denials(facts):
            blocked |= rule.covers
        candidates = set(self._unindexed)
        for group in facts.groups:
            candidates.update(self._by_group.get(group, ()))
        decisions = []
        for index in sorted(candidates - blocked):
            decision = self._decide(person, facts, self._ents[index], ctx, ())
            if decision.allowed:
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

    def _any(self, matches: Sequence[CompiledMatch], person: Person, now: datetime | None) -> bool:
        if person.ended(now or datetime.now(UTC)):
            return False
        facts = _Facts.of(person)
        return any(m.matches(*facts.args()) for m in matches)

    def _denials(self, facts: _Facts) -> list[_Deny]:
        return [rule for rule in self._deny if rule.match.matches(*facts.args())]

    def _decide(
        self,
        person: Person,
        facts: _Facts,
        ent: _Ent,
        ctx: RequestContext,
        denials: Sequence[_Deny],
    ) -> Decision:
        e = ent.entitlement
        for rule in denials:
            if ent.index in rule.covers:
                because = rule.reason or f"{rule.match.describe()} may not use {e.id}"
                return _decision(
                    e.id,
                    Verdict.DENY,
                    [
                        f"denied by deny rule{rule.where}: {because}",
                        f"the deny rule applies because: {rule.match.why(*facts.args())}",
                    ],
                    e,
                )
        if person.valid_until is not None and ctx.now > person.valid_until:
            sponsor = f"ask your sponsor {person.sponsor}" if person.sponsor else "ask an admin"
            return _decision(
                e.id,
                Verdict.DENY,
                [
                    f"engagement ended on {person.valid_until:%Y-%m-%d %H:%M} UTC; "
                    f"{sponsor} to extend valid_until in the policy"
                ],
                e,
            )
        if not ent.allow.matches(*facts.args()):
            return _decision(
                e.id,
                Verdict.DENY,
                [f"not allowed by entitlement {e.id}{ent.where}: {ent.allow.misses(*facts.args())}"],
                e,
            )
        granted = f"allowed by entitlement {e.id}{ent.where}: {ent.allow.why(*facts.args())}"
        problems: list[str] = []
        notes: list[str] = []
        if e.require_mfa:
            ident = person.identity
            strong = sorted(STRONG_AMR.intersection(ident.amr))
            if strong:
                notes.append(f"signed in with multi-factor ({', '.join(strong)})")
            elif ident.acr is not None and ident.acr in self.policy.mfa_acr_values:
                notes.append(f"signed in with multi-factor (acr {ident.acr})")
            else:
                used = ", ".join(ident.amr) or "nothing recorded"
                problems.append(
                    f"{e.id} requires multi-factor sign-in, and this sign-in used {used}; "
                    "sign in again with MFA"
                )
        if ent.networks or ent.vpcs:
            ok, text = _network(ent, ctx)
            (notes if ok else problems).append(text)
        if problems:
            return _decision(e.id, Verdict.DENY, [*problems, granted], e)
        if ent.approvers is not None:
            who = ent.approvers.describe()
            return _decision(
                e.id,
                Verdict.APPROVAL,
                [f"needs approval by {who} before use", granted, *notes],
                e,
            )
        return _decision(e.id, Verdict.ALLOW, [granted, *notes], e)


def _network(ent: _Ent, ctx: RequestContext) -> tuple[bool, str]:
    if ctx.source_vpc is not None and ctx.source_vpc in ent.vpcs:
        return True, f"request comes from {ctx.source_vpc}"
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if ctx.source_ip:
        try:
            address = ipaddress.ip_address(ctx.source_ip)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
    if address is not None:
        for network in ent.networks:
            if address.version == network.version and address in network:
                return True, f"source IP {address} is in {network}"
    allowed = [str(n) for n in ent.networks] + sorted(ent.vpcs)
    seen = f"source IP {ctx.source_ip}" if ctx.source_ip else "an unknown source address"
    return False, (
        f"{ent.entitlement.id} may only be used from {', '.join(allowed)}, and this request came "
        f"from {seen}; connect from an allowed network (office or VPN) and retry"
    )


def _decision(
    entitlement_id: str, verdict: Verdict, reasons: Sequence[str], ent: Entitlement | None
) -> Decision:
    return Decision(
        entitlement_id=entitlement_id,
        verdict=verdict,
        reasons=tuple(reasons),
        entitlement=ent,
        require_reason=ent.require_reason if ent else False,
        max_duration=ent.max_duration if ent else timedelta(0),
        max_grant=ent.grant_length if ent else timedelta(0),
    )
