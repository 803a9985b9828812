"""CloudTrail files in a moto bucket: attribution to the right person and grant, malformed files
skipped and reported, each file read once by two readers, a restart resumes from the cursor."""

from __future__ import annotations

import gzip
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from activitybed import ActivityBed, make_bed
from prometheus_client import CollectorRegistry, generate_latest
from schedbed import issue
from sqlalchemy import func, select
from trailbed import assume_role_record, call_record, log_key, other_record, pack, run_instances

from broker.activity.ingest import CloudTrailIngestor
from broker.activity.metrics import ActivityCollector
from broker.db import Database, get_database
from broker.models import ActivityCursor, ActivityRecord, AuditEvent, CloudTrailFile, utcnow


def test_records_are_joined_to_their_person_grant_and_session(bed: ActivityBed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    cora = bed.token("cora@contractor.example", ("developers",))
    a = issue(bed, alice, "app-read")
    c = issue(bed, cora, "app-read")
    ka, kc = bed.key_of(a), bed.key_of(c)
    now = utcnow()
    assert bed.trail is not None
    bed.trail.put(
        [
            assume_role_record(ka, now),
            call_record(
                ka,
                now,
                "s3.amazonaws.com",
                "GetObject",
                params={"bucketName": "app-bucket", "key": "report.csv"},
            ),
            other_record(now),
            assume_role_record(kc, now),
            call_record(kc, now, "ec2.amazonaws.com", "DescribeInstances"),
        ],
        at=now,
    )
    result = bed.ingestor().scan()
    assert [f.status for f in result.files] == ["done"]
    assert (result.files[0].records, result.files[0].attributed) == (5, 4)
    with get_database(bed.app).read_session() as session:
        rows = session.scalars(select(ActivityRecord).order_by(ActivityRecord.id)).all()
        got = [(r.action, r.matched_by, r.grant_id, r.session_id) for r in rows]
        assert got == [
            ("sts:AssumeRole", "assume_role", a["grant_id"], a["session_id"]),
            ("s3:GetObject", "access_key", a["grant_id"], a["session_id"]),
            ("sts:AssumeRole", "assume_role", c["grant_id"], c["session_id"]),
            ("ec2:DescribeInstances", "access_key", c["grant_id"], c["session_id"]),
        ]
        assert rows[1].summary == {"bucketName": "app-bucket"}
        assert rows[0].record is None  # compact unless BROKER_CLOUDTRAIL_STORE_RECORDS
        assert {r.entitlement_id for r in rows} == {"app-read"}
        assert not any(r.after_grant_end for r in rows)


def _scan(reader: CloudTrailIngestor) -> list[str]:
    return reader.scan().with_status("done")


def _files(bed: ActivityBed) -> dict[str, tuple[str, int]]:
    with get_database(bed.app).read_session() as session:
        rows = session.execute(
            select(CloudTrailFile.key, CloudTrailFile.status, CloudTrailFile.attempts)
        ).all()
    return {key: (status, attempts) for key, status, attempts in rows}


def _audit(bed: ActivityBed, action: str) -> list[AuditEvent]:
    with get_database(bed.app).read_session() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            ).all()
        )


def test_malformed_files_are_skipped_reported_and_passed(bed: ActivityBed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    key = bed.key_of(issue(bed, alice, "app-read"))
    assert bed.trail is not None
    start = utcnow() - timedelta(minutes=20)
    at = [start + timedelta(minutes=i) for i in range(7)]
    bad = {
        bed.trail.put_raw(log_key(at[0]), b"plain text, not gzip"): "not a gzip file",
        bed.trail.put_raw(log_key(at[1]), pack([])[:-9]): "gzip data ends early",
        bed.trail.put_raw(log_key(at[2]), gzip.compress(b"{not json")): "not JSON",
        bed.trail.put_raw(log_key(at[3]), gzip.compress(b'{"records": []}')): (
            "not a CloudTrail log"
        ),
        bed.trail.put_raw(log_key(at[4]).replace(".json.gz", ".txt"), b"x"): "not a CloudTrail",
    }
    partly = bed.trail.put(
        [call_record(key, at[5], "s3.amazonaws.com", "GetObject"), {"eventID": "x"}, 7],
        at=at[5],
    )
    good = bed.trail.put([call_record(key, at[6], "s3.amazonaws.com", "ListBucket")], at=at[6])

    result = bed.ingestor().scan()  # never raises for what a file holds
    assert sorted(result.with_status("malformed")) == sorted(bad)
    assert sorted(result.with_status("done")) == sorted([partly, good])
    for outcome in result.files:
        if outcome.key in bad:
            assert outcome.error is not None and bad[outcome.key] in outcome.error
    reported = _audit(bed, "cloudtrail.file_malformed")
    assert sorted(e.details["key"] for e in reported) == sorted(bad)
    skipped = _audit(bed, "cloudtrail.records_skipped")
    assert [e.details["skipped"] for e in skipped] == [2]
    assert "a record is not a JSON object" in str(skipped[0].reason)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ActivityCollector(get_database(bed.app)))
    text = generate_latest(registry).decode()
    assert 'broker_cloudtrail_files{status="malformed"} 5.0' in text
    assert 'broker_cloudtrail_files{status="done"} 2.0' in text
    assert "broker_activity_records 2.0" in text

    again = bed.ingestor().scan()  # the cursor moved past them: nothing read twice
    assert not again.with_status("done") and not again.with_status("malformed")
    assert all(status in ("done", "malformed") for status, _ in _files(bed).values())


def test_two_readers_read_each_file_once(bed: ActivityBed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    key = bed.key_of(issue(bed, alice, "app-read"))
    assert bed.trail is not None
    start = utcnow() - timedelta(minutes=40)
    keys = []
    for i in range(24):
        at = start + timedelta(minutes=i)
        records = [call_record(key, at, "s3.amazonaws.com", "GetObject") for _ in range(5)]
        keys.append(bed.trail.put(records + [other_record(at)], at=at))
    readers = [bed.ingestor("node-a"), bed.ingestor("node-b")]
    results: list[list[str]] = [[], []]
    gate = threading.Barrier(2)

    def run(index: int) -> None:
        gate.wait()
        results[index] = _scan(readers[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    read = results[0] + results[1]
    assert sorted(read) == sorted(keys), (len(results[0]), len(results[1]))
    assert {status_attempts for status_attempts in _files(bed).values()} == {("done", 1)}
    with get_database(bed.app).read_session() as session:
        assert session.scalar(select(func.count()).select_from(ActivityRecord)) == 24 * 5
    assert not bed.ingestor("node-c").scan().with_status("done")


def test_a_restart_resumes_from_the_cursor(bed: ActivityBed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    key = bed.key_of(issue(bed, alice, "app-read"))
    assert bed.trail is not None
    now = utcnow()
    first = bed.trail.put(
        [call_record(key, now, "s3.amazonaws.com", "GetObject")], at=now - timedelta(hours=2)
    )
    assert bed.ingestor().scan().with_status("done") == [first]

    # A new process: nothing in memory, only the cursor in the database. A file far behind the
    # cursor (more than the 30-minute lookback) is not listed again; later ones are read.
    behind = bed.trail.put(
        [call_record(key, now, "s3.amazonaws.com", "GetObject")], at=now - timedelta(hours=3)
    )
    late = bed.trail.put(
        [call_record(key, now, "s3.amazonaws.com", "GetObject")],
        at=now - timedelta(hours=2, minutes=10),
    )
    newer = bed.trail.put([call_record(key, now, "s3.amazonaws.com", "GetObject")], at=now)
    result = bed.ingestor("node-restarted").scan()
    assert sorted(result.with_status("done")) == sorted([late, newer])
    assert first in result.with_status("skipped")  # listed again (lookback), known, not read
    assert behind not in {f.key for f in result.files}
    with get_database(bed.app).read_session() as session:
        cursors = session.scalars(select(ActivityCursor)).all()
    assert [c.position for c in cursors if c.name.startswith("cloudtrail:")] == [newer]


def test_a_stale_claim_is_taken_over(bed: ActivityBed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    key = bed.key_of(issue(bed, alice, "app-read"))
    assert bed.trail is not None
    now = utcnow()
    stuck = bed.trail.put([call_record(key, now, "s3.amazonaws.com", "GetObject")], at=now)
    with get_database(bed.app).session() as session:
        session.add(
            CloudTrailFile(
                bucket=bed.trail.bucket,
                key=stuck,
                status="claimed",
                claim_token="dead",
                claimed_by="a node that died",
                claimed_at=now - timedelta(hours=1),
            )
        )
    result = bed.ingestor().scan()
    assert result.with_status("done") == [stuck]
    assert _files(bed)[stuck] == ("done", 2)


def test_an_organization_trail_under_a_prefix(
    database: Database, moto_server: Any, tmp_path: Path
) -> None:
    bed = make_bed(
        database,
        moto_server,
        tmp_path,
        CLOUDTRAIL_PREFIX="org-trail/",
        CLOUDTRAIL_ACCOUNTS=["123456789012", "111122223333"],
    )
    try:
        alice = bed.token("alice@example.com", ("developers",))
        key = bed.key_of(issue(bed, alice, "app-read"))
        assert bed.trail is not None
        now = utcnow()
        org = {"prefix": "org-trail", "organization": "o-a1b2c3d4e5"}
        read = [
            bed.trail.put([call_record(key, now, "s3.amazonaws.com", "GetObject")], at=now, **org),
            bed.trail.put(
                [
                    call_record(
                        key, now, "ec2.amazonaws.com", "DescribeInstances", region="eu-west-1"
                    )
                ],
                at=now,
                region="eu-west-1",
                **org,
            ),
            bed.trail.put(
                [other_record(now, "111122223333")], at=now, account="111122223333", **org
            ),
        ]
        excluded = bed.trail.put(
            [other_record(now, "999988887777")], at=now, account="999988887777", **org
        )
        reader = bed.ingestor()
        assert sorted(p.prefix for p in reader.prefixes()) == [
            "org-trail/AWSLogs/o-a1b2c3d4e5/111122223333/CloudTrail/us-east-1/",
            "org-trail/AWSLogs/o-a1b2c3d4e5/123456789012/CloudTrail/eu-west-1/",
            "org-trail/AWSLogs/o-a1b2c3d4e5/123456789012/CloudTrail/us-east-1/",
        ]
        result = reader.scan()
        assert sorted(result.with_status("done")) == sorted(read)
        assert excluded not in {f.key for f in result.files}
        assert sum(f.attributed for f in result.files) == 2
    finally:
        bed.app.extensions["broker.db"].dispose()


def test_metrics_count_files_records_and_detections(bed: ActivityBed) -> None:
    cora = issue(bed, bed.token("cora@contractor.example", ("developers",)), "app-read")
    assert bed.trail is not None
    bed.trail.put([run_instances(bed.key_of(cora), utcnow(), "p4d.24xlarge")], at=utcnow())
    bed.trail.put_raw(log_key(utcnow()), b"not gzip")
    bed.ingestor().scan()
    text = bed.client.get("/metrics").get_data(as_text=True)
    assert 'broker_cloudtrail_files{status="done"} 1.0' in text
    assert 'broker_cloudtrail_files{status="malformed"} 1.0' in text
    assert "broker_cloudtrail_attributed_records_total 1.0" in text
    assert (
        'broker_detections_total{outcome="revoked",response="revoke_grant",'
        'rule="crypto-mining-contractor"} 1.0'
    ) in text
