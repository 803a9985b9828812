"""Reading the trail fast: events in seq order as stored, streamed, without type processing.

Exports and verification read millions of rows. This reads them through the connection with
plain SQL: ``details`` as its stored text (the canonical JSON the chain hashed, see
:mod:`broker.audit.body`) and the time as the driver gives it, through a server-side cursor on
PostgreSQL (constant memory) and in batches of :data:`BATCH` rows per driver call.

:func:`bodies` gives each event's body text. On PostgreSQL the server writes it (``to_json``
escapes strings exactly as ``canonical_json`` does), on its own core while Python hashes the
previous batch; callers check every such body against its stored hash and rebuild the few
that differ in Python (:func:`stored_row`), so nothing depends on that equivalence but speed.
On SQLite, where the database runs in this process, Python writes it from the stored columns
(:func:`broker.audit.body.row_body_text`, faster there than SQLite's own string functions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from broker.audit.body import stored_bodies

BATCH = 2000
StoredRow = Sequence[Any]
"""seq, ts, actor, action, target, decision, reason, ip, user_agent, client, policy_version,
details (text), prev_hash, hash: the chained fields in their order, then the links."""

_STORED = text(
    "SELECT seq, ts, actor, action, target, decision, reason, ip, user_agent, client,"
    " policy_version, CAST(details AS TEXT), prev_hash, hash FROM audit_events"
    " WHERE seq >= :lo AND seq <= :hi ORDER BY seq"
)
_NULL_DETAILS = (None, "null", "")


def stored_rows(session: Session, lo: int = 1, hi: int = 2**62) -> Iterator[StoredRow]:
    """Events ``lo``..``hi`` as stored, in seq order, streamed."""
    # Options on the statement, not the connection: they would outlive this read on it.
    statement = _STORED.bindparams(lo=lo, hi=hi).execution_options(
        stream_results=True, max_row_buffer=BATCH
    )
    result = session.connection().execute(statement)
    while rows := result.fetchmany(BATCH):  # one driver call per batch
        yield from rows


def stored_details(value: Any) -> str:
    """The details column's stored text, as hashed (absent details hash as ``{}``)."""
    return "{}" if value in _NULL_DETAILS else str(value)


def _quoted(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"coalesce(to_json({column})::text, 'null')"
    return f"json_quote({column})"  # json_quote(NULL) is 'null'


def _body_sql(dialect: str) -> str:
    """SQL writing :func:`broker.audit.body.body_text` of a stored row."""
    q = {c: _quoted(c, dialect) for c in (
        "action", "actor", "client", "decision", "ip", "policy_version", "reason", "target",
        "user_agent",
    )}  # fmt: skip
    if dialect == "postgresql":
        details = "coalesce(nullif(nullif(details::text, 'null'), ''), '{}')"
        seq = "seq::text"
        ts = """to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    else:
        details = "coalesce(nullif(nullif(CAST(details AS TEXT), 'null'), ''), '{}')"
        seq = "CAST(seq AS TEXT)"
        ts = (
            "substr(ts, 1, 10) || 'T' || substr(ts, 12)"
            " || CASE WHEN length(ts) > 19 THEN '' ELSE '.000000' END || 'Z'"
        )
    parts = [
        "'{\"action\":'", q["action"],
        "',\"actor\":'", q["actor"],
        "',\"client\":'", q["client"],
        "',\"decision\":'", q["decision"],
        "',\"details\":'", details,
        "',\"ip\":'", q["ip"],
        "',\"policy_version\":'", q["policy_version"],
        "',\"reason\":'", q["reason"],
        "',\"seq\":'", seq,
        "',\"target\":'", q["target"],
        "',\"ts\":\"'", ts,
        "'\",\"user_agent\":'", q["user_agent"],
        "'}'",
    ]  # fmt: skip
    return " || ".join(parts)


_BODY_QUERIES: dict[str, Any] = {}


def bodies(session: Session, lo: int = 1, hi: int = 2**62) -> tuple[bool, Iterator[Sequence[Any]]]:
    """(seq, prev_hash, hash, body text) of events ``lo``..``hi`` in seq order, streamed, and
    whether those bodies are Python's own text (True) or the database's, to be checked against
    the hash (False; see the module docstring)."""
    if session.get_bind().dialect.name != "postgresql":
        return True, _python_bodies(session, lo, hi)
    return False, body_rows(session, lo, hi)


def _python_bodies(session: Session, lo: int, hi: int) -> Iterator[Sequence[Any]]:
    for rows in stored_batches(session, lo, hi):
        texts = stored_bodies(rows, stored_details)
        yield from zip(
            [r[0] for r in rows], [r[12] for r in rows], [r[13] for r in rows], texts, strict=True
        )


def body_rows(session: Session, lo: int = 1, hi: int = 2**62) -> Iterator[Sequence[Any]]:
    """(seq, prev_hash, hash, body text) of events ``lo``..``hi`` in seq order, streamed; the
    body as the database wrote it (check it against the hash; see the module docstring)."""
    dialect = session.get_bind().dialect.name
    query = _BODY_QUERIES.get(dialect)
    if query is None:
        query = _BODY_QUERIES[dialect] = text(
            f"SELECT seq, prev_hash, hash, {_body_sql(dialect)} FROM audit_events"  # noqa: S608
            " WHERE seq >= :lo AND seq <= :hi ORDER BY seq"
        )
    statement = query.bindparams(lo=lo, hi=hi).execution_options(
        stream_results=True, max_row_buffer=BATCH
    )
    result = session.connection().execute(statement)
    while rows := result.fetchmany(BATCH):
        yield from rows


def stored_row(session: Session, seq: int) -> StoredRow | None:
    """One event as :func:`stored_rows` reads it (for a body that did not hash right)."""
    found = list(stored_rows(session, seq, seq))
    return found[0] if found else None


def stored_batches(session: Session, lo: int, hi: int) -> Iterator[Sequence[StoredRow]]:
    """:func:`stored_rows`, a driver batch at a time."""
    statement = _STORED.bindparams(lo=lo, hi=hi).execution_options(
        stream_results=True, max_row_buffer=BATCH
    )
    result = session.connection().execute(statement)
    while rows := result.fetchmany(BATCH):
        yield rows
