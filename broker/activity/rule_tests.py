"""Detection tests kept beside the policies (``policies/tests/detections/*.yaml``).

Each case is a person, the entitlement their session was issued under, a CloudTrail record
(only the fields that matter), and the rule ids expected to fire, in policy order (``[]`` for
none). ``broker policy test`` runs them after the decision tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from broker.activity.attribution import Attribution, PersonFacts, SessionFacts
from broker.activity.cloudtrail import action_of
from broker.activity.detections import DetectionEngine
from broker.policy.decision_tests import Who, tests_dir
from broker.policy.evaluator import Evaluator
from broker.policy.issues import PolicyIssue, PolicyLoadError, validation_issues
from broker.policy.loader import read_policy_bytes, read_yaml_file, yaml_files
from broker.policy.model import PolicySet
from broker.policy.yamlsource import line_of

DETECTIONS_SUBDIR = "detections"


class DetectionCase(BaseModel):
    """One expectation: this person's call, under this entitlement, fires these rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    who: Who
    entitlement: str
    record: dict[str, Any] = Field(description="CloudTrail record fields (eventSource, ...)")
    after_grant_end: bool = False
    expect: list[str]


@dataclass(frozen=True)
class DetectionResult:
    """The outcome of one case; ``problem`` says why it failed."""

    case: DetectionCase
    where: str
    fired: list[str]
    problem: str | None

    @property
    def passed(self) -> bool:
        """True when exactly the expected rules fired."""
        return self.problem is None


_CASES = TypeAdapter(list[DetectionCase])


def detection_tests_dir(policy_dir: str | Path) -> Path:
    """Where detection tests for a policy directory live."""
    return tests_dir(policy_dir) / DETECTIONS_SUBDIR


def load_detection_cases(directory: str | Path) -> list[tuple[str, DetectionCase]]:
    """Read every case file; return (``file:line``, case) pairs. Raises PolicyLoadError."""
    issues: list[PolicyIssue] = []
    cases: list[tuple[str, DetectionCase]] = []
    root = Path(directory)
    for path in yaml_files(root) if root.is_dir() else []:
        raw = read_policy_bytes(path)
        if isinstance(raw, PolicyIssue):
            issues.append(raw)
            continue
        node, data, problems = read_yaml_file(path, raw)
        issues.extend(problems)
        if node is None:
            continue
        try:
            parsed = _CASES.validate_python(data)
        except ValidationError as exc:
            issues.extend(validation_issues(str(path), node, exc))
            continue
        cases.extend((f"{path}:{line_of(node, [i])}", case) for i, case in enumerate(parsed))
    if issues:
        raise PolicyLoadError(issues)
    return cases


def run_detection_cases(
    policy: PolicySet, evaluator: Evaluator, cases: Sequence[tuple[str, DetectionCase]]
) -> list[DetectionResult]:
    """Match every case's record against the policy's detection rules."""
    engine = DetectionEngine(policy.detections, policy.entitlements)
    results = []
    for where, case in cases:
        fired = [hit.rule.id for hit in engine.match(case.record, _attribution(evaluator, case))]
        problem = None
        if fired != case.expect:
            problem = f"expected {case.expect or 'no rule'} to fire, got {fired or 'none'}"
        results.append(DetectionResult(case, where, fired, problem))
    return results


def _attribution(evaluator: Evaluator, case: DetectionCase) -> Attribution:
    identity = case.who.identity()
    person = evaluator.resolve(identity)
    facts = PersonFacts("case", identity.email, person.kind, identity.groups, identity.claims)
    entitlement = evaluator.entitlement(case.entitlement)
    session = SessionFacts(
        session_id="case",
        grant_id="case",
        entitlement_id=case.entitlement,
        role_arn=entitlement.role_arn if entitlement else "",
        access_key_id="ASIACASE",
        role_session_name="broker-case",
        person=facts,
    )
    return Attribution(
        person=facts,
        session=session,
        matched_by="access_key",
        action=action_of(case.record),
        event_time=datetime.now(UTC),
        after_grant_end=case.after_grant_end,
        grant_ended_at=None,
    )
