"""Signed checkpoints: an Ed25519 signature over the audit chain head.

A checkpoint signs `(seq, hash, signed_at, key_id)` as canonical JSON. Because every event's hash
commits to all events before it, one valid checkpoint at `seq` vouches for events 1..seq, and an
export that carries it can be checked offline with only the public key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit.chain import GENESIS, HEAD_ID, chain_hash, event_body, format_ts
from broker.canonical import canonical_json
from broker.errors import BrokerError
from broker.models import AuditCheckpoint, AuditEvent, AuditHead, utcnow

PRIVATE_KEY_FILE = "audit-signing.pem"
PUBLIC_KEY_FILE = "audit-signing.pub.pem"
PAYLOAD_TYPE = "broker.audit.checkpoint/1"


class SigningKeyError(BrokerError):
    """The audit signing key (or public key) file cannot be used."""

    code = "audit_signing_key"


class AuditChainBroken(BrokerError):
    """The chain no longer links to the last checkpoint, so the head must not be signed."""

    code = "audit_chain_broken"
    status = 503


class InvalidCheckpoint(Exception):
    """A checkpoint's signature or key does not verify; the message says which."""


# -- keys -------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new key pair (private 0600, public 0644) into `directory`; never overwrite."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(
                f"{path} already exists; refusing to overwrite an audit signing key.",
                hint="Move it away first, or choose another directory.",
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    public_path.chmod(0o644)
    return private_path, public_path


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key, or explain why it cannot be used."""
    data = _read_key_file(path, "audit signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise SigningKeyError(
            f"{path} is encrypted; the broker needs an unencrypted audit signing key.",
            hint="Protect it with file permissions (0600) instead of a passphrase.",
        ) from exc
    except ValueError as exc:
        raise SigningKeyError(
            f"{path} is not a PEM private key.",
            hint="Create one with `broker audit keygen DIR`.",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(key).__name__}, not an Ed25519 key.",
            hint="Create one with `broker audit keygen DIR`.",
        )
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key (a private key file is accepted too)."""
    data = _read_key_file(path, "public key")
    try:
        if b"PRIVATE KEY" in data:
            return load_signing_key(path).public_key()
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(
            f"{path} is not a PEM public key.",
            hint=f"Use the {PUBLIC_KEY_FILE} written by `broker audit keygen`.",
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key.")
    return key


def _read_key_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyError(
            f"The {what} file {path} does not exist.",
            hint="Check AUDIT_SIGNING_KEY_FILE, or create a key with `broker audit keygen DIR`.",
        ) from exc
    except OSError as exc:
        raise SigningKeyError(f"The {what} file {path} cannot be read: {exc.strerror}.") from exc


# -- signing and verifying --------------------------------------------------------------------


def checkpoint_payload(seq: int, hash_: str, signed_at: str, kid: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    body = {"type": PAYLOAD_TYPE, "seq": seq, "hash": hash_, "signed_at": signed_at, "key_id": kid}
    return canonical_json(body).encode("utf-8")


def checkpoint_record(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """A checkpoint as it appears in exports (`type` = `checkpoint`)."""
    return {
        "type": "checkpoint",
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "signed_at": format_ts(checkpoint.signed_at),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def sign_head(
    session: Session,
    key: Ed25519PrivateKey,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> AuditCheckpoint | None:
    """Sign the current chain head and add the checkpoint to `session` (the caller commits).

    Returns None when there is nothing new to sign: an empty chain, or a head this key has
    already signed. Before signing, the events since the previous checkpoint are checked to
    link to it; if they do not, AuditChainBroken is raised and nothing is signed, so a tampered
    trail is never vouched for.
    """
    head = session.get(AuditHead, HEAD_ID)
    if head is None or head.seq == 0:
        return None
    kid = key_id(key.public_key())
    last = session.scalars(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.seq <= head.seq)
        .order_by(AuditCheckpoint.seq.desc(), AuditCheckpoint.id.desc())
        .limit(1)
    ).first()
    if last is not None and last.seq == head.seq and last.key_id == kid:
        if last.hash != head.hash:
            raise AuditChainBroken(
                f"The chain head at event {head.seq} differs from the one signed earlier.",
                hint="Run `broker audit verify` and investigate before signing again.",
            )
        return None
    _check_segment(session, last, head)
    signed_at = clock()
    payload = checkpoint_payload(head.seq, head.hash, format_ts(signed_at), kid)
    checkpoint = AuditCheckpoint(
        seq=head.seq,
        hash=head.hash,
        signed_at=signed_at,
        key_id=kid,
        signature=key.sign(payload).hex(),
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def _check_segment(session: Session, last: AuditCheckpoint | None, head: AuditHead) -> None:
    """Events after the previous checkpoint must link from its hash up to the head."""
    start_seq, prev = (last.seq, last.hash) if last is not None else (0, GENESIS)
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.seq > start_seq, AuditEvent.seq <= head.seq)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=1000)
    )
    expected = start_seq + 1
    for event in rows:
        if (
            event.seq != expected
            or event.prev_hash != prev
            or chain_hash(prev, event_body(event)) != event.hash
        ):
            raise AuditChainBroken(
                f"The audit chain is broken at event {event.seq} (after the checkpoint at "
                f"event {start_seq}); the head was not signed.",
                hint="Run `broker audit verify` to see the break.",
            )
        prev = event.hash
        expected += 1
    if expected != head.seq + 1 or prev != head.hash:
        raise AuditChainBroken(
            f"The chain head says event {head.seq} but the events end at {expected - 1}.",
            hint="Run `broker audit verify` to see the break.",
        )


def verify_checkpoint(public_key: Ed25519PublicKey, record: Mapping[str, Any]) -> None:
    """Raise InvalidCheckpoint unless `record` (seq, hash, signed_at, key_id, signature) is
    signed by this key. Use `checkpoint_record(row)` to check a database row."""
    try:
        seq, hash_, signed_at = int(record["seq"]), str(record["hash"]), str(record["signed_at"])
        kid, signature = str(record["key_id"]), str(record["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidCheckpoint(f"checkpoint lacks a field or has a wrong type: {exc}") from exc
    expected = key_id(public_key)
    if kid != expected:
        raise InvalidCheckpoint(f"signed by key {kid}, but the public key given is {expected}")
    try:
        raw = bytes.fromhex(signature)
    except ValueError as exc:
        raise InvalidCheckpoint("signature is not hex") from exc
    try:
        public_key.verify(raw, checkpoint_payload(seq, hash_, signed_at, kid))
    except InvalidSignature as exc:
        raise InvalidCheckpoint("signature does not verify (forged or altered checkpoint)") from exc
