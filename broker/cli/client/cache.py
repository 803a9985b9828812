"""Reusing issued credentials across `credential-process` runs, with one refresh at a time.

Where entries are kept, in order of preference:

- the file named with `--cache-file` (one JSON file, mode 0600, written atomically under a lock);
- else the OS keyring, when a real one is usable;
- else one file per entry in `<config dir>/credential-cache/` (directory 0700, files 0600,
  written atomically): the protection `~/.aws/credentials` and the AWS CLI's own
  `~/.aws/cli/cache` get. Not encrypted: the key would have to sit beside the file, readable by
  the same user, which would only look safer;
- with `--no-cache`, nowhere.

Entries are keyed by broker URL, a fingerprint of the sign-in token (a new `broker login`
never reuses another sign-in's credentials), entitlement and requested duration.

Refreshing is single-flight: `reuse_or_issue` takes a per-entry lock before issuing and looks
again once it holds it, so 20 `aws` calls started together mint one session, not 20.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from broker.cli.client.awsfiles import locked
from broker.cli.client.locking import file_lock
from broker.cli.client.store import write_private

REFRESH_BEFORE = timedelta(minutes=5)
# AWS SDKs (botocore: 15 min advisory, 10 min mandatory) refresh process credentials ahead of
# expiry; handing them the same credentials again then would make every API call re-run
# credential-process. So long-lived credentials stop being reused when the SDKs start asking.
SDK_REFRESH_WINDOW = timedelta(minutes=15)
KEYRING_SERVICE = "broker-credentials"
CACHE_DIR = "credential-cache"


@dataclass(frozen=True)
class AwsCredentials:
    """One set of temporary AWS credentials (and, when known, when we got them)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    issued_at: datetime | None = None

    def __repr__(self) -> str:
        return f"AwsCredentials({self.access_key_id}, expires {rfc3339(self.expiration)})"

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> AwsCredentials:
        """From the `credentials` object of POST /api/v1/credentials (or a cache entry)."""
        issued = body.get("IssuedAt")
        return cls(
            access_key_id=str(body["AccessKeyId"]),
            secret_access_key=str(body["SecretAccessKey"]),
            session_token=str(body["SessionToken"]),
            expiration=parse_time(str(body["Expiration"])),
            issued_at=parse_time(issued) if isinstance(issued, str) else None,
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

    def refresh_margin(self) -> timedelta:
        """How long before expiry reuse stops: 15 min, a third of a short lifetime, ≥ 5 min."""
        if self.issued_at is None:
            return REFRESH_BEFORE
        third = (self.expiration - self.issued_at) / 3
        return max(REFRESH_BEFORE, min(SDK_REFRESH_WINDOW, third))

    def fresh(self, now: datetime) -> bool:
        """Worth handing out again: more than `refresh_margin()` left."""
        return self.expiration - now > self.refresh_margin()


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


def _entry_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _dump(credentials: AwsCredentials) -> dict[str, Any]:
    entry = credentials.to_process_json()
    if credentials.issued_at is not None:
        entry["IssuedAt"] = rfc3339(credentials.issued_at)
    return entry


def _load(data: Any) -> AwsCredentials | None:
    try:
        return AwsCredentials.from_api(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


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
    """Entries in one JSON file the person named (mode 0600, atomic, locked)."""

    def __init__(self, path: Path, clock: Callable[[], datetime] | None = None) -> None:
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
            entries = {
                k: v
                for k, v in self._read().items()
                if (c := _load(v)) is not None and c.expiration > now
            }
            entries[key] = _dump(credentials)
            write_private(self.path, json.dumps(entries, indent=2) + "\n")


class DirectoryCache:
    """One file per entry in a private directory (0700; files 0600, written atomically)."""

    def __init__(self, directory: Path, clock: Callable[[], datetime] | None = None) -> None:
        self.directory = directory
        self.clock = clock or (lambda: datetime.now(UTC))

    def _path(self, key: str) -> Path:
        return self.directory / f"{_entry_name(key)}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> AwsCredentials | None:
        """The entry for `key`, or None."""
        entry = self._read(self._path(key))
        return _load(entry.get("credentials")) if entry.get("key") == key else None

    def put(self, key: str, credentials: AwsCredentials) -> None:
        """Store the entry, and delete entries that have expired."""
        entry = {"key": key, "credentials": _dump(credentials)}
        write_private(self._path(key), json.dumps(entry, indent=2) + "\n")
        self.prune(lambda _key, found: found.expiration <= self.clock())

    def forget_broker(self, url: str) -> None:
        """Delete every entry issued through `url` (on `broker logout`)."""
        self.prune(lambda key, _found: key.startswith(f"{url}|"))

    def prune(self, doomed: Callable[[str, AwsCredentials], bool]) -> None:
        """Delete the entries `doomed` picks (and unreadable ones); best effort."""
        try:
            paths = list(self.directory.glob("*.json"))
        except OSError:
            return
        for path in paths:
            entry = self._read(path)
            found = _load(entry.get("credentials"))
            key = entry.get("key")
            if found is None or not isinstance(key, str) or doomed(key, found):
                with contextlib.suppress(OSError):
                    path.unlink()


def lock_path(directory: Path, url: str, entitlement: str, duration: str | None) -> Path:
    """The lock that serializes refreshes of one entitlement (the same file across sign-ins)."""
    name = _entry_name("|".join((url, entitlement, duration or "")))
    return directory / f"{name}.lock"


def reuse_or_issue(
    cache: CredentialCache,
    key: str,
    *,
    lock: Path,
    clock: Callable[[], datetime],
    issue: Callable[[], AwsCredentials],
) -> tuple[AwsCredentials, bool]:
    """Cached credentials while fresh, else issue once under `lock`; (credentials, reused).

    Callers that waited on the lock find the credentials the holder just issued and reuse them.
    """
    cached = cache.get(key)
    if cached is not None and cached.fresh(clock()):
        return cached, True
    with file_lock(lock):
        cached = cache.get(key)
        if cached is not None and cached.fresh(clock()):
            return cached, True
        credentials = issue()
        cache.put(key, credentials)
        return credentials, False
