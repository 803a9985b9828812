"""Verify a JSON Lines export offline: continuity, hashes and checkpoint signatures.

No database is needed, only the file and the public key. The first problem found is reported
with its line number. What a pass proves (and what a filtered export cannot) is in
docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.body import EVENT_LINE, GENESIS
from broker.audit.checkpoints import InvalidCheckpoint, verify_checkpoint
from broker.audit.export import EXPORT_FORMAT
from broker.canonical import canonical_json

# The layout `export` writes (`broker.audit.body`); anything else (a file re-encoded by another
# tool) is parsed.
_EVENT = EVENT_LINE
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LineBreak:
    """The first line at which the file stops verifying, and why."""

    line: int
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.problem}"


@dataclass
class FileVerifyResult:
    """What verifying an export found."""

    lines: int = 0
    events: int = 0
    gaps: int = 0
    omitted: int = 0
    checkpoints: int = 0
    last_seq: int = 0
    signed_through: int = 0
    bound: int = 0
    unanchored: int = 0
    unsigned_tail: int = 0
    key_ids: set[str] = field(default_factory=set)
    filters: dict[str, Any] = field(default_factory=dict)
    broken: LineBreak | None = None

    @property
    def ok(self) -> bool:
        """True when every line verified."""
        return self.broken is None

    def summary(self) -> str:
        """A few lines for a person: what was checked and what the signatures cover."""
        if self.broken is not None:
            return f"audit export BROKEN at {self.broken}"
        keys = ", ".join(sorted(self.key_ids)) or "-"
        out = [
            f"audit export OK: {self.lines} lines, {self.events} events, "
            f"{self.omitted} events left out in {self.gaps} gaps, "
            f"{self.checkpoints} checkpoints verified (keys {keys})",
            f"signed: {self.bound} events are covered by a valid checkpoint signature "
            f"(chain signed through event {self.signed_through})",
        ]
        if self.unanchored:
            out.append(
                f"not covered: {self.unanchored} events are followed by a gap before any "
                "checkpoint, so only their own hashes were checked (see docs/audit.md)"
            )
        if self.unsigned_tail:
            out.append(
                f"not covered: the last {self.unsigned_tail} events come after the last "
                "checkpoint in the file"
            )
        if self.filters:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.filters.items()))
            out.append(f"filters of this export: {shown}")
        return "\n".join(out)


class _Broken(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _State:
    """Where the walk through the file stands."""

    def __init__(self, public_key: Ed25519PublicKey, result: FileVerifyResult) -> None:
        self.key = public_key
        self.result = result
        self.expected_seq = 1
        self.prev = GENESIS
        self.run = 0  # events since the last gap or checkpoint, not yet signed
        self.ended = False

    def event(self, seq: int, prev_hash: str, hash_: str, body: bytes | None, parsed: Any) -> None:
        if seq != self.expected_seq:
            if seq > self.expected_seq:
                raise _Broken(
                    f"expected event {self.expected_seq} but found event {seq}: "
                    "lines were deleted or moved"
                )
            raise _Broken(f"expected event {self.expected_seq} but found event {seq}: lines moved")
        if prev_hash != self.prev:
            raise _Broken(f"event {seq} does not link to the line before it (prev_hash differs)")
        digest = hashlib.sha256(prev_hash.encode("ascii"))
        digest.update(body if body is not None else canonical_json(parsed).encode("utf-8"))
        if digest.hexdigest() != hash_:
            changed = _Broken(f"event {seq} does not match its hash (content changed)")
            if body is None:
                raise changed
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise changed from exc
            if canonical_json(parsed).encode("utf-8") == body:
                raise changed
            # Re-encoded by another tool: hash the canonical form of what it parsed to.
            self.event(seq, prev_hash, hash_, None, parsed)
            return
        self.prev = hash_
        self.expected_seq = seq + 1
        self.run += 1
        self.result.events += 1
        self.result.last_seq = seq

    def gap(self, record: dict[str, Any]) -> None:
        from_seq, to_seq, last_hash = (
            record.get("from_seq"),
            record.get("to_seq"),
            record.get("last_hash"),
        )
        if not (
            isinstance(from_seq, int) and isinstance(to_seq, int) and isinstance(last_hash, str)
        ):
            raise _Broken("gap record lacks from_seq, to_seq or last_hash")
        if from_seq != self.expected_seq:
            raise _Broken(
                f"expected event {self.expected_seq} but the gap starts at {from_seq}: "
                "lines were deleted or moved"
            )
        if to_seq < from_seq or not _HEX64.fullmatch(last_hash):
            raise _Broken("gap record is malformed")
        self.result.unanchored += self.run
        self.run = 0
        self.prev = last_hash
        self.expected_seq = to_seq + 1
        self.result.gaps += 1
        self.result.omitted += to_seq - from_seq + 1
        self.result.last_seq = to_seq

    def checkpoint(self, record: dict[str, Any]) -> None:
        seq = record.get("seq")
        if seq != self.expected_seq - 1 or record.get("hash") != self.prev:
            raise _Broken(
                f"checkpoint for event {seq} does not match the chain at this point "
                f"(the line before is event {self.expected_seq - 1}): forged or moved"
            )
        try:
            verify_checkpoint(self.key, record)
        except InvalidCheckpoint as exc:
            raise _Broken(f"checkpoint for event {seq}: {exc}") from exc
        self.result.checkpoints += 1
        self.result.key_ids.add(str(record["key_id"]))
        self.result.bound += self.run
        self.run = 0
        self.result.signed_through = int(seq)

    def end(self, record: dict[str, Any], line_no: int) -> None:
        result = self.result
        result.last_seq = self.expected_seq - 1
        expected = {
            "last_seq": result.last_seq,
            "events": result.events,
            "gaps": result.gaps,
            "checkpoints": result.checkpoints,
            "lines": line_no,
        }
        for name, found in expected.items():
            if record.get(name) != found:
                raise _Broken(
                    f"the end record says {name} = {record.get(name)} but the file holds "
                    f"{found}: lines were deleted, added or the end record was changed"
                )
        result.unsigned_tail = self.run
        self.ended = True


def verify_lines(lines: Iterable[bytes], public_key: Ed25519PublicKey) -> FileVerifyResult:
    """Verify an export given as byte lines; stop at the first problem."""
    result = FileVerifyResult()
    state = _State(public_key, result)
    line_no = 0
    match_event, sha256 = _EVENT.match, hashlib.sha256
    try:
        for line_no, raw in enumerate(lines, start=1):  # noqa: B007 - used after the loop
            line = raw.rstrip(b"\r\n")
            if state.ended:
                if line.strip():
                    raise _Broken("data after the end record")
                continue
            match = match_event(line)
            if match is not None and line.endswith(b"}}") and line_no > 1:
                # The hot path, inlined: an event line in the layout `export` writes.
                seq_text, prev_hash, body_at = match[1], match[2].decode(), match.end()
                if int(seq_text) == state.expected_seq and prev_hash == state.prev:
                    digest = sha256(match[2])
                    digest.update(line[body_at:-1])
                    hash_ = match[3].decode()
                    at = line.rfind(b',"seq":')
                    if (
                        digest.hexdigest() == hash_
                        and at > body_at
                        and line[at + 7 : line.find(b",", at + 7)] == seq_text
                    ):
                        state.prev = hash_
                        state.expected_seq += 1
                        state.run += 1
                        result.events += 1
                        continue
                # Something is off: the slow path names it.
                state.event(int(seq_text), prev_hash, match[3].decode(), line[body_at:-1], None)
                _check_body_seq(line, match)
                continue
            if line_no == 1:
                _header(line, result)
                continue
            record = _parse(line)
            kind = record.get("type")
            if kind == "event":
                _event_record(state, record)
            elif kind == "gap":
                state.gap(record)
            elif kind == "checkpoint":
                state.checkpoint(record)
            elif kind == "end":
                state.end(record, line_no)
            else:
                raise _Broken(f"unknown record type {kind!r}")
        if not state.ended:
            line_no += 1
            raise _Broken("the file ends without its end record: it was truncated")
    except _Broken as exc:
        result.broken = LineBreak(line_no, exc.problem)
    result.lines = line_no
    return result


def verify_file(path: str | Path | BinaryIO, public_key: Ed25519PublicKey) -> FileVerifyResult:
    """Verify an export file (path or binary stream)."""
    if isinstance(path, str | Path):
        with open(path, "rb") as handle:
            return verify_lines(handle, public_key)
    return verify_lines(path, public_key)


def _header(line: bytes, result: FileVerifyResult) -> None:
    record = _parse(line)
    if record.get("type") != "header" or record.get("format") != EXPORT_FORMAT:
        raise _Broken(f"not a broker audit export (expected a {EXPORT_FORMAT} header line)")
    filters = record.get("filters")
    result.filters = dict(filters) if isinstance(filters, dict) else {}


def _parse(line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise _Broken(f"not valid JSON ({exc.args[0]}): the line was changed or cut") from exc
    if not isinstance(record, dict):
        raise _Broken("not a JSON object")
    return record


def _check_body_seq(line: bytes, match: re.Match[bytes]) -> None:
    # In a canonical body `seq` is the last top-level key before target/ts/user_agent, which
    # are strings, so the last `,"seq":` is the top-level one.
    at = line.rfind(b',"seq":')
    end = line.find(b",", at + 7)
    if at < match.end() or line[at + 7 : end] != match[1]:
        raise _Broken(f"event {int(match[1])}: the seq inside the body differs from the line's")


def _event_record(state: _State, record: dict[str, Any]) -> None:
    seq, prev_hash, hash_, body = (record.get(k) for k in ("seq", "prev_hash", "hash", "body"))
    if not (
        isinstance(seq, int)
        and isinstance(prev_hash, str)
        and isinstance(hash_, str)
        and isinstance(body, dict)
    ):
        raise _Broken("event record lacks seq, prev_hash, hash or body")
    if body.get("seq") != seq:
        raise _Broken(f"event {seq}: the seq inside the body differs from the line's")
    state.event(seq, prev_hash, hash_, None, body)
