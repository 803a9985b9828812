"""Exports: the JSON Lines body is the hashed text, CSV reads back, filters select, memory flat."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from audittrail import START, export_text, seed
from flask import Flask

from broker.audit.chain import chain_hash, event_body
from broker.audit.cli import audit_cli
from broker.audit.export import CSV_COLUMNS, ExportFilter, _ts_text, body_json, export
from broker.canonical import canonical_json
from broker.db import Database, get_database
from broker.models import AuditEvent


def test_body_json_is_exactly_the_canonical_hashed_body(database: Database) -> None:
    seed(database, 3)
    with database.session() as session:
        rows = session.scalars(sa.select(AuditEvent)).all()
        for row in rows:
            fields = tuple(
                getattr(row, n)
                for n in (
                    "seq", "ts", "actor", "action", "target", "decision", "reason", "ip",
                    "user_agent", "client", "policy_version", "details", "prev_hash", "hash",
                )
            )  # fmt: skip
            assert body_json(fields) == canonical_json(event_body(row))
            assert chain_hash(row.prev_hash, event_body(row)) == row.hash


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=UTC),
        datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_fast_timestamp_text_matches_format_ts(ts: datetime) -> None:
    from broker.audit.chain import format_ts

    assert _ts_text(ts) == format_ts(ts)


def test_jsonl_layout(database: Database) -> None:
    seed(database, 2)
    lines = [json.loads(line) for line in export_text(database, "jsonl").splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["format"] == "broker-audit-export/1"
    events = [r for r in lines if r["type"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert events[0]["prev_hash"] == "0" * 64
    assert all(e["body"]["seq"] == e["seq"] for e in events)
    assert lines[-1] == {
        "type": "end", "last_seq": 8, "events": 8, "gaps": 0, "checkpoints": 0, "lines": 10,
    }  # fmt: skip


def test_csv_reads_back_with_documented_columns(database: Database) -> None:
    seed(database, 3)
    text = export_text(database, "csv")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 12
    issued = [r for r in rows if r["action"] == "credentials.issued"]
    assert issued[0]["role_session_name"] == "alice-0"
    assert issued[0]["source_identity"] == "alice@example.com"
    assert issued[0]["access_key_id"] == "ASIA0000000000000000"
    assert issued[0]["entitlement"] == "app-read"
    assert issued[0]["session_expires_at"] == "2024-05-01T10:00:00+00:00"
    assert json.loads(issued[0]["details"])["session_id"].startswith("s")
    request = next(r for r in rows if r["action"] == "grant.request")
    assert request["reason"] == "'=deploy fix #0"  # a formula is defused
    assert request["user_agent"] == "broker-cli/1 ünïcode"
    assert rows[0]["ts"].endswith("Z") and int(rows[-1]["seq"]) == 12


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (ExportFilter(person="bob@example.com"), 4),
        (ExportFilter(person="BOB@example.com", action="credentials.issued"), 1),
        (ExportFilter(action="grant.*"), 6),
        (ExportFilter(entitlement="app-read"), 9),
        (ExportFilter(since=START + timedelta(minutes=5), until=START + timedelta(minutes=9)), 4),
    ],
)
def test_filters(database: Database, flt: ExportFilter, expected: int) -> None:
    seed(database, 3)
    rows = list(csv.DictReader(io.StringIO(export_text(database, "csv", flt), newline="")))
    assert len(rows) == expected


def test_export_reads_in_batches_and_reports_progress(database: Database) -> None:
    seed(database, 600)  # 2,400 events: more than one batch
    seen: list[int] = []
    with database.session() as session:
        chunks = list(export(session, "jsonl", now=START, progress=seen.append))
    assert len(chunks) >= 2 and sum(seen) == 2400


def test_cli_export_writes_each_format(app: Flask, tmp_path: Path) -> None:
    seed(get_database(app), 2)
    runner = app.test_cli_runner()
    for fmt in ("jsonl", "csv", "ocsf"):
        out = tmp_path / f"a.{fmt}"
        result = runner.invoke(
            audit_cli, ["export", "--format", fmt, "--person", "alice@example.com", "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 0
    stdout = runner.invoke(audit_cli, ["export", "--format", "csv", "--action", "auth.sign_in"])
    assert stdout.exit_code == 0 and stdout.output.count("auth.sign_in") == 2
    bad = runner.invoke(audit_cli, ["export", "--since", "yesterday"])
    assert bad.exit_code == 2 and "not a date or time" in bad.output
    with get_database(app).session() as session:
        exports = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "audit.export")
        ).all()
    assert len(exports) == 4  # every export is itself audited, before it runs
    assert {e.details["format"] for e in exports} == {"jsonl", "csv", "ocsf"}
    assert all(e.client == "cli" for e in exports)
