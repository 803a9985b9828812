"""Benchmark: export 1,000,000 audit events to JSON Lines and verify the file offline.

Builds a chained trail (realistic event shapes, a checkpoint every 10,000 events) in a temporary
SQLite database, then times the export and the offline verification, each in its own fresh
process, and prints events per second and that process's peak RSS against the targets
(>= 200,000 events/s each way, <= 200 MB).

    .venv/bin/python bench/audit_bench.py [--events N] [--keep DIR]

``bench/run`` uses :func:`prepare` and :func:`cli_rates` instead: the same trail, on SQLite and
PostgreSQL, timed through the commands an auditor runs (``broker audit export --format F -o
FILE``, ``broker audit verify``, ``broker audit verify FILE --public-key KEY``). Each command
also runs on an empty trail right before, and the rate is events over the difference: the
command's start (interpreter, app, connection: the same for any trail) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import insert, update

from broker.audit.chain import GENESIS, HEAD_ID, chain_hash, format_ts
from broker.audit.checkpoints import checkpoint_payload, key_id
from broker.audit.export import export
from broker.audit.verify_file import verify_file
from broker.db import Database
from broker.migrate import upgrade
from broker.models import AuditCheckpoint, AuditEvent, AuditHead

TARGET_RATE = 200_000
TARGET_MB = 200
CHECKPOINT_EVERY = 10_000
PEOPLE = [f"person{i}@example.com" for i in range(50)]


def _event(seq: int, ts: datetime) -> dict[str, Any]:
    who = PEOPLE[seq % len(PEOPLE)]
    kind = seq % 4
    base: dict[str, Any] = {
        "seq": seq, "ts": ts, "actor": who, "target": "app-read", "decision": "allow",
        "reason": None, "ip": "10.1.2.3", "user_agent": "broker-cli/0.1 (Linux; python 3.11)",
        "client": "cli", "policy_version": "9f" * 32, "details": {},
    }  # fmt: skip
    if kind == 0:
        base.update(action="auth.sign_in", target=who)
    elif kind == 1:
        base.update(
            action="grant.request",
            reason="on-call: investigating alert",
            details={"grant_id": f"{seq:032x}", "duration_seconds": 3600, "status": "active"},
        )
    elif kind == 2:
        name = f"{who.split('@')[0]}-{seq}"
        base.update(
            action="credentials.issued",
            target=f"arn:aws:sts::123456789012:assumed-role/app-read/{name}",
            details={
                "access_key_id": f"ASIA{seq:016d}", "entitlement": "app-read",
                "expires_at": "2024-05-01T10:00:00+00:00", "grant_id": f"{seq - 1:032x}",
                "role_session_name": name, "session_id": f"{seq:032x}", "source_identity": who,
            },
        )  # fmt: skip
    else:
        details = {"grant_id": f"{seq - 2:032x}", "person": who, "revocations": []}
        base.update(
            action="grant.expired",
            actor="system",
            client="scheduler",
            decision="end",
            details=details,
        )
    return base


def build(database: Database, count: int, key: Ed25519PrivateKey) -> None:
    """Insert `count` chained events and a checkpoint every CHECKPOINT_EVERY, in bulk."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    prev = GENESIS
    kid = key_id(key.public_key())
    batch: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    with database.engine.begin() as conn:
        for seq in range(1, count + 1):
            row = _event(seq, start + timedelta(milliseconds=250 * seq))
            body = dict(row, ts=format_ts(row["ts"]))
            row["prev_hash"] = prev
            row["hash"] = prev = chain_hash(prev, body)
            batch.append(row)
            if seq % CHECKPOINT_EVERY == 0 or seq == count:
                signed_at = format_ts(row["ts"])
                payload = checkpoint_payload(seq, prev, signed_at, kid)
                signature = key.sign(payload).hex()
                checkpoints.append(
                    {"seq": seq, "hash": prev, "signed_at": row["ts"], "key_id": kid,
                     "signature": signature}
                )  # fmt: skip
            if len(batch) == 20_000:
                conn.execute(insert(AuditEvent), batch)
                batch.clear()
        if batch:
            conn.execute(insert(AuditEvent), batch)
        conn.execute(insert(AuditCheckpoint), checkpoints)
        conn.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=count, hash=prev))


POLICY = """\
version: 1
people: []
deny: []
entitlements:
  - id: audit-bench
    role_arn: arn:aws:iam::123456789012:role/audit-bench
    allow: {groups: [auditors]}
    max_duration: 1h
"""


def prepare(url: str, empty_url: str, events: int, workdir: Path) -> tuple[Path, Path]:
    """Build a trail of ``events`` in the (empty) database at ``url`` and migrate the one at
    ``empty_url``; the public key's path and a policy directory for the ``broker`` command."""
    database = Database(url)
    upgrade(database)
    key = Ed25519PrivateKey.generate()
    build(database, events, key)
    database.dispose()
    empty = Database(empty_url)
    upgrade(empty)
    empty.dispose()
    public = workdir / "audit-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    policy_dir = workdir / "policies-audit"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "audit.yaml").write_text(POLICY)
    return public, policy_dir


COMMANDS = ("export_jsonl", "export_csv", "export_ocsf", "verify_database", "verify_file")
BROKER = str(Path(sys.executable).parent / "broker")


def _command(key: str, public: Path, workdir: Path) -> list[str]:
    """The auditor's command for ``key``, writing or reading files in ``workdir``."""
    if key.startswith("export_"):
        fmt = key.removeprefix("export_")
        return ["audit", "export", "--format", fmt, "-o", str(workdir / f"audit.{fmt}")]
    if key == "verify_database":
        return ["audit", "verify", "--public-key", str(public)]
    return ["audit", "verify", str(workdir / "audit.jsonl"), "--public-key", str(public)]


def _wall(env: dict[str, str], args: list[str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([BROKER, *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"broker {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed


def cli_rates(
    full: dict[str, str],
    empty: dict[str, str],
    public: Path,
    workdir: Path,
    events: int,
    *,
    starts: int = 3,
) -> dict[str, dict[str, float]]:
    """Each auditor command on the full trail, and ``starts`` times on an empty one.

    The fastest run on the empty trail is the command's start (interpreter, app, connection,
    exit: the same for any trail) and is taken off its time on the full trail, so the rate
    counts the work that grows with the trail. Returns per command ``wall`` (seconds on the
    full trail), ``start`` and ``rate`` (events/s).
    """
    found: dict[str, dict[str, float]] = {}
    small = workdir / "empty"
    small.mkdir(exist_ok=True)
    for key in COMMANDS:
        start = min(_wall(empty, _command(key, public, small)) for _ in range(starts))
        wall = _wall(full, _command(key, public, workdir))
        found[key] = {"wall": wall, "start": start, "rate": events / max(wall - start, 1e-6)}
    return found


def _export_phase(url: str, out: str) -> tuple[float, float]:
    """Run in a fresh process: export the trail; return (seconds, peak RSS MB)."""
    database = Database(url)
    began = time.perf_counter()
    with database.snapshot_session() as session, open(out, "w", encoding="utf-8") as handle:
        for chunk in export(session, "jsonl", now=datetime.now(UTC)):
            handle.write(chunk)
    elapsed = time.perf_counter() - began
    return elapsed, _rss_mb()


def _verify_phase(out: str, public_pem: bytes) -> tuple[float, float, bool, int, str]:
    """Run in a fresh process: verify the file offline; return timing, RSS and the outcome."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_pem)
    began = time.perf_counter()
    result = verify_file(out, key)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - began
    return elapsed, _rss_mb(), result.ok, result.checkpoints, result.summary()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_fresh_process(func: Any, *args: Any) -> Any:
    """Each phase runs in a spawned interpreter, so its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="keep the database and export here")
    args = parser.parse_args()
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="audit-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    database = Database(f"sqlite:///{workdir / 'bench.db'}")
    upgrade(database)
    key = Ed25519PrivateKey.generate()
    n = args.events
    print(f"building {n:,} chained events in {workdir} ...", flush=True)
    began = time.perf_counter()
    build(database, n, key)
    print(f"  built in {time.perf_counter() - began:.1f} s", flush=True)

    out = workdir / "audit.jsonl"

    database.dispose()
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    print("exporting ...", flush=True)
    t_exp, mem_exp = _in_fresh_process(_export_phase, database.url, str(out))
    print("verifying ...", flush=True)
    t_ver, mem_ver, ok, checkpoints, summary = _in_fresh_process(
        _verify_phase, str(out), public_pem
    )
    if not ok:
        print(f"verification FAILED: {summary}")
        return 1
    rate_exp, rate_ver = n / t_exp, n / t_ver
    size_mb = out.stat().st_size / 1e6
    print()
    print(f"events: {n:,}   file: {size_mb:.0f} MB   checkpoints verified: {checkpoints}")
    rows = (
        ("export (DB -> JSON Lines)", rate_exp, mem_exp),
        ("verify (file, offline)", rate_ver, mem_ver),
    )
    misses = []
    for label, rate, mem in rows:
        rate_ok, mem_ok = rate >= TARGET_RATE, mem <= TARGET_MB
        print(
            f"{label:28s} {rate:>10,.0f} events/s (target >= {TARGET_RATE:,}: "
            f"{'met' if rate_ok else 'MISSED'})   peak RSS {mem:6.1f} MB "
            f"(target <= {TARGET_MB}: {'met' if mem_ok else 'MISSED'})"
        )
        if not rate_ok:
            misses.append(f"{label} rate")
        if not mem_ok:
            misses.append(f"{label} memory")
    print(
        f"(each phase in its own process; {os.cpu_count()} CPU cores, "
        f"Python {sys.version.split()[0]})"
    )
    if misses:
        print(f"TARGETS MISSED: {', '.join(misses)} on this machine")
    else:
        print("all targets met")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
