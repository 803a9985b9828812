"""Issuing AWS credentials: clamp the duration, check every STS limit, call AssumeRole.

STS emulators accept requests that real STS refuses (moto takes a 3,000-character session
policy, 60 tags or a 12-hour session on a one-hour role), so `StsIssuer.check` enforces the
documented limits itself, before any call. Secrets in the answer are never logged and never
appear in a repr.
"""

from __future__ import annotations

from broker.sts.duration import clamp_duration
from broker.sts.errors import (
    AwsAccessDenied,
    AwsError,
    AwsOutcomeUnknown,
    AwsRegionDisabled,
    AwsThrottled,
    AwsUnreachable,
    DurationTooShort,
    MalformedSessionPolicy,
    PackedPolicyTooLarge,
    StsLimitError,
)
from broker.sts.issuer import StsIssuer
from broker.sts.limits import (
    CHAINING_MAX_DURATION,
    DEFAULT_ROLE_MAX_DURATION,
    MAX_DURATION,
    MAX_MANAGED_POLICY_ARNS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TAGS,
    MIN_DURATION,
)
from broker.sts.requests import (
    AssumeRequest,
    IssuedCredentials,
    NetworkBinding,
    build_session_policy,
    role_session_name,
)
from broker.sts.roles import RoleLimits

__all__ = [
    "CHAINING_MAX_DURATION",
    "DEFAULT_ROLE_MAX_DURATION",
    "MAX_DURATION",
    "MAX_MANAGED_POLICY_ARNS",
    "MAX_TAGS",
    "MAX_TAG_KEY",
    "MAX_TAG_VALUE",
    "MIN_DURATION",
    "AssumeRequest",
    "AwsAccessDenied",
    "AwsError",
    "AwsOutcomeUnknown",
    "AwsRegionDisabled",
    "AwsThrottled",
    "AwsUnreachable",
    "DurationTooShort",
    "IssuedCredentials",
    "MalformedSessionPolicy",
    "NetworkBinding",
    "PackedPolicyTooLarge",
    "RoleLimits",
    "StsIssuer",
    "StsLimitError",
    "build_session_policy",
    "clamp_duration",
    "role_session_name",
]
