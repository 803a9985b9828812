"""One broker deployment per database backend, shared by the HTTP benchmarks.

A fresh database (migrated with ``broker db upgrade``), a policy directory holding the bench
entitlements beside ``generated`` entitlements of the policy benchmark's shape (10,000 for a full
run), the web app under gunicorn (4 workers), the scheduler process, and tokens minted with
``broker token mint`` for the people the benchmarks act as.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_bench import GROUPS, PERSON_GROUPS, write_policy
from stack import (
    Backend,
    Gunicorn,
    Moto,
    Processes,
    Scheduler,
    broker_cli,
    broker_env,
    create_role,
    mint_tokens,
)

ROLES = 100  # revocation backlog spreads over these; the bench entitlements use the first two
ISSUER = "bench@example.com"
LISTER = "lister@example.com"
REVOKERS = 2  # people taking turns at revoking (see revoke_latency_bench)
BENCH_POLICY = """\
version: 1
entitlements:
  - id: bench
    role_arn: {issue_role}
    allow: {{groups: [bench]}}
    max_duration: 1h
    max_grant: 12h
    session_policy:
      Version: "2012-10-17"
      Statement: [{{Effect: Allow, Action: ["s3:GetObject"], Resource: "*"}}]
  - id: revoke-bench
    role_arn: {revoke_role}
    allow: {{groups: [bench]}}
    max_duration: 1h
    max_grant: 12h
"""


@dataclass
class Site:
    """A running broker on one backend, and who may call it."""

    backend: str
    database_url: str
    env: dict[str, str]
    web: Gunicorn
    moto: Moto
    roles: list[str]
    tokens: dict[str, str]
    revokers: list[str]
    iam: Any
    scheduler: Scheduler | None = None

    @property
    def issue_role(self) -> str:
        """The role the ``bench`` entitlement assumes (nobody revokes on it)."""
        return self.roles[1]

    @property
    def revoke_role(self) -> str:
        """The role of ``revoke-bench``: the first of the backlog's roles."""
        return self.roles[0]

    def start_scheduler(self, procs: Processes, logdir: Path) -> None:
        """Start ``broker scheduler`` against this site."""
        if self.scheduler is None:
            self.scheduler = Scheduler(procs, self.env, logdir, self.backend)

    def stop(self, procs: Processes) -> None:
        """Stop the scheduler and gunicorn."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        procs.stop(self.web.proc)


def start_site(
    procs: Processes,
    backend: Backend,
    moto: Moto,
    tmp: Path,
    *,
    entitlements: int,
    roles: int = ROLES,
    workers: int = 4,
) -> Site:
    """Roles, policy, database, tokens and gunicorn for one backend (the scheduler comes later)."""
    iam = moto.client("iam")
    suffix = uuid.uuid4().hex[:6]
    arns = [create_role(iam, f"bench-{suffix}-{i:03d}") for i in range(max(roles, 2))]
    policy_dir = tmp / f"policies-{backend.name}"
    policy_dir.mkdir()
    write_policy(policy_dir, GROUPS, count=entitlements)
    (policy_dir / "bench.yaml").write_text(
        BENCH_POLICY.format(issue_role=arns[1], revoke_role=arns[0])
    )
    url = backend.url("site")
    env = broker_env(
        url,
        policy_dir,
        moto,
        # The limit stays on (its cost is part of every issuance), far above what a bench makes.
        {"BROKER_RATE_LIMIT_ISSUE_PER_MINUTE": "1000000"},
    )
    broker_cli(env, "db", "upgrade")
    revokers = [f"revoker{i}-{suffix}@example.com" for i in range(REVOKERS)]
    lister_groups = ",".join(f"team-{g}" for g in range(0, GROUPS, GROUPS // PERSON_GROUPS))
    people = {ISSUER: "bench", LISTER: lister_groups, **{r: "bench" for r in revokers}}
    tokens = mint_tokens(env, people)
    web = Gunicorn(procs, env, tmp, workers=workers, label=backend.name)
    return Site(backend.name, url, env, web, moto, arns, tokens, revokers, iam)
