"""The long-lived keys the broker replaces: IAM users with access keys, in every account in scope.

Read-only: ``iam:ListUsers``, ``iam:ListAccessKeys``, ``iam:ListUserTags`` and
``iam:GetAccessKeyLastUsed``; nothing is ever changed or deleted. Each key is reported with its
age, when and where it was last used, the person its user looks like (an ``email`` tag, a user
name that is an address, or ``<name>@<email domain>``), whether the broker's policy already gives
that person access (then the key can be replaced by broker access), and a suggested action.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.auth.identity import identity_of
from broker.models import Principal
from broker.policy import Evaluator, Identity, RequestContext, Verdict

EMAIL_TAGS = ("email", "Email", "mail", "owner-email", "Owner")
STALE_DAYS = 90
NEVER_USED_GRACE_DAYS = 7


@dataclass(frozen=True)
class KeyFinding:
    """One access key of one IAM user, and what to do about it."""

    account: str
    user_name: str
    user_arn: str
    access_key_id: str
    status: str
    created: str
    age_days: int
    last_used: str
    last_used_service: str
    last_used_region: str
    days_since_use: int | None
    person: str
    person_known: bool
    covered_by: list[str]
    suggestion: str

    def row(self) -> dict[str, Any]:
        """The finding as a flat row (lists joined), for CSV and tables."""
        data = asdict(self)
        data["covered_by"] = " ".join(self.covered_by)
        data["days_since_use"] = "" if self.days_since_use is None else self.days_since_use
        return data


@dataclass(frozen=True)
class PersonMatch:
    """Who an IAM user looks like, and which entitlements the policy gives them."""

    email: str
    known: bool
    covered_by: list[str]


class PersonMapper:
    """Maps IAM users to people: tags, address-like names, or a name at an email domain."""

    def __init__(
        self,
        evaluator: Evaluator,
        session: Session | None,
        *,
        email_domain: str | None = None,
        now: datetime,
    ) -> None:
        self.evaluator = evaluator
        self.session = session
        self.email_domain = (email_domain or "").lstrip("@").lower() or None
        self.now = now

    def email_for(self, user_name: str, tags: Mapping[str, str]) -> str:
        """The address the user most likely belongs to ('' when nothing suggests one)."""
        for tag in EMAIL_TAGS:
            value = tags.get(tag, "")
            if "@" in value:
                return value.strip().lower()
        if "@" in user_name:
            return user_name.lower()
        if self.email_domain:
            return f"{user_name.lower()}@{self.email_domain}"
        return ""

    def match(self, email: str) -> PersonMatch:
        """Whether the broker knows this person, and what the policy lets them use."""
        if not email:
            return PersonMatch("", False, [])
        principal = None
        if self.session is not None:
            principal = self.session.scalars(
                select(Principal).where(func.lower(Principal.email) == email)
            ).first()
        if principal is not None:
            identity = identity_of(principal.issuer, principal.subject, principal.claims, {})
        else:
            identity = Identity(issuer="keys-report", subject=email, email=email)
        person = self.evaluator.resolve(identity)
        context = RequestContext(now=self.now)
        covered = [
            d.entitlement_id
            for d in self.evaluator.decide_all(person, context)
            if d.verdict in (Verdict.ALLOW, Verdict.APPROVAL)
        ]
        return PersonMatch(email, principal is not None, covered)


def suggest(finding: Mapping[str, Any]) -> str:
    """What to do with a key, most urgent reason first."""
    age = int(finding["age_days"])
    unused = finding["days_since_use"]
    if finding["status"] != "Active":
        return "delete: the key is inactive"
    if unused is None and age > NEVER_USED_GRACE_DAYS:
        return f"delete: never used in {age} days"
    if unused is not None and unused > STALE_DAYS:
        return f"deactivate, then delete: unused for {unused} days"
    if finding["covered_by"]:
        return (
            "replace with broker access ("
            + ", ".join(finding["covered_by"][:3])
            + "), then delete the key"
        )
    if age > STALE_DAYS:
        return f"rotate ({age} days old) or move the workload to a role"
    if not finding["person"]:
        return "review: no person matched (a service user? give it an owner tag)"
    return "review with its owner"


class KeyInventory:
    """Lists the access keys of every IAM user in each account given (read-only)."""

    def __init__(
        self,
        accounts: Mapping[str, Any],
        mapper: PersonMapper,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self.accounts = dict(accounts)
        self.mapper = mapper
        self.clock = clock

    def report(self) -> list[KeyFinding]:
        """Every key in every account, oldest first within an account."""
        now = self.clock()
        findings: list[KeyFinding] = []
        for account, iam in self.accounts.items():
            for user in _paged(iam, "list_users", "Users"):
                name = str(user["UserName"])
                tags = {
                    t["Key"]: t["Value"]
                    for t in _paged(iam, "list_user_tags", "Tags", UserName=name)
                }
                email = self.mapper.email_for(name, tags)
                person = self.mapper.match(email)
                keys = _paged(iam, "list_access_keys", "AccessKeyMetadata", UserName=name)
                for key in sorted(keys, key=lambda k: k["CreateDate"]):
                    findings.append(self._finding(iam, account, user, key, person, now))
        return findings

    def _finding(
        self,
        iam: Any,
        account: str,
        user: Mapping[str, Any],
        key: Mapping[str, Any],
        person: PersonMatch,
        now: datetime,
    ) -> KeyFinding:
        created: datetime = key["CreateDate"]
        used = iam.get_access_key_last_used(AccessKeyId=key["AccessKeyId"])["AccessKeyLastUsed"]
        last: datetime | None = used.get("LastUsedDate")
        facts: dict[str, Any] = {
            "account": account,
            "user_name": str(user["UserName"]),
            "user_arn": str(user.get("Arn", "")),
            "access_key_id": str(key["AccessKeyId"]),
            "status": str(key.get("Status", "")),
            "created": created.isoformat(),
            "age_days": (now - created).days,
            "last_used": last.isoformat() if last else "",
            "last_used_service": "" if not last else str(used.get("ServiceName", "")),
            "last_used_region": "" if not last else str(used.get("Region", "")),
            "days_since_use": (now - last).days if last else None,
            "person": person.email,
            "person_known": person.known,
            "covered_by": person.covered_by,
        }
        return KeyFinding(**facts, suggestion=suggest(facts))


def _paged(client: Any, operation: str, field: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    for page in client.get_paginator(operation).paginate(**params):
        items.extend(page.get(field, []))
    return items


COLUMNS = tuple(KeyFinding.__dataclass_fields__)


def as_csv(findings: Iterable[KeyFinding]) -> str:
    """The report as CSV with a header row."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for finding in findings:
        writer.writerow(finding.row())
    return out.getvalue()


def as_json(findings: Sequence[KeyFinding]) -> str:
    """The report as a JSON list."""
    return json.dumps([asdict(f) for f in findings], indent=2) + "\n"


def as_table(findings: Sequence[KeyFinding]) -> str:
    """The report for a terminal: one line per key."""
    if not findings:
        return "No IAM user has an access key.\n"
    lines = [
        f"{'account':<12}  {'user':<24}  {'key':<20}  {'age':>5}  {'last used':<25}  suggestion"
    ]
    for f in findings:
        used = (
            f"{f.days_since_use} d ago ({f.last_used_service})"
            if f.days_since_use is not None
            else "never"
        )
        lines.append(
            f"{f.account:<12}  {f.user_name[:24]:<24}  {f.access_key_id:<20}  "
            f"{f.age_days:>4}d  {used[:25]:<25}  {f.suggestion}"
        )
    return "\n".join(lines) + "\n"
