"""The bytes of the audit trail: an event's hashed body and its export line, built in one place.

An event's hash is ``SHA-256(prev_hash || body)`` where ``body`` is the canonical JSON
(:func:`broker.canonical.canonical_json`) of its chained fields. This module writes that text
straight from the field values, without building a dict and serializing it: the chain hashes it
on append, the export writes it, and the offline verifier reads the export line layout defined
here. Tests pin :func:`body_text` to ``canonical_json`` of the same fields.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from broker.canonical import canonical_json

GENESIS = "0" * 64
CHAINED_FIELDS = (
    "seq",
    "ts",
    "actor",
    "action",
    "target",
    "decision",
    "reason",
    "ip",
    "user_agent",
    "client",
    "policy_version",
    "details",
)
# canonical_json's own string encoder (ensure_ascii=False), so both write the same bytes.
_encode_str: Callable[[str], str] = json.encoder.encode_basestring
# The chained fields in sorted key order, as canonical_json orders them.
_BODY = (
    '{"action":%s,"actor":%s,"client":%s,"decision":%s,"details":%s,"ip":%s,'
    '"policy_version":%s,"reason":%s,"seq":%d,"target":%s,"ts":"%s","user_agent":%s}'
)
# An event line of a JSON Lines export; `verify_file` matches it to take the fast path.
EVENT_LINE = re.compile(
    rb'\{"type":"event","seq":(\d+),"prev_hash":"([0-9a-f]{64})","hash":"([0-9a-f]{64})","body":'
)


def format_ts(ts: datetime) -> str:
    """The canonical text form of an event time: UTC, microseconds, `Z`."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts_text(ts: datetime) -> str:
    """`format_ts`, without strftime for UTC-aware times (the same text)."""
    if ts.tzinfo is UTC:
        iso = ts.isoformat()
        return (iso[:26] if ts.microsecond else iso[:19] + ".000000") + "Z"
    return format_ts(ts)


def stored_ts_text(value: Any) -> str:
    """`format_ts` of a time as the driver returns the stored column: SQLite's text
    ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (UTC), or PostgreSQL's naive UTC datetime."""
    if isinstance(value, str):
        return value[:10] + "T" + (value[11:] if len(value) > 19 else value[11:] + ".000000") + "Z"
    return ts_text(value.replace(tzinfo=UTC))


def _json(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _encode_str(value)
    return canonical_json(value)


def body_text(
    seq: int,
    ts: str,
    actor: Any,
    action: Any,
    target: Any,
    decision: Any,
    reason: Any,
    ip: Any,
    user_agent: Any,
    client: Any,
    policy_version: Any,
    details: str,
) -> str:
    """``canonical_json`` of an event's chained fields; ``ts`` as :func:`format_ts` writes it and
    ``details`` already canonical JSON text (as stored)."""
    return _BODY % (
        _json(action),
        _json(actor),
        _json(client),
        _json(decision),
        details,
        _json(ip),
        _json(policy_version),
        _json(reason),
        seq,
        _json(target),
        ts,
        _json(user_agent),
    )


def row_body_text(row: Sequence[Any], details: str, ts: str) -> str:
    """:func:`body_text` for a row read from the database (columns in :data:`CHAINED_FIELDS`
    order, text or NULL): the hot path of exports and verification."""
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


def hash_body(prev_hash: str, body: str) -> str:
    """The event hash: SHA-256 over the previous hash and the body text."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(body.encode("utf-8"))
    return digest.hexdigest()


def event_line(seq: int, prev_hash: str, hash_: str, body: str) -> str:
    """One event line of a JSON Lines export (matched by :data:`EVENT_LINE`)."""
    return (
        '{"type":"event","seq":' + str(seq)
        + ',"prev_hash":"' + prev_hash
        + '","hash":"' + hash_
        + '","body":' + body
        + "}\n"
    )  # fmt: skip


_LINE = '{"type":"event","seq":%d,"prev_hash":"%s","hash":"%s","body":' + _BODY + "}\n"


def stored_event_lines(rows: Sequence[Sequence[Any]], details: Callable[[Any], str]) -> list[str]:
    """:func:`event_line` of each stored row (columns as :func:`broker.audit.rows.stored_rows`
    reads them), in one pass: the export's hot loop."""
    enc = _encode_str
    return [
        _LINE
        % (
            r[0],
            r[12],
            r[13],
            enc(r[3]),
            enc(r[2]),
            "null" if r[9] is None else enc(r[9]),
            "null" if r[5] is None else enc(r[5]),
            details(r[11]),
            "null" if r[7] is None else enc(r[7]),
            "null" if r[10] is None else enc(r[10]),
            "null" if r[6] is None else enc(r[6]),
            r[0],
            "null" if r[4] is None else enc(r[4]),
            stored_ts_text(r[1]),
            "null" if r[8] is None else enc(r[8]),
        )
        for r in rows
    ]


def stored_bodies(rows: Sequence[Sequence[Any]], details: Callable[[Any], str]) -> list[str]:
    """:func:`row_body_text` of each stored row, in one pass (verification's hot loop)."""
    enc = _encode_str
    return [
        _BODY
        % (
            enc(r[3]),
            enc(r[2]),
            "null" if r[9] is None else enc(r[9]),
            "null" if r[5] is None else enc(r[5]),
            details(r[11]),
            "null" if r[7] is None else enc(r[7]),
            "null" if r[10] is None else enc(r[10]),
            "null" if r[6] is None else enc(r[6]),
            r[0],
            "null" if r[4] is None else enc(r[4]),
            stored_ts_text(r[1]),
            "null" if r[8] is None else enc(r[8]),
        )
        for r in rows
    ]
