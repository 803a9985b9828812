"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify

from broker.db import get_database
from broker.migrate import current_revision
from broker.policy_store import get_policy

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to serve: the database answers and is migrated, and a policy is loaded."""
    checks: dict[str, str] = {}
    try:
        revision = current_revision(get_database(current_app))
        checks["database"] = "ok" if revision else "not migrated: run `broker db upgrade`"
    except Exception as exc:  # any driver error means not ready
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = "unreachable"
    try:
        checks["policy"] = f"ok ({get_policy().version[:12]})"
    except Exception:  # noqa: BLE001 - a missing store is simply not ready
        checks["policy"] = "not loaded"
    ready = all(v.startswith("ok") for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503
