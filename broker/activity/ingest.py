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
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.activity.attribution import Attribution, Attributor
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
from broker.activity.ledger import Claim, FileLedger, insert_for
from broker.activity.records import activity_row
from broker.activity.responses import CUT_OFF, REVOKED, DetectionResponder
from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.models import ActivityRecord

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
        self.keep_going = keep_going
        self.attributor = Attributor()
        self.audit = AuditLog(clock)
        self.ledger = FileLedger(
            database,
            source.bucket,
            holder=holder,
            clock=clock,
            stale_after=source.claim_stale,
            forget_after=max(source.retention, source.lookback * 4),
        )

    # -- passes ----------------------------------------------------------------------------------

    def scan(self) -> IngestResult:
        """List every region prefix from its cursor and read the files not read yet."""
        result = IngestResult()
        self.attributor.forget_misses()
        for key in self.ledger.stale():  # their reader stopped mid-file
            result.files.append(self.ingest_key(key))
        for where in self.prefixes():
            if not self.keep_going():
                break
            self._scan_prefix(where, result)
        self.ledger.prune()
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
        cursor = self.ledger.cursor(name)
        settled = cursor
        blocked = False
        for keys in self._listing(where, cursor):
            known = self.ledger.known(keys)
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
                self.ledger.save_cursor(name, settled)
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
        claim = self.ledger.claim(key)
        if claim is None:
            return FileOutcome(key, "skipped")
        if not where.expected:
            return self._malformed(claim, "not a CloudTrail log file name")
        try:
            body: bytes = self.s3.get_object(Bucket=self.source.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                return self._malformed(claim, "the file is gone from the bucket")
            return self._failed(claim, f"S3 refused the read ({code})")
        except BotoCoreError as exc:
            return self._failed(claim, f"S3 could not be reached ({exc})")
        try:
            records = read_log_file(body)
        except MalformedLogFile as exc:
            return self._malformed(claim, str(exc))
        good = [r for r in records if record_problem(r) is None]
        problems = sorted({p for r in records if (p := record_problem(r)) is not None})
        try:
            return self._settle(claim, good, len(records) - len(good), problems)
        except _ClaimLost:
            log.warning("CloudTrail file %s was taken over by another scheduler", key)
            return FileOutcome(key, "lost")
        except SQLAlchemyError as exc:
            return self._failed(claim, f"database write failed ({exc})")
        except Exception as exc:  # content nobody foresaw: report and skip, never stop reading
            log.exception("CloudTrail file %s could not be processed", key)
            return self._malformed(claim, f"could not be processed ({type(exc).__name__}: {exc})")

    def _settle(
        self,
        claim: Claim,
        records: Sequence[Mapping[str, Any]],
        bad: int,
        problems: Sequence[str],
    ) -> FileOutcome:
        view = self.policy()
        with self.db.read_session() as session:
            attributed = self.attributor.attribute_batch(session, records)
        hits = [(r, a, h) for r, a in attributed for h in view.engine.match(r, a)]
        key = claim.key
        outcome = FileOutcome(key, "done", records=len(records) + bad, attributed=len(attributed))
        now = self.clock()
        with self.db.session() as session:
            if not self.ledger.settle(
                session,
                claim,
                "done",
                records=len(records) + bad,
                attributed=len(attributed),
                bad_records=bad,
                error="; ".join(problems)[:2000] or None,
            ):
                raise _ClaimLost(key)
            self._store(session, attributed, claim.file_id)
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
        insert = insert_for(self.db, table).on_conflict_do_nothing(index_elements=["event_id"])
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
        """Record, answer and audit a detection (once per rule and event) with the file."""
        result = view.responder.fire(session, hit, found, record, now=now)
        if result is None:
            return  # this rule fired on this event before (the same event in another file)
        outcome.detections.append(hit.rule.id)
        if result in (REVOKED, CUT_OFF):
            outcome.responses += 1
            self.attributor.forget_grants()  # later records of this batch see the grant ended

    # -- outcomes ----------------------------------------------------------------------------

    def _malformed(self, claim: Claim, why: str) -> FileOutcome:
        """Mark a file skipped for good and report it (audit event, counted in metrics)."""
        key = claim.key
        log.warning("CloudTrail file s3://%s/%s skipped: %s", self.source.bucket, key, why)
        with self.db.session() as session:
            if not self.ledger.settle(session, claim, "malformed", error=why[:2000]):
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

    def _failed(self, claim: Claim, why: str) -> FileOutcome:
        """Give the claim back so the file is read on a later pass."""
        log.warning(
            "CloudTrail file s3://%s/%s not read, will retry: %s",
            self.source.bucket,
            claim.key,
            why,
        )
        self.ledger.release(claim)
        return FileOutcome(claim.key, "failed", error=why)

    def _record(self, session: Session, version: str, event: NewEvent) -> None:
        context = EventContext(actor="scheduler", client="scheduler", policy_version=version)
        self.audit.append(session, context, event)
