"""Logging never carries issued secrets, even with AWS wire logging at DEBUG."""

from __future__ import annotations

import logging

import pytest

from broker.logs import RedactSecrets, quiet_aws_wire_logs


def test_wire_bodies_are_redacted() -> None:
    record = logging.LogRecord(
        "botocore.parsers",
        logging.DEBUG,
        __file__,
        1,
        "Response body: %s",
        ("<SecretAccessKey>abc/def</SecretAccessKey><SessionToken>tok+en=</SessionToken>",),
        None,
    )
    RedactSecrets().filter(record)
    text = record.getMessage()
    assert "abc/def" not in text and "tok+en=" not in text
    assert "<SecretAccessKey>redacted</SecretAccessKey>" in text

    json_record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        '{"SecretAccessKey": "s3cr3t", "SessionToken": "t0k"}',
        (),
        None,
    )
    RedactSecrets().filter(json_record)
    assert "s3cr3t" not in json_record.getMessage() and "t0k" not in json_record.getMessage()


def test_botocore_debug_is_silenced_even_when_root_is_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_aws_wire_logs()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore.parsers").debug("<SecretAccessKey>leak</SecretAccessKey>")
    assert "leak" not in caplog.text
