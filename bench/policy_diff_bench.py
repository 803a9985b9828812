"""Policy diff benchmark: two 10,000-entitlement policies and a 10,000-person directory.

The new side is the old one after a large pull request: CHANGED entitlements edited (a group
added, MFA dropped, a longer session, other approvers, a wider session policy, in turn), some
added and some removed, a freeze on a hundred entitlements lifted (a deny rule dropped) and a
contractor's end date moved. People are in PERSON_GROUPS of GROUPS groups, as in
policy_bench.py; one in ten is a contractor.

The figure is the whole command, as CI runs it: load and validate both sides, read the
directory, compute the diff, render Markdown. A stress row edits a tenth of the entitlements
and lifts a freeze on all of them (every entitlement then changes).

Run: .venv/bin/python bench/policy_diff_bench.py
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from broker.cli.policy import policy
from broker.policy import load_policy_dir
from broker.policy.diff import diff_policies, load_directory, render_markdown

ENTITLEMENTS = 10_000
PEOPLE = 10_000
FILES = 20
GROUPS = 2000
PERSON_GROUPS = 20
CHANGED = 100
STRESS_CHANGED = 1000
ADDED = REMOVED = 20
FREEZES = (("frozen-all", "*"), ("frozen-some", "role-001*"))
"""Deny rules (group, glob) of the old side; the new side lifts one."""
RUNS = 3

SESSION_POLICY = """\
    session_policy:
      Version: "2012-10-17"
      Statement:
        - Sid: Read
          Effect: Allow
          Action: ["{action}", "s3:ListBucket"]
          Resource: ["arn:aws:s3:::bucket-{n}", "arn:aws:s3:::bucket-{n}/*"]
"""


def _entitlement(n: int, groups: list[int], edit: int | None) -> str:
    """One entitlement; ``edit`` picks which of five changes a pull request made to it."""
    group_list = [f"team-{g}" for g in groups] + (["team-new"] if edit == 0 else [])
    text = (
        f"  - id: role-{n:05d}\n"
        f"    role_arn: arn:aws:iam::111122223333:role/role-{n:05d}\n"
        f"    allow: {{groups: [{', '.join(group_list)}], kinds: [staff]}}\n"
        f"    max_duration: {'4h' if edit == 2 else '1h'}\n"
        f"    max_grant: 4h\n"
        f"    require_mfa: {'false' if edit == 1 else 'true'}\n"
    )
    if n % 50 == 0:
        text += "    sensitive: true\n"
    if n % 10 == 0 or edit == 3:
        approvers = "security-oncall" if edit == 3 else "security"
        text += f"    approval: {{approvers: {{groups: [{approvers}]}}}}\n"
    if n % 7 == 0:
        text += "    network: {source_ip: [203.0.113.0/24]}\n"
    if n % 5 == 0 or edit == 4:
        text += SESSION_POLICY.format(n=n, action="s3:*" if edit == 4 else "s3:GetObject")
    return text


def write_policy(directory: Path, changed: int = 0, unfreeze: str = "") -> None:
    """Write the old policy (changed=0), or a new one with ``changed`` entitlements edited and
    the freeze on ``unfreeze`` lifted."""
    rng = random.Random(42)
    edited = set(random.Random(7).sample(range(ENTITLEMENTS), changed))
    ids = range(ENTITLEMENTS + (ADDED if changed else 0))
    removed = set(range(0, REMOVED * 97, 97)) if changed else set()
    per_file = len(ids) // FILES + 1
    chunks = [ids[i : i + per_file] for i in range(0, len(ids), per_file)]
    for index, chunk in enumerate(chunks):
        body = "version: 1\nentitlements:\n"
        for n in chunk:
            groups = [rng.randrange(GROUPS) for _ in range(rng.randint(1, 3))]
            if n not in removed:
                body += _entitlement(n, groups, (n % 5) if n in edited else None)
        (directory / f"generated-{index:02d}.yaml").write_text(body)
    freezes = "".join(
        f"  - match: {{groups: [{group}]}}\n    entitlements: ['{glob}']\n"
        for group, glob in FREEZES
        if glob != unfreeze
    )
    (directory / "rules.yaml").write_text(
        "version: 1\n"
        "people:\n"
        "  - match: {emails: ['*@contractor.example']}\n"
        "    kind: contractor\n"
        "  - match: {email: 'person-00009@contractor.example'}\n"
        f"    valid_until: {'2027-06-30' if changed else '2026-12-31'}\n"
        "deny:\n"
        "  - match: {kinds: [contractor]}\n"
        "    entitlements: ['role-000*']\n" + freezes + "auditors: {groups: [compliance]}\n"
    )


def write_directory(path: Path) -> None:
    """PEOPLE people in PERSON_GROUPS random groups each; every tenth a contractor."""
    rng = random.Random(3)
    people = [
        {
            "email": f"person-{n:05d}@{'contractor.example' if n % 10 == 9 else 'example.com'}",
            "groups": [f"team-{g}" for g in rng.sample(range(GROUPS), PERSON_GROUPS)]
            + (["security-oncall"] if n % 500 == 0 else [])
            + (["frozen-all"] if n % 1000 == 1 else [])
            + (["frozen-some"] if n % 1000 == 2 else []),
        }
        for n in range(PEOPLE)
    ]
    path.write_text(json.dumps(people))


def time_command(old: Path, new: Path, people: Path) -> tuple[list[float], list[float], str]:
    """Wall and CPU times of the whole command, and its summary line.

    CPU time is printed too because on a shared machine the wall time also counts the time
    other processes held the cores.
    """
    args = ["diff", str(old), str(new), "--directory", str(people), "--format", "markdown"]
    walls, cpus = [], []
    output = ""
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        result = CliRunner().invoke(policy, args)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        assert result.exit_code in (0, 3), result.output
        output = result.stdout
    return walls, cpus, output.splitlines()[2]


def breakdown(old: Path, new: Path, people_file: Path) -> str:
    """Seconds spent in each step of one run."""
    marks = [time.perf_counter()]
    before, after = load_policy_dir(old), load_policy_dir(new)
    marks.append(time.perf_counter())
    people = load_directory(people_file)
    marks.append(time.perf_counter())
    diff = diff_policies(before.evaluator, after.evaluator, people=people)
    marks.append(time.perf_counter())
    render_markdown(diff)
    marks.append(time.perf_counter())
    steps = ("load both sides", "read directory", "diff", "render")
    return ", ".join(f"{s} {b - a:.3f}" for s, a, b in zip(steps, marks, marks[1:], strict=False))


def main() -> None:
    """Print the figures against the target."""
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, changed, unfreeze in (
            ("old", 0, ""),
            ("new", CHANGED, "role-001*"),
            ("stress", STRESS_CHANGED, "*"),
        ):
            (root / name).mkdir()
            write_policy(root / name, changed, unfreeze)
        people = root / "people.json"
        write_directory(people)
        for label, new, changed in (("", "new", CHANGED), ("stress_", "stress", STRESS_CHANGED)):
            walls, cpus, summary = time_command(root / "old", root / new, people)
            print(
                f"policy_diff_{label}{ENTITLEMENTS}_entitlements_{PEOPLE}_people_s: "
                f"{statistics.median(walls):.3f} (median of {RUNS}, "
                f"{min(walls):.3f}–{max(walls):.3f}; cpu {statistics.median(cpus):.3f}; "
                f"{changed} edited, {ADDED} added, {REMOVED} removed; whole command; "
                "target <= 2.0)"
            )
            print(f"  steps: {breakdown(root / 'old', root / new, people)}")
            print(f"  summary: {summary}")


if __name__ == "__main__":
    main()
