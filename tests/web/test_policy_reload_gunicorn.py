"""Real gunicorn: workers pick up policy changes, and workers restarted (HUP to the master)
while the files are bad boot on the last good policy instead of taking the web tier down."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from reloadbed import (
    BAD_POLICY,
    children,
    events,
    free_port,
    mint_token,
    policy_text,
    recorded_versions,
    start_gunicorn,
    wait_seconds,
    write_policy,
)

from broker.db import Database

INTERVAL = 0.5
"""POLICY_RELOAD_SECONDS of the workers."""
WORKERS = 2


class Server:
    """A gunicorn master on a loopback port, asked over fresh connections (any worker answers)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, token: str) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def get(self, path: str, **headers: str) -> requests.Response:
        return requests.get(
            self.base + path, headers={"Connection": "close", **headers}, timeout=10
        )

    def readyz(self) -> dict[str, Any]:
        response = self.get("/readyz")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def served(self) -> list[str]:
        response = self.get("/api/v1/entitlements", Authorization=f"Bearer {self.token}")
        assert response.status_code == 200, response.text
        return sorted(e["id"] for e in response.json()["entitlements"])

    def all_serve(self, entitlements: list[str], in_force: str, rounds: int = 12) -> bool:
        """Whether every answer of a run of requests (spread over the workers) agrees."""
        return all(
            self.served() == entitlements and self.readyz()["policy"]["in_force"] == in_force
            for _ in range(rounds)
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pids(events_: list[Any]) -> set[int]:
    return {int(e.details["process"].rsplit(":", 1)[1]) for e in events_}


@pytest.mark.slow
def test_workers_restarted_while_the_files_are_bad_serve_the_last_good_policy(
    database: Database, tmp_path: Path
) -> None:
    policy_dir = tmp_path / "policies"
    first = write_policy(policy_dir, policy_text("app-read"))
    token = mint_token(database, policy_dir)
    port = free_port()
    settings = {
        "ENV": "testing",
        "DATABASE_URL": database.url,
        "POLICY_DIR": str(policy_dir),
        "POLICY_RELOAD_SECONDS": INTERVAL,
    }
    log = tmp_path / "gunicorn.log"
    server = Server(start_gunicorn(settings, port, log, workers=WORKERS), port, token)
    try:
        wait_seconds(lambda: _answers(server), timeout=60, interval=0.2)
        assert server.all_serve(["app-read"], first)
        assert recorded_versions(database) == {first}

        # A good change: every worker serves it within the interval (plus a request's time).
        second = write_policy(policy_dir, policy_text("app-read", "app-write"))
        took = wait_seconds(lambda: server.all_serve(["app-read", "app-write"], second), timeout=15)
        print(f"good change served by every worker after {took:.2f} s")
        assert took < INTERVAL + 3.0
        workers = children(server.proc.pid)
        assert len(workers) == WORKERS
        assert _pids(events(database, "policy.reload")) <= workers

        # Bad files: refused and reported; the workers keep serving the last good policy.
        bad = write_policy(policy_dir, BAD_POLICY)
        wait_seconds(lambda: server.readyz()["policy"]["files_on_disk"] == "refused", timeout=15)
        assert server.all_serve(["app-read", "app-write"], second)
        refused = events(database, "policy.reload_refused")
        assert refused and {e.details["refused_version"] for e in refused} == {bad}

        # HUP: gunicorn starts new workers, which boot while the files are bad.
        server.proc.send_signal(signal.SIGHUP)
        wait_seconds(
            lambda: (
                len(children(server.proc.pid)) == WORKERS
                and not children(server.proc.pid) & workers
            ),
            timeout=60,
            interval=0.2,
        )
        restarted = children(server.proc.pid)
        assert server.all_serve(["app-read", "app-write"], second, rounds=20)
        body = server.readyz()
        assert body["policy"]["source"] == "database" and body["policy"]["refused_version"] == bad
        assert "the last good policy from the database" in body["checks"]["policy"]
        # Each new worker reported, at its first request, that it started on the last good one.
        wait_seconds(lambda: _pids(_started_on_last_good(database)) == restarted, timeout=15)
        assert all(e.details["in_force"] == second for e in _started_on_last_good(database))
        assert server.proc.poll() is None, "the gunicorn master exited"

        # Fixed files reach the restarted workers too.
        third = write_policy(policy_dir, policy_text("app-write"))
        wait_seconds(lambda: server.all_serve(["app-write"], third), timeout=15)
        assert server.readyz()["policy"]["source"] == "directory"
    finally:
        server.stop()
    text = log.read_text()
    assert "serving the last good policy" in text
    assert "Worker failed to boot" not in text


def _started_on_last_good(database: Database) -> list[Any]:
    return [e for e in events(database, "policy.reload_refused") if e.details["at_start"]]


def _answers(server: Server) -> bool:
    try:
        return server.get("/readyz").status_code == 200
    except requests.ConnectionError:
        return False
