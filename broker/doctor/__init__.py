"""`broker doctor`: check that a configured broker can work, and say how to fix what cannot.

Each check ends ``ok``, ``warn`` (works, but not as configured or not verifiable) or ``fail``
(something the broker needs is missing), with the exact fix: a command or the JSON to add. The
checks take their collaborators (boto3 clients, the policy, a database) as arguments; only
:mod:`broker.doctor.cli` knows about Flask.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]
_LABELS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, about what, how it went, and the fix when it did not."""

    check: str
    status: Status
    message: str
    subject: str | None = None
    fix: str | None = None


@dataclass
class Report:
    """Every check of one run, in order."""

    checks: list[Check]

    @property
    def failed(self) -> bool:
        """True when any check failed (the command then exits non-zero)."""
        return any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        """How many checks ended ok, warn and fail."""
        counted = Counter(c.status for c in self.checks)
        return {status: counted.get(status, 0) for status in ("ok", "warn", "fail")}

    def to_json(self) -> str:
        """One JSON document: ``{"ok", "counts", "checks": [...]}``."""
        body: dict[str, Any] = {
            "ok": not self.failed,
            "counts": self.counts(),
            "checks": [asdict(c) for c in self.checks],
        }
        return json.dumps(body, indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        """For people: one line per check, the fix indented below it."""
        lines = []
        for c in self.checks:
            about = f"{c.check} ({c.subject})" if c.subject else c.check
            first, *rest = c.message.splitlines() or [""]
            lines.append(f"{_LABELS[c.status]:<4}  {about}: {first}")
            lines.extend(f"      {line}" for line in rest)
            if c.fix:
                fix_lines = c.fix.splitlines()
                lines.append(f"      fix: {fix_lines[0]}")
                lines.extend(f"        {line}" for line in fix_lines[1:])
        counts = self.counts()
        lines.append(f"{counts['fail']} failed, {counts['warn']} warnings, {counts['ok']} ok")
        return "\n".join(lines) + "\n"
