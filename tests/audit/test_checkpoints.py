"""Checkpoint keys and signatures: generation, loading errors, skip rules, tamper refusal."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from audittrail import StepClock, seed
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoints import (
    AuditChainBroken,
    InvalidCheckpoint,
    SigningKeyError,
    checkpoint_record,
    generate_key_pair,
    key_id,
    load_public_key,
    load_signing_key,
    sign_head,
    verify_checkpoint,
)
from broker.audit.cli import audit_cli
from broker.db import Database
from broker.models import AuditCheckpoint


def test_generate_and_load(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_signing_key(private)
    assert key_id(load_public_key(public)) == key_id(key.public_key())
    assert key_id(load_public_key(private)) == key_id(key.public_key())
    assert len(key_id(key.public_key())) == 16
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        generate_key_pair(tmp_path / "k")


def test_load_errors_explain_themselves(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="does not exist") as missing:
        load_signing_key(tmp_path / "nope.pem")
    assert "keygen" in missing.value.explain()
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        load_signing_key(junk)
    ec = tmp_path / "ec.pem"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_signing_key(ec)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(SigningKeyError, match="encrypted"):
        load_signing_key(locked)


def test_sign_head_signs_once_per_head(database: Database) -> None:
    key = Ed25519PrivateKey.generate()
    clock = StepClock()
    with database.session() as session:
        assert sign_head(session, key, clock=clock) is None  # empty chain
    seed(database, 2, clock=clock)
    with database.session() as session:
        first = sign_head(session, key, clock=clock)
        assert first is not None and first.seq == 8
        verify_checkpoint(key.public_key(), checkpoint_record(first))
    with database.session() as session:
        assert sign_head(session, key, clock=clock) is None  # unchanged head
        rotated = sign_head(session, Ed25519PrivateKey.generate(), clock=clock)
        assert rotated is not None and rotated.seq == 8  # a new key signs the same head
    seed(database, 1, clock=clock)
    with database.session() as session:
        second = sign_head(session, key, clock=clock)
        assert second is not None and second.seq == 12
        count = session.scalar(sa.select(sa.func.count()).select_from(AuditCheckpoint))
    assert count == 3


def test_sign_head_refuses_a_tampered_chain(database: Database) -> None:
    key = Ed25519PrivateKey.generate()
    seed(database, 2, key=key, sign_every=1)
    seed(database, 1)
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 10"))
    with database.session() as session, pytest.raises(AuditChainBroken, match="event 10"):
        sign_head(session, key)


def test_verify_checkpoint_rejects_changes() -> None:
    key = Ed25519PrivateKey.generate()
    record = {
        "seq": 3,
        "hash": "a" * 64,
        "signed_at": "2024-01-01T00:00:00.000000Z",
        "key_id": key_id(key.public_key()),
    }
    from broker.audit.checkpoints import checkpoint_payload

    record["signature"] = key.sign(
        checkpoint_payload(3, "a" * 64, record["signed_at"], record["key_id"])
    ).hex()
    verify_checkpoint(key.public_key(), record)
    for field, value in (("seq", 4), ("hash", "b" * 64), ("signature", "00" * 64)):
        with pytest.raises(InvalidCheckpoint):
            verify_checkpoint(key.public_key(), {**record, field: value})
    with pytest.raises(InvalidCheckpoint, match="lacks a field"):
        verify_checkpoint(key.public_key(), {"seq": 3})


def test_cli_keygen(tmp_path: Path) -> None:
    result = CliRunner().invoke(audit_cli, ["keygen", str(tmp_path / "keys")])
    assert result.exit_code == 0 and "AUDIT_SIGNING_KEY_FILE" in result.output
    again = CliRunner().invoke(audit_cli, ["keygen", str(tmp_path / "keys")])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
