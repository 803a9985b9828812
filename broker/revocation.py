"""Revoking what is already out: one `BrokerRevocations` Deny policy per target role.

STS credentials cannot be recalled, but AWS evaluates the role's policies on every request, so
the broker keeps a single inline policy on each role whose Deny statements kill live sessions:

- grant scope: ``aws:PrincipalTag/broker-grant`` in the ended grants' ids (each session is tagged
  with its grant at AssumeRole), so a person's *other* active grant on the role keeps working;
- person scope: ``aws:SourceIdentity`` in a list of people and ``aws:TokenIssueTime`` before
  their cutoff; people sharing a cutoff share a statement;
- role scope: ``aws:TokenIssueTime`` before a cutoff, for every session of the role;
- session scope: ``aws:userid`` like ``*:<RoleSessionName>``, one session AWS may have made
  that the broker never recorded (AssumeRole's answer was lost). For a role session,
  ``aws:userid`` is ``<role id>:<RoleSessionName>``; the broker's session names are unique and
  hold no ``:``, ``*`` or ``?``, so the pattern matches that one session of this role and none
  of the person's other sessions.

:func:`plan_policy` turns the live revocations of one role into that policy, within the budget
IAM leaves us (10,240 characters without whitespace for all inline policies of a role, minus the
ones we do not own). It never weakens a revocation; it only ever denies more. Steps, in order:

1. Entries whose ``drop_after`` has passed are dropped: every session they targeted is expired.
2. Cutoffs are rounded up past their second (``TokenIssueTime`` has whole seconds, so a session
   issued in the same second as the revocation is still covered).
3. Lossless reductions: a person's latest cutoff covers their earlier ones; a person cutoff
   covers that person's grants and sessions that ended no later; a grant covers its sessions;
   a role-wide cutoff covers every target no later than it.
4. Exact plan: one statement for all grant ids, one for all session names, one statement per
   distinct person cutoff.
5. Over budget: people are merged into ever wider cutoff buckets (1 min, 5 min, 15 min, 1 h,
   6 h, then a single bucket); each bucket denies until the *latest* cutoff in it.
6. Still over: sessions are converted into their grant (which also cuts that grant's other
   sessions), then grants and sessions into person cutoffs (their source identity and end time,
   which also cuts that person's other grants on the role); step 5 is tried after each.
7. Still over: a role-wide cutoff absorbs the revocations with the earliest cutoffs, as few as
   possible, until the rest fits (at worst all of them: one statement with the latest cutoff).

Every lossy step (5-7) leaves a human-readable note in :attr:`PolicyPlan.compaction`; the
scheduler audits them. The same input always yields the same document.

:class:`RoleRevoker` applies a plan to a role with ``PutRolePolicy`` (or deletes the policy
when nothing is live), never touching the role's other inline policies, retrying with backoff
and raising :class:`RevocationPending` when IAM keeps failing.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import ServiceUnavailable

POLICY_NAME = "BrokerRevocations"
IAM_INLINE_BUDGET = 10_240
SESSION_TAG = "broker-grant"

Scope = Literal["grant", "person", "role", "session"]

_ONE_SECOND = timedelta(seconds=1)
_WHITESPACE = re.compile(r"\s")
# What STS accepts as a RoleSessionName: never a wildcard or the `:` of `aws:userid`.
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
# Bucket widths tried for person cutoffs, narrowest first; None means "one bucket for all".
_BUCKET_WIDTHS: tuple[timedelta | None, ...] = (
    timedelta(0),
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    None,
)


class RevocationPending(ServiceUnavailable):
    """IAM did not accept the revocation policy; it stays pending and must be retried."""

    code = "revocation_pending"


@dataclass(frozen=True)
class DenyEntry:
    """One live revocation on a role, as stored by the broker (``ref`` is its database id)."""

    scope: Scope
    cutoff: datetime
    drop_after: datetime
    source_identity: str | None = None
    grant_id: str | None = None
    ref: str = ""
    role_session_name: str | None = None

    def __post_init__(self) -> None:
        if self.cutoff.utcoffset() is None or self.drop_after.utcoffset() is None:
            raise ValueError(f"revocation {self.ref!r}: cutoff and drop_after must be tz-aware")
        if self.scope == "grant" and not self.grant_id:
            raise ValueError(f"revocation {self.ref!r}: a grant-scope entry needs grant_id")
        if self.scope == "person" and not self.source_identity:
            raise ValueError(f"revocation {self.ref!r}: a person-scope entry needs source_identity")
        if self.scope == "session" and not _SESSION_NAME.match(self.role_session_name or ""):
            raise ValueError(
                f"revocation {self.ref!r}: a session-scope entry needs a role session name of "
                "2-64 characters of letters, digits and +=,.@_-"
            )


@dataclass(frozen=True)
class PolicyPlan:
    """The `BrokerRevocations` document for one role, and how it was arrived at."""

    document: dict[str, Any] | None
    size: int
    entries_kept: tuple[DenyEntry, ...]
    entries_dropped: tuple[DenyEntry, ...]
    compaction: tuple[str, ...]
    role_wide_cutoff: datetime | None


@dataclass(frozen=True)
class ApplyResult:
    """What :meth:`RoleRevoker.apply` did: the plan, whether it wrote it, how many tries."""

    plan: PolicyPlan
    put: bool
    attempts: int


def policy_size(document: Mapping[str, Any]) -> int:
    """Characters IAM counts for a policy document: its compact JSON without any whitespace."""
    return len(_WHITESPACE.sub("", _to_json(document)))


def plan_policy(entries: Sequence[DenyEntry], *, now: datetime, budget: int) -> PolicyPlan:
    """Plan the deny policy for one role's revocations (see the module docstring for how)."""
    kept = tuple(e for e in entries if e.drop_after > now)
    dropped = tuple(e for e in entries if e.drop_after <= now)
    role_cutoff = max((_round_up(e.cutoff) for e in kept if e.scope == "role"), default=None)
    grants: dict[str, tuple[datetime, str | None]] = {}
    people: dict[str, datetime] = {}
    sessions: dict[str, _Session] = {}
    for e in kept:
        cutoff = _round_up(e.cutoff)
        if e.scope == "grant" and e.grant_id:
            old = grants.get(e.grant_id)
            grants[e.grant_id] = (max(cutoff, old[0]) if old else cutoff, e.source_identity)
        elif e.scope == "person" and e.source_identity:
            people[e.source_identity] = max(cutoff, people.get(e.source_identity, cutoff))
        elif e.scope == "session" and e.role_session_name:
            seen = sessions.get(e.role_session_name)
            latest = max(cutoff, seen.cutoff) if seen else cutoff
            sessions[e.role_session_name] = _Session(latest, e.grant_id, e.source_identity)
    if role_cutoff is None and not grants and not people and not sessions:
        return PolicyPlan(None, 0, kept, dropped, (), None)

    targets = _Targets(role_cutoff, grants, people, sessions).reduced()
    attempt = targets.fit(budget)
    if attempt is None:
        attempt = _role_wide_fallback(targets, budget)
    document, notes = attempt
    return PolicyPlan(
        document=document,
        size=policy_size(document),
        entries_kept=kept,
        entries_dropped=dropped,
        compaction=notes,
        role_wide_cutoff=_role_cutoff_of(document),
    )


@dataclass(frozen=True)
class _Session:
    """A session-scope target: issued no later than ``cutoff``, under a grant, by a person."""

    cutoff: datetime
    grant_id: str | None
    source_identity: str | None


@dataclass(frozen=True)
class _Targets:
    """Rounded, deduplicated revocation targets of one role."""

    role_cutoff: datetime | None
    grants: Mapping[str, tuple[datetime, str | None]]  # grant id -> (cutoff, source identity)
    people: Mapping[str, datetime]  # source identity -> cutoff
    sessions: Mapping[str, _Session]  # role session name -> what else would cover it

    def reduced(self) -> _Targets:
        """Drop targets another target already covers (lossless)."""
        rc = self.role_cutoff
        people = {p: c for p, c in self.people.items() if rc is None or c > rc}
        grants = {
            g: (c, who)
            for g, (c, who) in self.grants.items()
            if (rc is None or c > rc) and not (who in people and c <= people[who])
        }
        # A grant statement has no time condition: it covers every session tagged with it.
        sessions = {
            name: s
            for name, s in self.sessions.items()
            if (rc is None or s.cutoff > rc)
            and s.grant_id not in grants
            and not (s.source_identity in people and s.cutoff <= people[s.source_identity])
        }
        return _Targets(rc, grants, people, sessions)

    def with_sessions_as_grants(self) -> _Targets:
        """Turn every session that names its grant into that grant's deny (lossy)."""
        grants = dict(self.grants)
        sessions: dict[str, _Session] = {}
        for name, s in self.sessions.items():
            if s.grant_id is None:
                sessions[name] = s
                continue
            old = grants.get(s.grant_id)
            cutoff = max(s.cutoff, old[0]) if old else s.cutoff
            grants[s.grant_id] = (cutoff, (old[1] if old else None) or s.source_identity)
        return _Targets(self.role_cutoff, grants, self.people, sessions).reduced()

    def with_grants_as_people(self) -> _Targets:
        """Turn every grant and session that names its person into that person's cutoff (lossy)."""
        people = dict(self.people)
        grants: dict[str, tuple[datetime, str | None]] = {}
        for g, (c, who) in self.grants.items():
            if who is None:
                grants[g] = (c, who)
            else:
                people[who] = max(c, people.get(who, c))
        sessions: dict[str, _Session] = {}
        for name, s in self.sessions.items():
            if s.source_identity is None:
                sessions[name] = s
            else:
                people[s.source_identity] = max(s.cutoff, people.get(s.source_identity, s.cutoff))
        return _Targets(self.role_cutoff, grants, people, sessions).reduced()

    def absorbed_until(self, cutoff: datetime) -> _Targets:
        """Raise the role-wide cutoff to ``cutoff``, dropping the targets it now covers."""
        rc = cutoff if self.role_cutoff is None else max(cutoff, self.role_cutoff)
        return _Targets(rc, self.grants, self.people, self.sessions).reduced()

    def cutoffs(self) -> list[datetime]:
        """Every grant, person and session cutoff, ascending."""
        return sorted(
            [c for c, _ in self.grants.values()]
            + list(self.people.values())
            + [s.cutoff for s in self.sessions.values()]
        )

    def fit(self, budget: int) -> tuple[dict[str, Any], tuple[str, ...]] | None:
        """The least lossy document within ``budget`` without widening the role cutoff."""
        variants: list[tuple[_Targets, tuple[str, ...]]] = [(self, ())]
        base: _Targets = self
        notes: tuple[str, ...] = ()
        if any(s.grant_id is not None for s in self.sessions.values()):
            base = self.with_sessions_as_grants()
            n = len(self.sessions) - len(base.sessions)
            notes = (
                f"converted {n} session revocation(s) into grant revocations: those grants' "
                "other sessions are cut too",
            )
            variants.append((base, notes))
        if any(who is not None for _, who in base.grants.values()) or any(
            s.source_identity is not None for s in base.sessions.values()
        ):
            converted = base.with_grants_as_people()
            n = len(base.grants) - len(converted.grants)
            n += len(base.sessions) - len(converted.sessions)
            note = (
                f"converted {n} grant revocation(s) into person-wide cutoffs: "
                "those people's other grants on this role are cut too",
            )
            variants.append((converted, (*notes, *note)))
        for targets, steps in variants:
            for width in _BUCKET_WIDTHS:
                buckets = _bucket(targets.people, width)
                document = _document(targets.role_cutoff, targets.grants, buckets, targets.sessions)
                if policy_size(document) <= budget:
                    merged = (
                        ()
                        if len(buckets) == len(set(targets.people.values()))
                        else (_merge_note(len(targets.people), len(buckets), width),)
                    )
                    return document, (*steps, *merged)
        return None


def _role_wide_fallback(targets: _Targets, budget: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Absorb the fewest earliest cutoffs into a role-wide cutoff so the rest fits."""
    cutoffs = targets.cutoffs()
    final = targets
    if cutoffs:
        # Absorbing more never makes the document bigger, so search for the earliest cutoff.
        lo, hi = 0, len(cutoffs) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if targets.absorbed_until(cutoffs[mid]).fit(budget) is not None:
                hi = mid
            else:
                lo = mid + 1
        final = targets.absorbed_until(cutoffs[lo])
    attempt = final.fit(budget)
    rc = final.role_cutoff
    assert rc is not None  # noqa: S101 - absorbed_until always sets it
    remaining = len(final.grants) + len(final.people) + len(final.sessions)
    absorbed = len(targets.grants) + len(targets.people) + len(targets.sessions) - remaining
    note = (
        f"fell back to a role-wide cutoff at {_iso(rc)}: every session of this role issued "
        f"before it is denied ({absorbed} revocation(s) absorbed, {remaining} still targeted)"
    )
    if attempt is None:
        document = _document(rc, {}, [], {})
        too_big = f"even the role-wide statement alone ({policy_size(document)}) exceeds {budget}"
        return document, (note, too_big)
    document, notes = attempt
    return document, (note, *notes)


def _bucket(
    people: Mapping[str, datetime], width: timedelta | None
) -> list[tuple[datetime, list[str]]]:
    """Group people greedily into cutoff buckets at most ``width`` wide (None: one bucket)."""
    ordered = sorted(people.items(), key=lambda item: (item[1], item[0]))
    buckets: list[tuple[datetime, list[str]]] = []
    start: datetime | None = None
    for who, cutoff in ordered:
        if start is not None and (width is None or cutoff - start <= width):
            buckets[-1][1].append(who)
            buckets[-1] = (cutoff, buckets[-1][1])  # the latest cutoff in the bucket wins
        else:
            start = cutoff
            buckets.append((cutoff, [who]))
    return buckets


def _document(
    role_cutoff: datetime | None,
    grants: Mapping[str, tuple[datetime, str | None]],
    buckets: Iterable[tuple[datetime, list[str]]],
    sessions: Mapping[str, _Session],
) -> dict[str, Any]:
    statements: list[dict[str, Any]] = []
    if role_cutoff is not None:
        condition: dict[str, Any] = {"DateLessThan": {"aws:TokenIssueTime": _iso(role_cutoff)}}
        statements.append(_deny("BrokerRoleWide", condition))
    if grants:
        condition = {"StringEquals": {f"aws:PrincipalTag/{SESSION_TAG}": sorted(grants)}}
        statements.append(_deny("BrokerGrants", condition))
    if sessions:
        condition = {"StringLike": {"aws:userid": [f"*:{name}" for name in sorted(sessions)]}}
        statements.append(_deny("BrokerSessions", condition))
    for cutoff, who in buckets:
        condition = {
            "StringEquals": {"aws:SourceIdentity": sorted(who)},
            "DateLessThan": {"aws:TokenIssueTime": _iso(cutoff)},
        }
        statements.append(_deny(f"BrokerPeople{cutoff:%Y%m%dT%H%M%S}", condition))
    return {"Version": "2012-10-17", "Statement": statements}


def _deny(sid: str, condition: dict[str, Any]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Deny", "Action": "*", "Resource": "*", "Condition": condition}


def _role_cutoff_of(document: Mapping[str, Any]) -> datetime | None:
    for statement in document["Statement"]:
        if statement["Sid"] == "BrokerRoleWide":
            value = statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return None


def _merge_note(people: int, buckets: int, width: timedelta | None) -> str:
    span = "(all in one)" if width is None else f"at most {_span(width)} wide"
    return (
        f"merged {people} people into {buckets} cutoff bucket(s) {span}; "
        "each bucket denies until its latest cutoff"
    )


def _span(width: timedelta) -> str:
    seconds = int(width.total_seconds())
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds // 60} min"


def _round_up(moment: datetime) -> datetime:
    """The next whole second strictly after ``moment``, in UTC."""
    return moment.astimezone(UTC).replace(microsecond=0) + _ONE_SECOND


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _to_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def role_name_from_arn(role_arn: str) -> str:
    """``arn:aws:iam::1:role/path/to/name`` -> ``name``."""
    resource = role_arn.split(":", 5)[-1]
    if not role_arn.startswith("arn:") or not resource.startswith("role/"):
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    return resource.rsplit("/", 1)[-1]


class RoleRevoker:
    """Writes a role's `BrokerRevocations` policy through IAM, with retries."""

    def __init__(
        self,
        iam_client: Any,
        *,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 5,
        base_delay: float = 0.5,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._iam = iam_client
        self._clock = clock
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._base_delay = base_delay

    def max_session_seconds(self, role_arn: str) -> int:
        """The role's MaxSessionDuration in seconds (how long its sessions can outlive a cutoff)."""
        role = self._iam.get_role(RoleName=role_name_from_arn(role_arn))["Role"]
        return int(role["MaxSessionDuration"])

    def other_policies_size(self, role_name: str) -> int:
        """Characters used by the role's inline policies other than ours."""
        return sum(
            policy_size(doc) for doc in self._inline_policies(role_name, exclude=POLICY_NAME)
        )

    def apply(self, role_arn: str, entries: Sequence[DenyEntry]) -> ApplyResult:
        """Plan and write (or delete) the role's revocation policy; raise RevocationPending
        when IAM still fails after ``max_attempts`` tries."""
        role_name = role_name_from_arn(role_arn)
        last_error = ""
        for attempt in range(1, self._max_attempts + 1):
            try:
                plan, put = self._apply_once(role_name, entries)
                return ApplyResult(plan=plan, put=put, attempts=attempt)
            except (ClientError, BotoCoreError) as exc:
                last_error = str(exc)
            if attempt < self._max_attempts:
                self._sleep(self._base_delay * 2 ** (attempt - 1))
        raise RevocationPending(
            f"Could not update the revocation policy on role {role_name} after "
            f"{self._max_attempts} attempts: {last_error}",
            hint="The revocation stays pending and is retried; live sessions are not cut yet.",
        )

    def _apply_once(self, role_name: str, entries: Sequence[DenyEntry]) -> tuple[PolicyPlan, bool]:
        others = 0
        current: Mapping[str, Any] | None = None
        for name in self._policy_names(role_name):
            doc = self._policy_document(role_name, name)
            if name == POLICY_NAME:
                current = doc
            else:
                others += policy_size(doc)
        budget = IAM_INLINE_BUDGET - others
        plan = plan_policy(entries, now=self._clock(), budget=budget)
        if plan.document is None:
            if current is None:
                return plan, False
            try:
                self._iam.delete_role_policy(RoleName=role_name, PolicyName=POLICY_NAME)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                    raise
            return plan, False
        if plan.size > budget:
            raise RevocationPending(
                f"Role {role_name}'s other inline policies use {others} of IAM's "
                f"{IAM_INLINE_BUDGET} characters; not even a role-wide cutoff fits.",
                hint="Move some of the role's inline policies into managed policies.",
            )
        if current is not None and dict(current) == plan.document:
            return plan, False
        self._iam.put_role_policy(
            RoleName=role_name, PolicyName=POLICY_NAME, PolicyDocument=_to_json(plan.document)
        )
        return plan, True

    def _inline_policies(self, role_name: str, *, exclude: str) -> list[Mapping[str, Any]]:
        names = self._policy_names(role_name)
        return [self._policy_document(role_name, n) for n in names if n != exclude]

    def _policy_names(self, role_name: str) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, str] = {"RoleName": role_name}
        while True:
            page = self._iam.list_role_policies(**kwargs)
            names.extend(page["PolicyNames"])
            if not page.get("IsTruncated"):
                return names
            kwargs["Marker"] = page["Marker"]

    def _policy_document(self, role_name: str, name: str) -> Mapping[str, Any]:
        doc = self._iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        if isinstance(doc, str):
            decoded: Mapping[str, Any] = json.loads(urllib.parse.unquote(doc))
            return decoded
        return dict(doc)
