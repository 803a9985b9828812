"""Policy engine benchmark: load 10,000 entitlements, and list what one person may use.

The generated entitlements name 1-3 of GROUPS groups each; a person is in 20 of them. With
2,000 groups (a company with 10,000 roles has many teams) that makes about 200 eligible
entitlements; a stress run with 500 groups makes about 800, to show the cost per decision.

Run: .venv/bin/python bench/policy_bench.py
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from broker.policy import Evaluator, Identity, RequestContext, load_policy_dir

ENTITLEMENTS = 10_000
FILES = 20
GROUPS = 2000
STRESS_GROUPS = 500
PERSON_GROUPS = 20
LIST_RUNS = 200

SESSION_POLICY = """\
    session_policy:
      Version: "2012-10-17"
      Statement:
        - Effect: Allow
          Action: ["s3:GetObject", "s3:ListBucket"]
          Resource: ["arn:aws:s3:::bucket-{n}", "arn:aws:s3:::bucket-{n}/*"]
"""


def _entitlement(n: int, rng: random.Random, groups_total: int) -> str:
    groups = ", ".join(f"team-{rng.randrange(groups_total)}" for _ in range(rng.randint(1, 3)))
    text = (
        f"  - id: role-{n:05d}\n"
        f"    description: Generated entitlement {n}\n"
        f"    role_arn: arn:aws:iam::111122223333:role/role-{n:05d}\n"
        f"    allow: {{groups: [{groups}], kinds: [staff]}}\n"
        f"    max_duration: 1h\n"
        f"    max_grant: 4h\n"
        f"    require_mfa: {'true' if n % 2 else 'false'}\n"
    )
    if n % 10 == 0:
        text += "    approval: {approvers: {groups: [security]}}\n"
    if n % 7 == 0:
        text += "    network: {source_ip: [203.0.113.0/24]}\n"
    if n % 5 == 0:
        text += SESSION_POLICY.format(n=n)
    return text


def write_policy(directory: Path, groups_total: int = GROUPS, count: int = ENTITLEMENTS) -> None:
    """Write FILES policy files holding `count` entitlements and a few other rules."""
    rng = random.Random(42)
    per_file = count // FILES
    for index in range(FILES):
        body = "version: 1\nentitlements:\n"
        body += "".join(
            _entitlement(n, rng, groups_total)
            for n in range(index * per_file, (index + 1) * per_file)
        )
        (directory / f"generated-{index:02d}.yaml").write_text(body)
    (directory / "rules.yaml").write_text(
        "version: 1\n"
        "people:\n"
        "  - match: {emails: ['*@contractor.example']}\n"
        "    kind: contractor\n"
        "deny:\n"
        "  - match: {kinds: [contractor]}\n"
        "    entitlements: ['role-000*']\n"
        "    reason: Contractors stay out of the first thousand roles\n"
        "auditors: {groups: [compliance]}\n"
    )


def time_eligible(evaluator: Evaluator, groups_total: int) -> tuple[float, int]:
    """Median milliseconds of eligible() for a person in PERSON_GROUPS groups, and the count."""
    identity = Identity(
        issuer="https://idp.example.com",
        subject="sam",
        email="sam@example.com",
        groups=frozenset(
            f"team-{g}" for g in range(0, groups_total, groups_total // PERSON_GROUPS)
        ),
        amr=("pwd", "mfa"),
    )
    ctx = RequestContext(now=datetime.now(UTC), source_ip="203.0.113.9")
    person = evaluator.resolve(identity)
    times = []
    for _ in range(LIST_RUNS):
        start = time.perf_counter()
        eligible = evaluator.eligible(person, ctx)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, len(eligible)


def main() -> None:
    """Print the figures against their targets."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_policy(directory)
        load_times = []
        for _ in range(3):
            start = time.perf_counter()
            loaded = load_policy_dir(directory)
            load_times.append(time.perf_counter() - start)
    assert len(loaded.policy.entitlements) == ENTITLEMENTS
    print(
        f"load_{ENTITLEMENTS}_entitlements_s: {min(load_times):.3f} "
        f"(best of 3; parse, validate, index; target <= 1.0)"
    )
    median_ms, count = time_eligible(loaded.evaluator, GROUPS)
    print(
        f"eligible_{PERSON_GROUPS}_groups_of_{ENTITLEMENTS}_ms: {median_ms:.2f} "
        f"(median of {LIST_RUNS}; {count} eligible; target <= 5.0)"
    )
    start = time.perf_counter()
    everything = loaded.evaluator.decide_all(
        loaded.evaluator.resolve(Identity("https://idp.example.com", "sam", "sam@example.com")),
        RequestContext(now=datetime.now(UTC)),
    )
    print(
        f"decide_all_{ENTITLEMENTS}_ms: {(time.perf_counter() - start) * 1000:.1f} "
        f"(every entitlement, no index; {len(everything)} decisions)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_policy(Path(tmp), STRESS_GROUPS)
        stress = load_policy_dir(tmp).evaluator
    median_ms, count = time_eligible(stress, STRESS_GROUPS)
    print(
        f"eligible_stress_{STRESS_GROUPS}_groups_ms: {median_ms:.2f} "
        f"(median of {LIST_RUNS}; {count} eligible, {median_ms * 1000 / count:.1f} us each)"
    )


if __name__ == "__main__":
    main()
