"""Reading CloudTrail files from S3 once across schedulers, with a durable cursor per prefix.

**Once.** A file is *claimed* by inserting its row in ``cloudtrail_files`` (unique bucket and
key) with a random claim token; a scheduler that loses that race skips the file. Its records,
detections and responses are written in one transaction that also marks the file done, and
only while the claim token is still this scheduler's: a claim whose holder died mid-file goes
stale and is taken over (the slow holder, if alive, then fails to commit and rolls back).

**Cursor.** Each region prefix (``.../AWSLogs/<account>/CloudTrail/<region>/``) keeps the last
key settled in ``activity_cursors``. A scan lists from a little before it (``lookback``: the
file names carry their delivery time, and CloudTrail can deliver a file a few minutes after a
later one), skips keys the table already has, and moves the cursor forward, never past a file
that failed for a reason worth retrying (S3 unreachable). A new prefix starts ``backfill`` ago.

**Queue.** With an SQS queue receiving the bucket's S3 event notifications, files are read
within seconds of landing; the periodic scan still runs, as a safety net.

**Malformed** files (not gzip, not JSON, not ``{"Records": [...]}``, oversized, unexpected
names) are marked ``malformed``, audited (``cloudtrail.file_malformed``) and counted; they never
stop the reader, and the cursor moves past them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.activity.attribution import Attribution, Attributor, activity_row
from broker.activity.cloudtrail import (
    LogKey,
    MalformedLogFile,
    key_at,
    notified_keys,
    parse_key,
    read_log_file,
    record_problem,
)
from broker.activity.detections import DetectionEngine, Hit
from broker.activity.responses import ALERTED, CUT_OFF, NO_GRANT, REVOKED, DetectionResponder
from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.models import ActivityCursor, ActivityRecord, CloudTrailFile, Detection, new_id

log = logging.getLogger(__name__)

INSERT_CHUNK = 1000


@dataclass(frozen=True)
class TrailSource:
    """Where a trail's files are and how to read them (the BROKER_CLOUDTRAIL_* settings)."""

    bucket: str
    prefix: str = ""
    accounts: tuple[str, ...] = ()
    queue_url: str | None = None
    lookback: timedelta = timedelta(minutes=30)
    backfill: timedelta = timedelta(hours=24)
    keep_records: bool = False
    claim_stale: timedelta = timedelta(minutes=10)
    retention: timedelta = timedelta(days=7)
    queue_wait_seconds: int = 1

    @property
    def root(self) -> str:
        """The key prefix every log of the trail starts with."""
        base = self.prefix.strip("/")
        return f"{base}/AWSLogs/" if base else "AWSLogs/"


@dataclass(frozen=True)
class PolicyView:
    """What the policy in force says about detections, and who acts on them."""

    engine: DetectionEngine
    responder: DetectionResponder

    @property
    def version(self) -> str:
        """The policy version detections are decided under."""
        return self.responder.policy.version


@dataclass
class FileOutcome:
    """What happened to one file: ``done``, ``malformed``, ``skipped`` (another scheduler has
    or had it), ``lost`` (its claim was taken over), ``failed`` (retried later), ``ignored``."""

    key: str
    status: str
    records: int = 0
    attributed: int = 0
    detections: list[str] = field(default_factory=list)
    responses: int = 0
    error: str | None = None


@dataclass
class IngestResult:
    """What one pass did, file by file."""

    files: list[FileOutcome] = field(default_factory=list)

    def with_status(self, status: str) -> list[str]:
        """Keys of the files that ended with ``status``."""
        return [f.key for f in self.files if f.status == status]

    @property
    def responses(self) -> int:
        """Grants revoked or people cut off in this pass (denies are waiting to be applied)."""
        return sum(f.responses for f in self.files)


class _ClaimLost(Exception):
    """Another scheduler took this file over while it was being read."""


class CloudTrailIngestor:
    """Reads a trail's files once, attributes, detects and responds (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        s3: Any,
        source: TrailSource,
        *,
        policy: Callable[[], PolicyView],
        clock: Callable[[], datetime],
        holder: str,
        sqs: Any = None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        self.db = database
        self.s3 = s3
        self.sqs = sqs
        self.source = source
        self.policy = policy
        self.clock = clock
        self.holder = holder[:255]
        self.keep_going = keep_going
        self.attributor = Attributor()
        self.audit = AuditLog(clock)

    # -- passes ----------------------------------------------------------------------------------

    def scan(self) -> IngestResult:
        """List every region prefix from its cursor and read the files not read yet."""
        result = IngestResult()
        self.attributor.forget_misses()
        self._retry_stale(result)
        for where in self.prefixes():
            if not self.keep_going():
                break
            self._scan_prefix(where, result)
        self._prune()
        return result

    def poll_queue(self, *, max_batches: int = 10) -> IngestResult:
        """Read the files announced on the SQS queue; a message goes once its files are settled."""
        result = IngestResult()
        if self.sqs is None or not self.source.queue_url:
            return result
        self.attributor.forget_misses()
        for _ in range(max_batches):
            if not self.keep_going():
                break
            messages = self.sqs.receive_message(
                QueueUrl=self.source.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=self.source.queue_wait_seconds,
            ).get("Messages", [])
            if not messages:
                break
            for message in messages:
                outcomes = [
                    self.ingest_key(key)
                    for key in notified_keys(str(message.get("Body", "")), self.source.bucket)
                ]
                result.files.extend(outcomes)
                if all(o.status != "failed" for o in outcomes):
                    self.sqs.delete_message(
                        QueueUrl=self.source.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )
        return result

    def prefixes(self) -> list[LogKey]:
        """Every region prefix of the trail (accounts under organization ids included)."""
        found: list[LogKey] = []
        for level in self._folders(self.source.root):
            name = level[len(self.source.root) :].rstrip("/")
            accounts = self._folders(level) if name.startswith("o-") else [level]
            for account_dir in accounts:
                account = account_dir.rstrip("/").rsplit("/", 1)[-1]
                if not account.isdigit() or (
                    self.source.accounts and account not in self.source.accounts
                ):
                    continue
                for region_dir in self._folders(f"{account_dir}CloudTrail/"):
                    region = region_dir.rstrip("/").rsplit("/", 1)[-1]
                    org = name if name.startswith("o-") else None
                    found.append(LogKey(region_dir, region_dir, account, region, org, ""))
        return found

    def _folders(self, prefix: str) -> list[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        folders: list[str] = []
        for page in paginator.paginate(Bucket=self.source.bucket, Prefix=prefix, Delimiter="/"):
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return folders

    def _scan_prefix(self, where: LogKey, result: IngestResult) -> None:
        name = f"cloudtrail:{self.source.bucket}:{where.prefix}"
        cursor = self._cursor(name)
        settled = cursor
        blocked = False
        for keys in self._listing(where, cursor):
            known = self._known(keys)
            for key in keys:
                if not self.keep_going():
                    blocked = True
                    break
                outcome = FileOutcome(key, "skipped") if key in known else self.ingest_key(key)
                result.files.append(outcome)
                if outcome.status == "failed":
                    blocked = True
                elif not blocked and (settled is None or key > settled):
                    settled = key
            if settled != cursor and settled is not None:
                self._save_cursor(name, settled)
                cursor = settled
            if blocked:
                break

    def _listing(self, where: LogKey, cursor: str | None) -> Iterator[list[str]]:
        """Pages of keys from a little before the cursor (or ``backfill`` ago)."""
        at = parse_key(cursor) if cursor else None
        written = at.written_at if at is not None else None
        if written is not None:
            moment = written - self.source.lookback
        elif cursor is None:
            moment = self.clock() - self.source.backfill
        else:
            moment = None
        start = (
            key_at(where.prefix, where.account, where.region, moment)
            if moment is not None
            else str(cursor)
        )
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.source.bucket, Prefix=where.prefix, StartAfter=start
        ):
            keys = [item["Key"] for item in page.get("Contents", [])]
            if keys:
                yield keys

    # -- one file ----------------------------------------------------------------------------

    def ingest_key(self, key: str) -> FileOutcome:
        """Claim, read, attribute, detect and respond for one file; never raises for its content."""
        where = parse_key(key)
        if where is None or (self.source.accounts and where.account not in self.source.accounts):
            return FileOutcome(key, "ignored")
        claim = self._claim(key)
        if claim is None:
            return FileOutcome(key, "skipped")
        file_id, token = claim
        if not where.expected:
            return self._malformed(file_id, token, key, "not a CloudTrail log file name")
        try:
            body: bytes = self.s3.get_object(Bucket=self.source.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                return self._malformed(file_id, token, key, "the file is gone from the bucket")
            return self._failed(file_id, token, key, f"S3 refused the read ({code})")
        except BotoCoreError as exc:
            return self._failed(file_id, token, key, f"S3 could not be reached ({exc})")
        try:
            records = read_log_file(body)
        except MalformedLogFile as exc:
            return self._malformed(file_id, token, key, str(exc))
        good = [r for r in records if record_problem(r) is None]
        problems = sorted({p for r in records if (p := record_problem(r)) is not None})
        try:
            return self._settle(file_id, token, key, good, len(records) - len(good), problems)
        except _ClaimLost:
            log.warning("CloudTrail file %s was taken over by another scheduler", key)
            return FileOutcome(key, "lost")
        except SQLAlchemyError as exc:
            return self._failed(file_id, token, key, f"database write failed ({exc})")
        except Exception as exc:  # content nobody foresaw: report and skip, never stop reading
            log.exception("CloudTrail file %s could not be processed", key)
            return self._malformed(
                file_id, token, key, f"could not be processed ({type(exc).__name__}: {exc})"
            )

    def _settle(
        self,
        file_id: int,
        token: str,
        key: str,
        records: Sequence[Mapping[str, Any]],
        bad: int,
        problems: Sequence[str],
    ) -> FileOutcome:
        view = self.policy()
        with self.db.read_session() as session:
            attributed = self.attributor.attribute_batch(session, records)
        hits = [(r, a, h) for r, a in attributed for h in view.engine.match(r, a)]
        outcome = FileOutcome(key, "done", records=len(records) + bad, attributed=len(attributed))
        now = self.clock()
        with self.db.session() as session:
            owned = session.execute(
                update(CloudTrailFile)
                .where(
                    CloudTrailFile.id == file_id,
                    CloudTrailFile.claim_token == token,
                    CloudTrailFile.status == "claimed",
                )
                .values(
                    status="done",
                    done_at=now,
                    records=len(records) + bad,
                    attributed=len(attributed),
                    bad_records=bad,
                    error="; ".join(problems)[:2000] or None,
                )
            )
            if owned.rowcount != 1:  # type: ignore[attr-defined]
                raise _ClaimLost(key)
            self._store(session, attributed, file_id)
            for record, found, hit in hits:
                self._detect(session, view, record, found, hit, now, outcome)
            if bad:
                self._record(
                    session,
                    view.version,
                    NewEvent(
                        "cloudtrail.records_skipped",
                        target=f"s3://{self.source.bucket}/{key}",
                        decision="error",
                        reason="; ".join(problems)[:1000],
                        details={"skipped": bad, "read": len(records)},
                    ),
                )
        return outcome

    def _store(
        self, session: Session, attributed: Sequence[tuple[Mapping[str, Any], Any]], file_id: int
    ) -> None:
        rows = [
            activity_row(r, a, file_id=file_id, keep_record=self.source.keep_records)
            for r, a in attributed
        ]
        # On the Table, not the mapped class: a Core executemany, not the ORM's bulk path.
        table = ActivityRecord.__table__
        insert = self._insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        for start in range(0, len(rows), INSERT_CHUNK):
            session.execute(insert, rows[start : start + INSERT_CHUNK])

    def _detect(
        self,
        session: Session,
        view: PolicyView,
        record: Mapping[str, Any],
        found: Attribution,
        hit: Hit,
        now: datetime,
        outcome: FileOutcome,
    ) -> None:
        """Record a detection once per rule and event, respond, and audit both together."""
        rule = hit.rule
        event_id = str(record["eventID"])[:64]
        detection_id = new_id()
        facts = _facts(record, found)
        inserted = session.execute(
            self._insert(Detection)
            .values(
                id=detection_id,
                rule_id=rule.id,
                severity=rule.severity,
                response=rule.response,
                outcome="pending",
                event_id=event_id,
                event_time=found.event_time,
                action=found.action[:160],
                detected_at=now,
                principal_id=found.person.principal_id,
                grant_id=found.session.grant_id if found.session else None,
                session_id=found.session.session_id if found.session else None,
                details={"reasons": list(hit.reasons), **facts},
            )
            .on_conflict_do_nothing(index_elements=["rule_id", "event_id"])
            .returning(Detection.id)
        ).scalar()
        if inserted is None:
            return  # this rule fired on this event before (the same event in another file)
        result = self._respond(session, view.responder, hit, found)
        session.execute(
            update(Detection).where(Detection.id == detection_id).values(outcome=result)
        )
        outcome.detections.append(rule.id)
        if result in (REVOKED, CUT_OFF):
            outcome.responses += 1
            self.attributor.forget_grants()  # later records of this batch see the grant ended
        self._record(
            session,
            view.version,
            NewEvent(
                "detection.fired",
                target=found.person.email,
                decision="alert" if rule.response == "alert" else "revoke",
                reason=f"{rule.id}: {rule.description or '; '.join(hit.reasons)}"[:1000],
                details={
                    "detection_id": detection_id,
                    "rule": rule.id,
                    "severity": rule.severity,
                    "response": rule.response,
                    "outcome": result,
                    "notify": rule.notify,
                    "reasons": list(hit.reasons),
                    "event_id": event_id,
                    "event_time": found.event_time.isoformat(),
                    "person": found.person.email,
                    **facts,
                },
            ),
        )

    def _respond(
        self, session: Session, responder: DetectionResponder, hit: Hit, found: Attribution
    ) -> str:
        rule = hit.rule
        actor = f"detection:{rule.id}"
        reason = f"detection {rule.id}: {'; '.join(hit.reasons)}"[:1000]
        if rule.response == "alert":
            return ALERTED
        try:
            with session.begin_nested():
                if rule.response == "cut_off":
                    return responder.cut_off_in(
                        session, found.person.principal_id, actor=actor, reason=reason
                    )
                if found.session is None:
                    return NO_GRANT  # matched by source identity only: no grant to name
                return responder.revoke_in(
                    session, found.session.grant_id, actor=actor, reason=reason
                )
        except SQLAlchemyError as exc:
            log.error("detection %s could not %s: %s", rule.id, rule.response, exc)
            return "failed"

    # -- claims ------------------------------------------------------------------------------

    def _insert(self, model: Any) -> Any:
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        return dialect.insert(model)

    def _claim(self, key: str) -> tuple[int, str] | None:
        """Insert the file's row (or take over a stale claim); None when another has it."""
        now = self.clock()
        token = new_id()
        with self.db.session() as session:
            file_id = session.execute(
                self._insert(CloudTrailFile)
                .values(
                    bucket=self.source.bucket,
                    key=key,
                    status="claimed",
                    claim_token=token,
                    claimed_by=self.holder,
                    claimed_at=now,
                    attempts=1,
                    records=0,
                    attributed=0,
                    bad_records=0,
                )
                .on_conflict_do_nothing(index_elements=["bucket", "key"])
                .returning(CloudTrailFile.id)
            ).scalar()
            if file_id is not None:
                return int(file_id), token
            taken = session.execute(
                update(CloudTrailFile)
                .where(
                    CloudTrailFile.bucket == self.source.bucket,
                    CloudTrailFile.key == key,
                    CloudTrailFile.status == "claimed",
                    CloudTrailFile.claimed_at < now - self.source.claim_stale,
                )
                .values(
                    claim_token=token,
                    claimed_by=self.holder,
                    claimed_at=now,
                    attempts=CloudTrailFile.attempts + 1,
                )
                .returning(CloudTrailFile.id)
            ).scalar()
        return (int(taken), token) if taken is not None else None

    def _malformed(self, file_id: int, token: str, key: str, why: str) -> FileOutcome:
        """Mark a file skipped for good and report it (audit event, counted in metrics)."""
        log.warning("CloudTrail file s3://%s/%s skipped: %s", self.source.bucket, key, why)
        with self.db.session() as session:
            owned = session.execute(
                update(CloudTrailFile)
                .where(CloudTrailFile.id == file_id, CloudTrailFile.claim_token == token)
                .values(status="malformed", done_at=self.clock(), error=why[:2000])
            )
            if owned.rowcount != 1:  # type: ignore[attr-defined]
                return FileOutcome(key, "lost")
            self._record(
                session,
                self.policy().version,
                NewEvent(
                    "cloudtrail.file_malformed",
                    target=f"s3://{self.source.bucket}/{key}",
                    decision="error",
                    reason=why[:1000],
                    details={"bucket": self.source.bucket, "key": key},
                ),
            )
        return FileOutcome(key, "malformed", error=why)

    def _failed(self, file_id: int, token: str, key: str, why: str) -> FileOutcome:
        """Give the claim back so the file is read on a later pass."""
        log.warning(
            "CloudTrail file s3://%s/%s not read, will retry: %s", self.source.bucket, key, why
        )
        try:
            with self.db.session() as session:
                session.execute(
                    delete(CloudTrailFile).where(
                        CloudTrailFile.id == file_id,
                        CloudTrailFile.claim_token == token,
                        CloudTrailFile.status == "claimed",
                    )
                )
        except SQLAlchemyError:
            pass  # the claim goes stale and is taken over later
        return FileOutcome(key, "failed", error=why)

    def _retry_stale(self, result: IngestResult) -> None:
        """Read again the files whose claimer stopped mid-file (their claim went stale)."""
        cutoff = self.clock() - self.source.claim_stale
        with self.db.read_session() as session:
            keys = session.scalars(
                select(CloudTrailFile.key)
                .where(
                    CloudTrailFile.bucket == self.source.bucket,
                    CloudTrailFile.status == "claimed",
                    CloudTrailFile.claimed_at < cutoff,
                )
                .limit(100)
            ).all()
        for key in keys:
            result.files.append(self.ingest_key(key))

    def _known(self, keys: Sequence[str]) -> set[str]:
        with self.db.read_session() as session:
            return set(
                session.scalars(
                    select(CloudTrailFile.key).where(
                        CloudTrailFile.bucket == self.source.bucket, CloudTrailFile.key.in_(keys)
                    )
                ).all()
            )

    def _prune(self) -> None:
        """Forget settled files long behind every cursor (they are never listed again)."""
        cutoff = self.clock() - max(self.source.retention, self.source.lookback * 4)
        with self.db.session() as session:
            session.execute(
                delete(CloudTrailFile).where(
                    CloudTrailFile.status.in_(("done", "malformed")),
                    CloudTrailFile.done_at < cutoff,
                )
            )

    # -- cursors and audit -------------------------------------------------------------------

    def _cursor(self, name: str) -> str | None:
        with self.db.read_session() as session:
            row = session.get(ActivityCursor, name)
            return row.position if row is not None else None

    def _save_cursor(self, name: str, key: str) -> None:
        """Move a cursor forward (never back, whichever scheduler wrote it last)."""
        now = self.clock()
        with self.db.session() as session:
            row = session.get(ActivityCursor, name, with_for_update=True)
            if row is None:
                session.execute(
                    self._insert(ActivityCursor)
                    .values(name=name, position=key, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
            elif key > row.position:
                row.position = key
                row.updated_at = now

    def _record(self, session: Session, version: str, event: NewEvent) -> None:
        context = EventContext(actor="scheduler", client="scheduler", policy_version=version)
        self.audit.append(session, context, event)


def _facts(record: Mapping[str, Any], found: Attribution) -> dict[str, Any]:
    """What a detection names about the record, for the audit trail and notifications."""
    session = found.session
    identity = record.get("userIdentity")
    key = identity.get("accessKeyId") if isinstance(identity, dict) else None
    return {
        "action": found.action,
        "region": str(record.get("awsRegion") or ""),
        "account": str(record.get("recipientAccountId") or ""),
        "source_ip": str(record.get("sourceIPAddress") or ""),
        "error_code": str(record.get("errorCode") or ""),
        "access_key_id": key if isinstance(key, str) else "",
        "grant_id": session.grant_id if session else None,
        "session_id": session.session_id if session else None,
        "entitlement": session.entitlement_id if session else None,
        "role_arn": session.role_arn if session else None,
        "after_grant_end": found.after_grant_end,
    }
