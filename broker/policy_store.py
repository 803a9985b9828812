"""The policy in force: loaded fail-closed at startup, reloadable, last good kept on error."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, current_app

from broker.errors import ConfigError
from broker.policy import Evaluator, LoadedPolicy, PolicyLoadError, load_policy_dir

EXTENSION = "broker.policy"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicySnapshot:
    """A loaded policy and its evaluator, swapped atomically on reload."""

    loaded: LoadedPolicy
    evaluator: Evaluator

    @property
    def version(self) -> str:
        """The policy version hash recorded with every decision."""
        return self.loaded.version_hash


class PolicyStore:
    """Holds the current policy snapshot; `reload` keeps the last good one on error."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._snapshot = self._load()

    def _load(self) -> PolicySnapshot:
        loaded = load_policy_dir(self.directory)
        for warning in loaded.warnings:
            log.warning("policy warning: %s", warning)
        return PolicySnapshot(loaded, loaded.evaluator)

    @property
    def current(self) -> PolicySnapshot:
        """The snapshot in force."""
        return self._snapshot

    def reload(self) -> PolicySnapshot:
        """Load the directory again; raise PolicyLoadError (and keep the old one) if it is bad."""
        snapshot = self._load()
        with self._lock:
            self._snapshot = snapshot
        return snapshot


def init_app(app: Flask) -> None:
    """Load the policy directory or stop startup with every error, file and line."""
    directory = Path(app.config["POLICY_DIR"])
    try:
        app.extensions[EXTENSION] = PolicyStore(directory)
    except PolicyLoadError as exc:
        raise ConfigError(
            f"BROKER_POLICY_DIR: the policy in {directory} is not valid:\n{exc}",
            hint="Fix the files listed above; `broker policy check` shows the same errors.",
        ) from exc


def get_policy(app: Flask | None = None) -> PolicySnapshot:
    """The policy snapshot in force for this app."""
    store: PolicyStore = (app or current_app).extensions[EXTENSION]
    return store.current
