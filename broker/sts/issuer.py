"""StsIssuer: check every limit, call AssumeRole, retry only errors AWS answered, map AWS errors.

One attempt is one request on the wire (`broker.aws.client_config` switches botocore's retries
off). An attempt is repeated only when AWS answered it with throttling or an internal error: then
AWS handed out no credentials, so a new attempt cannot make a second live session. When the answer
is lost (read timeout, dropped connection, a gateway's 502/504), AWS may have made the session,
and a new attempt would make another: that is never retried, and AwsOutcomeUnknown says which
session may exist.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from broker.aws import is_policy_arn, parse_role_arn
from broker.policy.iam import SESSION_POLICY_MAX_CHARS, policy_json_compact
from broker.sts.errors import (
    AwsAccessDenied,
    AwsError,
    AwsOutcomeUnknown,
    AwsRegionDisabled,
    AwsThrottled,
    AwsUnreachable,
    MalformedSessionPolicy,
    PackedPolicyTooLarge,
    StsLimitError,
)
from broker.sts.limits import (
    MAX_DURATION,
    MAX_MANAGED_POLICY_ARNS,
    MIN_DURATION,
    SERVER_ERROR_CODES,
    THROTTLING_CODES,
    name_problems,
    network_problems,
    tag_problems,
)
from broker.sts.requests import AssumeRequest, IssuedCredentials

log = logging.getLogger(__name__)


class StsIssuer:
    """Checks AssumeRole requests against STS limits, calls STS, and explains its errors.

    Pass a client from `broker.aws.make_client` (botocore retries off): this class retries
    throttling and AWS internal errors itself, with exponential backoff and jitter, and nothing
    else; ``max_attempts`` counts every request sent.
    """

    def __init__(
        self,
        sts_client: Any,
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = 4,
        base_delay: float = 0.25,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._sts = sts_client
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._random = secrets.SystemRandom()

    def check(self, req: AssumeRequest) -> None:
        """Raise StsLimitError listing every STS limit the request breaks; send nothing."""
        problems: list[str] = []
        try:
            parse_role_arn(req.role_arn)
        except ValueError as exc:
            problems.append(str(exc))
        problems.extend(name_problems("role session name", req.role_session_name))
        problems.extend(name_problems("source identity", req.source_identity))
        if req.source_identity.lower().startswith("aws:"):
            problems.append(f"source identity {req.source_identity!r} starts with 'aws:'")
        if not MIN_DURATION <= req.duration_seconds <= MAX_DURATION:
            problems.append(
                f"duration {req.duration_seconds} s is outside {MIN_DURATION}-{MAX_DURATION} s"
            )
        policy = req.final_policy()
        if policy is not None:
            size = len(policy_json_compact(policy))
            if size > SESSION_POLICY_MAX_CHARS:
                problems.append(
                    f"session policy is {size} characters as compact JSON (network binding "
                    f"included), more than STS's {SESSION_POLICY_MAX_CHARS}"
                )
        arns = req.managed_policy_arns
        if len(arns) > MAX_MANAGED_POLICY_ARNS:
            problems.append(
                f"{len(arns)} managed policy ARNs, more than STS's {MAX_MANAGED_POLICY_ARNS}"
            )
        problems.extend(
            f"{arn!r} is not a managed policy ARN" for arn in arns if not is_policy_arn(arn)
        )
        problems.extend(tag_problems(req.tags))
        if req.network:
            problems.extend(network_problems(req.network))
        if problems:
            raise StsLimitError(problems)

    def assume(self, req: AssumeRequest) -> IssuedCredentials:
        """Check the request, call AssumeRole (retrying only AWS's own errors), return credentials.

        Raises AwsOutcomeUnknown, without retrying, when AWS may have made a session the broker
        never heard of.
        """
        self.check(req)
        params = self._params(req)
        response = self._call_with_retries(req, params)
        creds = response["Credentials"]
        issued = IssuedCredentials(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=_as_utc(creds["Expiration"]),
            assumed_role_arn=response["AssumedRoleUser"]["Arn"],
            role_session_name=req.role_session_name,
            source_identity=req.source_identity,
            duration_seconds=req.duration_seconds,
        )
        log.info(
            "assumed role %s as session %s for %s: access key %s until %s",
            req.role_arn,
            req.role_session_name,
            req.source_identity,
            issued.access_key_id,
            issued.expiration.isoformat(),
            extra={
                "event": "sts.assume_role",
                "role": req.role_arn,
                "session": req.role_session_name,
                "person": req.source_identity,
                "grant": req.tags.get("broker-grant") if req.tags else None,
                "access_key_id": issued.access_key_id,
            },
        )
        return issued

    def _params(self, req: AssumeRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "RoleArn": req.role_arn,
            "RoleSessionName": req.role_session_name,
            "SourceIdentity": req.source_identity,
            "DurationSeconds": req.duration_seconds,
        }
        if req.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in req.tags.items()]
        policy = req.final_policy()
        if policy is not None:
            params["Policy"] = policy_json_compact(policy)
        if req.managed_policy_arns:
            params["PolicyArns"] = [{"arn": arn} for arn in req.managed_policy_arns]
        return params

    def _call_with_retries(self, req: AssumeRequest, params: dict[str, Any]) -> Any:
        for attempt in range(1, self._max_attempts + 1):
            try:
                return self._sts.assume_role(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code not in THROTTLING_CODES | SERVER_ERROR_CODES:
                    if status >= 500:
                        raise _outcome_unknown(req, f"HTTP {status} without an AWS error") from exc
                    raise _client_error(req.role_arn, code, exc) from exc
                if attempt == self._max_attempts:
                    raise _gave_up(req.role_arn, code, attempt) from exc
                delay = self._backoff(attempt)
                log.warning(
                    "STS answered AssumeRole on %s with %s (HTTP %d), attempt %d of %d; "
                    "retrying in %.2fs",
                    req.role_arn,
                    code,
                    status,
                    attempt,
                    self._max_attempts,
                    delay,
                )
                self._sleep(delay)
            except (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError) as exc:
                raise AwsUnreachable(
                    f"AWS STS could not be reached to assume {req.role_arn}: {exc}. Nothing was "
                    "sent.",
                    hint="Check the broker's network path and STS endpoint setting, then retry.",
                ) from exc
            except (BotoConnectionError, HTTPClientError) as exc:  # read timeout, dropped, ...
                raise _outcome_unknown(req, str(exc)) from exc
            except BotoCoreError as exc:
                raise AwsError(
                    f"AssumeRole on {req.role_arn} failed in the AWS client: {exc}.",
                    aws_code=type(exc).__name__,
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        # Equal jitter: half the exponential step fixed, half random, so delays always grow.
        step = self._base_delay * (1 << (attempt - 1))
        return step / 2 + self._random.uniform(0, step / 2)


def _outcome_unknown(req: AssumeRequest, what: str) -> AwsOutcomeUnknown:
    log.error(
        "AssumeRole on %s for %s got no answer (%s): AWS may have made session %s; not retried",
        req.role_arn,
        req.source_identity,
        what,
        req.role_session_name,
        extra={
            "event": "sts.outcome_unknown",
            "role": req.role_arn,
            "session": req.role_session_name,
            "person": req.source_identity,
        },
    )
    return AwsOutcomeUnknown(
        f"AWS STS did not answer AssumeRole on {req.role_arn} ({what}); it may have made "
        f"session {req.role_session_name} anyway, so the call was not repeated.",
        role_arn=req.role_arn,
        role_session_name=req.role_session_name,
        hint="Ask again in a moment: a new request makes a new session. Check the broker's "
        "network path to STS if this repeats.",
    )


def _gave_up(role_arn: str, code: str, attempts: int) -> Exception:
    if code in THROTTLING_CODES:
        return AwsThrottled(
            f"AWS STS throttled AssumeRole on {role_arn} {attempts} times in a row.",
            hint="Retry in a minute; if it persists, the account's STS request rate is exhausted.",
        )
    return AwsError(
        f"AWS STS failed AssumeRole on {role_arn} with an internal error ({code}) {attempts} "
        "times in a row.",
        aws_code=code,
        hint="The fault is on AWS's side, not in the request; retry in a minute, and check the "
        "AWS Health Dashboard if it persists.",
    )


def _client_error(role_arn: str, code: str, exc: ClientError) -> Exception:
    aws_message = str(exc.response.get("Error", {}).get("Message", "")).rstrip(".")
    if code == "AccessDenied":
        return AwsAccessDenied(
            f"AWS refused AssumeRole on {role_arn}: the broker's identity may not assume it, or "
            "its trust policy lacks sts:SetSourceIdentity / sts:TagSession.",
            hint="Allow the broker's role in the target role's trust policy with sts:AssumeRole, "
            "sts:SetSourceIdentity and sts:TagSession.",
        )
    if code == "PackedPolicyTooLarge":
        return PackedPolicyTooLarge(
            [f"AWS says the packed session policy and tags are too large ({aws_message})"],
            hint="Shorten the session policy, use fewer or shorter session tags, or move "
            "permissions into managed policies.",
        )
    if code == "RegionDisabledException":
        return AwsRegionDisabled(
            f"AWS STS is not activated in the region the broker called for {role_arn}.",
            hint="Activate STS for this region in the account's IAM settings, or point the "
            "broker at another regional STS endpoint.",
        )
    if code == "MalformedPolicyDocument":
        return MalformedSessionPolicy(
            f"AWS refused the session policy for {role_arn}: {aws_message}.",
            hint="Run `broker policy check` and fix the entitlement's session_policy.",
        )
    return AwsError(
        f"AWS refused AssumeRole on {role_arn}: {code or 'unknown error'}: {aws_message}.",
        aws_code=code,
    )


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
