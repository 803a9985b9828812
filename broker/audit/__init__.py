"""Audit trail: hash chain, checkpoints, exports and verification."""

from __future__ import annotations

from broker.audit.chain import (
    AuditLog,
    Break,
    EventContext,
    NewEvent,
    VerifyResult,
    verify_database,
    verify_events,
)

__all__ = [
    "AuditLog",
    "Break",
    "EventContext",
    "NewEvent",
    "VerifyResult",
    "verify_database",
    "verify_events",
]
