"""CloudTrail log files as AWS writes them: where they are in the bucket, and what they hold.

Layout: ``[prefix/]AWSLogs/[o-org/]<account>/CloudTrail/<region>/YYYY/MM/DD/<name>.json.gz``,
each file a gzipped ``{"Records": [...]}``. Organization trails put an organization id level
before the accounts. A file that is not gzip, not JSON, not that shape, or larger than the
limit when unpacked is *malformed*: :class:`MalformedLogFile` says why, and the reader skips it.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import orjson

MAX_UNPACKED_BYTES = 256 * 1024 * 1024
"""Largest unpacked log file read; CloudTrail's own files stay far below (a few MiB)."""

KEY_RE = re.compile(
    r"^(?P<base>(?:.+/)?AWSLogs/(?:(?P<org>o-[a-z0-9]{10,32})/)?(?P<account>\d{12})/CloudTrail/"
    r"(?P<region>[a-z0-9-]+)/)(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<name>[^/]+)$"
)
FILE_TIME_RE = re.compile(r"_(\d{8}T\d{4}Z)_")


class MalformedLogFile(ValueError):
    """A log file the reader cannot use; the message says what is wrong with it."""


@dataclass(frozen=True)
class LogKey:
    """Where one log file sits: its region prefix (the cursor's unit) and its day."""

    key: str
    prefix: str
    account: str
    region: str
    organization: str | None
    name: str

    @property
    def expected(self) -> bool:
        """Whether the name is a log file's (``.json.gz``), not something else left there."""
        return self.name.endswith(".json.gz")

    @property
    def written_at(self) -> datetime | None:
        """The delivery time CloudTrail puts in the file name (minute precision)."""
        found = FILE_TIME_RE.search(self.name)
        if found is None:
            return None
        return datetime.strptime(found.group(1), "%Y%m%dT%H%MZ").replace(tzinfo=UTC)


def parse_key(key: str) -> LogKey | None:
    """The parts of a key in the standard layout, or None for a key outside it."""
    found = KEY_RE.match(key)
    if found is None:
        return None
    return LogKey(
        key=key,
        prefix=found["base"],
        account=found["account"],
        region=found["region"],
        organization=found["org"],
        name=found["name"],
    )


def key_at(prefix: str, account: str, region: str, moment: datetime) -> str:
    """A key that sorts just before every file delivered at or after ``moment`` in a prefix.

    Listing with ``StartAfter`` set to it starts at that time (files are named by it).
    """
    utc = moment.astimezone(UTC)
    return f"{prefix}{utc:%Y/%m/%d}/{account}_CloudTrail_{region}_{utc:%Y%m%dT%H%M}Z"


def read_log_file(body: bytes, *, limit: int = MAX_UNPACKED_BYTES) -> list[Any]:
    """Unpack and parse one log file; return its ``Records`` list (items not yet checked).

    Raises MalformedLogFile when it is not gzip, too large, not JSON, or not the right shape.
    """
    if body[:2] != b"\x1f\x8b":
        raise MalformedLogFile("not a gzip file (CloudTrail writes .json.gz)")
    unpacker = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = unpacker.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedLogFile(f"damaged gzip data ({exc})") from None
    if len(raw) > limit or unpacker.unconsumed_tail:
        raise MalformedLogFile(f"larger than {limit // 2**20} MiB unpacked; not read")
    if not unpacker.eof:
        raise MalformedLogFile("gzip data ends early (truncated file)")
    try:
        document = orjson.loads(raw)  # about twice as fast as json: parsing is most of the cost
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedLogFile(f"not JSON ({str(exc)[:120]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("Records"), list):
        raise MalformedLogFile('not a CloudTrail log: expected {"Records": [...]}')
    records: list[Any] = document["Records"]
    return records


REQUIRED_FIELDS = ("eventID", "eventTime", "eventSource", "eventName")


def record_problem(record: Any) -> str | None:
    """Why a record cannot be used (None when it can): fields every CloudTrail record has."""
    if record.__class__ is not dict:
        return "a record is not a JSON object"
    for name in REQUIRED_FIELDS:
        value = record.get(name)
        if value.__class__ is not str or not value:
            return f"a record has no {name}"
    try:
        event_time(record)
    except ValueError:
        return "a record's eventTime is not a time"
    return None


_SERVICE_PREFIX = {
    "monitoring": "cloudwatch",
    "email": "ses",
    "elasticmapreduce": "elasticmapreduce",
    "signin": "signin",
}


def action_of(record: Mapping[str, Any]) -> str:
    """The record's action as IAM names it, e.g. ``ec2:RunInstances``."""
    source = str(record.get("eventSource") or "")
    service = source.removesuffix(".amazonaws.com")
    return f"{_SERVICE_PREFIX.get(service, service)}:{record.get('eventName', '')}"


def event_time(record: Mapping[str, Any]) -> datetime:
    """The record's ``eventTime`` as an aware UTC datetime; ValueError when it is not a time."""
    return _parse_time(str(record["eventTime"]))


@lru_cache(maxsize=4096)
def _parse_time(text: str) -> datetime:
    # A file's records share a few hundred distinct seconds: parse each once.
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def notified_keys(body: str, bucket: str) -> Iterator[str]:
    """The object keys an SQS message announces in ``bucket``.

    Understands S3 event notifications (direct, or wrapped in SNS) and CloudTrail's own SNS
    notice (``s3ObjectKey``). Anything else (S3's test event included) announces nothing.
    """
    try:
        message = json.loads(body)
    except ValueError:
        return
    if isinstance(message, dict) and message.get("Type") == "Notification":
        try:
            message = json.loads(str(message.get("Message", "")))
        except ValueError:
            return
    if not isinstance(message, dict):
        return
    if message.get("s3Bucket") == bucket and isinstance(message.get("s3ObjectKey"), list):
        yield from (str(k) for k in message["s3ObjectKey"])
        return
    for item in message.get("Records") or ():
        if not isinstance(item, dict) or not str(item.get("eventName", "")).startswith(
            "ObjectCreated"
        ):
            continue
        s3 = item.get("s3") or {}
        if (s3.get("bucket") or {}).get("name") != bucket:
            continue
        key = (s3.get("object") or {}).get("key")
        if isinstance(key, str):
            yield unquote_plus(key)  # S3 notifications URL-encode keys (space as +)
