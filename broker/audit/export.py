"""Streamed audit exports: JSON Lines (verifiable offline), CSV and OCSF.

Every format reads the trail in seq order through a server-side cursor (`yield_per`) and yields
text in batches, so memory stays flat however long the trail is. The JSON Lines layout and what
a filtered export proves are described in docs/audit.md; `broker.audit.verify_file` reads it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Literal

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from broker.audit.chain import CHAINED_FIELDS, GENESIS, format_ts
from broker.audit.checkpoints import checkpoint_record
from broker.audit.ocsf import to_ocsf
from broker.canonical import canonical_json
from broker.models import AuditCheckpoint, AuditEvent

Format = Literal["jsonl", "csv", "ocsf"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "ocsf")
EXPORT_FORMAT = "broker-audit-export/1"
BATCH = 2000
# A row of `_COLUMNS`, read by position on the hot path.
EventRow = Sequence[Any]

CSV_COLUMNS = (
    *CHAINED_FIELDS[:-1],  # seq … policy_version: the event as chained, then what joins it
    "entitlement",
    "grant_id",
    "role_session_name",
    "source_identity",
    "access_key_id",
    "session_expires_at",
    "details",
    "prev_hash",
    "hash",
)
# Columns a person types into (or an IdP supplies) could start a spreadsheet formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_encode_str: Callable[[str], str] = json.encoder.encode_basestring
# The encoder `canonical_json` builds per call, built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_BODY = (
    '{"action":%s,"actor":%s,"client":%s,"decision":%s,"details":%s,"ip":%s,'
    '"policy_version":%s,"reason":%s,"seq":%d,"target":%s,"ts":"%s","user_agent":%s}'
)

_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.ts,
    AuditEvent.actor,
    AuditEvent.action,
    AuditEvent.target,
    AuditEvent.decision,
    AuditEvent.reason,
    AuditEvent.ip,
    AuditEvent.user_agent,
    AuditEvent.client,
    AuditEvent.policy_version,
    AuditEvent.details,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


@dataclass(frozen=True)
class ExportFilter:
    """Which events an export includes. Times are a half-open range: since <= ts < until.

    `person` matches the actor, the target, or `details.person` / `details.requester`;
    `entitlement` matches the target or `details.entitlement`; `action` is exact or a glob
    such as `grant.*`.
    """

    since: datetime | None = None
    until: datetime | None = None
    person: str | None = None
    entitlement: str | None = None
    action: str | None = None

    @property
    def selective(self) -> bool:
        """True when some events inside the time window may be left out."""
        return bool(self.person or self.entitlement or self.action)

    def describe(self) -> dict[str, str]:
        """The filters in force, for the export header."""
        out = {
            "since": format_ts(self.since) if self.since else None,
            "until": format_ts(self.until) if self.until else None,
            "person": self.person,
            "entitlement": self.entitlement,
            "action": self.action,
        }
        return {k: v for k, v in out.items() if v is not None}

    def matches(self, row: EventRow) -> bool:
        """Whether an event row (columns as `_COLUMNS`) is in the export."""
        ts = row[1]
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts >= self.until:
            return False
        if self.action is not None and not (
            row[3] == self.action or fnmatchcase(row[3], self.action)
        ):
            return False
        details = row[11] or {}
        if self.person is not None:
            who = self.person.lower()
            candidates = (row[2], row[4], details.get("person"), details.get("requester"))
            if not any(isinstance(c, str) and c.lower() == who for c in candidates):
                return False
        if self.entitlement is not None and self.entitlement not in (
            row[4],
            details.get("entitlement"),
        ):
            return False
        return True


# -- reading ----------------------------------------------------------------------------------


def _window(session: Session, flt: ExportFilter) -> tuple[int, int] | None:
    """The seq range the time filters select, or None when no event falls in it."""
    query = select(func.min(AuditEvent.seq), func.max(AuditEvent.seq))
    if flt.since is not None:
        query = query.where(AuditEvent.ts >= flt.since)
    if flt.until is not None:
        query = query.where(AuditEvent.ts < flt.until)
    lo, hi = session.execute(query).one()
    return None if lo is None else (int(lo), int(hi))


def count_events(session: Session, flt: ExportFilter) -> int:
    """How many events the export will read (for a progress bar): the window's size."""
    window = _window(session, flt)
    return 0 if window is None else window[1] - window[0] + 1


def _rows(session: Session, lo: int, hi: int) -> Iterator[EventRow]:
    query = (
        select(*_COLUMNS)
        .where(AuditEvent.seq >= lo, AuditEvent.seq <= hi)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=BATCH)
    )
    # Core rows through the connection: no ORM layer on the hot path.
    yield from session.connection().execute(query)


_STORED = text(
    "SELECT seq, ts, actor, action, target, decision, reason, ip, user_agent, client,"
    " policy_version, CAST(details AS TEXT), prev_hash, hash FROM audit_events"
    " WHERE seq >= :lo AND seq <= :hi ORDER BY seq"
)


def _stored_rows(session: Session, lo: int, hi: int) -> Iterator[EventRow]:
    """Rows as stored, for the unfiltered export: details as their (canonical) stored text,
    the time as the driver gives it. No type processing on the hot path."""
    result = session.connection().execute(_STORED.bindparams(lo=lo, hi=hi))
    while rows := result.fetchmany(BATCH):  # one driver call per batch
        yield from rows


def _stored_ts(value: Any) -> str:
    if isinstance(value, str):  # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff" (UTC)
        return value[:10] + "T" + (value[11:] if len(value) > 19 else value[11:] + ".000000") + "Z"
    return _ts_text(value.replace(tzinfo=UTC))  # PostgreSQL: a naive UTC datetime


def _stored_body_json(row: EventRow) -> str:
    """`body_json` for a `_stored_rows` row (same text: details are stored canonically)."""
    details = row[11]
    stored = "{}" if details is None or details == "null" else details
    return _body_text(row, stored, _stored_ts(row[1]))


def _checkpoints(session: Session, lo: int, hi: int) -> Iterator[AuditCheckpoint]:
    query = (
        select(AuditCheckpoint)
        .where(AuditCheckpoint.seq >= lo, AuditCheckpoint.seq <= hi)
        .order_by(AuditCheckpoint.seq, AuditCheckpoint.id)
        .execution_options(yield_per=BATCH)
    )
    yield from session.scalars(query)


def _ts_text(ts: datetime) -> str:
    """`format_ts`, without strftime on the hot path (same text for UTC-aware times)."""
    if ts.tzinfo is UTC:
        iso = ts.isoformat()
        return (iso[:26] if ts.microsecond else iso[:19] + ".000000") + "Z"
    return format_ts(ts)


def body_json(row: EventRow) -> str:
    """`canonical_json(event_body(event))` for a row, built directly (the export's hot path).

    Keys in sorted order: action, actor, client, decision, details, ip, policy_version, reason,
    seq, target, ts, user_agent. Tests pin this to `canonical_json(event_body(...))`.
    """
    details = row[11]
    return _body_text(row, _CANONICAL.encode(details) if details else "{}", _ts_text(row[1]))


def _body_text(row: EventRow, details: str, ts: str) -> str:
    enc = _encode_str
    return _BODY % (
        enc(row[3]),
        enc(row[2]),
        "null" if row[9] is None else enc(row[9]),
        "null" if row[5] is None else enc(row[5]),
        details,
        "null" if row[7] is None else enc(row[7]),
        "null" if row[10] is None else enc(row[10]),
        "null" if row[6] is None else enc(row[6]),
        row[0],
        "null" if row[4] is None else enc(row[4]),
        ts,
        "null" if row[8] is None else enc(row[8]),
    )


def body_dict(row: EventRow) -> dict[str, Any]:
    """The chained fields of a row as a dict (same shape as `event_body`)."""
    return {
        "seq": row[0],
        "ts": _ts_text(row[1]),
        "actor": row[2],
        "action": row[3],
        "target": row[4],
        "decision": row[5],
        "reason": row[6],
        "ip": row[7],
        "user_agent": row[8],
        "client": row[9],
        "policy_version": row[10],
        "details": dict(row[11] or {}),
    }


# -- formats ----------------------------------------------------------------------------------


def as_format(value: str) -> Format:
    """`value` as an export format, or ValueError naming the known ones."""
    for known in FORMATS:
        if known == value:
            return known
    raise ValueError(f"unknown export format {value!r}; expected one of {', '.join(FORMATS)}")


def export(
    session: Session,
    fmt: Format,
    flt: ExportFilter | None = None,
    *,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """Yield the export as text chunks; `progress(n)` is told of every n events read."""
    flt = flt or ExportFilter()
    if fmt == "jsonl":
        return _jsonl(session, flt, now, progress)
    if fmt == "csv":
        return _csv(session, flt, progress)
    if fmt == "ocsf":
        return _ocsf(session, flt, progress)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _matching(
    session: Session, flt: ExportFilter, progress: Callable[[int], None] | None
) -> Iterator[EventRow]:
    window = _window(session, flt)
    if window is None:
        return
    read = 0
    for row in _rows(session, *window):
        read += 1
        if read == BATCH:
            if progress:
                progress(read)
            read = 0
        if flt.matches(row):
            yield row
    if progress and read:
        progress(read)


def _jsonl(
    session: Session,
    flt: ExportFilter,
    now: datetime,
    progress: Callable[[int], None] | None,
) -> Iterator[str]:
    """Header, then every seq of 1..last as an event line or inside a gap line, each checkpoint
    right after the line of its seq, and an end record with the counts."""
    header = {
        "type": "header",
        "format": EXPORT_FORMAT,
        "generated_at": format_ts(now),
        "filters": flt.describe(),
        "hash": "sha256(prev_hash || canonical_json(body))",
        "genesis": GENESIS,
    }
    lines = 1
    events = gaps = checkpoints = 0
    out: list[str] = [json.dumps(header, sort_keys=True) + "\n"]
    window = _window(session, flt)
    last_seq = 0
    if window is not None:
        lo, hi = window
        pending_cps = _checkpoints(session, lo, hi)
        next_cp = next(pending_cps, None)
        next_cp_seq = next_cp.seq if next_cp is not None else -1
        gap_from: int | None = 1 if lo > 1 else None
        gap_to, gap_hash = lo - 1, ""
        read = 0
        everything = not (flt.selective or flt.since or flt.until)
        rows = _stored_rows(session, lo, hi) if everything else _rows(session, lo, hi)
        body = _stored_body_json if everything else body_json
        for row in rows:
            seq: int = row[0]
            if seq == lo and gap_from is not None:
                gap_hash = row[12]  # the omitted prefix ends where event `lo` links to
            if everything or flt.matches(row):
                if gap_from is not None:
                    out.append(_gap_line(gap_from, gap_to, gap_hash))
                    gaps += 1
                    lines += 1
                    gap_from = None
                out.append(
                    '{"type":"event","seq":' + str(seq)
                    + ',"prev_hash":"' + row[12]
                    + '","hash":"' + row[13]
                    + '","body":' + body(row)
                    + "}\n"
                )  # fmt: skip
                events += 1
                lines += 1
            else:
                if gap_from is None:
                    gap_from = seq
                gap_to, gap_hash = seq, row[13]
            # A checkpoint follows the line of its seq, so a gap is cut where one falls.
            while next_cp_seq == seq and next_cp is not None:
                if gap_from is not None:
                    out.append(_gap_line(gap_from, gap_to, gap_hash))
                    gaps += 1
                    lines += 1
                    gap_from = None
                out.append(json.dumps(checkpoint_record(next_cp), sort_keys=True) + "\n")
                checkpoints += 1
                lines += 1
                next_cp = next(pending_cps, None)
                next_cp_seq = next_cp.seq if next_cp is not None else -1
            last_seq = seq
            read += 1
            if read == BATCH:
                if progress:
                    progress(read)
                read = 0
                yield "".join(out)
                out.clear()
        if gap_from is not None:
            out.append(_gap_line(gap_from, gap_to, gap_hash))
            gaps += 1
            lines += 1
        if progress and read:
            progress(read)
    end = {
        "type": "end",
        "last_seq": last_seq,
        "events": events,
        "gaps": gaps,
        "checkpoints": checkpoints,
        "lines": lines + 1,
    }
    out.append(json.dumps(end, sort_keys=True) + "\n")
    yield "".join(out)


def _gap_line(from_seq: int, to_seq: int, last_hash: str) -> str:
    return f'{{"type":"gap","from_seq":{from_seq},"to_seq":{to_seq},"last_hash":"{last_hash}"}}\n'


def csv_cell(value: Any) -> Any:
    """A CSV cell, with text that a spreadsheet would run as a formula quoted by a `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_row(row: EventRow) -> list[Any]:
    """One CSV row in `CSV_COLUMNS` order."""
    details: Mapping[str, Any] = row[11] or {}
    session_expiry = details.get("expires_at") if row[3] == "credentials.issued" else None
    values = [
        row[0],
        _ts_text(row[1]),
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        details.get("entitlement") or (row[4] if row[3].startswith("grant.") else None),
        details.get("grant_id"),
        details.get("role_session_name"),
        details.get("source_identity"),
        details.get("access_key_id"),
        session_expiry,
        canonical_json(dict(details)),
        row[12],
        row[13],
    ]
    return [csv_cell(v) for v in values]


def _csv(
    session: Session, flt: ExportFilter, progress: Callable[[int], None] | None
) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    pending = 0
    for row in _matching(session, flt, progress):
        writer.writerow(csv_row(row))
        pending += 1
        if pending == BATCH:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()


def _ocsf(
    session: Session, flt: ExportFilter, progress: Callable[[int], None] | None
) -> Iterator[str]:
    out: list[str] = []
    for row in _matching(session, flt, progress):
        out.append(json.dumps(to_ocsf(body_dict(row), row[13]), sort_keys=True) + "\n")
        if len(out) == BATCH:
            yield "".join(out)
            out.clear()
    yield "".join(out)
