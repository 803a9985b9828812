"""Liveness and readiness probes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import requests
from flask import Blueprint, Flask, Response, current_app, jsonify

from broker.aws import make_client
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
    """Ready to serve: the database answers and is migrated, a policy is in force, and the
    identity provider answers its discovery document. AWS reachability is reported too, but does
    not take the worker out of the pool (approvals, revocations and the audit trail still work).

    Each part is checked in parallel under its own short timeout; the provider and AWS answers
    are kept for PROBE_CACHE_SECONDS, so a load balancer probing every second does not probe them
    every second. ``policy`` says which version is in force and whether the files on disk were
    refused (the last good policy then stays in force).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    probes: dict[str, Callable[[], str]] = {
        "database": lambda: _database(app),
        "identity_provider": lambda: _cached(app, "identity_provider", _identity_provider),
        "aws": lambda: _cached(app, "aws", _aws),
    }
    checks: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="readyz")
    futures = {name: pool.submit(probe) for name, probe in probes.items()}
    deadline = time.monotonic() + PROBE_TIMEOUT + 1.0
    for name, future in futures.items():
        try:
            checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            checks[name] = f"no answer within {PROBE_TIMEOUT + 1.0:.0f} s"
        except Exception as exc:  # noqa: BLE001 - a probe that fails is a part that is down
            checks[name] = f"failed: {type(exc).__name__}"
    pool.shutdown(wait=False)
    status = policy_store().status
    checks["policy"] = _policy_check(status)
    ready = all(v.startswith("ok") for k, v in checks.items() if k not in ADVISORY)
    for name, value in checks.items():
        if not value.startswith("ok"):
            log.warning("readiness: %s: %s", name, value)
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "policy": status.to_dict(),
    }
    return jsonify(body), 200 if ready else 503


PROBE_TIMEOUT = 2.0
PROBE_CACHE_SECONDS = 15.0
ADVISORY = frozenset({"aws"})
"""Parts reported by /readyz that do not make the worker unready."""
_CACHE = "broker.readiness"


def _database(app: Flask) -> str:
    with app.app_context():
        try:
            revision = current_revision(get_database(app))
        except Exception:  # noqa: BLE001 - any driver error means not ready
            return "unreachable"
    return "ok" if revision else "not migrated: run `broker db upgrade`"


def _cached(app: Flask, name: str, probe: Callable[[Flask], str]) -> str:
    """A probe's answer, asked again only every PROBE_CACHE_SECONDS."""
    cache: dict[str, tuple[float, str]] = app.extensions.setdefault(_CACHE, {})
    now = time.monotonic()
    found = cache.get(name)
    if found is not None and found[0] > now:
        return found[1]
    answer = probe(app)
    cache[name] = (now + PROBE_CACHE_SECONDS, answer)
    return answer


def _identity_provider(app: Flask) -> str:
    issuer = app.config.get("OIDC_ISSUER")
    if not issuer:
        return "ok (no identity provider configured)"
    url = str(issuer).rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=PROBE_TIMEOUT)
        document = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError) as exc:
        return f"unreachable: {type(exc).__name__} at {url}"
    if not isinstance(document, dict):
        return f"unreachable: HTTP {response.status_code} at {url}"
    if str(document.get("issuer", "")).rstrip("/") != str(issuer).rstrip("/"):
        return f"wrong issuer in {url}: {document.get('issuer')!r}"
    return "ok"


def _aws(app: Flask) -> str:
    client = make_client(
        "sts",
        region=app.config["AWS_REGION"],
        endpoint_url=app.config.get("AWS_ENDPOINT_URL"),
        timeout=PROBE_TIMEOUT,
    )
    try:
        arn = client.get_caller_identity()["Arn"]
    except Exception as exc:  # noqa: BLE001 - unreachable, throttled, no credentials: all "not ok"
        return f"unreachable: {type(exc).__name__}"
    return f"ok ({arn})"


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
