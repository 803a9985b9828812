"""`broker policy diff`: the change in access between two policies, for review before it lands.

Compares definitions (who each allow, deny and people rule selects, and every condition), and,
given a directory of people, who gains and who loses each entitlement as the Evaluator decides.
"""

from __future__ import annotations

from broker.policy.diff.compare import diff_policies
from broker.policy.diff.directory import DirectoryPerson, load_directory
from broker.policy.diff.records import (
    EXIT_SENSITIVE_WIDENED,
    Change,
    Direction,
    EntitlementDiff,
    PersonDiff,
    PolicyDiff,
    RuleDiff,
)
from broker.policy.diff.report import RENDERERS, render_json, render_markdown, render_text, summary

__all__ = [
    "EXIT_SENSITIVE_WIDENED",
    "RENDERERS",
    "Change",
    "Direction",
    "DirectoryPerson",
    "EntitlementDiff",
    "PersonDiff",
    "PolicyDiff",
    "RuleDiff",
    "diff_policies",
    "load_directory",
    "render_json",
    "render_markdown",
    "render_text",
    "summary",
]
