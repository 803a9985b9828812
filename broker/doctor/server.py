"""The broker's own side: policy, database and identity provider, each checked from settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import requests
from alembic.script import ScriptDirectory
from joserfc.jwk import KeySet
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from broker.auth.idtoken import IdTokenValidator
from broker.db import Database
from broker.doctor import Check
from broker.errors import BrokerError
from broker.iam_setup import target_roles
from broker.migrate import alembic_config, current_revision
from broker.policy import LoadedPolicy

HttpGet = Callable[[str], Any]
HTTP_TIMEOUT = 5.0
# Key types that can carry each family of signing algorithms.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def http_get_json(url: str) -> Any:
    """GET a JSON document with a short timeout (doctor should answer in seconds)."""
    response = requests.get(url, timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    return response.json()


def check_policy(loaded: LoadedPolicy) -> list[Check]:
    """The policy in force: how much it holds, and its warnings."""
    roles = target_roles(loaded.policy)
    count = len(loaded.policy.entitlements)
    where = f"from {loaded.source_dir} (version {loaded.version_hash[:12]})"
    if not count:
        return [
            Check(
                "policy",
                "warn",
                f"no entitlements {where}: nobody can get credentials",
                fix="Add entitlements (docs/policy.md); `broker policy check` validates them.",
            )
        ]
    checks = [Check("policy", "ok", f"{count} entitlements on {len(roles)} roles {where}")]
    if loaded.warnings:
        shown = "; ".join(str(w) for w in loaded.warnings[:5])
        more = f" (and {len(loaded.warnings) - 5} more)" if len(loaded.warnings) > 5 else ""
        checks.append(
            Check(
                "policy",
                "warn",
                f"{len(loaded.warnings)} warnings: {shown}{more}",
                fix=f"`broker policy check {loaded.source_dir}` shows each with its file and line.",
            )
        )
    return checks


def check_database(database: Database, *, production: bool) -> Check:
    """Reachable, and migrated to the head revision this broker knows."""
    shown = make_url(database.url).render_as_string(hide_password=True)
    try:
        current = current_revision(database)
    except SQLAlchemyError as exc:
        return Check(
            "database",
            "fail",
            f"cannot reach {shown}: {str(exc).splitlines()[0]}",
            fix="Check BROKER_DATABASE_URL and that the database accepts connections from here.",
        )
    script = ScriptDirectory.from_config(alembic_config(database))
    heads = script.get_heads()
    if current is None:
        return Check(
            "database",
            "fail",
            f"{shown} was never migrated",
            fix="broker db upgrade",
        )
    if current not in heads:
        try:
            known = script.get_revision(current) is not None
        except Exception:  # alembic raises its own errors for unknown revisions
            known = False
        if not known:
            return Check(
                "database",
                "fail",
                f"{shown} is at revision {current}, which this broker does not know (migrated "
                "by a newer version?)",
                fix="Run the broker version that migrated it, or restore a matching backup.",
            )
        return Check(
            "database",
            "fail",
            f"{shown} is at revision {current}, head is {', '.join(heads)}",
            fix="broker db upgrade",
        )
    if production and database.dialect == "sqlite":
        return Check(
            "database",
            "warn",
            f"{shown} is SQLite (at head {current}): one host and one scheduler only",
            fix="Use PostgreSQL in production: BROKER_DATABASE_URL=postgresql+psycopg://...",
        )
    return Check("database", "ok", f"{database.dialect} reachable, at head revision {current}")


def check_identity_provider(
    issuer: str | None,
    client_id: str | None,
    *,
    client_secret: str | None,
    allowed_algs: Sequence[str],
    http_get: HttpGet = http_get_json,
) -> list[Check]:
    """Discovery document, endpoints and signing keys of the configured OpenID provider."""
    if not issuer or not client_id:
        return [
            Check(
                "identity provider",
                "warn",
                "none configured: nobody can sign in on the web or with `broker login`",
                fix="Set BROKER_OIDC_ISSUER and BROKER_OIDC_CLIENT_ID (docs/deploy.md).",
            )
        ]
    validator = IdTokenValidator(issuer, client_id, allowed_algs=allowed_algs, http_get=http_get)
    try:
        metadata = validator.metadata()
    except BrokerError as exc:
        return [
            Check(
                "identity provider",
                "fail",
                exc.message,
                fix=f"Check BROKER_OIDC_ISSUER: {validator.issuer}/.well-known/"
                "openid-configuration must answer from this host and name that issuer.",
            )
        ]
    checks = [_discovery_check(metadata, client_secret, allowed_algs)]
    checks.append(_keys_check(str(metadata.get("jwks_uri", "")), allowed_algs, http_get))
    return checks


def _discovery_check(
    metadata: dict[str, Any], client_secret: str | None, allowed_algs: Sequence[str]
) -> Check:
    missing = [
        k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not metadata.get(k)
    ]
    if missing:
        return Check(
            "identity provider",
            "fail",
            f"the discovery document has no {', '.join(missing)}",
            fix="Point BROKER_OIDC_ISSUER at the provider's OpenID Connect issuer.",
        )
    pkce = metadata.get("code_challenge_methods_supported")
    if pkce is not None and "S256" not in pkce:
        return Check(
            "identity provider",
            "fail",
            f"the provider does not offer PKCE S256 (it lists {pkce}); the broker requires it",
            fix="Enable PKCE (S256) for the broker's client in the provider.",
        )
    signing = metadata.get("id_token_signing_alg_values_supported")
    if signing is not None and not set(signing) & set(allowed_algs):
        return Check(
            "identity provider",
            "fail",
            f"the provider signs ID tokens with {signing}; BROKER_OIDC_ALLOWED_ALGS allows "
            f"{list(allowed_algs)}",
            fix="Set BROKER_OIDC_ALLOWED_ALGS to an asymmetric algorithm the provider uses "
            "(RS256, PS256, ES256 or EdDSA).",
        )
    method = "client_secret_basic" if client_secret else "none"
    methods = metadata.get("token_endpoint_auth_methods_supported")
    if methods is not None and method not in methods:
        return Check(
            "identity provider",
            "warn",
            f"the broker authenticates at the token endpoint with {method}; the provider "
            f"lists {methods}",
            fix=f"Register the broker's client with token endpoint authentication {method}"
            + ("" if client_secret else ", or set BROKER_OIDC_CLIENT_SECRET")
            + ".",
        )
    return Check(
        "identity provider",
        "ok",
        f"discovery for {metadata.get('issuer')}: authorization, token and key endpoints; "
        f"client authentication {method}",
    )


def _keys_check(jwks_uri: str, allowed_algs: Sequence[str], http_get: HttpGet) -> Check:
    try:
        document = http_get(jwks_uri)
        KeySet.import_key_set(document)
    except Exception as exc:  # anything from the network or a malformed key set
        return Check(
            "identity provider keys",
            "fail",
            f"cannot load the signing keys from {jwks_uri}: {exc}",
            fix="Check that the host running the broker reaches the provider's jwks_uri.",
        )
    usable = [k for k in document.get("keys", []) if _usable(k, allowed_algs)]
    if not usable:
        return Check(
            "identity provider keys",
            "fail",
            f"none of the keys at {jwks_uri} can verify {list(allowed_algs)} signatures",
            fix="Set BROKER_OIDC_ALLOWED_ALGS to the algorithm of the provider's signing keys.",
        )
    kinds = sorted({str(k.get("alg") or k.get("kty")) for k in usable})
    return Check("identity provider keys", "ok", f"{len(usable)} signing keys ({', '.join(kinds)})")


def _usable(key: dict[str, Any], allowed_algs: Sequence[str]) -> bool:
    if key.get("use", "sig") != "sig":
        return False
    if key.get("alg"):
        return key["alg"] in allowed_algs
    return key.get("kty") in {_KEY_TYPES.get(alg[:2]) for alg in allowed_algs}
