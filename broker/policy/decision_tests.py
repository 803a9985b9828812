"""Decision tests kept beside the policies (``policies/tests/*.yaml``), run like ``opa test``.

Each file is a list of cases: who asks, for which entitlement, when and from where, and the
verdict the policy must give. A case that fails names what was expected, what came out and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from broker.policy.evaluator import Decision, Evaluator, Identity, RequestContext, Verdict
from broker.policy.issues import PolicyIssue, PolicyLoadError, validation_issues
from broker.policy.loader import read_policy_bytes, read_yaml_file, yaml_files
from broker.policy.yamlsource import line_of

TESTS_SUBDIR = "tests"


def _utc(value: object) -> object:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Who(_Strict):
    """The identity a case asks as, as an identity provider would present it."""

    email: str
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = Field(default_factory=dict)
    amr: tuple[str, ...] = ()
    acr: str | None = None
    subject: str | None = None
    issuer: str = "https://idp.example.com"

    def identity(self) -> Identity:
        """Build the Identity the evaluator sees."""
        return Identity(
            issuer=self.issuer,
            subject=self.subject or self.email,
            email=self.email,
            groups=frozenset(self.groups),
            claims=dict(self.claims),
            amr=self.amr,
            acr=self.acr,
        )


class DecisionCase(_Strict):
    """One expectation: this person, asking for this entitlement, gets this verdict."""

    name: str
    who: Who
    entitlement: str
    at: Annotated[datetime, BeforeValidator(_utc)] | None = None
    source_ip: str | None = None
    source_vpc: str | None = None
    expect: Verdict
    reason_contains: str | None = None


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case; ``problem`` says why it failed."""

    case: DecisionCase
    where: str
    decision: Decision
    problem: str | None

    @property
    def passed(self) -> bool:
        """True when the policy gave the expected answer."""
        return self.problem is None


_CASES = TypeAdapter(list[DecisionCase])


def tests_dir(policy_dir: str | Path) -> Path:
    """Where decision tests for a policy directory live."""
    return Path(policy_dir) / TESTS_SUBDIR


def load_cases(directory: str | Path) -> list[tuple[str, DecisionCase]]:
    """Read every case file in a directory; return (``file:line``, case) pairs in file order."""
    root = Path(directory)
    paths = yaml_files(root) if root.is_dir() else []
    if not paths:
        raise PolicyLoadError(
            [PolicyIssue(str(root), None, "no decision tests (*.yaml) found; write some, see docs")]
        )
    issues: list[PolicyIssue] = []
    cases: list[tuple[str, DecisionCase]] = []
    for path in paths:
        raw = read_policy_bytes(path)
        if isinstance(raw, PolicyIssue):
            issues.append(raw)
            continue
        node, data, problems = read_yaml_file(path, raw)
        issues.extend(problems)
        if node is None:
            if not problems:
                issues.append(PolicyIssue(str(path), 1, "file is empty; expected a list of cases"))
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


def run_case(evaluator: Evaluator, case: DecisionCase, where: str, now: datetime) -> CaseResult:
    """Evaluate one case and compare with its expectation."""
    person = evaluator.resolve(case.who.identity())
    ctx = RequestContext(now=case.at or now, source_ip=case.source_ip, source_vpc=case.source_vpc)
    decision = evaluator.decide(person, case.entitlement, ctx)
    reasons = "; ".join(decision.reasons)
    problem = None
    if decision.verdict != case.expect:
        problem = f"expected {case.expect}, got {decision.verdict}: {reasons}"
    elif case.reason_contains and case.reason_contains not in reasons:
        problem = (
            f"verdict {decision.verdict} as expected, but the reasons do not contain "
            f"{case.reason_contains!r}: {reasons}"
        )
    return CaseResult(case, where, decision, problem)


def run_cases(
    evaluator: Evaluator,
    cases: Sequence[tuple[str, DecisionCase]],
    now: datetime | None = None,
) -> list[CaseResult]:
    """Run every case; cases without ``at`` are evaluated at ``now`` (default: the current time)."""
    when = now or datetime.now(UTC)
    return [run_case(evaluator, case, where, when) for where, case in cases]
