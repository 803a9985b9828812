"""Migration 0004 merges the duplicate principals the old `token mint` made: one per person."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from broker.audit import AuditLog, EventContext, NewEvent, verify_database
from broker.db import Database
from broker.migrate import upgrade

ISSUER = "https://idp.example.com"
T0 = datetime(2026, 11, 1, 9, 0)


def _principal(conn: sa.Connection, pid: str, subject: str, email: str, **extra: object) -> None:
    row = {
        "id": pid,
        "issuer": ISSUER,
        "subject": subject,
        "email": email,
        "source_identity": email,
        "groups": '["developers"]',
        "kind": "staff",
        "disabled": False,
        "created_at": T0 + timedelta(minutes=len(pid)),
        "last_seen_at": T0,
        **extra,
    }
    columns = ", ".join(row)
    values = ", ".join(f":{k}" for k in row)
    conn.execute(sa.text(f"INSERT INTO principals ({columns}) VALUES ({values})"), row)  # noqa: S608


def _grant(conn: sa.Connection, gid: str, principal_id: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO grants (id, principal_id, entitlement_id, role_arn, status, "
            "duration_seconds, policy_version, client, created_at) VALUES "
            "(:id, :p, 'app-read', 'arn:aws:iam::123456789012:role/r', 'active', 3600, 'v', "
            "'api', :t)"
        ),
        {"id": gid, "p": principal_id, "t": T0},
    )


def _token(conn: sa.Connection, tid: str, principal_id: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO api_tokens (id, token_hash, principal_id, name, kind, claims, "
            "created_at, expires_at) VALUES (:id, :h, :p, 'n', 'admin', '{}', :t, :e)"
        ),
        {"id": tid, "h": tid * 2, "p": principal_id, "t": T0, "e": T0 + timedelta(hours=1)},
    )


def test_duplicates_merge_into_the_providers_principal_keeping_everything(
    db_url: str,
) -> None:
    database = Database(db_url)
    try:
        upgrade(database, "0003")
        with database.session() as session:  # a chain that already has history
            AuditLog().append(session, EventContext(), NewEvent("test.before"))
        with database.engine.begin() as conn:
            # Dana signed in (provider sub) and was also minted a token (subject = email).
            _principal(conn, "p-web", "00u-dana", "dana@example.com")
            _principal(
                conn,
                "p-mint-longer-id",
                "dana@example.com",
                "Dana@Example.com",
                disabled=True,
                disabled_reason="left",
            )
            _principal(conn, "p-lee", "00u-lee", "lee@example.com")  # nobody to merge with
            _grant(conn, "g1", "p-web")
            _grant(conn, "g2", "p-mint-longer-id")
            _token(conn, "t1", "p-mint-longer-id")
        upgrade(database)
        with database.engine.connect() as conn:
            people = conn.execute(
                sa.text("SELECT id, subject, disabled, claims FROM principals ORDER BY id")
            ).all()
            assert [(p.id, p.subject) for p in people] == [
                ("p-lee", "00u-lee"),
                ("p-web", "00u-dana"),
            ]
            assert dict((p.id, bool(p.disabled)) for p in people)["p-web"] is True  # fail closed
            owners = conn.execute(sa.text("SELECT id, principal_id FROM grants")).all()
            assert sorted(tuple(o) for o in owners) == [("g1", "p-web"), ("g2", "p-web")]
            token_owner = conn.scalar(sa.text("SELECT principal_id FROM api_tokens"))
            assert token_owner == "p-web"
        with database.session() as session:
            merges = session.execute(
                sa.text("SELECT target, details FROM audit_events WHERE action = 'principal.merge'")
            ).all()
            assert len(merges) == 1 and merges[0].target == "dana@example.com"
            assert "p-mint-longer-id" in str(merges[0].details)
            assert verify_database(session).ok
        # The model can read the migrated rows: claims were backfilled from the old columns.
        from broker.models import Principal

        with database.session() as session:
            lee = session.get(Principal, "p-lee")
            assert lee is not None and lee.claims["groups"] == ["developers"]
            assert lee.claims_at is None  # never stated by the provider: refreshed before use
            assert lee.source_identity == "lee@example.com"  # what AWS saw stays frozen
    finally:
        database.dispose()


def test_a_database_without_duplicates_migrates_without_audit_events(db_url: str) -> None:
    database = Database(db_url)
    try:
        upgrade(database)
        with database.session() as session:
            count = session.scalar(sa.text("SELECT count(*) FROM audit_events"))
            assert count == 0
    finally:
        database.dispose()
