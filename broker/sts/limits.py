"""STS's documented limits, checked before any call (emulators accept what STS refuses)."""

from __future__ import annotations

import ipaddress
import logging
import re
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.sts.requests import NetworkBinding

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
# AWS's own names for an internal failure. A 5xx without one of these may come from a proxy or
# load balancer in between (502, 504) that lost STS's answer, so it does not count as an answer.
SERVER_ERROR_CODES = frozenset(
    {"InternalFailure", "InternalError", "InternalServerError", "ServiceUnavailable"}
)

_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
NAME_CHAR_RE = re.compile(r"[^\w+=,.@-]", re.ASCII)
_VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


def name_problems(what: str, value: str) -> list[str]:
    if _NAME_RE.match(value):
        return []
    return [f"{what} {value!r} must be 2-64 characters of letters, digits and +=,.@_-"]


def network_problems(network: NetworkBinding) -> list[str]:
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


def tag_problems(tags: Mapping[str, str]) -> list[str]:
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
