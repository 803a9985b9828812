"""Errors of issuing: STS limits, too little time left, and AWS refusals mapped for people."""

from __future__ import annotations

import logging

from broker.errors import BadRequest, Conflict, ServiceUnavailable, UpstreamError

log = logging.getLogger(__name__)


class StsLimitError(BadRequest):
    """The AssumeRole request breaks an STS limit; nothing was sent to AWS."""

    code = "sts_limit"

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        super().__init__(
            "The credential request breaks STS limits: " + "; ".join(problems) + ".",
            hint=hint or "Shorten or simplify the entitlement (an admin changes policies/).",
        )
        self.problems = tuple(problems)


class PackedPolicyTooLarge(StsLimitError):
    """STS found the packed session policy and tags too large."""

    code = "packed_policy_too_large"


class MalformedSessionPolicy(BadRequest):
    """STS refused the session policy document."""

    code = "malformed_policy_document"


class DurationTooShort(Conflict):
    """Less than STS's 15-minute minimum is left, so no credentials are issued."""

    code = "duration_too_short"


class AwsAccessDenied(UpstreamError):
    """AWS refused to let the broker assume the role."""

    code = "aws_access_denied"


class AwsRegionDisabled(UpstreamError):
    """STS is not activated in the region the broker called."""

    code = "aws_region_disabled"


class AwsError(UpstreamError):
    """AWS answered AssumeRole with an error the broker has no special handling for."""

    code = "aws_error"

    def __init__(self, message: str, *, aws_code: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.aws_code = aws_code


class AwsThrottled(ServiceUnavailable):
    """STS kept throttling the broker after every retry."""

    code = "aws_throttled"


class AwsUnreachable(ServiceUnavailable):
    """The STS endpoint could not be reached or did not answer in time."""

    code = "aws_unreachable"


class AwsOutcomeUnknown(AwsUnreachable):
    """AssumeRole was sent but its answer was lost: AWS may have made the session; never retried.

    ``role_arn`` and ``role_session_name`` say which session may exist, so it can be denied.
    """

    code = "aws_outcome_unknown"

    def __init__(
        self, message: str, *, role_arn: str, role_session_name: str, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.role_arn = role_arn
        self.role_session_name = role_session_name
