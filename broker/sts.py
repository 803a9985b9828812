"""Issuing AWS credentials: clamp the duration, check every STS limit, call AssumeRole.

STS emulators accept requests that real STS refuses (moto takes a 3,000-character session
policy, 60 tags or a 12-hour session on a one-hour role), so `StsIssuer.check` enforces the
documented limits itself, before any call. Secrets in the answer are never logged and never
appear in a repr.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from broker.aws import is_policy_arn, parse_role_arn
from broker.errors import BadRequest, Conflict, ServiceUnavailable, UpstreamError
from broker.policy.iam import SESSION_POLICY_MAX_CHARS, policy_json_compact

log = logging.getLogger(__name__)

MIN_DURATION = 900
MAX_DURATION = 43_200
CHAINING_MAX_DURATION = 3_600
DEFAULT_ROLE_MAX_DURATION = 3_600
MAX_MANAGED_POLICY_ARNS = 10
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)

_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
_NAME_CHAR_RE = re.compile(r"[^\w+=,.@-]", re.ASCII)
_VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


# --- errors -------------------------------------------------------------------------------------


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


# --- the request and the answer -----------------------------------------------------------------


@dataclass(frozen=True)
class NetworkBinding:
    """Where issued credentials may be used from: source IPs/CIDRs or VPC ids (either suffices)."""

    source_ips: tuple[str | ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    source_vpcs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.source_ips or self.source_vpcs)


@dataclass(frozen=True)
class AssumeRequest:
    """Everything one AssumeRole call needs, before network binding is folded into the policy."""

    role_arn: str
    role_session_name: str
    source_identity: str
    duration_seconds: int
    tags: Mapping[str, str] = field(default_factory=dict)
    session_policy: Mapping[str, Any] | None = None
    managed_policy_arns: tuple[str, ...] = ()
    network: NetworkBinding | None = None

    def final_policy(self) -> dict[str, Any] | None:
        """The session policy as sent to STS: the entitlement's, plus the network binding."""
        return build_session_policy(self.session_policy, self.network)


@dataclass(frozen=True)
class IssuedCredentials:
    """Credentials from one AssumeRole; the secret parts are kept out of repr and str."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    assumed_role_arn: str
    role_session_name: str
    source_identity: str
    duration_seconds: int


# --- duration -----------------------------------------------------------------------------------


def clamp_duration(
    *,
    requested: int | None,
    entitlement_max: int,
    role_max: int,
    grant_expires_at: datetime | None,
    valid_until: datetime | None,
    now: datetime,
    chaining: bool = False,
) -> int:
    """Seconds to ask STS for: the smallest of every limit; refuse if under 15 minutes remain.

    `requested=None` means "as long as allowed". Raise BadRequest for a requested duration
    outside 900-43,200 s and DurationTooShort when the grant, the person's engagement or a
    configured maximum leaves less than 900 s (credentials must not outlive their permission).
    """
    if requested is not None and not MIN_DURATION <= requested <= MAX_DURATION:
        raise BadRequest(
            f"A session of {requested} seconds cannot be issued: STS accepts "
            f"{MIN_DURATION}-{MAX_DURATION} seconds (15 minutes to 12 hours).",
            hint="Ask for a duration between 15m and 12h.",
        )
    limits: dict[str, int] = {
        "requested": requested if requested is not None else MAX_DURATION,
        "entitlement": entitlement_max,
        "role": role_max,
        "sts": MAX_DURATION,
    }
    if chaining:
        limits["chaining"] = CHAINING_MAX_DURATION
    if grant_expires_at is not None:
        limits["grant"] = _seconds_until(grant_expires_at, now)
    if valid_until is not None:
        limits["valid_until"] = _seconds_until(valid_until, now)
    reason = min(limits, key=lambda k: limits[k])
    seconds = limits[reason]
    if seconds < MIN_DURATION:
        raise _too_short(reason, seconds, grant_expires_at, valid_until)
    return seconds


def _seconds_until(when: datetime, now: datetime) -> int:
    # Round down: a credential may end a fraction early, never late.
    return int((when - now).total_seconds() // 1)


def _too_short(
    reason: str, seconds: int, grant_expires_at: datetime | None, valid_until: datetime | None
) -> DurationTooShort:
    left = max(seconds, 0)
    if reason == "grant" and grant_expires_at is not None:
        return DurationTooShort(
            f"Your grant ends at {grant_expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
            f"{left} seconds from now: less than the 15 minutes STS credentials last at minimum, "
            "so the broker will not issue credentials that would outlive the grant.",
            hint="Request a new grant (or an extension) for this role.",
        )
    if reason == "valid_until" and valid_until is not None:
        return DurationTooShort(
            f"Your engagement ends at {valid_until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
            f"{left} seconds from now: less than the 15 minutes STS credentials last at minimum, "
            "so the broker will not issue credentials that would outlive it.",
            hint="Ask your sponsor to extend your engagement end date (valid_until).",
        )
    return DurationTooShort(
        f"The {reason} maximum session duration is {seconds} seconds, below STS's "
        f"{MIN_DURATION}-second minimum, so no credentials can be issued.",
        hint="Ask an admin to set max_duration to at least 15m for this entitlement.",
    )


# --- session policy and names -------------------------------------------------------------------


def build_session_policy(
    policy: Mapping[str, Any] | None, network: NetworkBinding | None
) -> dict[str, Any] | None:
    """The session policy to send: `policy` plus a Deny outside the bound network, if any.

    Both condition keys go in one Condition block, so they are ANDed: a request is denied unless
    it comes from one of the IPs or through one of the VPCs. With a network but no policy, the
    result allows everything the role allows (Allow */*) from that network only.
    """
    if not network:
        return dict(policy) if policy is not None else None
    condition: dict[str, dict[str, list[str]]] = {}
    if network.source_ips:
        condition["NotIpAddress"] = {"aws:SourceIp": [str(ip) for ip in network.source_ips]}
    if network.source_vpcs:
        condition["StringNotEquals"] = {"aws:SourceVpc": list(network.source_vpcs)}
    deny = {
        "Sid": "BrokerNetworkBinding",
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": condition,
    }
    if policy is None:
        allow = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        return {"Version": "2012-10-17", "Statement": [allow, deny]}
    statements = policy.get("Statement", [])
    listed = [statements] if isinstance(statements, Mapping) else list(statements)
    return {**policy, "Statement": [*listed, deny]}


def role_session_name(grant_id: str, *, prefix: str = "broker") -> str:
    """A role session name unique per session and traceable to the grant: `broker-<grant>-<rand>`.

    At most 64 characters of `[\\w+=,.@-]`; characters STS refuses become `-` and a long grant
    id is cut so the random suffix always fits.
    """
    suffix = secrets.token_hex(4)
    room = 64 - len(prefix) - len(suffix) - 2
    if room < 1:
        raise ValueError(f"session name prefix {prefix!r} is too long")
    grant_part = _NAME_CHAR_RE.sub("-", grant_id)[:room] or "grant"
    return _NAME_CHAR_RE.sub("-", f"{prefix}-{grant_part}-{suffix}")


# --- the issuer ---------------------------------------------------------------------------------


class StsIssuer:
    """Checks AssumeRole requests against STS limits, calls STS, and explains its errors.

    Pass a client from `broker.aws.make_client` (botocore retries off): this class retries
    throttling itself, with exponential backoff and jitter, and nothing else.
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
        problems.extend(_name_problems("role session name", req.role_session_name))
        problems.extend(_name_problems("source identity", req.source_identity))
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
        problems.extend(_tag_problems(req.tags))
        if req.network:
            problems.extend(_network_problems(req.network))
        if problems:
            raise StsLimitError(problems)

    def assume(self, req: AssumeRequest) -> IssuedCredentials:
        """Check the request, call AssumeRole (retrying throttling only), return the credentials."""
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
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in THROTTLING_CODES:
                    raise _client_error(req.role_arn, code, exc) from exc
                if attempt == self._max_attempts:
                    raise AwsThrottled(
                        f"AWS STS throttled AssumeRole on {req.role_arn} {attempt} times in a row.",
                        hint="Retry in a minute; if it persists, the account's STS request rate "
                        "is exhausted.",
                    ) from exc
                delay = self._backoff(attempt)
                log.warning(
                    "STS throttled AssumeRole on %s (%s), attempt %d of %d; retrying in %.2fs",
                    req.role_arn,
                    code,
                    attempt,
                    self._max_attempts,
                    delay,
                )
                self._sleep(delay)
            except (BotoConnectionError, ReadTimeoutError, ConnectionClosedError) as exc:
                raise AwsUnreachable(
                    f"AWS STS could not be reached to assume {req.role_arn}: {exc}.",
                    hint="Check the broker's network path and STS endpoint setting, then retry.",
                ) from exc
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


def _name_problems(what: str, value: str) -> list[str]:
    if _NAME_RE.match(value):
        return []
    return [f"{what} {value!r} must be 2-64 characters of letters, digits and +=,.@_-"]


def _network_problems(network: NetworkBinding) -> list[str]:
    problems: list[str] = []
    for ip in network.source_ips:
        try:
            ipaddress.ip_network(str(ip))
        except ValueError:
            problems.append(f"network source {str(ip)!r} is not an IP address or CIDR block")
    problems.extend(
        f"network source {vpc!r} is not a VPC id (vpc-...)"
        for vpc in network.source_vpcs
        if not _VPC_RE.match(vpc)
    )
    return problems


def _tag_problems(tags: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    if len(tags) > MAX_TAGS:
        problems.append(f"{len(tags)} session tags, more than STS's {MAX_TAGS}")
    seen: dict[str, str] = {}
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_TAG_KEY:
            problems.append(f"tag key {key[:40]!r} is {len(key)} characters (1-{MAX_TAG_KEY})")
        if len(value) > MAX_TAG_VALUE:
            problems.append(
                f"tag {key[:40]!r} value is {len(value)} characters (at most {MAX_TAG_VALUE})"
            )
        if not _tag_text_ok(key) or not _tag_text_ok(value):
            problems.append(
                f"tag {key[:40]!r} has characters STS refuses "
                "(allowed: letters, digits, spaces and _.:/=+-@)"
            )
        if key.lower().startswith("aws:"):
            problems.append(f"tag key {key!r} uses the reserved 'aws:' prefix")
        if key.lower() in seen:
            problems.append(
                f"tag keys {seen[key.lower()]!r} and {key!r} differ only in case; STS refuses that"
            )
        seen.setdefault(key.lower(), key)
    return problems


def _tag_text_ok(text: str) -> bool:
    # STS: [\p{L}\p{Z}\p{N}_.:/=+\-@]*
    return all(ch in _TAG_PUNCTUATION or unicodedata.category(ch)[0] in "LZN" for ch in text)


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


# --- role limits --------------------------------------------------------------------------------


class RoleLimits:
    """A role's MaxSessionDuration from IAM, cached per role ARN for `ttl` seconds."""

    def __init__(
        self,
        iam_client: Any,
        *,
        ttl: float = 300.0,
        failure_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._iam = iam_client
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def max_session_duration(self, role_arn: str) -> int:
        """Seconds; 3,600 (IAM's default and smallest allowed value) when IAM cannot say."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(role_arn)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            name = parse_role_arn(role_arn).name
            role = self._iam.get_role(RoleName=name)["Role"]
            seconds = int(role.get("MaxSessionDuration", DEFAULT_ROLE_MAX_DURATION))
            expires = now + self._ttl
        except (ValueError, ClientError, BotoCoreError, KeyError) as exc:
            # 3,600 s is the floor IAM allows for MaxSessionDuration, so it is always safe.
            log.warning(
                "could not read MaxSessionDuration of %s (%s); assuming %d s",
                role_arn,
                exc,
                DEFAULT_ROLE_MAX_DURATION,
            )
            seconds = DEFAULT_ROLE_MAX_DURATION
            expires = now + self._failure_ttl
        with self._lock:
            self._cache[role_arn] = (expires, seconds)
        return seconds
