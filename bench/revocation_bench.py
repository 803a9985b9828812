"""Benchmark: 10,000 ended grants across 100 roles, planned and applied in one pass.

Runs against a local moto IAM server (real boto3 client, real HTTP) and against an in-memory
counting IAM double, and prints the elapsed time and the IAM calls made. The target is one
PutRolePolicy per role per pass; a second pass with nothing new must write nothing.

    .venv/bin/python bench/revocation_bench.py [--grants 10000] [--roles 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from broker.revocation import DenyEntry, RoleRevoker

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=13)  # every revocation's sessions have expired
TEAM_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*", "dynamodb:*"], "Resource": "*"}],
}
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def revocations(grants: int, roles: int) -> dict[str, list[DenyEntry]]:
    """``grants`` ended grants spread over ``roles`` roles and one hour, 12 h sessions."""
    by_role: dict[str, list[DenyEntry]] = {}
    for i in range(grants):
        cutoff = T0 + timedelta(seconds=i * 3600 / grants)
        arn = f"arn:aws:iam::123456789012:role/bench/role-{i % roles:03d}"
        by_role.setdefault(arn, []).append(
            DenyEntry(
                "grant",
                cutoff,
                cutoff + timedelta(hours=12),
                source_identity=f"user{i % 700:03d}@example.com",
                grant_id=str(uuid.UUID(int=i)),
                ref=str(i),
            )
        )
    return by_role


class CountingIam:
    """An in-memory IAM double for roles' inline policies, counting every call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.policies: dict[str, dict[str, str]] = {}

    def create_role(self, RoleName: str, **_: Any) -> None:  # noqa: N803 - boto3's names
        self.policies[RoleName] = {}

    def get_role(self, *, RoleName: str) -> dict[str, Any]:  # noqa: N803
        self.calls["get_role"] += 1
        return {"Role": {"RoleName": RoleName, "MaxSessionDuration": 43200}}

    def list_role_policies(self, *, RoleName: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.calls["list_role_policies"] += 1
        return {"PolicyNames": sorted(self.policies[RoleName]), "IsTruncated": False}

    def get_role_policy(self, *, RoleName: str, PolicyName: str) -> dict[str, Any]:  # noqa: N803
        self.calls["get_role_policy"] += 1
        return {"PolicyDocument": json.loads(self.policies[RoleName][PolicyName])}

    def put_role_policy(self, *, RoleName: str, PolicyName: str, PolicyDocument: str) -> None:  # noqa: N803
        self.calls["put_role_policy"] += 1
        self.policies[RoleName][PolicyName] = PolicyDocument

    def delete_role_policy(self, *, RoleName: str, PolicyName: str) -> None:  # noqa: N803
        self.calls["delete_role_policy"] += 1
        del self.policies[RoleName][PolicyName]


def setup_roles(iam: Any, by_role: dict[str, list[DenyEntry]]) -> None:
    for arn in by_role:
        name = arn.rsplit("/", 1)[-1]
        iam.create_role(
            RoleName=name,
            Path="/bench/",
            AssumeRolePolicyDocument=json.dumps(TRUST),
            MaxSessionDuration=43200,
        )
        iam.put_role_policy(
            RoleName=name, PolicyName="TeamPolicy", PolicyDocument=json.dumps(TEAM_POLICY)
        )


def run_pass(
    label: str,
    iam: Any,
    by_role: dict[str, list[DenyEntry]],
    calls: Callable[[], Counter[str]],
    now: datetime = T0 + timedelta(hours=1),
) -> None:
    revoker = RoleRevoker(iam, clock=lambda: now)
    before = Counter(calls())
    started = time.perf_counter()
    results = [revoker.apply(arn, entries) for arn, entries in by_role.items()]
    elapsed = time.perf_counter() - started
    made = calls() - before
    sizes = [r.plan.size for r in results]
    lossy = sum(1 for r in results if r.plan.compaction)
    sizes.append(0)
    print(
        f"{label:<30} {elapsed:6.2f} s  put_role_policy={made['put_role_policy']:<4} "
        f"delete_role_policy={made['delete_role_policy']:<4} "
        f"reads={sum(made.values()) - made['put_role_policy'] - made['delete_role_policy']:<4} "
        f"policy size max={max(sizes)} lossy plans={lossy}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--roles", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    by_role = revocations(args.grants, args.roles)
    print(f"{args.grants} ended grants across {len(by_role)} roles")

    fake = CountingIam()
    setup_roles(fake, by_role)
    run_pass("counting fake, pass 1", fake, by_role, lambda: fake.calls)
    run_pass("counting fake, pass 2 (same)", fake, by_role, lambda: fake.calls)
    run_pass("counting fake, pass 3 (+13 h)", fake, by_role, lambda: fake.calls, LATER)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        setup_roles(iam, by_role)
        counted: Counter[str] = Counter()

        def count(event_name: str, **_: Any) -> None:
            counted[event_name.rsplit(".", 1)[-1]] += 1

        iam.meta.events.register("before-call.iam", count)
        normalized: Callable[[], Counter[str]] = lambda: Counter(  # noqa: E731
            {
                "put_role_policy": counted["PutRolePolicy"],
                "delete_role_policy": counted["DeleteRolePolicy"],
                "reads": sum(counted.values())
                - counted["PutRolePolicy"]
                - counted["DeleteRolePolicy"],
            }
        )
        run_pass("moto server, pass 1", iam, by_role, normalized)
        run_pass("moto server, pass 2 (same)", iam, by_role, normalized)
        run_pass("moto server, pass 3 (+13 h)", iam, by_role, normalized, LATER)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
