"""Wires the services for a Flask app: one set of AWS clients, one GrantService per use."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from broker.auth.idtoken import IdTokenValidator
from broker.aws import make_client
from broker.db import get_database
from broker.grants import GrantService
from broker.policy_store import get_policy
from broker.sts import RoleLimits, StsIssuer

EXTENSION = "broker.services"


@dataclass
class Services:
    """Long-lived collaborators shared by requests (boto3 clients are thread-safe)."""

    sts: Any
    iam: Any
    issuer: StsIssuer
    role_limits: RoleLimits
    id_tokens: IdTokenValidator | None


_lock = threading.Lock()


def services(app: Flask | None = None) -> Services:
    """The app's shared services, built on first use (never at import or in create_app)."""
    app = app or current_app
    found: Services | None = app.extensions.get(EXTENSION)
    if found is not None:
        return found
    with _lock:
        found = app.extensions.get(EXTENSION)
        if found is None:
            found = _build(app)
            app.extensions[EXTENSION] = found
    return found


def _build(app: Flask) -> Services:
    cfg = app.config
    common = {
        "region": cfg["AWS_REGION"],
        "endpoint_url": cfg.get("AWS_ENDPOINT_URL"),
        "timeout": float(cfg.get("STS_TIMEOUT_SECONDS", 10.0)),
    }
    sts = make_client("sts", **common)
    iam = make_client("iam", **common)
    validator = None
    if cfg.get("OIDC_ISSUER") and cfg.get("OIDC_CLIENT_ID"):
        validator = IdTokenValidator(
            cfg["OIDC_ISSUER"],
            cfg["OIDC_CLIENT_ID"],
            allowed_algs=tuple(cfg.get("OIDC_ALLOWED_ALGS") or ("RS256", "ES256")),
        )
    return Services(
        sts=sts,
        iam=iam,
        issuer=StsIssuer(sts, max_attempts=int(cfg.get("STS_MAX_ATTEMPTS", 4))),
        role_limits=RoleLimits(iam),
        id_tokens=validator,
    )


def grant_service(app: Flask | None = None) -> GrantService:
    """A GrantService over the policy in force right now."""
    app = app or current_app
    shared = services(app)
    return GrantService(get_database(app), get_policy(app), shared.issuer, shared.role_limits)
