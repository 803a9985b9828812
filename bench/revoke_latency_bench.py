"""API revoke to deny readable on the role, with a backlog of ended grants' live sessions.

The database holds ``--backlog`` ended grants (spread over 100 roles) whose sessions are still
live and already covered by applied revocations: what a busy broker carries for up to 12 hours.
The broker runs under gunicorn and the scheduler as its own process (``broker scheduler``, the
production sweep interval). Each sample: a person gets credentials (POST /api/v1/credentials),
revokes the grant (POST /api/v1/grants/<id>/revoke), and the clock runs until IAM's copy of the
role's ``BrokerRevocations`` policy denies that session (read back from moto every 20 ms).

Used by ``bench/run`` (row "API revoke -> deny readable"); on its own:
``python bench/revoke_latency_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import Site, start_site  # noqa: E402
from stack import Backend, Moto, PostgresDatabase, Processes, request, started  # noqa: E402


def seed_backlog(database_url: str, roles: list[str], count: int) -> None:
    """``count`` ended grants with live sessions, each covered by an applied grant deny."""
    from sqlalchemy import insert

    from broker.db import Database
    from broker.models import Grant, IssuedSession, Principal, Revocation

    now = datetime.now(UTC)
    database = Database(database_url)
    people, grants, sessions, denies = [], [], [], []
    tag = uuid.uuid4().hex[:6]
    for p in range(max(count // 10, 1)):
        who = f"backlog{p:05d}-{tag}@example.com"
        people.append(
            {"id": f"{p:08d}{tag}".ljust(32, "0"), "issuer": "urn:bench", "subject": who,
             "email": who, "source_identity": f"p-{p:05d}{tag}", "groups": ["bench"],
             "kind": "staff", "disabled": False, "created_at": now, "last_seen_at": now}
        )  # fmt: skip
    for i in range(count):
        person = people[i % len(people)]
        role = roles[i % len(roles)]
        gid = uuid.uuid4().hex
        ended = now - timedelta(minutes=30) + timedelta(seconds=i % 1700)
        expires = ended + timedelta(minutes=55)
        grants.append(
            {"id": gid, "principal_id": person["id"], "entitlement_id": "backlog",
             "role_arn": role, "status": "expired" if i % 2 else "revoked",
             "duration_seconds": 3600, "policy_version": "seed", "client": "api",
             "created_at": ended - timedelta(hours=1), "starts_at": ended - timedelta(hours=1),
             "expires_at": ended, "ended_at": ended, "ended_by": "scheduler"}
        )  # fmt: skip
        sessions.append(
            {"id": uuid.uuid4().hex, "grant_id": gid, "principal_id": person["id"],
             "role_arn": role, "role_session_name": f"s-{gid}",
             "source_identity": person["source_identity"], "access_key_id": "ASIA" + gid[:16],
             "assumed_role_arn": f"arn:aws:sts::123456789012:assumed-role/r/s-{gid}",
             "issued_at": ended - timedelta(minutes=5), "expires_at": expires, "client": "api"}
        )  # fmt: skip
        denies.append(
            {"id": uuid.uuid4().hex, "role_arn": role, "scope": "grant",
             "source_identity": person["source_identity"], "grant_id": gid,
             "principal_id": person["id"], "cutoff": ended, "drop_after": expires,
             "status": "applied", "attempts": 1, "created_at": ended, "applied_at": ended}
        )  # fmt: skip
    with database.session() as session:
        for table, rows in ((Principal, people), (Grant, grants), (IssuedSession, sessions),
                            (Revocation, denies)):  # fmt: skip
            for start in range(0, len(rows), 2000):
                session.execute(insert(table), rows[start : start + 2000])
    database.dispose()


def denied(document: dict[str, Any], grant_id: str, who: str, issued_after: datetime) -> bool:
    """Whether the role's deny policy denies a session of ``grant_id`` by ``who`` issued after
    ``issued_after`` (and before now): the statement shapes of :mod:`broker.revocation`."""
    for statement in document.get("Statement", []):
        if statement.get("Effect") != "Deny":
            continue
        condition = statement.get("Condition", {})
        equals = condition.get("StringEquals", {})
        before = condition.get("DateLessThan", {}).get("aws:TokenIssueTime")
        cutoff = (
            datetime.strptime(before, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if before else None
        )
        if grant_id in equals.get("aws:PrincipalTag/broker-grant", []):
            return True
        late_enough = cutoff is not None and cutoff > issued_after
        if who in equals.get("aws:SourceIdentity", []) and late_enough:
            return True
        if statement.get("Sid") == "BrokerRoleWide" and late_enough:
            return True
    return False


def _policy(iam: Any, role_arn: str) -> dict[str, Any]:
    name = role_arn.rsplit("/", 1)[-1]
    try:
        doc = iam.get_role_policy(RoleName=name, PolicyName="BrokerRevocations")["PolicyDocument"]
    except iam.exceptions.NoSuchEntityException:
        return {}
    if isinstance(doc, str):
        parsed: dict[str, Any] = json.loads(urllib.parse.unquote(doc))
        return parsed
    return dict(doc)


@dataclass
class Outcome:
    """Revoke-to-deny times, and how often the broker answered 503 on the way."""

    seconds: list[float] = field(default_factory=list)
    unavailable: int = 0
    timed_out: int = 0  # samples cut at the timeout (counted at the timeout: a lower bound)


def _until_answered(
    outcome: Outcome, call: Callable[[], tuple[int, Any]], *, timeout: float
) -> tuple[int, Any]:
    """Call until the broker answers other than 503 (which a person would retry), counting them."""
    deadline = time.perf_counter() + timeout
    while True:
        status, answer = call()
        if status != 503 or time.perf_counter() > deadline:
            return status, answer
        outcome.unavailable += 1
        time.sleep(0.2)


def latencies(site: Site, samples: int, *, timeout: float = 300.0) -> Outcome:
    """``samples`` revoke-to-deny times in seconds (people take turns, 1 s apart each).

    The clock starts when the revoke is first sent; a 503 on the way is retried (as a person
    would) and counted.
    """
    outcome = Outcome()
    tokens = [site.tokens[who] for who in site.revokers]
    ready_at = [0.0] * len(tokens)
    port = site.web.port
    for i in range(samples):
        turn = i % len(tokens)
        token = tokens[turn]
        time.sleep(max(0.0, ready_at[turn] - time.time()))
        issued_after = datetime.now(UTC).replace(microsecond=0)
        body = {"entitlement": "revoke-bench", "duration": "1h"}
        issue = partial(request, port, "POST", "/api/v1/credentials", token=token, body=body)
        status, answer = _until_answered(outcome, issue, timeout=timeout)
        if status != 201:
            raise RuntimeError(f"issuance failed ({status}): {answer}")
        grant_id, who = answer["grant_id"], answer["source_identity"]
        started_at = time.perf_counter()
        path = f"/api/v1/grants/{grant_id}/revoke"
        revoke = partial(request, port, "POST", path, token=token, body={})
        status, answer = _until_answered(outcome, revoke, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"revoke failed ({status}): {answer}")
        while not denied(_policy(site.iam, site.revoke_role), grant_id, who, issued_after):
            if time.perf_counter() - started_at > timeout:
                outcome.timed_out += 1
                break
            time.sleep(0.02)
        outcome.seconds.append(time.perf_counter() - started_at)
        # TokenIssueTime has whole seconds: this person's next session must start after the
        # cutoff just written, or the old statement would already deny it.
        ready_at[turn] = time.time() + 1.1
    return outcome


def p99(samples: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]


def main() -> None:
    """Print the figures for each backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backlog", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args()
    backlog = args.backlog or (300 if args.quick else 7000)
    samples = args.samples or (3 if args.quick else 10)
    with tempfile.TemporaryDirectory() as tmp_name, started(Processes()) as procs:
        tmp = Path(tmp_name)
        moto = Moto(procs, tmp)
        pg = PostgresDatabase() if PostgresDatabase.available() else None
        try:
            backends = [Backend("sqlite", tmp)] + ([Backend("postgresql", tmp, pg)] if pg else [])
            for backend in backends:
                site = start_site(procs, backend, moto, tmp, entitlements=200)
                seed_backlog(site.database_url, site.roles, backlog)
                site.start_scheduler(procs, tmp)
                found = latencies(site, samples).seconds
                print(
                    f"{backend.name:<10} backlog {backlog}: "
                    f"p50 {sorted(found)[len(found) // 2]:.2f} s  p99 {p99(found):.2f} s  "
                    f"max {max(found):.2f} s"
                )
                site.stop(procs)
        finally:
            procs.stop_all()
            if pg is not None:
                pg.drop()


if __name__ == "__main__":
    main()
