"""Policy engine benchmark: load 10,000 entitlements, and list what one person may use.

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
GROUPS = 500
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


def _entitlement(n: int, rng: random.Random) -> str:
    groups = ", ".join(f"team-{rng.randrange(GROUPS)}" for _ in range(rng.randint(1, 3)))
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


def write_policy(directory: Path) -> None:
    """Write FILES policy files holding ENTITLEMENTS entitlements and a few other rules."""
    rng = random.Random(42)
    per_file = ENTITLEMENTS // FILES
    for index in range(FILES):
        body = "version: 1\nentitlements:\n"
        body += "".join(
            _entitlement(n, rng) for n in range(index * per_file, (index + 1) * per_file)
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
        f"(best of 3, incl. index build; target <= 1.0)"
    )

    start = time.perf_counter()
    evaluator = Evaluator(loaded.policy)
    print(f"build_evaluator_s: {time.perf_counter() - start:.3f}")

    identity = Identity(
        issuer="https://idp.example.com",
        subject="sam",
        email="sam@example.com",
        groups=frozenset(f"team-{g}" for g in range(0, GROUPS, GROUPS // PERSON_GROUPS)),
        amr=("pwd", "mfa"),
    )
    ctx = RequestContext(now=datetime.now(UTC), source_ip="203.0.113.9")
    person = evaluator.resolve(identity)
    times = []
    for _ in range(LIST_RUNS):
        start = time.perf_counter()
        eligible = evaluator.eligible(person, ctx)
        times.append(time.perf_counter() - start)
    median_ms = statistics.median(times) * 1000
    print(
        f"eligible_{PERSON_GROUPS}_groups_of_{ENTITLEMENTS}_ms: {median_ms:.2f} "
        f"(median of {LIST_RUNS}, {len(eligible)} eligible; target <= 5.0)"
    )
    start = time.perf_counter()
    everything = evaluator.decide_all(person, ctx)
    print(
        f"decide_all_{ENTITLEMENTS}_ms: {(time.perf_counter() - start) * 1000:.1f} "
        f"(no index, for comparison; {len(everything)} decisions)"
    )


if __name__ == "__main__":
    main()
