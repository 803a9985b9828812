"""The policy file format as pydantic models, and the merged PolicySet the evaluator reads.

Every model forbids unknown fields, so a misspelt key is an error rather than a silently ignored
rule. A `Match` with no conditions is refused too: "nobody" and "everybody" are both too easy to
write by accident, so matching everyone needs an explicit ``everyone: true``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

from broker.policy.durations import DURATION_PATTERN, session_duration
from broker.policy.iam import IamIssue, session_policy_issues

Kind = Literal["staff", "contractor"]
KINDS: tuple[str, ...] = ("staff", "contractor")

ENTITLEMENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ROLE_ARN_RE = re.compile(r"^arn:aws[-a-z]*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")
POLICY_ARN_RE = re.compile(
    r"^arn:aws[-a-z]*:iam::(?:aws|\d{12}):policy/(?:[\w+=,.@-]+/)*[\w+=,.@-]+$"
)
VPC_RE = re.compile(r"^vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")


class SessionPolicyError(ValueError):
    """A session policy broke the IAM grammar or the STS size limit; carries every issue."""

    def __init__(self, issues: list[IamIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


def _checked(pattern: re.Pattern[str], what: str, example: str) -> Any:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a valid {what}; expected e.g. {example}")
        return value

    return check


def _valid_until(value: object) -> object:
    """A date means the end of that day in UTC; a naive datetime is taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date (2026-12-31) or datetime") from None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(23, 59, 59), tzinfo=UTC)
    return value


def _cidr(value: object) -> object:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a network in CIDR form like 203.0.113.0/24 ({exc})"
            ) from None
    return value


def _session_policy(value: dict[str, Any]) -> dict[str, Any]:
    errors = [i for i in session_policy_issues(value) if i.severity == "error"]
    if errors:
        raise SessionPolicyError(errors)
    return value


def _lower(value: str) -> str:
    return value.lower()


EntitlementId = Annotated[
    StrictStr,
    AfterValidator(
        _checked(ENTITLEMENT_ID_RE, "entitlement id", "prod-readonly (a-z, 0-9, '-', ≤ 63)")
    ),
    WithJsonSchema({"type": "string", "pattern": ENTITLEMENT_ID_RE.pattern}),
]
RoleArn = Annotated[
    StrictStr,
    AfterValidator(_checked(ROLE_ARN_RE, "IAM role ARN", "arn:aws:iam::111122223333:role/name")),
    WithJsonSchema({"type": "string", "pattern": ROLE_ARN_RE.pattern}),
]
PolicyArn = Annotated[
    StrictStr,
    AfterValidator(
        _checked(POLICY_ARN_RE, "managed policy ARN", "arn:aws:iam::aws:policy/ReadOnlyAccess")
    ),
    WithJsonSchema({"type": "string", "pattern": POLICY_ARN_RE.pattern}),
]
VpcId = Annotated[
    StrictStr,
    AfterValidator(_checked(VPC_RE, "VPC id", "vpc-0a1b2c3d4e5f60718")),
    WithJsonSchema({"type": "string", "pattern": VPC_RE.pattern}),
]
Region = Annotated[
    StrictStr,
    AfterValidator(_checked(REGION_RE, "AWS region", "eu-west-1")),
    WithJsonSchema({"type": "string", "pattern": REGION_RE.pattern}),
]
Duration = Annotated[
    timedelta,
    BeforeValidator(session_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "integer", "minimum": 900, "maximum": 43200},
            ],
            "description": "between 15m and 12h, e.g. 1h, 90m, 1h30m, 900s",
        }
    ),
]
Cidr = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(_cidr),
    WithJsonSchema({"type": "string", "description": "CIDR, e.g. 203.0.113.0/24"}),
]
ValidUntil = Annotated[
    datetime,
    BeforeValidator(_valid_until),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date"},
                {"type": "string", "format": "date-time"},
            ],
            "description": "a date (valid through the end of that day, UTC) or a datetime",
        }
    ),
]
EmailGlob = Annotated[StrictStr, AfterValidator(_lower)]
ClaimValue = StrictStr | StrictBool | StrictInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Who a rule applies to: every given field must match; within a field, any value may."""

    groups: tuple[StrictStr, ...] = ()
    emails: tuple[EmailGlob, ...] = Field(default=(), description="globs, case-insensitive")
    email: EmailGlob | None = Field(default=None, description="one email glob")
    kinds: tuple[Kind, ...] = ()
    claims: dict[StrictStr, ClaimValue | list[ClaimValue]] = Field(default_factory=dict)
    everyone: StrictBool = False

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        conditions = bool(self.groups or self.emails or self.email or self.kinds or self.claims)
        if self.everyone and conditions:
            raise ValueError(
                "everyone: true cannot be combined with other conditions; drop one or the other"
            )
        if not self.everyone and not conditions:
            raise ValueError(
                "empty match: it would be unclear whether it means nobody or everybody, so it is "
                "refused; list groups, emails, kinds or claims, or write everyone: true"
            )
        return self

    @property
    def email_globs(self) -> tuple[str, ...]:
        """All email globs, singular and plural forms together."""
        return (*self.emails, self.email) if self.email else self.emails


class PersonRule(_Strict):
    """Facts about the people a match selects: their kind, engagement end and sponsor."""

    match: Match
    kind: Kind | None = None
    valid_until: ValidUntil | None = None
    sponsor: StrictStr | None = None

    @model_validator(mode="after")
    def _sets_something(self) -> PersonRule:
        if self.kind is None and self.valid_until is None and self.sponsor is None:
            raise ValueError("people rule sets nothing; give kind, valid_until or sponsor")
        return self


class Approval(_Strict):
    """Who must approve a request before a grant starts."""

    approvers: Match


class Network(_Strict):
    """Where requests (and the issued session) must come from: any listed network will do."""

    source_ip: tuple[Cidr, ...] = ()
    source_vpc: tuple[VpcId, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> Network:
        if not self.source_ip and not self.source_vpc:
            raise ValueError("network binds to nothing; give source_ip or source_vpc, or drop it")
        return self


class Entitlement(_Strict):
    """Who may use which AWS role, for how long and under which conditions."""

    id: EntitlementId
    description: StrictStr = ""
    role_arn: RoleArn
    allow: Match
    max_duration: Duration = timedelta(hours=1)
    max_grant: Duration | None = None
    require_mfa: StrictBool = False
    require_reason: StrictBool = False
    approval: Approval | None = None
    session_policy: Annotated[dict[str, Any], AfterValidator(_session_policy)] | None = None
    managed_policy_arns: tuple[PolicyArn, ...] = Field(default=(), max_length=10)
    network: Network | None = None
    region: Region | None = Field(
        default=None, description="default AWS region for the engineer's tools (profiles, exec)"
    )
    sensitive: StrictBool = Field(
        default=False,
        description="`broker policy diff` exits 3 when access to this entitlement widens",
    )

    @property
    def grant_length(self) -> timedelta:
        """How long a grant lasts: max_grant, or max_duration when not given."""
        return self.max_grant if self.max_grant is not None else self.max_duration


class DenyRule(_Strict):
    """Keeps the people a match selects away from entitlements, whatever any allow says."""

    match: Match
    entitlements: tuple[StrictStr, ...] = Field(min_length=1, description="globs on ids")
    reason: StrictStr | None = None


DETECTION_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ACTION_GLOB_RE = re.compile(r"^[a-z0-9*?-]+:[A-Za-z0-9*?]+$")

DetectionId = Annotated[
    StrictStr,
    AfterValidator(
        _checked(DETECTION_ID_RE, "detection rule id", "crypto-mining (a-z, 0-9, '-', ≤ 63)")
    ),
    WithJsonSchema({"type": "string", "pattern": DETECTION_ID_RE.pattern}),
]
ActionGlob = Annotated[
    StrictStr,
    AfterValidator(
        _checked(ACTION_GLOB_RE, "action", "ec2:RunInstances or iam:Create* (service:EventName)")
    ),
    WithJsonSchema({"type": "string", "pattern": ACTION_GLOB_RE.pattern}),
]
Globs = tuple[StrictStr, ...]


class RecordMatch(_Strict):
    """What a CloudTrail record must show for a detection rule to fire.

    Every given condition must hold; within a list, any value may. Globs use ``*`` and ``?``.
    """

    actions: tuple[ActionGlob, ...] = Field(
        default=(), description="service:EventName globs, e.g. ec2:RunInstances, iam:Create*"
    )
    resources: Globs = Field(default=(), description="ARN globs of the record's resources")
    regions: Globs = Field(default=(), description="region globs the call must be made in")
    not_regions: Globs = Field(default=(), description="region globs the call must not be in")
    outside_entitlement_region: StrictBool = Field(
        default=False,
        description="the call is in another region than the entitlement's `region` (global "
        "services such as IAM and STS excepted)",
    )
    request_parameters: dict[StrictStr, StrictStr | list[StrictStr]] = Field(
        default_factory=dict,
        description="dotted path into requestParameters → glob(s), e.g. instanceType: p4d.*",
    )
    source_ip_outside_network: StrictBool = Field(
        default=False,
        description="the call came from outside the entitlement's network.source_ip",
    )
    after_grant_end: StrictBool = Field(
        default=False, description="the call was made after the session's grant ended"
    )
    outcome: Literal["any", "succeeded", "failed"] = "any"
    who: Match | None = Field(default=None, description="only these people's activity")
    entitlements: Globs = Field(default=(), description="entitlement id globs")

    @model_validator(mode="after")
    def _something(self) -> RecordMatch:
        record_conditions = (
            self.actions,
            self.resources,
            self.regions,
            self.not_regions,
            self.outside_entitlement_region,
            self.request_parameters,
            self.source_ip_outside_network,
            self.after_grant_end,
        )
        if not any(record_conditions):
            raise ValueError(
                "a detection must look at the record: give actions, resources, regions, "
                "not_regions, outside_entitlement_region, request_parameters, "
                "source_ip_outside_network or after_grant_end (who/entitlements/outcome only "
                "narrow it)"
            )
        return self


class DetectionRule(_Strict):
    """A pattern in what broker-issued credentials do, and the broker's response to it."""

    id: DetectionId
    description: StrictStr = ""
    severity: Literal["low", "medium", "high", "critical"] = "high"
    match: RecordMatch
    response: Literal["alert", "revoke_grant", "cut_off"] = Field(
        default="alert",
        description="alert: audit and notify; revoke_grant: end the grant and deny its "
        "sessions on AWS; cut_off: disable the person and deny all their sessions",
    )
    notify: StrictBool = Field(default=True, description="send a detection notification")


class PolicyFile(_Strict):
    """One YAML file in the policy directory."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="broker policy file")

    version: Literal[1]
    default_kind: Kind | None = None
    kind_claim: StrictStr | None = Field(
        default=None,
        description="an ID token claim whose value (staff or contractor) sets a person's kind "
        "before the people rules apply; without it, no claim from the provider decides the kind",
    )
    mfa_acr_values: tuple[StrictStr, ...] = ()
    people: tuple[PersonRule, ...] = ()
    entitlements: tuple[Entitlement, ...] = ()
    deny: tuple[DenyRule, ...] = ()
    auditors: Match | None = None
    admins: Match | None = None
    detections: tuple[DetectionRule, ...] = ()


@dataclass(frozen=True)
class PolicySet:
    """All policy files merged: what the evaluator decides from."""

    entitlements: tuple[Entitlement, ...]
    people: tuple[PersonRule, ...] = ()
    deny: tuple[DenyRule, ...] = ()
    auditors: tuple[Match, ...] = ()
    admins: tuple[Match, ...] = ()
    default_kind: Kind = "staff"
    kind_claim: str | None = None
    mfa_acr_values: frozenset[str] = frozenset()
    detections: tuple[DetectionRule, ...] = ()
    origins: Mapping[str, str] = field(default_factory=dict)
    """Where rules came from, e.g. ``{"entitlement:prod-readonly": "entitlements.yaml:12"}``."""

    @classmethod
    def from_files(
        cls, files: Iterable[PolicyFile], origins: Mapping[str, str] | None = None
    ) -> PolicySet:
        """Merge parsed files in order (people and deny rules keep that order)."""
        files = list(files)
        default_kind: Kind = next((f.default_kind for f in files if f.default_kind), "staff")
        return cls(
            entitlements=tuple(e for f in files for e in f.entitlements),
            people=tuple(p for f in files for p in f.people),
            deny=tuple(d for f in files for d in f.deny),
            auditors=tuple(f.auditors for f in files if f.auditors),
            admins=tuple(f.admins for f in files if f.admins),
            default_kind=default_kind,
            kind_claim=next((f.kind_claim for f in files if f.kind_claim), None),
            mfa_acr_values=frozenset(v for f in files for v in f.mfa_acr_values),
            detections=tuple(d for f in files for d in f.detections),
            origins=dict(origins or {}),
        )

    @property
    def uses_groups(self) -> bool:
        """True when any rule matches on groups (then a missing groups claim is refused)."""
        matches = [
            *(e.allow for e in self.entitlements),
            *(e.approval.approvers for e in self.entitlements if e.approval),
            *(p.match for p in self.people),
            *(d.match for d in self.deny),
            *self.auditors,
            *self.admins,
        ]
        return any(m.groups for m in matches)

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> PolicySet:
        """Validate one policy document (as parsed from YAML) into a PolicySet."""
        return cls.from_files([PolicyFile.model_validate(data)])


def policy_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a policy file, for editors and CI."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
