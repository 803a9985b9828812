"""Access policy: the file format, loading it fail-closed, and deciding who may use what."""

from __future__ import annotations

from broker.policy.decision_tests import (
    CaseResult,
    DecisionCase,
    load_cases,
    run_cases,
    tests_dir,
)
from broker.policy.durations import format_duration, parse_duration
from broker.policy.evaluator import (
    STRONG_AMR,
    Decision,
    Evaluator,
    Identity,
    Person,
    RequestContext,
    Verdict,
)
from broker.policy.explain import describe_decision, describe_person
from broker.policy.iam import (
    SESSION_POLICY_MAX_CHARS,
    check_session_policy,
    policy_json_compact,
)
from broker.policy.loader import (
    LoadedPolicy,
    PolicyFiles,
    PolicyIssue,
    PolicyLoadError,
    load_policy_dir,
    load_policy_files,
    read_policy_files,
)
from broker.policy.model import (
    DenyRule,
    Entitlement,
    Match,
    PersonRule,
    PolicyFile,
    PolicySet,
    policy_json_schema,
)

__all__ = [
    "STRONG_AMR",
    "SESSION_POLICY_MAX_CHARS",
    "CaseResult",
    "Decision",
    "DecisionCase",
    "DenyRule",
    "Entitlement",
    "Evaluator",
    "Identity",
    "LoadedPolicy",
    "Match",
    "Person",
    "PersonRule",
    "PolicyFile",
    "PolicyFiles",
    "PolicyIssue",
    "PolicyLoadError",
    "PolicySet",
    "RequestContext",
    "Verdict",
    "check_session_policy",
    "describe_decision",
    "describe_person",
    "format_duration",
    "load_cases",
    "load_policy_dir",
    "load_policy_files",
    "parse_duration",
    "policy_json_compact",
    "policy_json_schema",
    "read_policy_files",
    "run_cases",
    "tests_dir",
]
