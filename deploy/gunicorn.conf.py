"""Gunicorn settings for the broker's web process (the entrypoint's `web` mode).

Logs are JSON lines in the broker's own format (`broker.logs.JsonFormatter`): gunicorn's messages
on stderr, one access line per request on stdout with the request's fields as keys. Workers and
address come from the environment: WEB_CONCURRENCY (default 2), WEB_HOST (default 0.0.0.0),
PORT (default 8000), WEB_TIMEOUT (seconds, default 30). They are not BROKER_* variables on
purpose: an unknown BROKER_* variable stops the broker.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from broker.logs import JsonFormatter

# A container listens on all its interfaces; the systemd unit sets WEB_HOST=127.0.0.1.
bind = [f"{os.environ.get('WEB_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"]  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = 30
# The root filesystem is read-only: no control socket under $HOME (recent gunicorn makes one).
# Worker heartbeat files go to the default temporary directory, /tmp, a tmpfs.
control_socket_disable = True

# Every worker's HTTP request metrics, summed at scrape time (broker/web/httpmetrics.py). Set
# before any worker imports prometheus_client; a fresh directory per master start.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="broker-metrics-"))


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (its counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


accesslog = "-"
errorlog = "-"
# Never the query string: the sign-in callback carries the authorization code in it.
access_log_format = "%(m)s %(U)s %(s)s"


def _field(atoms: Mapping[str, Any], key: str) -> Any:
    value = atoms[key]
    return None if value in ("-", None) else value


class GunicornJsonFormatter(JsonFormatter):
    """The broker's JSON line; for an access record, the request's fields as keys as well."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object; never headers, cookies or query strings."""
        line = super().format(record)
        atoms = record.args
        if record.name != "gunicorn.access" or not isinstance(atoms, Mapping):
            return line
        entry = json.loads(line)
        status = str(atoms["s"])
        entry.update(
            event="http.request",
            method=_field(atoms, "m"),
            path=_field(atoms, "U"),
            status=int(status) if status.isdigit() else status,
            bytes=_field(atoms, "B"),
            duration_ms=round(int(atoms["D"]) / 1000, 3),
            # REMOTE_ADDR after the broker's trusted-proxy middleware: the client, not the proxy.
            client=_field(atoms, "h"),
            user_agent=_field(atoms, "a"),
            request_id=_field(atoms, "{x-request-id}o"),
        )
        return json.dumps(entry, default=str)


logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": GunicornJsonFormatter}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        },
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        },
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
    },
}
