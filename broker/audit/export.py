"""Streamed audit exports: JSON Lines (verifiable offline), CSV and OCSF.

Every format reads the trail in seq order through a server-side cursor (`yield_per`) and yields
text in batches, so memory stays flat however long the trail is. The JSON Lines layout and what
a filtered export proves are described in docs/audit.md; `broker.audit.verify_file` reads it.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.audit.body import (
    CHAINED_FIELDS,
    GENESIS,
    event_line,
    format_ts,
    row_body_text,
    stored_event_lines,
    stored_ts_text,
    ts_text,
)
from broker.audit.checkpoints import checkpoint_record
from broker.audit.ocsf import to_ocsf
from broker.audit.rows import (
    BATCH,
    bodies,
    stored_batches,
    stored_details,
    stored_row,
    stored_rows,
)
from broker.canonical import canonical_json
from broker.models import AuditCheckpoint, AuditEvent

Format = Literal["jsonl", "csv", "ocsf"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "ocsf")
EXPORT_FORMAT = "broker-audit-export/1"
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


def _stored_body_json(row: EventRow) -> str:
    """`body_json` for a stored row (same text: details are stored canonically)."""
    return row_body_text(row, stored_details(row[11]), stored_ts_text(row[1]))


def _checkpoints(session: Session, lo: int, hi: int) -> Iterator[AuditCheckpoint]:
    query = (
        select(AuditCheckpoint)
        .where(AuditCheckpoint.seq >= lo, AuditCheckpoint.seq <= hi)
        .order_by(AuditCheckpoint.seq, AuditCheckpoint.id)
        .execution_options(yield_per=BATCH)
    )
    yield from session.scalars(query)


_ts_text = ts_text  # the name the tests pin against format_ts


def body_json(row: EventRow) -> str:
    """`canonical_json(event_body(event))` for a row, built directly (see :mod:`.body`).

    Tests pin this to `canonical_json(event_body(...))`.
    """
    details = row[11]
    return row_body_text(row, canonical_json(details) if details else "{}", ts_text(row[1]))


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


@dataclass
class _Counts:
    """What the end record of a JSON Lines export says."""

    lines: int = 1  # the header
    events: int = 0
    gaps: int = 0
    checkpoints: int = 0
    last_seq: int = 0


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
    yield json.dumps(header, sort_keys=True) + "\n"
    counts = _Counts()
    window = _window(session, flt)
    if window is not None:
        lo, hi = window
        everything = not (flt.selective or flt.since or flt.until)
        if everything and session.get_bind().dialect.name == "sqlite":
            yield from _jsonl_stored(session, lo, hi, counts, progress)
        else:
            yield from _jsonl_events(session, flt, lo, hi, counts, progress)
    end = {
        "type": "end",
        "last_seq": counts.last_seq,
        "events": counts.events,
        "gaps": counts.gaps,
        "checkpoints": counts.checkpoints,
        "lines": counts.lines + 1,
    }
    yield json.dumps(end, sort_keys=True) + "\n"


def _checkpoint_line(checkpoint: AuditCheckpoint) -> str:
    return json.dumps(checkpoint_record(checkpoint), sort_keys=True) + "\n"


def _jsonl_stored(
    session: Session,
    lo: int,
    hi: int,
    counts: _Counts,
    progress: Callable[[int], None] | None,
) -> Iterator[str]:
    """Every event of ``lo``..``hi``, as lines written a whole batch at a time (SQLite: the
    database runs in this process, so fewer Python steps per row is what counts)."""
    pending = _checkpoints(session, lo, hi)
    checkpoint = next(pending, None)
    for rows in stored_batches(session, lo, hi):
        batch = stored_event_lines(rows, stored_details)
        seqs = [r[0] for r in rows]
        # A checkpoint follows the line of its seq (inserted from the back: indexes hold).
        found: list[tuple[int, AuditCheckpoint]] = []
        while checkpoint is not None and checkpoint.seq <= seqs[-1]:
            found.append((bisect.bisect_right(seqs, checkpoint.seq), checkpoint))
            checkpoint = next(pending, None)
        for at, cp in reversed(found):
            batch.insert(at, _checkpoint_line(cp))
        if counts.events == 0 and lo > 1:  # the trail starts later: say where it links to
            batch.insert(0, _gap_line(1, lo - 1, rows[0][12]))
            counts.gaps += 1
        counts.events += len(rows)
        counts.checkpoints += len(found)
        counts.lines += len(batch)
        counts.last_seq = seqs[-1]
        if progress:
            progress(len(rows))
        yield "".join(batch)


def _jsonl_events(
    session: Session,
    flt: ExportFilter,
    lo: int,
    hi: int,
    counts: _Counts,
    progress: Callable[[int], None] | None,
) -> Iterator[str]:
    """Events of ``lo``..``hi`` one by one: the filtered export, and PostgreSQL's."""
    out: list[str] = []
    pending_cps = _checkpoints(session, lo, hi)
    next_cp = next(pending_cps, None)
    next_cp_seq = next_cp.seq if next_cp is not None else -1
    gap_from: int | None = 1 if lo > 1 else None
    gap_to, gap_hash = lo - 1, ""
    read = 0
    for seq, prev_hash, hash_, body in _events(session, flt, lo, hi):
        if seq == lo and gap_from is not None:
            gap_hash = prev_hash  # the omitted prefix ends where event `lo` links to
        if body is not None:
            if gap_from is not None:
                out.append(_gap_line(gap_from, gap_to, gap_hash))
                counts.gaps += 1
                counts.lines += 1
                gap_from = None
            out.append(event_line(seq, prev_hash, hash_, body))
            counts.events += 1
            counts.lines += 1
        else:
            if gap_from is None:
                gap_from = seq
            gap_to, gap_hash = seq, hash_
        # A checkpoint follows the line of its seq, so a gap is cut where one falls.
        while next_cp_seq == seq and next_cp is not None:
            if gap_from is not None:
                out.append(_gap_line(gap_from, gap_to, gap_hash))
                counts.gaps += 1
                counts.lines += 1
                gap_from = None
            out.append(_checkpoint_line(next_cp))
            counts.checkpoints += 1
            counts.lines += 1
            next_cp = next(pending_cps, None)
            next_cp_seq = next_cp.seq if next_cp is not None else -1
        counts.last_seq = seq
        read += 1
        if read == BATCH:
            if progress:
                progress(read)
            read = 0
            yield "".join(out)
            out.clear()
    if gap_from is not None:
        out.append(_gap_line(gap_from, gap_to, gap_hash))
        counts.gaps += 1
        counts.lines += 1
    if progress and read:
        progress(read)
    yield "".join(out)


def _events(
    session: Session, flt: ExportFilter, lo: int, hi: int
) -> Iterator[tuple[int, str, str, str | None]]:
    """(seq, prev_hash, hash, body text, or None when the filters leave the event out)."""
    if flt.selective or flt.since or flt.until:
        for row in _rows(session, lo, hi):
            yield row[0], row[12], row[13], body_json(row) if flt.matches(row) else None
        return
    # Everything: bodies as the database writes them, each checked against its hash; one that
    # differs is written in Python from the stored columns, as the export always wrote it.
    exact, rows = bodies(session, lo, hi)
    if exact:
        yield from rows  # type: ignore[misc]
        return
    sha256 = hashlib.sha256
    for seq, prev_hash, hash_, body in rows:
        digest = sha256(prev_hash.encode("ascii"))
        digest.update(body.encode("utf-8"))
        if digest.hexdigest() != hash_:
            stored = stored_row(session, seq)
            if stored is not None:
                body = _stored_body_json(stored)
        yield seq, prev_hash, hash_, body


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
    if not (flt.selective or flt.since or flt.until):
        yield buffer.getvalue()
        yield from _csv_stored(session, progress)
        return
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


def _csv_stored(session: Session, progress: Callable[[int], None] | None) -> Iterator[str]:
    """Every event as CSV, from the stored rows: the details column is the stored text."""
    out: list[str] = []
    loads = json.loads
    for row in stored_rows(session):
        text = stored_details(row[11])
        details = loads(text) if text != "{}" else {}
        action = row[3]
        out.append(
            ",".join(
                [
                    str(row[0]),
                    stored_ts_text(row[1]),
                    _csv_text(row[2]),
                    _csv_text(action),
                    _csv_text(row[4]),
                    _csv_text(row[5]),
                    _csv_text(row[6]),
                    _csv_text(row[7]),
                    _csv_text(row[8]),
                    _csv_text(row[9]),
                    _csv_text(row[10]),
                    _csv_text(
                        details.get("entitlement")
                        or (row[4] if action.startswith("grant.") else None)
                    ),
                    _csv_text(details.get("grant_id")),
                    _csv_text(details.get("role_session_name")),
                    _csv_text(details.get("source_identity")),
                    _csv_text(details.get("access_key_id")),
                    _csv_text(
                        details.get("expires_at") if action == "credentials.issued" else None
                    ),
                    _csv_text(text),
                    row[12],
                    row[13],
                ]
            )
            + "\r\n"
        )
        if len(out) == BATCH:
            if progress:
                progress(BATCH)
            yield "".join(out)
            out.clear()
    if progress and out:
        progress(len(out))
    yield "".join(out)


def _csv_text(value: Any) -> str:
    """What `csv.writer` (minimal quoting) writes for `csv_cell(value)`."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = "'" + value if value.startswith(_FORMULA_START) else value
    else:
        text = str(value)
    if '"' in text or "," in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _ocsf(
    session: Session, flt: ExportFilter, progress: Callable[[int], None] | None
) -> Iterator[str]:
    encode = _OCSF_JSON.encode
    out: list[str] = []
    if flt.selective or flt.since or flt.until:
        events: Iterator[tuple[dict[str, Any], str]] = (
            (body_dict(row), row[13]) for row in _matching(session, flt, progress)
        )
    else:
        events = _stored_bodies(session, progress)
    for body, hash_ in events:
        out.append(encode(to_ocsf(body, hash_)) + "\n")
        if len(out) == BATCH:
            yield "".join(out)
            out.clear()
    yield "".join(out)


# Compact and UTF-8 as the other formats; sorted keys so equal events give equal lines.
_OCSF_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _stored_bodies(
    session: Session, progress: Callable[[int], None] | None
) -> Iterator[tuple[dict[str, Any], str]]:
    """`body_dict` of every stored row (details parsed once), and its hash."""
    loads = json.loads
    read = 0
    for row in stored_rows(session):
        text = stored_details(row[11])
        yield (
            {
                "seq": row[0],
                "ts": stored_ts_text(row[1]),
                "actor": row[2],
                "action": row[3],
                "target": row[4],
                "decision": row[5],
                "reason": row[6],
                "ip": row[7],
                "user_agent": row[8],
                "client": row[9],
                "policy_version": row[10],
                "details": loads(text) if text != "{}" else {},
            },
            row[13],
        )
        read += 1
        if read == BATCH:
            if progress:
                progress(read)
            read = 0
    if progress and read:
        progress(read)
