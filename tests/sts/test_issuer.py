"""StsIssuer against moto server over HTTP, and against botocore's Stubber for the edges."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any

import boto3
import pytest
from aws import MotoServer, closed_port, create_role
from botocore.stub import Stubber

from broker.aws import make_client
from broker.errors import BadRequest, BrokerError, ServiceUnavailable, UpstreamError
from broker.sts import (
    AssumeRequest,
    AwsAccessDenied,
    AwsError,
    AwsRegionDisabled,
    AwsThrottled,
    AwsUnreachable,
    DurationTooShort,
    IssuedCredentials,
    MalformedSessionPolicy,
    NetworkBinding,
    PackedPolicyTooLarge,
    RoleLimits,
    StsIssuer,
    StsLimitError,
    build_session_policy,
    clamp_duration,
    role_session_name,
)

ROLE_ARN = "arn:aws:iam::123456789012:role/app-readonly"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN" * 4


def assume_request(**overrides: Any) -> AssumeRequest:
    fields: dict[str, Any] = {
        "role_arn": ROLE_ARN,
        "role_session_name": "broker-g1234-abcd",
        "source_identity": "alice@example.com",
        "duration_seconds": 3600,
        "tags": {"broker:grant": "g1234", "broker:kind": "staff"},
    }
    fields.update(overrides)
    return AssumeRequest(**fields)


def role_name(request_node: pytest.FixtureRequest) -> str:
    return re.sub(r"[^\w+=,.@-]", "-", request_node.node.name)[:64]


# --- against moto server ------------------------------------------------------------------------


def test_issues_credentials_that_identify_as_the_unique_session(
    moto_server: MotoServer, iam: Any, sts: Any, request: pytest.FixtureRequest
) -> None:
    arn = create_role(iam, role_name(request))
    issuer = StsIssuer(sts)
    first = issuer.assume(
        AssumeRequest(
            role_arn=arn,
            role_session_name=role_session_name("grant-0001"),
            source_identity="alice@example.com",
            duration_seconds=900,
            tags={"broker:grant": "grant-0001"},
        )
    )
    second = issuer.assume(
        AssumeRequest(
            role_arn=arn,
            role_session_name=role_session_name("grant-0001"),
            source_identity="alice@example.com",
            duration_seconds=900,
        )
    )
    assert first.role_session_name != second.role_session_name
    assert first.access_key_id != second.access_key_id
    for issued in (first, second):
        assert issued.role_session_name.startswith("broker-grant-0001-")
        caller = moto_server.client(
            "sts",
            access_key_id=issued.access_key_id,
            secret_access_key=issued.secret_access_key,
            session_token=issued.session_token,
        ).get_caller_identity()
        expected = f"arn:aws:sts::123456789012:assumed-role/{role_name(request)}/"
        assert caller["Arn"] == expected + issued.role_session_name
        assert issued.assumed_role_arn == caller["Arn"]
        assert issued.expiration.tzinfo is not None
        assert issued.expiration.utcoffset() == timedelta(0)


def test_role_maximum_caps_the_issued_duration(
    iam: Any, sts: Any, request: pytest.FixtureRequest
) -> None:
    arn = create_role(iam, role_name(request), max_session_seconds=3600)
    now = datetime.now(UTC)
    seconds = clamp_duration(
        requested=7200,
        entitlement_max=43_200,
        role_max=RoleLimits(iam).max_session_duration(arn),
        grant_expires_at=None,
        valid_until=None,
        now=now,
    )
    assert seconds == 3600
    issued = StsIssuer(sts).assume(request_for(arn, seconds))
    assert abs(issued.expiration - (now + timedelta(seconds=3600))) < timedelta(seconds=30)
    assert issued.duration_seconds == 3600


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"grant_expires_at": timedelta(minutes=20)}, 1200),
        ({"valid_until": timedelta(minutes=25)}, 1500),
        ({"entitlement_max": 1800}, 1800),
        ({"chaining": True}, 3600),
    ],
    ids=["grant-end", "contractor-end", "entitlement-max", "chaining"],
)
def test_each_clamp_shows_in_the_expiry_moto_returns(
    iam: Any,
    sts: Any,
    request: pytest.FixtureRequest,
    limits: dict[str, Any],
    expected: int,
) -> None:
    arn = create_role(iam, role_name(request), max_session_seconds=43_200)
    now = datetime.now(UTC)
    args: dict[str, Any] = {
        "requested": 43_200,
        "entitlement_max": 43_200,
        "role_max": RoleLimits(iam).max_session_duration(arn),
        "grant_expires_at": None,
        "valid_until": None,
        "now": now,
    }
    for key, value in limits.items():
        args[key] = now + value if isinstance(value, timedelta) else value
    seconds = clamp_duration(**args)
    assert seconds == expected
    issued = StsIssuer(sts).assume(request_for(arn, seconds))
    assert abs(issued.expiration - (now + timedelta(seconds=expected))) < timedelta(seconds=30)


def test_moto_enforces_neither_role_maximum_nor_policy_size_so_check_must(
    iam: Any, sts: Any, request: pytest.FixtureRequest
) -> None:
    """A canary: if moto starts enforcing these, the broker's own checks still must."""
    arn = create_role(iam, role_name(request), max_session_seconds=3600)
    big = policy_of_size(3000)
    answer = sts.assume_role(
        RoleArn=arn, RoleSessionName="raw", DurationSeconds=7200, Policy=json.dumps(big)
    )
    assert answer["Credentials"]["AccessKeyId"]
    with pytest.raises(StsLimitError, match="3000 characters"):
        StsIssuer(sts).assume(request_for(arn, 3600, session_policy=big))


def test_role_limits_cache_per_role_and_expire(iam: Any, request: pytest.FixtureRequest) -> None:
    arn = create_role(iam, role_name(request), max_session_seconds=7200)
    clock = [1000.0]
    limits = RoleLimits(iam, ttl=60, clock=lambda: clock[0])
    assert limits.max_session_duration(arn) == 7200
    iam.update_role(RoleName=role_name(request), MaxSessionDuration=14_400)
    clock[0] += 59
    assert limits.max_session_duration(arn) == 7200
    clock[0] += 2
    assert limits.max_session_duration(arn) == 14_400


def test_role_limits_fall_back_to_one_hour_when_iam_cannot_say(
    iam: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limits = RoleLimits(iam)
    assert limits.max_session_duration("arn:aws:iam::123456789012:role/no-such-role") == 3600
    assert "no-such-role" in caplog.text
    assert limits.max_session_duration("not an arn") == 3600


def test_unreachable_endpoint_is_reported() -> None:
    client = make_client(
        "sts",
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        timeout=2,
        access_key_id="testing",
        secret_access_key="testing",
    )
    with pytest.raises(AwsUnreachable) as info:
        StsIssuer(client, sleep=fail_sleep).assume(assume_request())
    assert isinstance(info.value, ServiceUnavailable)
    assert info.value.code == "aws_unreachable"
    assert info.value.status == 503


def test_endpoint_that_never_answers_times_out_as_unreachable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection, never answers
        client = make_client(
            "sts",
            region="us-east-1",
            endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            timeout=0.5,
            access_key_id="testing",
            secret_access_key="testing",
        )
        with pytest.raises(AwsUnreachable):
            StsIssuer(client, sleep=fail_sleep).assume(assume_request())


# --- limits, refused before any call ------------------------------------------------------------


@pytest.fixture
def stubbed(boto_session: boto3.session.Session) -> Iterator[tuple[Any, Stubber]]:
    """An STS client whose every call is answered by a Stubber (or fails if nothing is queued)."""
    client = boto_session.client(
        "sts",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def policy_of_size(size: int) -> dict[str, Any]:
    """A session policy whose compact JSON is exactly `size` characters."""

    def policy(resource: str) -> dict[str, Any]:
        statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": resource}
        return {"Version": "2012-10-17", "Statement": [statement]}

    prefix = "arn:aws:s3:::"
    padding = size - len(json.dumps(policy(prefix), separators=(",", ":")))
    doc = policy(prefix + "b" * padding)
    assert len(json.dumps(doc, separators=(",", ":"))) == size
    return doc


def request_for(arn: str, seconds: int, **overrides: Any) -> AssumeRequest:
    return assume_request(role_arn=arn, duration_seconds=seconds, **overrides)


LIMIT_VIOLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "policy-2049-chars": ({"session_policy": policy_of_size(2049)}, "2049 characters"),
    "11-managed-arns": (
        {"managed_policy_arns": tuple(f"arn:aws:iam::aws:policy/P{i}" for i in range(11))},
        "11 managed policy ARNs",
    ),
    "bad-managed-arn": ({"managed_policy_arns": ("arn:aws:s3:::bucket",)}, "managed policy ARN"),
    "51-tags": ({"tags": {f"k{i}": "v" for i in range(51)}}, "51 session tags"),
    "tag-key-129": ({"tags": {"k" * 129: "v"}}, "129 characters"),
    "tag-key-empty": ({"tags": {"": "v"}}, "0 characters"),
    "tag-value-257": ({"tags": {"k": "v" * 257}}, "257 characters"),
    "tag-bad-chars": ({"tags": {"team": "a;b"}}, "characters STS refuses"),
    "tag-aws-prefix": ({"tags": {"AWS:team": "x"}}, "reserved 'aws:' prefix"),
    "tag-duplicate-keys": ({"tags": {"Team": "a", "team": "b"}}, "differ only in case"),
    "session-name-65": ({"role_session_name": "s" * 65}, "role session name"),
    "session-name-1": ({"role_session_name": "s"}, "role session name"),
    "session-name-chars": ({"role_session_name": "broker grant/1"}, "role session name"),
    "duration-899": ({"duration_seconds": 899}, "duration 899"),
    "duration-43201": ({"duration_seconds": 43_201}, "duration 43201"),
    "source-identity-aws": ({"source_identity": "aws:alice"}, "source identity"),
    "source-identity-chars": ({"source_identity": "alice smith"}, "source identity"),
    "source-identity-65": ({"source_identity": "a" * 65}, "source identity"),
    "network-ip": ({"network": NetworkBinding(source_ips=("10.0.0.300/8",))}, "not an IP"),
    "network-vpc": ({"network": NetworkBinding(source_vpcs=("subnet-1234abcd",))}, "VPC id"),
    "role-arn": ({"role_arn": "arn:aws:iam::1234:role/x"}, "not an IAM role ARN"),
}


@pytest.mark.parametrize(
    ("overrides", "mentions"), list(LIMIT_VIOLATIONS.values()), ids=list(LIMIT_VIOLATIONS)
)
def test_limit_violations_are_refused_before_any_call(
    stubbed: tuple[Any, Stubber], overrides: dict[str, Any], mentions: str
) -> None:
    client, _ = stubbed
    with pytest.raises(StsLimitError) as info:
        StsIssuer(client, sleep=fail_sleep).assume(assume_request(**overrides))
    err = info.value
    assert err.code == "sts_limit" and err.status == 400
    assert mentions in err.message


def test_limits_at_the_boundary_are_accepted(stubbed: tuple[Any, Stubber]) -> None:
    client, _ = stubbed
    StsIssuer(client).check(
        assume_request(
            session_policy=policy_of_size(2048),
            managed_policy_arns=tuple(
                f"arn:aws:iam::123456789012:policy/p/P{i}" for i in range(10)
            ),
            tags={f"k{i}": "v" for i in range(49)} | {"k" * 128: "é v:/=+-@_." + "v" * 245},
            role_session_name="s" * 64,
            source_identity="al",
            duration_seconds=43_200,
        )
    )


def test_every_problem_is_listed(stubbed: tuple[Any, Stubber]) -> None:
    client, _ = stubbed
    with pytest.raises(StsLimitError) as info:
        StsIssuer(client).check(assume_request(duration_seconds=10, role_session_name="x"))
    assert len(info.value.problems) == 2


def test_under_fifteen_minutes_left_is_refused_without_a_call(
    stubbed: tuple[Any, Stubber],
) -> None:
    now = datetime.now(UTC)
    with pytest.raises(DurationTooShort):
        clamp_duration(
            requested=3600,
            entitlement_max=3600,
            role_max=3600,
            grant_expires_at=now + timedelta(minutes=14),
            valid_until=None,
            now=now,
        )


# --- network binding ----------------------------------------------------------------------------


def test_network_binding_adds_one_deny_with_both_conditions() -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    }
    network = NetworkBinding(source_ips=("203.0.113.0/24",), source_vpcs=("vpc-0a1b2c3d",))
    built = build_session_policy(policy, network)
    assert built is not None
    assert built["Statement"][0] == policy["Statement"]
    deny = built["Statement"][1]
    assert deny["Effect"] == "Deny" and deny["Action"] == "*" and deny["Resource"] == "*"
    assert deny["Condition"] == {
        "NotIpAddress": {"aws:SourceIp": ["203.0.113.0/24"]},
        "StringNotEquals": {"aws:SourceVpc": ["vpc-0a1b2c3d"]},
    }
    assert policy["Statement"] == {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}


def test_network_binding_only_uses_the_configured_keys() -> None:
    built = build_session_policy(None, NetworkBinding(source_ips=("198.51.100.7/32",)))
    assert built is not None
    allow, deny = built["Statement"]
    assert allow == {"Effect": "Allow", "Action": "*", "Resource": "*"}
    assert deny["Condition"] == {"NotIpAddress": {"aws:SourceIp": ["198.51.100.7/32"]}}


def test_network_objects_become_strings() -> None:
    built = build_session_policy(None, NetworkBinding(source_ips=(ip_network("2001:db8::/32"),)))
    assert built is not None
    assert built["Statement"][1]["Condition"]["NotIpAddress"]["aws:SourceIp"] == ["2001:db8::/32"]


def test_no_network_leaves_the_policy_alone() -> None:
    assert build_session_policy(None, None) is None
    assert build_session_policy(None, NetworkBinding()) is None
    doc = {"Version": "2012-10-17", "Statement": []}
    assert build_session_policy(doc, None) == doc


def test_size_check_counts_the_network_augmented_policy(stubbed: tuple[Any, Stubber]) -> None:
    client, _ = stubbed
    issuer = StsIssuer(client)
    issuer.check(assume_request(session_policy=policy_of_size(1900)))
    network = NetworkBinding(source_ips=("203.0.113.0/24",), source_vpcs=("vpc-0a1b2c3d",))
    with pytest.raises(StsLimitError, match="network binding included"):
        issuer.check(assume_request(session_policy=policy_of_size(1900), network=network))


def test_sends_network_augmented_policy_tags_and_arns(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    network = NetworkBinding(source_vpcs=("vpc-0a1b2c3d",))
    req = assume_request(
        managed_policy_arns=("arn:aws:iam::aws:policy/ReadOnlyAccess",),
        network=network,
    )
    stubber.add_response(
        "assume_role",
        assume_role_answer(),
        {
            "RoleArn": ROLE_ARN,
            "RoleSessionName": "broker-g1234-abcd",
            "SourceIdentity": "alice@example.com",
            "DurationSeconds": 3600,
            "Tags": [
                {"Key": "broker:grant", "Value": "g1234"},
                {"Key": "broker:kind", "Value": "staff"},
            ],
            "Policy": json.dumps(build_session_policy(None, network), separators=(",", ":")),
            "PolicyArns": [{"arn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}],
        },
    )
    issued = StsIssuer(client).assume(req)
    assert issued.access_key_id == "ASIAEXAMPLEKEY000001"
    assert issued.source_identity == "alice@example.com"


# --- retries and error mapping ------------------------------------------------------------------


def assume_role_answer() -> dict[str, Any]:
    return {
        "Credentials": {
            "AccessKeyId": "ASIAEXAMPLEKEY000001",
            "SecretAccessKey": SECRET,
            "SessionToken": TOKEN,
            "Expiration": datetime(2030, 1, 1, tzinfo=UTC),
        },
        "AssumedRoleUser": {
            "AssumedRoleId": "AROAEXAMPLE:broker-g1234-abcd",
            "Arn": "arn:aws:sts::123456789012:assumed-role/app-readonly/broker-g1234-abcd",
        },
    }


def fail_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds}s but nothing should have been retried")


def test_throttling_is_retried_with_growing_delays(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("assume_role", "Throttling", "Rate exceeded", 400)
    stubber.add_client_error("assume_role", "ThrottlingException", "Rate exceeded", 400)
    stubber.add_response("assume_role", assume_role_answer())
    slept: list[float] = []
    issued = StsIssuer(client, sleep=slept.append, base_delay=0.25).assume(assume_request())
    assert issued.expiration == datetime(2030, 1, 1, tzinfo=UTC)
    assert len(slept) == 2
    assert 0.125 <= slept[0] <= 0.25 <= slept[1] <= 0.5
    assert slept[0] < slept[1]


def test_throttling_past_max_attempts_is_service_unavailable(
    stubbed: tuple[Any, Stubber],
) -> None:
    client, stubber = stubbed
    for code in ("Throttling", "RequestLimitExceeded", "TooManyRequestsException"):
        stubber.add_client_error("assume_role", code, "slow down", 400)
    slept: list[float] = []
    with pytest.raises(AwsThrottled) as info:
        StsIssuer(client, sleep=slept.append, max_attempts=3).assume(assume_request())
    assert len(slept) == 2
    err = info.value
    assert isinstance(err, ServiceUnavailable)
    assert err.code == "aws_throttled" and err.status == 503
    assert err.hint is not None and "minute" in err.hint


@pytest.mark.parametrize(
    ("aws_code", "http", "error_type", "code", "base"),
    [
        ("AccessDenied", 403, AwsAccessDenied, "aws_access_denied", UpstreamError),
        ("PackedPolicyTooLarge", 400, PackedPolicyTooLarge, "packed_policy_too_large", BadRequest),
        ("RegionDisabledException", 403, AwsRegionDisabled, "aws_region_disabled", UpstreamError),
        (
            "MalformedPolicyDocument",
            400,
            MalformedSessionPolicy,
            "malformed_policy_document",
            BadRequest,
        ),
        ("ExpiredTokenException", 400, AwsError, "aws_error", UpstreamError),
    ],
)
def test_aws_errors_are_explained_and_not_retried(
    stubbed: tuple[Any, Stubber],
    aws_code: str,
    http: int,
    error_type: type[BrokerError],
    code: str,
    base: type[Exception],
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("assume_role", aws_code, "AWS says no", http)
    with pytest.raises(error_type) as info:
        StsIssuer(client, sleep=fail_sleep).assume(assume_request())
    err = info.value
    assert isinstance(err, base)
    assert err.code == code
    assert err.hint or aws_code in str(err)


def test_access_denied_names_the_role_and_the_trust_policy(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("assume_role", "AccessDenied", "not authorized", 403)
    with pytest.raises(AwsAccessDenied) as info:
        StsIssuer(client, sleep=fail_sleep).assume(assume_request())
    assert ROLE_ARN in info.value.message
    assert "sts:SetSourceIdentity" in info.value.message
    assert info.value.status == 502


def test_unknown_aws_error_keeps_the_aws_code(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("assume_role", "IDPRejectedClaim", "nope", 403)
    with pytest.raises(AwsError) as info:
        StsIssuer(client, sleep=fail_sleep).assume(assume_request())
    assert info.value.aws_code == "IDPRejectedClaim"
    assert "IDPRejectedClaim" in info.value.message


# --- secrets and names --------------------------------------------------------------------------


def test_secrets_stay_out_of_repr_str_and_logs(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = stubbed
    stubber.add_response("assume_role", assume_role_answer())
    caplog.set_level("DEBUG", logger="broker")
    issued = StsIssuer(client).assume(assume_request())
    assert isinstance(issued, IssuedCredentials)
    assert issued.secret_access_key == SECRET and issued.session_token == TOKEN
    for text in (repr(issued), str(issued), caplog.text):
        assert SECRET not in text and TOKEN[:20] not in text
    assert "ASIAEXAMPLEKEY000001" in repr(issued)


def test_role_session_names_are_unique_traceable_and_valid() -> None:
    names = {role_session_name("3f2b9c1e-aaaa-bbbb-cccc-1234567890ab") for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert name.startswith("broker-3f2b9c1e-aaaa")
        assert re.fullmatch(r"[\w+=,.@-]{2,64}", name, re.ASCII)
    long_odd = role_session_name("g" * 200 + " /x")
    assert len(long_odd) <= 64 and re.fullmatch(r"[\w+=,.@-]+", long_odd, re.ASCII)
    assert re.fullmatch(r"[\w+=,.@-]+", role_session_name("a b/c"), re.ASCII)
