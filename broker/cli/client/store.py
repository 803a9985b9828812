"""Where the CLI keeps its sign-in: the broker URL in a config file, the token in the OS keyring.

The config directory is `$BROKER_CONFIG_DIR` when set, else the platform's user config
directory (`$XDG_CONFIG_HOME/broker` on Linux). The token goes to the OS keyring when one is
usable; when none is (headless Linux, containers, the fail/null backends) it goes to
`token.json` in that directory, mode 0600. Nothing here is read at import time.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG_DIR_ENV = "BROKER_CONFIG_DIR"
KEYRING_SERVICE = "broker"
CONFIG_FILE = "config.json"
TOKEN_FILE = "token.json"  # noqa: S105 - a file name


def config_dir() -> Path:
    """The CLI's configuration directory (not created here)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("broker", appauthor=False))


def usable_keyring() -> Any | None:
    """The OS keyring backend, or None when there is no real one (fail/null backends)."""
    try:
        import keyring
        from keyring.backends import fail, null

        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - any import or D-Bus trouble means "no keyring"
        return None
    if isinstance(backend, fail.Keyring | null.Keyring):
        return None
    if getattr(backend, "priority", 1) <= 0:
        return None
    return backend


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file + rename), mode 0600, dir 0700 if new."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` (mode 0700) when it does not exist; leave an existing one alone."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)


@dataclass(frozen=True)
class SignIn:
    """What `broker login` remembered: which broker, as whom, until when, and the token."""

    url: str
    token: str
    email: str | None
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        """True once the token's lifetime (as the broker told us) is over."""
        return self.expires_at is not None and now >= self.expires_at


class Store:
    """The CLI's saved state in `directory`, with the token in `keyring` when one is given."""

    def __init__(self, directory: Path, keyring: Any | None) -> None:
        self.directory = directory
        self.keyring = keyring

    @classmethod
    def default(cls) -> Store:
        """The store for this user: the config directory and the OS keyring if usable."""
        return cls(config_dir(), usable_keyring())

    def settings(self) -> dict[str, Any]:
        """The saved non-secret settings (empty when none)."""
        path = self.directory / CONFIG_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def saved_url(self) -> str | None:
        """The broker URL of the last `broker login`."""
        url = self.settings().get("url")
        return url if isinstance(url, str) and url else None

    def save(self, url: str, token: str, *, email: str | None, expires_at: datetime) -> str:
        """Remember a sign-in; return where the token went ("the OS keyring" or a file path)."""
        where = self._save_token(url, token)
        settings = self.settings()
        settings.update(
            url=url,
            email=email,
            expires_at=expires_at.astimezone(UTC).isoformat(),
            token_store="keyring" if where == "keyring" else "file",
        )
        write_private(self.directory / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
        return "the OS keyring" if where == "keyring" else str(self.directory / TOKEN_FILE)

    def sign_in(self, url: str) -> SignIn | None:
        """The saved sign-in for `url`, or None."""
        settings = self.settings()
        token = self._load_token(url)
        if token is None:
            return None
        same = settings.get("url") == url
        expires = settings.get("expires_at") if same else None
        return SignIn(
            url=url,
            token=token,
            email=settings.get("email") if same else None,
            expires_at=datetime.fromisoformat(expires) if isinstance(expires, str) else None,
        )

    def forget(self, url: str) -> None:
        """Delete the token for `url` (keyring and file) and its expiry."""
        if self.keyring is not None:
            try:
                self.keyring.delete_password(KEYRING_SERVICE, url)
            except Exception:  # noqa: BLE001,S110 - nothing to delete
                pass
        tokens = self._token_file()
        if url in tokens:
            del tokens[url]
            if tokens:
                write_private(self.directory / TOKEN_FILE, json.dumps(tokens, indent=2) + "\n")
            else:
                (self.directory / TOKEN_FILE).unlink(missing_ok=True)
        settings = self.settings()
        if settings.get("url") == url and "expires_at" in settings:
            settings.pop("expires_at", None)
            settings.pop("email", None)
            write_private(self.directory / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")

    # -- token storage ------------------------------------------------------------------------

    def _save_token(self, url: str, token: str) -> str:
        if self.keyring is not None:
            try:
                self.keyring.set_password(KEYRING_SERVICE, url, token)
                self._drop_file_token(url)
                return "keyring"
            except Exception:  # noqa: BLE001,S110 - a locked or broken keyring: use the file
                pass
        tokens = self._token_file()
        tokens[url] = token
        write_private(self.directory / TOKEN_FILE, json.dumps(tokens, indent=2) + "\n")
        return "file"

    def _load_token(self, url: str) -> str | None:
        if self.keyring is not None:
            try:
                found = self.keyring.get_password(KEYRING_SERVICE, url)
            except Exception:  # noqa: BLE001 - keyring trouble: try the file
                found = None
            if isinstance(found, str) and found:
                return found
        token = self._token_file().get(url)
        return token if isinstance(token, str) and token else None

    def _drop_file_token(self, url: str) -> None:
        tokens = self._token_file()
        if url in tokens:
            del tokens[url]
            write_private(self.directory / TOKEN_FILE, json.dumps(tokens, indent=2) + "\n")

    def _token_file(self) -> dict[str, Any]:
        try:
            data = json.loads((self.directory / TOKEN_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
