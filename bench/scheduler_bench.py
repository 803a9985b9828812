"""Benchmark: 10,000 grants expiring at once across 100 roles, through the scheduler's sweep.

Seeds people, active grants already past their expiry and one live session per grant into a
fresh database, then times one :meth:`Scheduler.sweep` (the same pass the scheduler process runs
every few seconds: expiry in batches of the production ``SCHEDULER_BATCH_SIZE``, contractors,
lapses, reconcile, revocations written to IAM), counting IAM calls by operation. moto runs as
its own process. The targets: the sweep within 2 s, one PutRolePolicy per role.

    .venv/bin/python bench/scheduler_bench.py [--grants 10000] [--roles 100]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/DB] [--endpoint-url URL]
        [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [
    str(ROOT / "bench"),
    str(ROOT / "tests" / "helpers"),
    str(ROOT / "tests" / "scheduler"),
]

from apibed import READ_POLICY, write_policy  # noqa: E402
from aws import create_role  # noqa: E402
from seed import seed_grants  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from stack import AWS_ENV, Moto, Processes, started  # noqa: E402

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
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return call


def measure(
    database_url: str, endpoint_url: str, tmp: Path, *, grants: int, roles: int
) -> dict[str, Any]:
    """Seed ``grants`` due grants on ``roles`` roles and time one sweep; the figures."""
    import boto3

    database = Database(database_url)
    upgrade(database)
    iam = boto3.client("iam", endpoint_url=endpoint_url, region_name="us-east-1")
    suffix = uuid.uuid4().hex[:6]
    arns = [
        create_role(iam, f"bench-exp-{suffix}-{i}", policies={"read": READ_POLICY})
        for i in range(roles)
    ]
    policy_dir = tmp / f"policies-expiry-{suffix}"
    write_policy(policy_dir, {"read": arns[0], "admin": arns[1 % roles]}, utcnow())
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": database_url,
            "POLICY_DIR": str(policy_dir),
            "AWS_ENDPOINT_URL": endpoint_url,
            "LOG_JSON": False,
        }
    )
    now = utcnow()
    seed_grants(database, grants, arns, expires_at=lambda i: now - timedelta(seconds=1), now=now)
    counting = CountingIam(iam)
    scheduler = Scheduler(app, iam_client=counting)
    started_at = time.perf_counter()
    result = scheduler.sweep()
    elapsed = time.perf_counter() - started_at
    again = scheduler.revoke()
    with database.session() as session:
        expired = session.scalar(select(func.count()).where(Grant.status == "expired"))
        applied = session.scalar(select(func.count()).where(Revocation.status == "applied"))
        events = session.scalar(select(func.count()).select_from(AuditEvent))
    database.dispose()
    app.extensions["broker.db"].dispose()
    return {
        "seconds": elapsed,
        "expired": expired,
        "ended_by_sweep": len(result.expired),
        "applied": applied,
        "audit_events": events,
        "puts": result.revocations.puts,
        "puts_per_role": result.revocations.puts / roles,
        "second_pass_puts": again.puts,
        "batch": scheduler.batch,
        "iam_calls": dict(counting.calls),
    }


@contextlib.contextmanager
def _database(url: str | None, tmp: Path) -> Iterator[str]:
    """The given database, a fresh schema in it (PostgreSQL), or a temporary SQLite file."""
    if url is None:
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    if not url.startswith("postgresql"):
        yield url
        return
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--roles", type=int, default=100)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--endpoint-url", default=None, help="moto; default: start one")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        started(Processes()) as procs,
        _database(args.database_url, Path(tmp_name)) as url,
    ):
        tmp = Path(tmp_name)
        endpoint = args.endpoint_url or Moto(procs, tmp).endpoint_url
        figures = measure(url, endpoint, tmp, grants=args.grants, roles=args.roles)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"sweep: {figures['ended_by_sweep']} grants ended and {figures['applied']} revocations "
        f"applied on {args.roles} roles in {figures['seconds']:.2f} s "
        f"(batch {figures['batch']})"
    )
    calls = figures["iam_calls"]
    print(
        f"IAM calls: {sum(calls.values())} "
        + ", ".join(f"{k}={v}" for k, v in sorted(calls.items()))
    )
    print(
        f"PutRolePolicy per role: {figures['puts_per_role']:.2f} "
        f"(a second pass with nothing due wrote {figures['second_pass_puts']})"
    )
    print(f"audit events: {figures['audit_events']}")


if __name__ == "__main__":
    main()
