"""`broker audit verify` on the database: one snapshot, signed checkpoints, writers unblocked."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa
from audittrail import StepClock, seed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import create_app
from broker.audit import AuditLog, EventContext, NewEvent, verify_database
from broker.audit.chain import GENESIS, chain_hash, event_body
from broker.audit.checkpoints import (
    InvalidCheckpoint,
    checkpoint_record,
    generate_key_pair,
    load_signing_key,
    sign_head,
    verify_checkpoint,
)
from broker.audit.cli import audit_cli
from broker.db import Database
from broker.models import AuditCheckpoint, AuditEvent, AuditHead

ROOT = Path(__file__).resolve().parents[2]


def _append(database: Database, n: int) -> None:
    for i in range(n):
        with database.session() as session:
            AuditLog().append(session, EventContext(actor="w"), NewEvent(f"test.append.{i}"))


def test_verify_under_concurrent_appends_reports_no_false_tampering(database: Database) -> None:
    _append(database, 400)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                _append(database, 1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = []
        for _ in range(15):
            with database.snapshot_session() as session:
                results.append(verify_database(session))
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert all(r.ok for r in results), [str(r.broken) for r in results if not r.ok]
    assert results[-1].checked > results[0].checked >= 400  # appends really ran during the scans


def test_a_verification_in_progress_does_not_block_writers(database: Database) -> None:
    _append(database, 50)
    with database.snapshot_session() as session:
        assert verify_database(session).ok
        started = time.monotonic()
        _append(database, 1)  # would wait for the write lock if the scan held it
        assert time.monotonic() - started < 2.0
        # and the scan still sees its own snapshot
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 50


def _sign(database: Database, key: Ed25519PrivateKey) -> None:
    with database.session() as session:
        sign_head(session, key, clock=StepClock())


def _rewrite_from(database: Database, seq: int, reason: str) -> None:
    """Edit event `seq` and re-hash everything after it, head included: a careful forger."""
    with database.session() as session:
        events = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        prev = GENESIS
        for event in events:
            if event.seq == seq:
                event.reason = reason
            if event.seq >= seq:
                event.prev_hash = prev
                event.hash = chain_hash(prev, event_body(event))
            prev = event.hash
        head = session.get(AuditHead, 1)
        assert head is not None
        head.hash = prev


def test_a_consistently_rewritten_chain_is_caught_by_its_checkpoint(database: Database) -> None:
    key = Ed25519PrivateKey.generate()
    seed(database, 5)
    _sign(database, key)
    _rewrite_from(database, 3, "nothing happened here")
    with database.snapshot_session() as session:
        result = verify_database(session)
    assert not result.ok and "checkpoint" in str(result.broken)


def test_cut_off_tail_with_rewritten_head_is_caught_by_a_later_checkpoint(
    database: Database,
) -> None:
    key = Ed25519PrivateKey.generate()
    seed(database, 3)
    _sign(database, key)
    with database.session() as session:
        last = session.scalar(sa.select(sa.func.max(AuditEvent.seq)))
        session.execute(sa.delete(AuditEvent).where(AuditEvent.seq > last - 3))
        kept = session.scalar(sa.select(AuditEvent).where(AuditEvent.seq == last - 3))
        assert kept is not None
        session.execute(sa.update(AuditHead).values(seq=kept.seq, hash=kept.hash))
    with database.snapshot_session() as session:
        result = verify_database(session)
    assert not result.ok and result.broken is not None and result.broken.seq == last


def test_signatures_are_checked_with_the_key(database: Database) -> None:
    key = Ed25519PrivateKey.generate()
    seed(database, 2)
    _sign(database, key)
    _append(database, 2)
    _sign(database, key)

    def check(checkpoint: AuditCheckpoint) -> str | None:
        try:
            verify_checkpoint(key.public_key(), checkpoint_record(checkpoint))
        except InvalidCheckpoint as exc:
            return str(exc)
        return None

    with database.snapshot_session() as session:
        result = verify_database(session, check_signature=check)
    assert result.ok and (result.checkpoints, result.signatures) == (2, 2)
    with database.session() as session:
        session.execute(sa.update(AuditCheckpoint).values(signature="00" * 64))
    with database.snapshot_session() as session:
        forged = verify_database(session, check_signature=check)
    assert not forged.ok and "forged" in str(forged.broken)


def test_cli_verifies_the_database_with_the_configured_key(
    database: Database, tmp_path: Path
) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    seed(database, 2)
    _sign(database, load_signing_key(private))
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": database.url,
            "POLICY_DIR": str(ROOT / "policies"),
            "AUDIT_SIGNING_KEY_FILE": str(private),
        }
    )
    try:
        runner = app.test_cli_runner()
        ok = runner.invoke(audit_cli, ["verify"])
        assert ok.exit_code == 0, ok.output
        assert "1 checkpoints match, 1 signatures verified" in ok.output
        _rewrite_from(database, 2, "edited")
        broken = runner.invoke(audit_cli, ["verify", "--public-key", str(public)])
        assert broken.exit_code == 1 and "checkpoint" in broken.output
    finally:
        app.extensions["broker.db"].dispose()
