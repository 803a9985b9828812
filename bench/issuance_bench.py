"""Issuance latency: the broker's API against raw boto3 AssumeRole on the same moto server.

Prints p50/p99 for both, the ratio, and the broker's own overhead per issuance, on SQLite and
(when reachable) PostgreSQL. Everything runs on loopback; numbers are from this run only.

    python bench/issuance_bench.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))

from aws import MotoServer, create_role  # noqa: E402

from broker import create_app  # noqa: E402
from broker.auth import tokens  # noqa: E402
from broker.db import Database, get_database  # noqa: E402
from broker.migrate import upgrade  # noqa: E402
from broker.models import utcnow  # noqa: E402
from broker.policy import Identity  # noqa: E402
from broker.policy_store import get_policy  # noqa: E402

PG_URL = os.environ.get("BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
POLICY = """\
version: 1
entitlements:
  - id: bench
    role_arn: {role}
    allow: {{groups: [bench]}}
    max_duration: 1h
    max_grant: 12h
    session_policy:
      Version: "2012-10-17"
      Statement: [{{Effect: Allow, Action: ["s3:GetObject"], Resource: "*"}}]
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def raw_assume(moto: MotoServer, role: str, n: int) -> list[float]:
    """Baseline: boto3 AssumeRole straight at moto."""
    sts = moto.client("sts")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        sts.assume_role(RoleArn=role, RoleSessionName=f"raw-{i}", DurationSeconds=3600)
        samples.append(time.perf_counter() - start)
    return samples


def broker_issue(db_url: str, policy_dir: Path, moto: MotoServer, n: int) -> list[float]:
    """The same issuance through the broker's API (auth, policy, audit chain, STS, session row)."""
    upgrade(Database(db_url))
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": db_url,
            "POLICY_DIR": str(policy_dir),
            "AWS_ENDPOINT_URL": moto.endpoint_url,
            "LOG_JSON": False,
            "RATE_LIMIT_ISSUE_PER_MINUTE": 1_000_000,
        }
    )
    with app.app_context():
        identity = Identity(
            issuer="urn:bench", subject="b", email="bench@example.com", groups=frozenset({"bench"})
        )
        person = get_policy().evaluator.resolve(identity)
        with get_database().session() as session:
            token, _ = tokens.mint_for_person(
                session, person, name="bench", kind="admin", ttl=timedelta(hours=1), now=utcnow()
            )
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"entitlement": "bench", "duration": "1h"}
    client.post("/api/v1/credentials", json=body, headers=headers)  # warm caches
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post("/api/v1/credentials", json=body, headers=headers)
        samples.append(time.perf_counter() - start)
        assert response.status_code == 201, response.json
    app.extensions["broker.db"].dispose()
    return samples


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with MotoServer() as moto, tempfile.TemporaryDirectory() as tmp:
        role = create_role(moto.client("iam"), f"bench-{uuid.uuid4().hex[:6]}")
        policy_dir = Path(tmp) / "policies"
        policy_dir.mkdir()
        (policy_dir / "bench.yaml").write_text(POLICY.format(role=role))
        raw50, raw99 = percentiles(raw_assume(moto, role, args.n))
        print(f"issuances per backend: {args.n}")
        print(f"raw boto3 assume_role        p50 {raw50:7.2f} ms  p99 {raw99:7.2f} ms")
        backends: dict[str, Any] = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}"}
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            backends["postgresql"] = f"{PG_URL}?options=-csearch_path%3D{schema}"
        except sa.exc.OperationalError as exc:
            print(f"postgresql: skipped ({exc.__class__.__name__}: not reachable)")
        try:
            for name, url in backends.items():
                p50, p99 = percentiles(broker_issue(url, policy_dir, moto, args.n))
                print(
                    f"broker API ({name:<10})      p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                    f"ratio p50 {p50 / raw50:5.2f}x  overhead p50 {p50 - raw50:6.2f} ms"
                )
        finally:
            if "postgresql" in backends:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print(json.dumps({"note": "overhead = broker p50 - raw p50; same moto server, same run"}))


if __name__ == "__main__":
    main()
