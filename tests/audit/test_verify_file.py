"""Offline verification: a round trip passes; each kind of tampering fails at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audittrail import seed, write_export
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoints import generate_key_pair, load_signing_key
from broker.audit.cli import audit_cli
from broker.audit.export import ExportFilter
from broker.audit.verify_file import FileVerifyResult, verify_file
from broker.db import Database


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    private, _ = generate_key_pair(tmp_path / "keys")
    return load_signing_key(private)


@pytest.fixture
def exported(database: Database, key: Ed25519PrivateKey, tmp_path: Path) -> Path:
    """12 rounds (48 events), a checkpoint every 3 rounds: checkpoints at 12, 24, 36, 48."""
    seed(database, 12, key=key, sign_every=3)
    return write_export(database, tmp_path / "audit.jsonl")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _verify(path: Path, key: Ed25519PrivateKey) -> FileVerifyResult:
    return verify_file(path, key.public_key())


def _line_of(lines: list[str], kind: str, seq: int) -> int:
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        if record["type"] == kind and record.get("seq") == seq:
            return number
    raise AssertionError(f"no {kind} {seq}")


def test_round_trip_verifies_and_every_event_is_signed(
    exported: Path, key: Ed25519PrivateKey
) -> None:
    result = _verify(exported, key)
    assert result.ok, result.summary()
    assert (result.events, result.checkpoints, result.gaps) == (48, 4, 0)
    assert result.bound == 48 and result.unsigned_tail == 0 and result.signed_through == 48
    assert result.lines == len(_lines(exported))


def test_changed_byte_names_its_line(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    at = _line_of(lines, "event", 17)
    lines[at - 1] = lines[at - 1].replace("10.0.0.7", "10.0.0.8", 1)
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert not result.ok and result.broken is not None
    assert result.broken.line == at and "does not match its hash" in result.broken.problem


def test_changed_hash_byte_names_its_line(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    at = _line_of(lines, "event", 5)
    record = json.loads(lines[at - 1])
    flipped = ("1" if record["hash"][10] != "1" else "2").join(
        (record["hash"][:10], record["hash"][11:])
    )
    lines[at - 1] = lines[at - 1].replace(record["hash"], flipped)
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert result.broken is not None and result.broken.line == at


def test_deleted_line_names_where_it_was(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    at = _line_of(lines, "event", 30)
    del lines[at - 1]
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert result.broken is not None and result.broken.line == at
    assert "expected event 30 but found event 31" in result.broken.problem


def test_swapped_lines_name_the_first(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    at = _line_of(lines, "event", 7)
    lines[at - 1], lines[at] = lines[at], lines[at - 1]
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert result.broken is not None and result.broken.line == at


def test_forged_checkpoint_names_its_line(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    at = _line_of(lines, "checkpoint", 24)
    record = json.loads(lines[at - 1])
    record["signed_at"] = "2030-01-01T00:00:00.000000Z"
    lines[at - 1] = json.dumps(record) + "\n"
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert result.broken is not None and result.broken.line == at
    assert "signature does not verify" in result.broken.problem


def test_checkpoint_signed_by_another_key_fails(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    other = Ed25519PrivateKey.generate()
    result = verify_file(exported, other.public_key())
    assert result.broken is not None and "public key given is" in result.broken.problem


def test_rewritten_event_with_recomputed_hashes_is_caught_by_the_checkpoint(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """An attacker who re-hashes the chain after an edit still cannot re-sign."""
    from broker.audit.chain import chain_hash
    from broker.canonical import canonical_json

    lines = _lines(exported)
    records = [json.loads(line) for line in lines]
    prev = None
    for record in records:
        if record["type"] != "event":
            continue
        if record["seq"] == 2:
            record["body"]["reason"] = "nothing to see"
        if prev is not None:
            record["prev_hash"] = prev
        record["hash"] = chain_hash(record["prev_hash"], record["body"])
        prev = record["hash"]
    assert canonical_json({}) == "{}"
    out = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records]
    result = _verify(_write(tmp_path / "x.jsonl", out), key)
    assert result.broken is not None
    assert result.broken.line == _line_of(lines, "checkpoint", 12)


def test_deleted_checkpoint_or_truncation_is_caught_at_the_end(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    without_cp = [line for n, line in enumerate(lines, 1) if n != _line_of(lines, "checkpoint", 36)]
    result = _verify(_write(tmp_path / "a.jsonl", without_cp), key)
    assert result.broken is not None and result.broken.line == len(without_cp)
    assert "end record" in result.broken.problem
    truncated = lines[:-3]
    result = _verify(_write(tmp_path / "b.jsonl", truncated), key)
    assert result.broken is not None and result.broken.line == len(truncated) + 1
    assert "truncated" in result.broken.problem


def test_a_file_reencoded_by_another_tool_still_verifies(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    out = [json.dumps(json.loads(line), indent=None) + "\n" for line in _lines(exported)]
    result = _verify(_write(tmp_path / "x.jsonl", out), key)
    assert result.ok, result.summary()


def test_filtered_export_verifies_and_says_what_is_signed(
    database: Database, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    seed(database, 12, key=key, sign_every=3)
    path = write_export(database, tmp_path / "f.jsonl", ExportFilter(person="bob@example.com"))
    result = _verify(path, key)
    assert result.ok, result.summary()
    assert result.events == 16  # 4 rounds of bob, 4 events each
    assert result.events + result.omitted == 48 and result.checkpoints == 4
    # bob's last events of a round run into alice's next round: only hashes checked.
    assert result.bound + result.unanchored + result.unsigned_tail == 16
    assert "not covered" in result.summary()


def test_filtered_export_tampering_is_still_caught(
    database: Database, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    seed(database, 12, key=key, sign_every=3)
    path = write_export(database, tmp_path / "f.jsonl", ExportFilter(action="credentials.*"))
    lines = _lines(path)
    gap = next(n for n, line in enumerate(lines, 1) if '"type":"gap"' in line and n > 3)
    del lines[gap - 1]
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert result.broken is not None and result.broken.line == gap


def test_time_window_export_is_fully_signed(
    database: Database, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    clock = seed(database, 12, key=key, sign_every=3)
    since = clock.now - (clock.now - clock.now.replace(hour=9, minute=0)) / 2
    path = write_export(database, tmp_path / "t.jsonl", ExportFilter(since=since))
    result = _verify(path, key)
    assert result.ok, result.summary()
    assert result.gaps == 1 and result.unanchored == 0 and result.unsigned_tail == 0
    assert result.bound == result.events


def test_cli_verify_file(exported: Path, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    runner = CliRunner()
    public = tmp_path / "keys" / "audit-signing.pub.pem"
    ok = runner.invoke(audit_cli, ["verify", str(exported), "--public-key", str(public)])
    assert ok.exit_code == 0, ok.output
    assert "audit export OK" in ok.output and "48 events" in ok.output
    lines = _lines(exported)
    del lines[4]
    bad = runner.invoke(
        audit_cli, ["verify", str(_write(tmp_path / "x.jsonl", lines)), "--public-key", str(public)]
    )
    assert bad.exit_code == 1 and "line 5:" in bad.output
    missing = runner.invoke(audit_cli, ["verify", str(exported)])
    assert missing.exit_code == 2 and "--public-key" in missing.output


def test_a_byte_that_breaks_the_json_names_its_line(
    exported: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    lines = _lines(exported)
    at = _line_of(lines, "event", 9)
    lines[at - 1] = lines[at - 1].replace('"actor":"', '"actor":"\\', 1)
    result = _verify(_write(tmp_path / "x.jsonl", lines), key)
    assert result.broken is not None and result.broken.line == at
