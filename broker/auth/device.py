"""RFC 8628 device authorization grant, served by the broker for its own public CLI client.

The CLI asks for a device code and a user code, the person approves the user code on the
`/device` page while signed in on the web, and the CLI's poll of the token endpoint then gets a
short-lived broker token carrying a snapshot of that person's claims.

Implemented directly rather than through authlib's `DeviceCodeGrant`: that grant needs an
authlib `AuthorizationServer` with client and token models, while the broker has one fixed public
client, its own opaque tokens (`broker.auth.tokens`), an interval that must grow and persist across
workers (`slow_down`), and audit events written in the same transaction as each state change.

Device codes are `secrets.token_urlsafe(32)` and stored only as SHA-256. User codes use the RFC's
base-20 alphabet (no vowels, so no words) as `XXXX-XXXX`: 20^8 ≈ 2.6e10 values, and entering them
is rate-limited per person and per address (`broker.web.oauth`, counted in the database, so
the limit holds across workers).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from broker.audit import AuditLog, EventContext, NewEvent
from broker.auth import tokens
from broker.auth.identity import auth_context
from broker.db import Database
from broker.errors import AuditUnavailable, ConfigError, NotFound
from broker.grants import Caller, RequestMeta
from broker.models import ApiToken, DeviceAuthorization, Principal, utcnow

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
SLOW_DOWN_STEP = 5  # seconds added to the interval on each too-fast poll (RFC 8628 §3.5)
CLIENTS: Mapping[str, str] = {"broker-cli": "broker CLI"}  # the public clients this broker serves
PENDING, APPROVED, DENIED, CONSUMED = "pending", "approved", "denied", "consumed"


@dataclass(frozen=True)
class DeviceSettings:
    """Lifetimes and limits of the device flow (from `BROKER_DEVICE_*` settings)."""

    code_ttl: timedelta = timedelta(minutes=10)
    interval: int = 5
    token_ttl: timedelta = timedelta(hours=8)
    window_seconds: int = 600
    attempts_per_person: int = 20
    attempts_per_ip: int = 100
    starts_per_ip: int = 60

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DeviceSettings:
        """Read and check the settings; a bad value raises ConfigError naming it."""

        def number(name: str, default: int, low: int, high: int) -> int:
            raw = config.get(name, default)
            try:
                value = int(raw)
            except (TypeError, ValueError):
                value = low - 1
            if not low <= value <= high:
                raise ConfigError(
                    f"BROKER_{name}: got {raw!r}, expected a whole number from {low} to {high}."
                )
            return value

        return cls(
            code_ttl=timedelta(seconds=number("DEVICE_CODE_TTL_SECONDS", 600, 60, 1800)),
            interval=number("DEVICE_POLL_INTERVAL_SECONDS", 5, 1, 60),
            token_ttl=timedelta(
                seconds=number("DEVICE_TOKEN_TTL_SECONDS", 8 * 3600, 300, 7 * 24 * 3600)
            ),
            attempts_per_person=number("DEVICE_ATTEMPTS_PER_PERSON", 20, 1, 10_000),
            attempts_per_ip=number("DEVICE_ATTEMPTS_PER_IP", 100, 1, 100_000),
            starts_per_ip=number("DEVICE_STARTS_PER_IP", 60, 1, 100_000),
        )


class DeviceError(Exception):
    """An RFC 6749 §5.2 / RFC 8628 §3.5 error answer of the token endpoint."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def to_dict(self) -> dict[str, str]:
        """The JSON body: `{error, error_description}`."""
        return {"error": self.error, "error_description": self.description}


class UserCodeError(NotFound):
    """The code a person entered is unknown, expired or already used."""

    code = "invalid_user_code"


@dataclass(frozen=True)
class DeviceStart:
    """What the device authorization endpoint hands the CLI."""

    device_code: str
    user_code: str
    expires_in: int
    interval: int


@dataclass(frozen=True)
class DeviceRequest:
    """What a person sees before approving: who is asking, from where, when."""

    id: str
    user_code: str
    client_id: str
    client_name: str
    status: str
    requester_ip: str | None
    requester_agent: str | None
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class DeviceToken:
    """A successful token answer; the plaintext token exists only here."""

    access_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the token type name, not a secret


def hash_device_code(device_code: str) -> str:
    """The stored form of a device code."""
    return hashlib.sha256(device_code.encode("utf-8")).hexdigest()


def new_user_code() -> str:
    """A random `XXXX-XXXX` code from the base-20 alphabet."""
    raw = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{raw[:4]}-{raw[4:]}"


def normalize_user_code(entered: str) -> str | None:
    """Canonical form of what a person typed (any case, any dashes or spaces), or None."""
    letters = "".join(ch for ch in entered.upper() if ch.isalnum())
    if len(letters) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in letters):
        return None
    return f"{letters[:4]}-{letters[4:]}"


class DeviceFlow:
    """Start, decide and redeem device authorizations; every state change is audited."""

    def __init__(
        self,
        database: Database,
        *,
        settings: DeviceSettings,
        policy_version: str | None,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = database
        self.settings = settings
        self.policy_version = policy_version
        self.audit = audit or AuditLog(clock)
        self.clock = clock

    # -- the CLI's side ---------------------------------------------------------------------

    def start(self, client_id: str, scope: str | None, meta: RequestMeta) -> DeviceStart:
        """Create a pending authorization; raise DeviceError for an unknown client or a flood."""
        if client_id not in CLIENTS:
            raise DeviceError("invalid_client", f"Unknown client {client_id!r}.", status=401)
        now = self.clock()
        for _ in range(5):  # a user-code collision is rare; try again with a fresh one
            device_code = secrets.token_urlsafe(32)
            user_code = new_user_code()
            try:
                with self._tx() as session:
                    session.execute(
                        delete(DeviceAuthorization).where(
                            DeviceAuthorization.expires_at < now - timedelta(days=1)
                        )
                    )
                    row = DeviceAuthorization(
                        device_code_hash=hash_device_code(device_code),
                        user_code=user_code,
                        client_id=client_id,
                        client_name=CLIENTS[client_id],
                        status=PENDING,
                        interval=self.settings.interval,
                        created_at=now,
                        expires_at=now + self.settings.code_ttl,
                        requester_ip=meta.ip,
                        requester_agent=(meta.user_agent or None) and meta.user_agent[:512],
                    )
                    session.add(row)
                    session.flush()
                    self._record(
                        session,
                        f"client:{client_id}",
                        meta,
                        NewEvent(
                            "device.authorize",
                            target=client_id,
                            decision="pending",
                            details={"device_authorization_id": row.id, "scope": scope or ""},
                        ),
                    )
            except IntegrityError:
                continue
            return DeviceStart(
                device_code=device_code,
                user_code=user_code,
                expires_in=int(self.settings.code_ttl.total_seconds()),
                interval=self.settings.interval,
            )
        raise DeviceError("server_error", "Could not allocate a user code; try again.", status=500)

    def poll(self, client_id: str, device_code: str, meta: RequestMeta) -> DeviceToken:
        """Redeem a device code: a token once approved, else the RFC 8628 error for its state."""
        if client_id not in CLIENTS:
            raise DeviceError("invalid_client", f"Unknown client {client_id!r}.", status=401)
        if not device_code:
            raise DeviceError("invalid_request", "The device_code parameter is missing.")
        with self._tx() as session:
            outcome = self._poll(session, client_id, device_code, meta)
        # Raised only after the commit: the poll time and a grown interval must stick.
        if isinstance(outcome, DeviceError):
            raise outcome
        return outcome

    def _poll(
        self, session: Session, client_id: str, device_code: str, meta: RequestMeta
    ) -> DeviceToken | DeviceError:
        now = self.clock()
        row = session.scalar(
            select(DeviceAuthorization)
            .where(DeviceAuthorization.device_code_hash == hash_device_code(device_code))
            .with_for_update()
        )
        if row is None or row.client_id != client_id:
            return DeviceError("invalid_grant", "The device code is not valid.")
        if row.status == CONSUMED:
            return DeviceError("invalid_grant", "The device code was already used.")
        if now >= row.expires_at:
            return DeviceError(
                "expired_token", "The device code expired before it was approved; start again."
            )
        if row.status == DENIED:
            return DeviceError("access_denied", "The request was denied in the browser.")
        last, row.last_polled_at = row.last_polled_at, now
        if row.status == PENDING:
            if last is not None and now - last < timedelta(seconds=row.interval):
                row.interval += SLOW_DOWN_STEP
                return DeviceError(
                    "slow_down", f"Polling too fast; wait {row.interval} seconds between polls."
                )
            return DeviceError("authorization_pending", "Waiting for the person to approve.")
        principal = session.get(Principal, row.principal_id) if row.principal_id else None
        if principal is None or principal.disabled:
            row.status = DENIED
            self._record(
                session,
                principal.email if principal else "unknown",
                meta,
                NewEvent(
                    "device.token",
                    target=row.client_id,
                    decision="deny",
                    reason="the approving person has been cut off",
                    details={"device_authorization_id": row.id},
                ),
            )
            return DeviceError("access_denied", "This person's broker access has been cut off.")
        plaintext, token = tokens.mint(
            session,
            principal,
            name=f"{row.client_name or row.client_id} ({row.requester_ip or 'unknown address'})",
            kind="device",
            ttl=self.settings.token_ttl,
            now=now,
            claims=dict(row.claims or {}),
        )
        row.status = CONSUMED
        self._record(
            session,
            principal.email,
            meta,
            NewEvent(
                "device.token",
                target=row.client_id,
                decision="allow",
                details={
                    "device_authorization_id": row.id,
                    "token_id": token.id,
                    "expires_at": token.expires_at.isoformat(),
                },
            ),
        )
        return DeviceToken(plaintext, int(self.settings.token_ttl.total_seconds()))

    def revoke(self, client_id: str, plaintext: str, meta: RequestMeta) -> None:
        """RFC 7009: revoke a device token its holder presents; silent when unknown."""
        if client_id not in CLIENTS:
            raise DeviceError("invalid_client", f"Unknown client {client_id!r}.", status=401)
        now = self.clock()
        with self._tx() as session:
            row = session.scalar(
                select(ApiToken)
                .where(ApiToken.token_hash == tokens.hash_token(plaintext))
                .with_for_update()
            )
            if row is None or row.kind != "device" or row.revoked_at is not None:
                return
            row.revoked_at = now
            principal = session.get(Principal, row.principal_id)
            self._record(
                session,
                principal.email if principal else "unknown",
                meta,
                NewEvent(
                    "device.token.revoke",
                    target=client_id,
                    decision="revoke",
                    reason="signed out with the CLI",
                    details={"token_id": row.id},
                ),
            )

    # -- the person's side ------------------------------------------------------------------

    def lookup(self, entered: str, caller: Caller, meta: RequestMeta) -> DeviceRequest:
        """Find a pending request by user code (rate-limited); raise UserCodeError if none."""
        with self._attempt(entered, caller, meta) as (session, row):
            return _view(row)

    def approve(self, entered: str, caller: Caller, meta: RequestMeta) -> DeviceRequest:
        """Approve a pending request as the signed-in person; how they signed in (amr/acr) goes
        into the token, their attributes stay on their principal row (refreshed when stale)."""
        with self._attempt(entered, caller, meta) as (session, row):
            row.status = APPROVED
            row.principal_id = caller.principal_id
            identity = caller.person.identity
            row.claims = auth_context({"amr": list(identity.amr), "acr": identity.acr})
            row.decided_at = self.clock()
            self._record_decision(session, caller, meta, row, "device.approve", "allow")
            return _view(row)

    def deny(self, entered: str, caller: Caller, meta: RequestMeta) -> DeviceRequest:
        """Deny a pending request; the CLI's next poll gets access_denied."""
        with self._attempt(entered, caller, meta) as (session, row):
            row.status = DENIED
            row.principal_id = caller.principal_id
            row.decided_at = self.clock()
            self._record_decision(session, caller, meta, row, "device.deny", "deny")
            return _view(row)

    @contextmanager
    def _attempt(
        self, entered: str, caller: Caller, meta: RequestMeta
    ) -> Iterator[tuple[Session, DeviceAuthorization]]:
        now = self.clock()
        user_code = normalize_user_code(entered)
        if user_code is None:
            raise UserCodeError(
                "That is not a broker code: codes look like BCDF-GHJK.",
                hint="Check the code your terminal shows.",
            )
        with self._tx() as session:
            row = session.scalar(
                select(DeviceAuthorization)
                .where(DeviceAuthorization.user_code == user_code)
                .with_for_update()
            )
            if row is None or row.status != PENDING or now >= row.expires_at:
                raise UserCodeError(
                    "No sign-in request is waiting for that code (it may have expired or been "
                    "used already).",
                    hint="Run `broker login` again and enter the new code.",
                )
            yield session, row

    # -- internals --------------------------------------------------------------------------

    def _record_decision(
        self,
        session: Session,
        caller: Caller,
        meta: RequestMeta,
        row: DeviceAuthorization,
        action: str,
        decision: str,
    ) -> None:
        self._record(
            session,
            caller.email,
            meta,
            NewEvent(
                action,
                target=row.client_id,
                decision=decision,
                details={
                    "device_authorization_id": row.id,
                    "requester_ip": row.requester_ip or "",
                    "requester_agent": row.requester_agent or "",
                },
            ),
        )

    def _record(self, session: Session, actor: str, meta: RequestMeta, event: NewEvent) -> None:
        context = EventContext(
            actor=actor,
            ip=meta.ip,
            user_agent=meta.user_agent,
            client=meta.client,
            policy_version=self.policy_version,
        )
        self.audit.append(session, context, event)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A transaction; a database failure means nothing happened (fail closed)."""
        try:
            with self.db.session() as session:
                yield session
        except SQLAlchemyError as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise AuditUnavailable(
                "The broker could not record this, so nothing was done.",
                hint="Try again shortly; if it persists, tell the platform team.",
            ) from exc


def _view(row: DeviceAuthorization) -> DeviceRequest:
    return DeviceRequest(
        id=row.id,
        user_code=row.user_code,
        client_id=row.client_id,
        client_name=row.client_name or row.client_id,
        status=row.status,
        requester_ip=row.requester_ip,
        requester_agent=row.requester_agent,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )
