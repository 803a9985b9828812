"""Detection rules (the policy's ``detections:``) compiled once, then matched against records.

A rule's conditions are checked cheapest first, and the rules that can match an action are
looked up once per distinct action, so a batch of a million records costs a dictionary lookup
for most of them. Every hit says why it matched, in words fit for the audit trail.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.activity.attribution import Attribution
from broker.policy.matching import CompiledMatch
from broker.policy.model import DetectionRule, Entitlement

GLOBAL_SERVICES = frozenset(
    {
        "iam",
        "sts",
        "organizations",
        "cloudfront",
        "route53",
        "support",
        "health",
        "account",
        "signin",
        "budgets",
        "ce",
        "globalaccelerator",
        "waf",
    }
)
"""Services whose calls CloudTrail records in us-east-1 whatever region the caller uses."""


def _globs(patterns: Iterable[str], *, ignore_case: bool = False) -> re.Pattern[str] | None:
    listed = list(patterns)
    if not listed:
        return None
    return re.compile(
        "|".join(fnmatch.translate(p) for p in listed), re.IGNORECASE if ignore_case else 0
    )


@dataclass(frozen=True)
class Hit:
    """A rule that matched a record, and why."""

    rule: DetectionRule
    reasons: tuple[str, ...]


class _Compiled:
    """One rule prepared for fast checks."""

    def __init__(self, rule: DetectionRule) -> None:
        match = rule.match
        self.rule = rule
        self.actions = _globs(match.actions, ignore_case=True)
        self.resources = _globs(match.resources)
        self.regions = _globs(match.regions)
        self.not_regions = _globs(match.not_regions)
        self.params = [
            (tuple(path.split(".")), _globs([wanted] if isinstance(wanted, str) else wanted))
            for path, wanted in match.request_parameters.items()
        ]
        self.who = CompiledMatch(match.who) if match.who is not None else None
        self.entitlements = _globs(match.entitlements)

    def wants_action(self, action: str) -> bool:
        return self.actions is None or self.actions.match(action) is not None

    def check(
        self,
        record: Mapping[str, Any],
        found: Attribution,
        entitlement: Entitlement | None,
    ) -> tuple[str, ...] | None:
        """The reasons this rule matches, or None when it does not."""
        match = self.rule.match
        reasons: list[str] = [found.action] if self.actions is not None else []
        if match.outcome != "any":
            failed = bool(record.get("errorCode"))
            if failed != (match.outcome == "failed"):
                return None
        if match.after_grant_end:
            if not found.after_grant_end:
                return None
            ended = found.grant_ended_at
            reasons.append(
                "after its grant ended" + (f" ({ended:%Y-%m-%d %H:%M:%S} UTC)" if ended else "")
            )
        region = str(record.get("awsRegion") or "")
        if self.regions is not None:
            if not self.regions.match(region):
                return None
            reasons.append(f"in region {region}")
        if self.not_regions is not None:
            if self.not_regions.match(region):
                return None
            reasons.append(f"in region {region}")
        if match.outside_entitlement_region:
            why = _outside_region(found.action, region, entitlement)
            if why is None:
                return None
            reasons.append(why)
        if self.entitlements is not None:
            ent_id = found.session.entitlement_id if found.session else ""
            if not ent_id or not self.entitlements.match(ent_id):
                return None
        if self.who is not None:
            person = found.person
            if not self.who.matches(
                person.email.lower(), person.groups, person.kind, person.claims
            ):
                return None
            reasons.append(f"by {person.kind} {person.email}")
        for path, wanted in self.params:
            value = _first_match(record.get("requestParameters"), path, wanted)
            if value is None:
                return None
            reasons.append(f"{'.'.join(path)} {value}")
        if self.resources is not None:
            arns = _resource_arns(record)
            hit = next((a for a in arns if self.resources.match(a)), None)
            if hit is None:
                return None
            reasons.append(f"on {hit}")
        if match.source_ip_outside_network:
            why = _outside_network(record.get("sourceIPAddress"), entitlement)
            if why is None:
                return None
            reasons.append(why)
        return tuple(reasons)


class DetectionEngine:
    """The policy's detection rules, ready to match attributed records."""

    def __init__(
        self, rules: Sequence[DetectionRule], entitlements: Iterable[Entitlement] = ()
    ) -> None:
        self.rules = tuple(rules)
        self._compiled = [_Compiled(r) for r in self.rules]
        self._entitlements = {e.id: e for e in entitlements}
        self._by_action: dict[str, list[_Compiled]] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, record: Mapping[str, Any], found: Attribution) -> list[Hit]:
        """Every rule the record matches, in policy order.

        The broker's own AssumeRole (attributed to the session it made) is the broker's call,
        from the broker's address: no rule is about it.
        """
        if found.matched_by == "assume_role":
            return []
        candidates = self._by_action.get(found.action)
        if candidates is None:
            if len(self._by_action) > 10_000:
                self._by_action.clear()
            candidates = [c for c in self._compiled if c.wants_action(found.action)]
            self._by_action[found.action] = candidates
        if not candidates:
            return []
        entitlement = (
            self._entitlements.get(found.session.entitlement_id) if found.session else None
        )
        hits = []
        for compiled in candidates:
            reasons = compiled.check(record, found, entitlement)
            if reasons is not None:
                hits.append(Hit(compiled.rule, reasons))
        return hits


def _first_match(value: Any, path: tuple[str, ...], wanted: re.Pattern[str] | None) -> str | None:
    """The first value at ``path`` (lists fan out) that the globs accept, as text."""
    if not path:
        if isinstance(value, list):
            for item in value:
                found = _first_match(item, path, wanted)
                if found is not None:
                    return found
            return None
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            return None
        return text if wanted is None or wanted.match(text) else None
    if isinstance(value, list):
        for item in value:
            found = _first_match(item, path, wanted)
            if found is not None:
                return found
        return None
    if isinstance(value, dict) and path[0] in value:
        return _first_match(value[path[0]], path[1:], wanted)
    return None


def _resource_arns(record: Mapping[str, Any]) -> list[str]:
    found = record.get("resources")
    if not isinstance(found, list):
        return []
    return [r["ARN"] for r in found if isinstance(r, dict) and isinstance(r.get("ARN"), str)]


def _outside_region(action: str, region: str, entitlement: Entitlement | None) -> str | None:
    if entitlement is None or entitlement.region is None or not region:
        return None
    if action.split(":", 1)[0] in GLOBAL_SERVICES or region == entitlement.region:
        return None
    return f"in region {region}, not {entitlement.region} (the entitlement's region)"


def _outside_network(address: object, entitlement: Entitlement | None) -> str | None:
    if entitlement is None or entitlement.network is None or not entitlement.network.source_ip:
        return None
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return None  # an AWS service acting for the session ("ec2.amazonaws.com")
    if any(ip in net for net in entitlement.network.source_ip):
        return None
    return f"from {ip}, outside the entitlement's network"
