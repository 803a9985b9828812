"""CloudTrail for tests: records shaped like AWS writes them, and log files put in a moto bucket.

    trail = Trail(moto_server.client("s3"), bucket)
    key = trail.put([assume_role_record(...), call_record(...)], at=now)

Records follow the CloudTrail record contents reference (eventVersion 1.08/1.09): an
``AssumeRole`` made by the broker's IAM user, whose response carries the issued access key, and
calls made with that key as an ``AssumedRole`` identity with ``sessionContext.sourceIdentity``.
"""

from __future__ import annotations

import gzip
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ACCOUNT = "123456789012"
BROKER_USER_KEY = "AKIAIOSFODNN7EXAMPLE"


def ts(moment: datetime) -> str:
    """CloudTrail's time format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class IssuedKey:
    """What CloudTrail knows of a broker session: its key, role, session name, identity."""

    access_key_id: str
    role_arn: str
    role_session_name: str
    source_identity: str

    @property
    def account(self) -> str:
        return self.role_arn.split(":")[4]

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[-1]

    @property
    def assumed_arn(self) -> str:
        return f"arn:aws:sts::{self.account}:assumed-role/{self.role_name}/{self.role_session_name}"


def _base(moment: datetime, source: str, name: str, region: str, account: str) -> dict[str, Any]:
    return {
        "eventVersion": "1.09",
        "eventTime": ts(moment),
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account,
        "eventCategory": "Management",
        "tlsDetails": {
            "tlsVersion": "TLSv1.3",
            "cipherSuite": "TLS_AES_128_GCM_SHA256",
            "clientProvidedHostHeader": f"{source.split('.')[0]}.{region}.amazonaws.com",
        },
    }


def assume_role_record(key: IssuedKey, moment: datetime, *, duration: int = 3600) -> dict[str, Any]:
    """The broker's own AssumeRole call that made the session (as CloudTrail logs it)."""
    record = _base(moment, "sts.amazonaws.com", "AssumeRole", "us-east-1", key.account)
    record.update(
        {
            "userIdentity": {
                "type": "IAMUser",
                "principalId": "AIDAJQABLZS4A3QDU576Q",
                "arn": f"arn:aws:iam::{key.account}:user/credential-broker",
                "accountId": key.account,
                "accessKeyId": BROKER_USER_KEY,
                "userName": "credential-broker",
            },
            "sourceIPAddress": "198.51.100.10",
            "userAgent": "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux",
            "requestParameters": {
                "roleArn": key.role_arn,
                "roleSessionName": key.role_session_name,
                "durationSeconds": duration,
                "sourceIdentity": key.source_identity,
                "tags": [{"key": "broker-grant", "value": "redacted-in-test"}],
            },
            "responseElements": {
                "credentials": {
                    "accessKeyId": key.access_key_id,
                    # Real AssumeRole records carry the session token; the broker must drop it.
                    "sessionToken": "IQoJb3JpZ2luX2VjE" + secrets.token_hex(64),
                    "expiration": moment.strftime("%b %d, %Y, %I:%M:%S %p"),
                },
                "assumedRoleUser": {
                    "assumedRoleId": f"AROAEXAMPLEROLEID:{key.role_session_name}",
                    "arn": key.assumed_arn,
                },
                "sourceIdentity": key.source_identity,
            },
            "readOnly": True,
            "resources": [
                {"accountId": key.account, "type": "AWS::IAM::Role", "ARN": key.role_arn}
            ],
        }
    )
    return record


def call_record(
    key: IssuedKey,
    moment: datetime,
    source: str,
    name: str,
    *,
    region: str = "us-east-1",
    params: dict[str, Any] | None = None,
    source_ip: str = "203.0.113.7",
    error_code: str | None = None,
    resources: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A call made with the session's key (an AssumedRole identity)."""
    record = _base(moment, source, name, region, key.account)
    record.update(
        {
            "userIdentity": {
                "type": "AssumedRole",
                "principalId": f"AROAEXAMPLEROLEID:{key.role_session_name}",
                "arn": key.assumed_arn,
                "accountId": key.account,
                "accessKeyId": key.access_key_id,
                "sessionContext": {
                    "sessionIssuer": {
                        "type": "Role",
                        "principalId": "AROAEXAMPLEROLEID",
                        "arn": key.role_arn,
                        "accountId": key.account,
                        "userName": key.role_name,
                    },
                    "attributes": {"creationDate": ts(moment), "mfaAuthenticated": "false"},
                    "sourceIdentity": key.source_identity,
                },
            },
            "sourceIPAddress": source_ip,
            "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.debian",
            "requestParameters": params,
            "responseElements": None,
            "readOnly": name.startswith(("Describe", "Get", "List")),
        }
    )
    if error_code:
        record["errorCode"] = error_code
        record["errorMessage"] = "You are not authorized to perform this operation."
    if resources:
        record["resources"] = resources
    return record


def run_instances(
    key: IssuedKey, moment: datetime, instance_type: str, **kwargs: Any
) -> dict[str, Any]:
    """An ``ec2:RunInstances`` record as CloudTrail writes it."""
    params = {
        "instancesSet": {
            "items": [{"imageId": "ami-0abcdef1234567890", "minCount": 1, "maxCount": 4}]
        },
        "instanceType": instance_type,
        "blockDeviceMapping": {},
        "monitoring": {"enabled": False},
        "disableApiTermination": False,
        "disableApiStop": False,
        "clientToken": str(uuid.uuid4()),
    }
    return call_record(key, moment, "ec2.amazonaws.com", "RunInstances", params=params, **kwargs)


def other_record(moment: datetime, account: str = ACCOUNT) -> dict[str, Any]:
    """A call by someone else entirely (a long-lived user key): never the broker's."""
    record = _base(moment, "s3.amazonaws.com", "ListBuckets", "us-east-1", account)
    record.update(
        {
            "userIdentity": {
                "type": "IAMUser",
                "principalId": "AIDAEXAMPLEOTHER",
                "arn": f"arn:aws:iam::{account}:user/ci",
                "accountId": account,
                "accessKeyId": "AKIAEXAMPLEOTHERKEY1",
                "userName": "ci",
            },
            "sourceIPAddress": "192.0.2.44",
            "userAgent": "terraform",
            "requestParameters": None,
            "responseElements": None,
            "readOnly": True,
        }
    )
    return record


def log_key(
    moment: datetime,
    *,
    account: str = ACCOUNT,
    region: str = "us-east-1",
    prefix: str = "",
    organization: str | None = None,
) -> str:
    """A key in CloudTrail's layout for a file delivered at ``moment``."""
    utc = moment.astimezone(UTC)
    org = f"{organization}/" if organization else ""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return (
        f"{base}AWSLogs/{org}{account}/CloudTrail/{region}/{utc:%Y/%m/%d}/"
        f"{account}_CloudTrail_{region}_{utc:%Y%m%dT%H%M}Z_{secrets.token_hex(8)}.json.gz"
    )


def pack(records: list[dict[str, Any]]) -> bytes:
    """A log file's bytes: gzipped {"Records": [...]}."""
    return gzip.compress(json.dumps({"Records": records}).encode())


class Trail:
    """A moto bucket CloudTrail writes into."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        s3.create_bucket(Bucket=bucket)

    def put(self, records: list[dict[str, Any]], at: datetime, **where: Any) -> str:
        """Write one log file delivered at ``at``; return its key."""
        key = log_key(at, **where)
        self.put_raw(key, pack(records))
        return key

    def announce_to(self, sqs: Any) -> str:
        """Send the bucket's object-created events to a new SQS queue; return its URL."""
        url = str(sqs.create_queue(QueueName=f"{self.bucket}-events")["QueueUrl"])
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        return url

    def put_raw(self, key: str, body: bytes) -> str:
        """Write any bytes at a key (malformed files)."""
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return key
