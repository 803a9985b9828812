"""Benchmark: 1,000,000 CloudTrail records read, attributed and matched against the shipped rules.

Builds a broker database (SQLite in a temporary directory; PostgreSQL with ``--database-url``)
with 500 people, their grants and 2,000 issued sessions, then gzipped CloudTrail log files of
1,000 records each, shaped like AWS writes them: a quarter made with broker-issued keys (S3, EC2,
IAM, the AssumeRole that made each session), the rest by IAM users and AWS services, and a few
GPU launches by contractors that the shipped rules revoke. Two figures:

- **attribution**: what the reader does with each file before writing: unpack, parse, check,
  join to session, grant and person (:class:`broker.activity.attribution.Attributor`, database
  lookups included), match the detection rules. Goal: >= 50,000 records/s.
- **ingestion**: the whole reader (:class:`broker.activity.ingest.CloudTrailIngestor`) over an
  in-memory bucket: claims, stored rows, detections and their responses (grants revoked, denies
  queued), one transaction per file.

    .venv/bin/python bench/cloudtrail_bench.py [--records 1000000] [--per-file 1000]
                                               [--database-url URL] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from broker.activity.attribution import Attributor
from broker.activity.cloudtrail import read_log_file, record_problem
from broker.activity.detections import DetectionEngine
from broker.activity.ingest import CloudTrailIngestor, PolicyView, TrailSource
from broker.activity.responses import DetectionResponder
from broker.db import Database
from broker.migrate import upgrade
from broker.models import ActivityRecord, Detection, Grant, IssuedSession, Principal
from broker.policy import load_policy_dir
from broker.policy_store import PolicySnapshot

ROOT = Path(__file__).resolve().parents[1]
TARGET = 50_000
ACCOUNT = "111122223333"
ROLES = [f"arn:aws:iam::{ACCOUNT}:role/{name}" for name in ("dev-poweruser", "dev-readonly")]
NOW = datetime.now(UTC).replace(microsecond=0)
CALLS = [
    ("s3.amazonaws.com", "GetObject", {"bucketName": "app-data", "key": "reports/2026.csv"}),
    ("s3.amazonaws.com", "ListObjects", {"bucketName": "app-data", "prefix": "reports/"}),
    ("ec2.amazonaws.com", "DescribeInstances", {"filterSet": {}, "instancesSet": {}}),
    ("ec2.amazonaws.com", "RunInstances", {"instanceType": "t3.micro",
                                           "instancesSet": {"items": [{"imageId": "ami-1"}]}}),
    ("iam.amazonaws.com", "GetRole", {"roleName": "deploy"}),
    ("logs.amazonaws.com", "FilterLogEvents", {"logGroupName": "/app/api"}),
    ("dynamodb.amazonaws.com", "Query", {"tableName": "orders"}),
]  # fmt: skip


def _seed(database: Database, people: int, sessions: int) -> list[dict[str, str]]:
    """People, grants and sessions as the broker records them; return the sessions' facts."""
    rng = random.Random(7)
    rows: list[dict[str, str]] = []
    with database.session() as s:
        principals = []
        for i in range(people):
            contractor = i % 5 == 0
            email = f"p{i}@{'contractor.example' if contractor else 'example.com'}"
            principals.append(
                {
                    "id": uuid.uuid4().hex,
                    "issuer": "https://idp.example.com",
                    "subject": f"s{i}",
                    "email": email,
                    "source_identity": f"p-{i:032d}",
                    "groups": ["developers"],
                    "kind": "contractor" if contractor else "staff",
                    "claims": {"email": email, "groups": ["developers"]},
                    "disabled": False,
                    "created_at": NOW,
                    "last_seen_at": NOW,
                }
            )
        s.execute(insert(Principal), principals)
        grants, issued = [], []
        for person in principals:  # one live grant per person and entitlement
            for role in ROLES:
                grants.append(
                    {
                        "id": uuid.uuid4().hex,
                        "principal_id": person["id"],
                        "entitlement_id": role.rsplit("/", 1)[-1],
                        "role_arn": role,
                        "status": "active",
                        "duration_seconds": 8 * 3600,
                        "policy_version": "bench",
                        "client": "cli",
                        "created_at": NOW - timedelta(hours=1),
                        "starts_at": NOW - timedelta(hours=1),
                        "expires_at": NOW + timedelta(hours=7),
                    }
                )
        for n in range(sessions):
            index = n % len(grants)
            grant, person = grants[index], principals[index // len(ROLES)]
            role = grant["role_arn"]
            key = "ASIA" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=16))
            name = f"broker-{grant['id']}-{n:08x}"
            issued.append(
                {
                    "id": uuid.uuid4().hex,
                    "grant_id": grant["id"],
                    "principal_id": person["id"],
                    "role_arn": role,
                    "role_session_name": name,
                    "source_identity": person["source_identity"],
                    "access_key_id": key,
                    "assumed_role_arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/x/{name}",
                    "issued_at": NOW - timedelta(minutes=30),
                    "expires_at": NOW + timedelta(minutes=30),
                    "client": "cli",
                }
            )
            rows.append(
                {
                    "key": key,
                    "name": name,
                    "role": role,
                    "who": person["source_identity"],
                    "kind": str(person["kind"]),
                }
            )
        s.execute(insert(Grant), grants)
        s.execute(insert(IssuedSession), issued)
    return rows


def _record(rng: random.Random, sessions: list[dict[str, str]], at: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventVersion": "1.09", "eventTime": at, "awsRegion": "eu-west-1",
        "eventID": str(uuid.UUID(int=rng.getrandbits(128))),
        "requestID": str(uuid.UUID(int=rng.getrandbits(128))),
        "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": ACCOUNT,
        "eventCategory": "Management", "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.debian",
        "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256"},
    }  # fmt: skip
    roll = rng.random()
    if roll < 0.25:  # made with a broker-issued key
        s = rng.choice(sessions)
        source, name, params = rng.choice(CALLS)
        if s["kind"] == "contractor" and rng.random() < 0.0005:
            source, name, params = (
                "ec2.amazonaws.com",
                "RunInstances",
                {"instanceType": "p4d.24xlarge"},
            )
        base.update(
            eventSource=source, eventName=name, requestParameters=params, responseElements=None,
            userIdentity={
                "type": "AssumedRole", "principalId": f"AROAEXAMPLE:{s['name']}",
                "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/r/{s['name']}",
                "accountId": ACCOUNT, "accessKeyId": s["key"],
                "sessionContext": {
                    "sessionIssuer": {"type": "Role", "arn": s["role"], "accountId": ACCOUNT},
                    "attributes": {"creationDate": at, "mfaAuthenticated": "false"},
                    "sourceIdentity": s["who"],
                },
            },
        )  # fmt: skip
    elif roll < 0.27:  # the broker's own AssumeRole that made a session
        s = rng.choice(sessions)
        base.update(
            eventSource="sts.amazonaws.com", eventName="AssumeRole", awsRegion="us-east-1",
            userIdentity={"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/broker",
                          "accountId": ACCOUNT, "accessKeyId": "AKIABROKEREXAMPLE000"},
            requestParameters={"roleArn": s["role"], "roleSessionName": s["name"],
                               "sourceIdentity": s["who"], "durationSeconds": 3600},
            responseElements={
                "credentials": {"accessKeyId": s["key"], "sessionToken": "IQo" + "x" * 400,
                                "expiration": "Mar 7, 2026, 3:00:00 PM"},
                "sourceIdentity": s["who"]},
            resources=[{"accountId": ACCOUNT, "type": "AWS::IAM::Role", "ARN": s["role"]}],
        )  # fmt: skip
    elif roll < 0.75:  # IAM users (long-lived keys) and CI
        source, name, params = rng.choice(CALLS)
        base.update(
            eventSource=source, eventName=name, requestParameters=params, responseElements=None,
            userIdentity={"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
                          "accountId": ACCOUNT, "accessKeyId": f"AKIA{rng.randrange(10**12):016d}",
                          "userName": "ci"},
        )  # fmt: skip
    else:  # AWS services acting on their own (no access key)
        base.update(
            eventSource="kms.amazonaws.com", eventName="Decrypt",
            sourceIPAddress="s3.amazonaws.com",
            userIdentity={"type": "AWSService", "invokedBy": "s3.amazonaws.com"},
            requestParameters={"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}, responseElements=None,
        )  # fmt: skip
    return base


def make_files(
    sessions: list[dict[str, str]], records: int, per_file: int
) -> list[tuple[str, bytes]]:
    """Gzipped log files in CloudTrail's layout, spread over the last hour."""
    rng = random.Random(11)
    files = []
    count = (records + per_file - 1) // per_file
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/eu-west-1/"
    for index in range(count):
        moment = NOW - timedelta(minutes=60) + timedelta(seconds=3600 * index / count)
        # A file holds about five minutes of calls, as CloudTrail's do.
        times = [(moment - timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in range(300)]
        n = min(per_file, records - index * per_file)
        body = gzip.compress(
            json.dumps(
                {"Records": [_record(rng, sessions, rng.choice(times)) for _ in range(n)]}
            ).encode(),
            6,
        )
        name = f"{ACCOUNT}_CloudTrail_eu-west-1_{moment:%Y%m%dT%H%M}Z_{index:08d}.json.gz"
        key = f"{prefix}{moment:%Y/%m/%d}/{name}"
        files.append((key, body))
    return files


def attribution_rate(
    database: Database, engine: DetectionEngine, files: list[tuple[str, bytes]]
) -> tuple[float, float, int, int, int]:
    """Unpack, parse, attribute and match every file.

    Returns (records per wall second, records per CPU second of this process, records,
    attributed records, rule hits).
    """
    attributor = Attributor()
    total = attributed_count = hits = 0
    started, cpu = time.perf_counter(), time.process_time()
    for _key, body in files:
        records = [r for r in read_log_file(body) if record_problem(r) is None]
        with database.read_session() as session:
            attributed = attributor.attribute_batch(session, records)
        for record, found in attributed:
            hits += len(engine.match(record, found))
        total += len(records)
        attributed_count += len(attributed)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return total / elapsed, total / cpu, total, attributed_count, hits


class MemoryBucket:
    """Just enough of an S3 client for the reader: list (paginated, StartAfter) and get."""

    def __init__(self, files: list[tuple[str, bytes]]) -> None:
        self.files = dict(files)
        self.keys = sorted(self.files)

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        body = self.files[Key]

        class Body:
            def read(self) -> bytes:
                return body

        return {"Body": Body()}

    def get_paginator(self, _operation: str) -> Any:
        bucket = self

        class Paginator:
            def paginate(
                self, Bucket: str, Prefix: str, StartAfter: str = "", Delimiter: str = ""
            ) -> Iterator[dict[str, Any]]:  # noqa: N803
                keys = [k for k in bucket.keys if k.startswith(Prefix) and k > StartAfter]
                if Delimiter:
                    folders = sorted(
                        {
                            Prefix + k[len(Prefix) :].split(Delimiter, 1)[0] + Delimiter
                            for k in keys
                            if Delimiter in k[len(Prefix) :]
                        }
                    )
                    yield {"CommonPrefixes": [{"Prefix": f} for f in folders]}
                    return
                for start in range(0, len(keys), 1000):
                    yield {"Contents": [{"Key": k} for k in keys[start : start + 1000]]}

        return Paginator()


def ingestion_rate(
    database: Database, snapshot: PolicySnapshot, files: list[tuple[str, bytes]]
) -> tuple[float, dict[str, int]]:
    """The whole reader over an in-memory bucket; return (records/s, what it stored)."""
    policy = snapshot.loaded.policy
    engine = DetectionEngine(policy.detections, policy.entitlements)
    responder = DetectionResponder(database, snapshot, None, None)  # type: ignore[arg-type]
    reader = CloudTrailIngestor(
        database, MemoryBucket(files), TrailSource(bucket="bench", backfill=timedelta(hours=3)),
        policy=lambda: PolicyView(engine, responder),
        clock=lambda: datetime.now(UTC), holder="bench",
    )  # fmt: skip
    started = time.perf_counter()
    result = reader.scan()
    elapsed = time.perf_counter() - started
    records = sum(f.records for f in result.files)
    with database.read_session() as s:
        stored = {
            "files": len(result.with_status("done")),
            "rows": int(s.scalar(select(func.count()).select_from(ActivityRecord)) or 0),
            "detections": int(s.scalar(select(func.count()).select_from(Detection)) or 0),
            "revoked": int(s.scalar(select(func.count()).where(Grant.status == "revoked")) or 0),
        }
    return records / elapsed, stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-file", type=int, default=1000)
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary SQLite file)")
    parser.add_argument("--skip-ingest", action="store_true", help="Only the attribution figure.")
    parser.add_argument(
        "--json", action="store_true", help="End with the figures as one JSON line."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudtrail-bench-") as tmp:
        database = Database(args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade(database)
        sessions = _seed(database, args.people, args.sessions)
        started = time.perf_counter()
        files = make_files(sessions, args.records, args.per_file)
        size = sum(len(b) for _, b in files)
        print(f"{len(files)} files, {args.records:,} records, {size / 2**20:.0f} MiB gzipped "
              f"(made in {time.perf_counter() - started:.0f} s)")  # fmt: skip
        loaded = load_policy_dir(ROOT / "policies")
        snapshot = PolicySnapshot(loaded, loaded.evaluator)
        engine = DetectionEngine(loaded.policy.detections, loaded.policy.entitlements)
        rate, cpu_rate, total, attributed, hits = attribution_rate(database, engine, files)
        verdict = "ok" if rate >= TARGET else "BELOW GOAL"
        print(
            f"attribution ({database.dialect}): {rate:,.0f} records/s over {total:,} records "
            f"({attributed:,} attributed, {hits} detections); goal >= {TARGET:,}: {verdict}\n"
            f"  {cpu_rate:,.0f} records per CPU second of this process; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work slows the wall figure)"
        )
        figures = {"rate": rate, "cpu_rate": cpu_rate, "attributed": attributed, "detections": hits}
        if not args.skip_ingest:
            rate, stored = ingestion_rate(database, snapshot, files)
            figures["ingest_rate"] = rate
            print(f"ingestion ({database.dialect}, in-memory bucket, rows stored): "
                  f"{rate:,.0f} records/s; {stored}")  # fmt: skip
        database.dispose()
    if args.json:
        print(json.dumps(figures))
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
