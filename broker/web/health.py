"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify

from broker.db import get_database
from broker.migrate import current_revision
from broker.policy_store import PolicyStatus, policy_store

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to serve: the database answers and is migrated, and a policy is in force.

    ``policy`` says which version is in force, where it came from, and whether the files on
    disk were refused (the last good policy then stays in force).
    """
    checks: dict[str, str] = {}
    try:
        revision = current_revision(get_database(current_app))
        checks["database"] = "ok" if revision else "not migrated: run `broker db upgrade`"
    except Exception as exc:  # any driver error means not ready
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = "unreachable"
    status = policy_store().status
    checks["policy"] = _policy_check(status)
    ready = all(v.startswith("ok") for v in checks.values())
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "policy": status.to_dict(),
    }
    return jsonify(body), 200 if ready else 503


def _policy_check(status: PolicyStatus) -> str:
    """Ready either way: a worker serving the last good policy must stay in the pool."""
    text = f"ok ({status.version[:12]}"
    if status.source == "database":
        text += ", the last good policy from the database"
    if status.refused is not None:
        text += (
            f"; the files on disk are refused: {len(status.refused.errors)} error(s), "
            "logged and audited; `broker policy check` lists them"
        )
    return text + ")"
