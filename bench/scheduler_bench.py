"""Benchmark: 10,000 grants expiring at once across 100 roles, through the real scheduler.

Seeds people, active grants already past their expiry and one live session per grant into a
fresh database, then times the scheduler's expiry pass (grants ended, revocations queued,
audited) and revocation pass (one policy per role written to moto's IAM), counting IAM calls
by operation. The target is one PutRolePolicy per role per pass, not one per grant.

    .venv/bin/python bench/scheduler_bench.py [--grants 10000] [--roles 100]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "helpers"), str(ROOT / "tests" / "scheduler")]

from apibed import READ_POLICY, write_policy  # noqa: E402
from aws import MotoServer, create_role  # noqa: E402
from seed import seed_grants  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from broker import create_app  # noqa: E402
from broker.db import Database  # noqa: E402
from broker.migrate import upgrade  # noqa: E402
from broker.models import AuditEvent, Grant, Revocation, utcnow  # noqa: E402
from broker.scheduler import Scheduler  # noqa: E402


class CountingIam:
    """Wraps a boto3 IAM client and counts every call by operation."""

    def __init__(self, iam: Any) -> None:
        self.iam = iam
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.iam, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--roles", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500, help="grants per expiry transaction")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    with tempfile.TemporaryDirectory() as tmp, MotoServer() as moto:
        url, schema = _database_url(args.database_url, Path(tmp))
        database = Database(url)
        upgrade(database)
        iam = moto.client("iam")
        suffix = uuid.uuid4().hex[:6]
        roles = [
            create_role(iam, f"bench-{suffix}-{i}", policies={"read": READ_POLICY})
            for i in range(args.roles)
        ]
        write_policy(Path(tmp) / "policies", {"read": roles[0], "admin": roles[1]}, utcnow())
        app = create_app(
            {
                "ENV": "testing",
                "DATABASE_URL": url,
                "POLICY_DIR": str(Path(tmp) / "policies"),
                "AWS_ENDPOINT_URL": moto.endpoint_url,
                "SCHEDULER_BATCH_SIZE": args.batch,
                "LOG_JSON": False,
            }
        )
        now = utcnow()
        t = time.perf_counter()
        seed_grants(
            database, args.grants, roles, expires_at=lambda i: now - timedelta(seconds=1), now=now
        )
        print(
            f"seeded {args.grants} due grants with live sessions on {args.roles} roles "
            f"({database.dialect}) in {time.perf_counter() - t:.1f} s"
        )

        counting = CountingIam(iam)
        scheduler = Scheduler(app, iam_client=counting)
        t0 = time.perf_counter()
        ended = scheduler.expire_due()
        t1 = time.perf_counter()
        result = scheduler.revoke()
        t2 = time.perf_counter()
        again = scheduler.revoke()

        with database.session() as session:
            expired = session.scalar(select(func.count()).where(Grant.status == "expired"))
            applied = session.scalar(select(func.count()).where(Revocation.status == "applied"))
            events = session.scalar(select(func.count()).select_from(AuditEvent))
        print(
            f"expiry pass:     {len(ended)} grants ended in {t1 - t0:.2f} s "
            f"({(t1 - t0) / max(len(ended), 1) * 1000:.2f} ms/grant)"
        )
        print(
            f"revocation pass: {sum(len(v) for v in result.applied.values())} revocations on "
            f"{len(result.applied)} roles in {t2 - t1:.2f} s"
        )
        print(f"total:           {t2 - t0:.2f} s for {args.grants} grants")
        print(
            f"IAM calls:       {sum(counting.calls.values())} "
            + ", ".join(f"{k}={v}" for k, v in sorted(counting.calls.items()))
        )
        print(
            f"PutRolePolicy per role per pass: {result.puts / args.roles:.2f} "
            f"(a second pass with nothing due wrote {again.puts})"
        )
        print(
            f"database: {expired} grants expired, {applied} revocations applied, "
            f"{events} audit events"
        )
        database.dispose()
        app.extensions["broker.db"].dispose()
        if schema:
            _drop_schema(args.database_url, schema)


def _database_url(url: str | None, tmp: Path) -> tuple[str, str | None]:
    if url is None:
        return f"sqlite:///{tmp / 'bench.db'}", None
    if not url.startswith("postgresql"):
        return url, None
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}", schema


def _drop_schema(url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


if __name__ == "__main__":
    main()
