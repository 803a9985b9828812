"""Configuration: defaults < instance file < BROKER_* environment < test config.

Everything is read and validated inside `create_app`, never at import. A bad or missing
setting stops startup with a message that names the setting, what it got and what it expects.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from flask import Flask
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.errors import ConfigError

INSTANCE_FILE = "broker.toml"


class Settings(BaseModel):
    """The validated settings the broker runs with (Flask config keys, upper case)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ENV: Literal["production", "development", "testing"] = "production"
    SECRET_KEY: str | None = None
    DATABASE_URL: str = ""
    DB_CONNECT_TIMEOUT_SECONDS: int = Field(default=5, ge=1, le=120)
    DB_STATEMENT_TIMEOUT_SECONDS: int = Field(default=30, ge=1, le=3600)
    DB_LOCK_TIMEOUT_SECONDS: int = Field(default=10, ge=1, le=600)
    POLICY_DIR: str = "policies"
    POLICY_RELOAD_SECONDS: float = Field(default=10.0, gt=0, le=3600)
    BASE_URL: str | None = None
    TRUSTED_PROXIES: tuple[str, ...] = ()
    AWS_REGION: str = "us-east-1"
    # The region engineers' tools get when an entitlement names none (else AWS_REGION).
    DEFAULT_CLIENT_REGION: str | None = Field(
        default=None, pattern=r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$"
    )
    AWS_ENDPOINT_URL: str | None = None
    STS_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=60)
    STS_MAX_ATTEMPTS: int = Field(default=4, ge=1, le=10)
    OIDC_ISSUER: str | None = None
    OIDC_CLIENT_ID: str | None = None
    OIDC_CLIENT_SECRET: str | None = None
    OIDC_GROUPS_CLAIM: str = "groups"
    OIDC_ALLOWED_ALGS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    OIDC_SCOPES: str = "openid email profile groups"
    OIDC_EMAIL_VERIFIED_OPTIONAL_ISSUERS: tuple[str, ...] = ()
    OIDC_JWKS_REFETCH_SECONDS: float = Field(default=60.0, ge=0, le=3600)
    OIDC_ID_TOKEN_MAX_AGE_SECONDS: int = Field(default=3600, ge=60, le=24 * 3600)
    CLAIMS_MAX_AGE_SECONDS: int = Field(default=15 * 60, ge=1, le=12 * 3600)
    API_TOKEN_TTL_SECONDS: int = Field(default=12 * 3600, ge=300, le=7 * 24 * 3600)
    MAX_CONTENT_LENGTH: int = Field(default=64 * 1024, ge=1024, le=10 * 1024 * 1024)
    PENDING_REQUEST_TTL_SECONDS: int = Field(default=24 * 3600, ge=300)
    AUDIT_SIGNING_KEY_FILE: str | None = None
    SCHEDULER_SWEEP_SECONDS: float = Field(default=5.0, gt=0, le=300)
    SCHEDULER_WINDOW_SECONDS: int = Field(default=300, ge=10, le=24 * 3600)
    SCHEDULER_BATCH_SIZE: int = Field(default=200, ge=1, le=5000)
    SCHEDULER_BATCH_PAUSE_SECONDS: float = Field(default=0.01, ge=0, le=5)
    SCHEDULER_LEASE_STALE_SECONDS: int = Field(default=30, ge=2, le=3600)
    SCHEDULER_METRICS_PORT: int | None = Field(default=None, ge=1, le=65535)
    SCHEDULER_METRICS_ADDRESS: str = "127.0.0.1"
    METRICS_TOKEN: str | None = None
    REVOCATION_RETRY_MAX_SECONDS: int = Field(default=300, ge=1, le=3600)
    CHECKPOINT_SECONDS: int = Field(default=300, ge=5, le=24 * 3600)
    FEDERATION_ENDPOINT: str = "https://signin.aws.amazon.com/federation"
    CONSOLE_URL: str = "https://console.aws.amazon.com/"
    LOG_JSON: bool = True
    DEVICE_CODE_TTL_SECONDS: int = Field(default=600, ge=60, le=1800)
    DEVICE_POLL_INTERVAL_SECONDS: int = Field(default=5, ge=1, le=60)
    DEVICE_TOKEN_TTL_SECONDS: int = Field(default=8 * 3600, ge=300, le=7 * 24 * 3600)
    DEVICE_ATTEMPTS_PER_PERSON: int = Field(default=20, ge=1, le=10_000)
    DEVICE_ATTEMPTS_PER_IP: int = Field(default=100, ge=1, le=100_000)
    DEVICE_STARTS_PER_IP: int = Field(default=60, ge=1, le=100_000)
    SESSION_IDLE_SECONDS: int = Field(default=30 * 60, ge=60, le=24 * 3600)
    SESSION_ABSOLUTE_SECONDS: int = Field(default=12 * 3600, ge=300, le=7 * 24 * 3600)
    RATE_LIMIT_SIGNIN_PER_MINUTE: int = Field(default=30, ge=1)
    RATE_LIMIT_ISSUE_PER_MINUTE: int = Field(default=20, ge=1)
    # Watching what credentials do (docs/activity.md): CloudTrail, notifications.
    CLOUDTRAIL_BUCKET: str | None = None
    CLOUDTRAIL_PREFIX: str = ""
    CLOUDTRAIL_ACCOUNTS: tuple[str, ...] = ()
    CLOUDTRAIL_REGION: str | None = None
    CLOUDTRAIL_QUEUE_URL: str | None = None
    CLOUDTRAIL_QUEUE_SECONDS: float = Field(default=2.0, gt=0, le=300)
    CLOUDTRAIL_POLL_SECONDS: float = Field(default=60.0, gt=0, le=3600)
    CLOUDTRAIL_LOOKBACK_MINUTES: int = Field(default=30, ge=0, le=24 * 60)
    CLOUDTRAIL_BACKFILL_HOURS: int = Field(default=24, ge=0, le=90 * 24)
    CLOUDTRAIL_CLAIM_STALE_SECONDS: int = Field(default=600, ge=10, le=24 * 3600)
    CLOUDTRAIL_STORE_RECORDS: bool = False
    NOTIFY_EVENTS: tuple[str, ...] = (
        "approval_requested",
        "request_decided",
        "grant_ending",
        "detection",
        "revocation_failing",
    )
    NOTIFY_WEBHOOK_URL: str | None = None
    NOTIFY_WEBHOOK_SECRET: str | None = None
    NOTIFY_WEBHOOK_FORMAT: Literal["json", "slack"] = "json"
    NOTIFY_EMAILS: tuple[str, ...] = ()
    NOTIFY_SECONDS: float = Field(default=5.0, gt=0, le=300)
    NOTIFY_ENDING_SOON_MINUTES: int = Field(default=15, ge=1, le=24 * 60)
    NOTIFY_MAX_ATTEMPTS: int = Field(default=8, ge=1, le=50)
    NOTIFY_RETRY_MAX_SECONDS: int = Field(default=600, ge=1, le=24 * 3600)
    NOTIFY_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=120)
    SMTP_HOST: str | None = None
    SMTP_PORT: int = Field(default=587, ge=1, le=65535)
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: str | None = None
    SMTP_FROM: str | None = None
    SMTP_STARTTLS: bool = True
    SMTP_CA_FILE: str | None = None

    @field_validator("DATABASE_URL")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("expected a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for item in value:
            try:
                ipaddress.ip_network(str(item), strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an address or CIDR range") from exc
        return value

    @field_validator("OIDC_EMAIL_VERIFIED_OPTIONAL_ISSUERS", mode="before")
    @classmethod
    def _split_issuers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("CLOUDTRAIL_ACCOUNTS", "NOTIFY_EMAILS", "NOTIFY_EVENTS", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("NOTIFY_EVENTS")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = Settings.model_fields["NOTIFY_EVENTS"].default
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"{unknown} are not notification events; known: {', '.join(known)}")
        return value

    @field_validator("OIDC_ALLOWED_ALGS", mode="before")
    @classmethod
    def _split_algs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        bad = [a for a in value if a == "none" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(f"{bad} are not allowed: use asymmetric algorithms only")
        return value


def load_config(app: Flask, test_config: dict[str, Any] | None) -> Settings:
    """Fill `app.config` from every source in order, then validate it."""
    app.config.from_mapping(_defaults(app))
    instance_file = Path(app.instance_path) / INSTANCE_FILE
    if instance_file.exists():
        try:
            data = tomllib.loads(instance_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{instance_file}: not valid TOML: {exc}") from exc
        _refuse_unknown(
            [k.upper() for k in data],
            lambda name: f"{instance_file}: unknown setting {name.lower()!r}",
        )
        app.config.from_mapping({k.upper(): v for k, v in data.items()})
    _refuse_unknown(
        [k.removeprefix("BROKER_") for k in os.environ if k.startswith("BROKER_")],
        lambda name: f"unknown environment variable BROKER_{name}",
        allowed=CLIENT_ENV,
    )
    app.config.from_prefixed_env("BROKER")
    if test_config:
        app.config.from_mapping(test_config)
    settings = validate(app.config)
    if not settings.DATABASE_URL:
        app.config["DATABASE_URL"] = f"sqlite:///{Path(app.instance_path) / 'broker.db'}"
    if settings.SECRET_KEY is None:
        # Dev and test only (validate() refuses this in production): a per-process key.
        app.config["SECRET_KEY"] = os.urandom(32).hex()
    settings = validate(app.config)
    # Every consumer reads the validated, typed values (defaults included) from app.config.
    app.config.update(settings.model_dump())
    return settings


# BROKER_* variables that belong to the engineer's CLI or the test suite, not the server, and
# BROKER_INSTANCE_PATH, which says where the settings file is (read in `create_app`).
CLIENT_ENV = frozenset({"URL", "CONFIG_DIR", "CREDENTIAL_CACHE_FILE", "INSTANCE_PATH"})


def _refuse_unknown(
    names: list[str],
    describe: Callable[[str], str],
    *,
    allowed: frozenset[str] = frozenset(),
) -> None:
    """Stop on a setting nobody reads (a typo would otherwise be ignored), with a suggestion."""
    known = list(Settings.model_fields)
    problems = []
    for name in names:
        if name in Settings.model_fields or name in allowed or name.startswith("TEST_"):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(describe(name) + hint)
    if problems:
        raise ConfigError(
            "; ".join(problems), hint="Settings are listed in README.md (Configuration)."
        )


def instance_folder(explicit: str | None = None) -> str | None:
    """The instance folder to use: `explicit`, else BROKER_INSTANCE_PATH, else None (Flask's
    default for the package)."""
    chosen = explicit or os.environ.get("BROKER_INSTANCE_PATH") or None
    return os.path.abspath(chosen) if chosen else None


def configured_policy_dir(instance_path: str | Path) -> str:
    """BROKER_POLICY_DIR as the server would read it (environment, then the instance file, then
    the default), without validating the rest: policy commands run in CI with no server config."""
    value = os.environ.get("BROKER_POLICY_DIR")
    if value:
        return value
    instance_file = Path(instance_path) / INSTANCE_FILE
    if instance_file.exists():
        try:
            data = tomllib.loads(instance_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{instance_file}: not valid TOML: {exc}") from exc
        for key, found in data.items():
            if key.upper() == "POLICY_DIR":
                return str(found)
    return str(Settings.model_fields["POLICY_DIR"].default)


def _defaults(app: Flask) -> dict[str, Any]:
    return {
        "ENV": "production",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
    }


def validate(config: Any) -> Settings:
    """Validate a Flask config mapping; raise ConfigError naming each bad setting."""
    values = {k: config[k] for k in Settings.model_fields if k in config and config[k] is not None}
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            got = values.get(name, "<missing>")
            problems.append(f"BROKER_{name}: got {got!r}, expected {err['msg'].lower()}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
    _notification_checks(settings)
    if settings.ENV == "production":
        if not settings.SECRET_KEY or len(settings.SECRET_KEY) < 32:
            raise ConfigError(
                "BROKER_SECRET_KEY: got "
                + ("<missing>" if not settings.SECRET_KEY else "a key shorter than 32 characters")
                + ", expected a random string of at least 32 characters in production.",
                hint="Generate one with: python -c 'import secrets; print(secrets.token_hex(32))'",
            )
        _production_checks(settings)
    return settings


def _notification_checks(settings: Settings) -> None:
    """A webhook needs a signing secret (Slack's own URL is its secret); mail needs a sender."""
    url = settings.NOTIFY_WEBHOOK_URL
    if url and not url.startswith(("https://", "http://")):
        raise ConfigError(f"BROKER_NOTIFY_WEBHOOK_URL: got {url!r}, expected an https:// URL.")
    if url and settings.ENV == "production" and not url.startswith("https://"):
        raise ConfigError(
            "BROKER_NOTIFY_WEBHOOK_URL: expected an https:// URL in production (messages name "
            "people, roles and grants)."
        )
    if url and settings.NOTIFY_WEBHOOK_FORMAT == "json" and not settings.NOTIFY_WEBHOOK_SECRET:
        raise ConfigError(
            "BROKER_NOTIFY_WEBHOOK_SECRET: <missing>, expected the key the receiver checks the "
            "X-Broker-Signature header with (HMAC-SHA256).",
            hint="Generate one with: python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    if settings.SMTP_HOST and not settings.SMTP_FROM:
        raise ConfigError(
            "BROKER_SMTP_FROM: <missing>, expected the sender address of notification mail."
        )


def _production_checks(settings: Settings) -> None:
    """What production cannot run without: an https address, and a provider to sign in with."""
    if not settings.BASE_URL or not settings.BASE_URL.startswith("https://"):
        raise ConfigError(
            f"BROKER_BASE_URL: got {settings.BASE_URL or '<missing>'!r}, expected the broker's "
            "public https:// address in production (cookies, redirects and HSTS depend on it, "
            "never on how a request reached the worker).",
            hint="Set BROKER_BASE_URL=https://broker.example.com; behind a load balancer also "
            "set BROKER_TRUSTED_PROXIES.",
        )
    missing = [n for n in ("OIDC_ISSUER", "OIDC_CLIENT_ID") if not getattr(settings, n)]
    if missing:
        raise ConfigError(
            ", ".join(f"BROKER_{n}" for n in missing) + ": <missing>, expected the identity "
            "provider's issuer URL and the broker's client id in production.",
            hint="See docs/deploy.md (identity provider).",
        )
    if not str(settings.OIDC_ISSUER).startswith("https://"):
        raise ConfigError(
            f"BROKER_OIDC_ISSUER: got {settings.OIDC_ISSUER!r}, expected an https:// issuer in "
            "production."
        )
