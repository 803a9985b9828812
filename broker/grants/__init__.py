"""Grants: request, approve, issue, revoke and expire — the one domain API (GrantService)."""

from __future__ import annotations

from broker.grants.service import GrantService
from broker.grants.types import (
    LIVE,
    SESSION_TAG_GRANT,
    SESSION_TAG_KIND,
    ApprovalRequired,
    Caller,
    Issued,
    RequestMeta,
    grant_summary,
)

__all__ = [
    "LIVE",
    "SESSION_TAG_GRANT",
    "SESSION_TAG_KIND",
    "ApprovalRequired",
    "Caller",
    "GrantService",
    "Issued",
    "RequestMeta",
    "grant_summary",
]
