"""Wires the services for a Flask app: one set of AWS clients, one GrantService per use."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask, current_app

from broker.auth.identity import ClaimRules
from broker.auth.idtoken import IdTokenValidator
from broker.auth.refresh import ClaimsRefresher, TokenCipher
from broker.aws import make_client
from broker.clock import DatabaseClock
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
    refresher: ClaimsRefresher | None
    cipher: TokenCipher
    clock: DatabaseClock


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
            jwks_refetch_seconds=float(cfg["OIDC_JWKS_REFETCH_SECONDS"]),
            max_age_seconds=int(cfg["OIDC_ID_TOKEN_MAX_AGE_SECONDS"]),
        )
    refresher = None
    if validator is not None:
        refresher = ClaimsRefresher(
            validator, cfg["OIDC_CLIENT_ID"], cfg.get("OIDC_CLIENT_SECRET") or None
        )
    return Services(
        sts=sts,
        iam=iam,
        issuer=StsIssuer(sts, max_attempts=int(cfg.get("STS_MAX_ATTEMPTS", 4))),
        role_limits=RoleLimits(iam),
        id_tokens=validator,
        refresher=refresher,
        cipher=TokenCipher(str(cfg["SECRET_KEY"])),
        clock=DatabaseClock(get_database(app)),
    )


def grant_service(app: Flask | None = None) -> GrantService:
    """A GrantService over the policy in force right now."""
    app = app or current_app
    shared = services(app)
    return GrantService(
        get_database(app),
        get_policy(app),
        shared.issuer,
        shared.role_limits,
        clock=shared.clock,
        claims_max_age=timedelta(seconds=int(app.config["CLAIMS_MAX_AGE_SECONDS"])),
    )


def claim_rules(app: Flask | None = None) -> ClaimRules:
    """What the broker requires of the provider's claims under the policy in force."""
    app = app or current_app
    cfg = app.config
    return ClaimRules(
        groups_claim=str(cfg["OIDC_GROUPS_CLAIM"]),
        require_groups=get_policy(app).loaded.policy.uses_groups,
        email_verified_optional_issuers=tuple(cfg["OIDC_EMAIL_VERIFIED_OPTIONAL_ISSUERS"]),
    )
