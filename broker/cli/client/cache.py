"""Reusing issued credentials across `credential-process` runs until 5 minutes before expiry.

Where they are kept, in order of preference:

- a file the person named with `--cache-file` (opt-in: it holds secrets in plain text, mode
  0600, written atomically under a lock);
- else the OS keyring, when a real one is usable;
- else nowhere: each run asks the broker for fresh credentials (and is audited as such).

Entries are keyed by broker URL, a fingerprint of the sign-in token (a new `broker login`
never reuses another sign-in's credentials), entitlement and requested duration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from broker.cli.client.awsfiles import locked
from broker.cli.client.store import write_private

REFRESH_BEFORE = timedelta(minutes=5)
KEYRING_SERVICE = "broker-credentials"


@dataclass(frozen=True)
class AwsCredentials:
    """One set of temporary AWS credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> AwsCredentials:
        """From the `credentials` object of POST /api/v1/credentials."""
        return cls(
            access_key_id=str(body["AccessKeyId"]),
            secret_access_key=str(body["SecretAccessKey"]),
            session_token=str(body["SessionToken"]),
            expiration=parse_time(str(body["Expiration"])),
        )

    def to_process_json(self) -> dict[str, Any]:
        """The `credential_process` Version 1 document."""
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": rfc3339(self.expiration),
        }

    def fresh(self, now: datetime) -> bool:
        """Usable for at least REFRESH_BEFORE more."""
        return self.expiration - now > REFRESH_BEFORE


def parse_time(value: str) -> datetime:
    """An RFC 3339 time (with `Z` or an offset) as an aware UTC datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def rfc3339(when: datetime) -> str:
    """`2030-01-02T03:04:05Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cache_key(url: str, token: str, entitlement: str, duration: str | None) -> str:
    """Which cache entry serves this request."""
    fingerprint = hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    return f"{url}|{fingerprint}|{entitlement}|{duration or ''}"


class CredentialCache(Protocol):
    """Somewhere to keep credentials between runs."""

    def get(self, key: str) -> AwsCredentials | None:
        """The entry for `key`, or None."""

    def put(self, key: str, credentials: AwsCredentials) -> None:
        """Keep `credentials` under `key`."""


class NoCache:
    """Keeps nothing: every run gets fresh credentials."""

    def get(self, key: str) -> AwsCredentials | None:
        """Always None."""
        return None

    def put(self, key: str, credentials: AwsCredentials) -> None:
        """Forget at once."""


def _dump(credentials: AwsCredentials) -> dict[str, Any]:
    return credentials.to_process_json()


def _load(data: Any) -> AwsCredentials | None:
    try:
        return AwsCredentials.from_api(data)
    except (KeyError, TypeError, ValueError):
        return None


class KeyringCache:
    """Entries in the OS keyring (one item per key)."""

    def __init__(self, keyring: Any) -> None:
        self.keyring = keyring

    def get(self, key: str) -> AwsCredentials | None:
        """The entry for `key`, or None (also on any keyring trouble)."""
        try:
            raw = self.keyring.get_password(KEYRING_SERVICE, key)
            return _load(json.loads(raw)) if raw else None
        except Exception:  # noqa: BLE001 - a cache miss, never a failure
            return None

    def put(self, key: str, credentials: AwsCredentials) -> None:
        """Store the entry; keyring trouble only costs the reuse."""
        try:
            self.keyring.set_password(KEYRING_SERVICE, key, json.dumps(_dump(credentials)))
        except Exception:  # noqa: BLE001,S110 - best effort by design
            pass


class FileCache:
    """Entries in one JSON file the person opted into (mode 0600, atomic, locked)."""

    def __init__(self, path: Path, clock: Any = None) -> None:
        self.path = path.expanduser()
        self.clock = clock or (lambda: datetime.now(UTC))

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> AwsCredentials | None:
        """The entry for `key`, or None."""
        return _load(self._read().get(key))

    def put(self, key: str, credentials: AwsCredentials) -> None:
        """Store the entry and drop expired ones."""
        now = self.clock()
        with locked(self.path):
            entries = self._read()
            entries = {
                k: v
                for k, v in entries.items()
                if (c := _load(v)) is not None and c.expiration > now
            }
            entries[key] = _dump(credentials)
            write_private(self.path, json.dumps(entries, indent=2) + "\n")
