"""CloudTrail's layout and file format: keys, cursors' start keys, malformed files, SQS notices."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pytest

from broker.activity.cloudtrail import (
    MalformedLogFile,
    action_of,
    key_at,
    notified_keys,
    parse_key,
    read_log_file,
    record_problem,
)
from broker.activity.records import redact

KEY = (
    "AWSLogs/123456789012/CloudTrail/eu-west-1/2026/03/07/"
    "123456789012_CloudTrail_eu-west-1_20260307T1405Z_AbCdEf0123456789.json.gz"
)


def test_keys_in_the_standard_layout() -> None:
    found = parse_key(KEY)
    assert found is not None
    assert (found.account, found.region, found.organization) == ("123456789012", "eu-west-1", None)
    assert found.prefix == "AWSLogs/123456789012/CloudTrail/eu-west-1/"
    assert found.written_at == datetime(2026, 3, 7, 14, 5, tzinfo=UTC)
    assert found.expected

    org = parse_key(
        "logs/AWSLogs/o-a1b2c3d4e5/111122223333/CloudTrail/us-east-2/2026/03/07/x.json.gz"
    )
    assert org is not None and (org.organization, org.account) == ("o-a1b2c3d4e5", "111122223333")
    assert org.prefix == "logs/AWSLogs/o-a1b2c3d4e5/111122223333/CloudTrail/us-east-2/"
    assert org.written_at is None

    assert parse_key(KEY.replace("/CloudTrail/", "/CloudTrail-Digest/")) is None
    assert parse_key("AWSLogs/123456789012/CloudTrail/eu-west-1/notes.txt") is None
    odd = parse_key(KEY.replace(".json.gz", ".txt"))
    assert odd is not None and not odd.expected


def test_start_keys_sort_just_before_the_files_of_their_minute() -> None:
    prefix = "AWSLogs/123456789012/CloudTrail/eu-west-1/"
    start = key_at(prefix, "123456789012", "eu-west-1", datetime(2026, 3, 7, 14, 5, tzinfo=UTC))
    earlier = KEY.replace("T1405Z", "T1404Z")
    later_day = KEY.replace("2026/03/07", "2026/03/08").replace("20260307T1405Z", "20260308T0001Z")
    assert earlier < start < KEY < later_day


def test_log_files_are_read_or_refused_with_a_reason() -> None:
    records = [
        {
            "eventID": "1",
            "eventTime": "2026-03-07T14:00:00Z",
            "eventSource": "s3.amazonaws.com",
            "eventName": "GetObject",
        }
    ]
    assert read_log_file(gzip.compress(json.dumps({"Records": records}).encode())) == records
    for body, reason in [
        (b"{}", "not a gzip file"),
        (gzip.compress(b"[1, 2]"), "not a CloudTrail log"),
        (gzip.compress(b'{"Records": {}}'), "not a CloudTrail log"),
        (gzip.compress(b"\xff\xfe"), "not JSON"),
        (gzip.compress(b'{"Records": []}')[:-12], "ends early"),
        (b"\x1f\x8b" + b"\x00" * 20, "damaged gzip"),
    ]:
        with pytest.raises(MalformedLogFile, match=reason):
            read_log_file(body)
    big = gzip.compress(json.dumps({"Records": ["x" * 2000]}).encode())
    with pytest.raises(MalformedLogFile, match="larger than"):
        read_log_file(big, limit=1024)
    assert record_problem(records[0]) is None
    assert record_problem({"eventID": "1"}) == "a record has no eventTime"
    assert record_problem([]) == "a record is not a JSON object"
    assert record_problem({**records[0], "eventTime": "yesterday"}) == (
        "a record's eventTime is not a time"
    )


def test_actions_use_iam_service_prefixes() -> None:
    assert (
        action_of({"eventSource": "ec2.amazonaws.com", "eventName": "RunInstances"})
        == "ec2:RunInstances"
    )
    assert action_of({"eventSource": "monitoring.amazonaws.com", "eventName": "PutMetricData"}) == (
        "cloudwatch:PutMetricData"
    )


def test_sqs_notices_name_the_new_keys() -> None:
    s3_event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "trail"}, "object": {"key": "AWSLogs%2F1%2Fa+b.json.gz"}},
            },
            {
                "eventName": "ObjectRemoved:Delete",
                "s3": {"bucket": {"name": "trail"}, "object": {"key": "gone"}},
            },
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "other"}, "object": {"key": "theirs"}},
            },
        ]
    }
    assert list(notified_keys(json.dumps(s3_event), "trail")) == ["AWSLogs/1/a b.json.gz"]
    wrapped = {"Type": "Notification", "Message": json.dumps(s3_event)}
    assert list(notified_keys(json.dumps(wrapped), "trail")) == ["AWSLogs/1/a b.json.gz"]
    cloudtrail_sns = {"s3Bucket": "trail", "s3ObjectKey": ["k1.json.gz", "k2.json.gz"]}
    wrapped = {"Type": "Notification", "Message": json.dumps(cloudtrail_sns)}
    assert list(notified_keys(json.dumps(wrapped), "trail")) == ["k1.json.gz", "k2.json.gz"]
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "trail"}
    assert list(notified_keys(json.dumps(test_event), "trail")) == []
    assert list(notified_keys("not json", "trail")) == []


def test_stored_records_keep_no_session_token() -> None:
    record = {
        "responseElements": {"credentials": {"accessKeyId": "ASIA1", "sessionToken": "T"}},
        "requestParameters": {"password": "p", "userName": "u"},
    }
    assert redact(record) == {
        "responseElements": {"credentials": {"accessKeyId": "ASIA1", "sessionToken": "<redacted>"}},
        "requestParameters": {"password": "<redacted>", "userName": "u"},
    }
