"""A throwaway PostgreSQL cluster for outage tests: initdb into a temp dir, its own port.

Outage and hang tests stop or freeze *this* cluster, never the shared one on 5432. PostgreSQL
refuses to run as root, so when the tests run as root the cluster runs as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return candidates[0].parent if candidates else None


def available() -> bool:
    """True when initdb/pg_ctl are installed here."""
    return _bindir() is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """initdb + pg_ctl on 127.0.0.1 and a free port; `stop()`, `start()`, `freeze()`, `thaw()`."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir = bindir
        self.port = _free_port()
        self._tmp = tempfile.mkdtemp(prefix="broker-pg-")
        self.datadir = Path(self._tmp) / "data"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's `postgres` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def __enter__(self) -> PgCluster:
        if self._as_postgres:
            shutil.chown(self._tmp, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "-N")
        self.start()
        return self

    def start(self) -> None:
        """Start (or restart) the cluster and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._tmp} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.datadir), "-o", options, "-w", "-l",
                  str(Path(self._tmp) / "log"), "start")  # fmt: skip

    def stop(self) -> None:
        """Stop the cluster: connections are refused from now on."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def _pids(self) -> list[int]:
        pid_file = self.datadir / "postmaster.pid"
        postmaster = int(pid_file.read_text().splitlines()[0])
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    def freeze(self) -> None:
        """SIGSTOP every process of the cluster: it hangs (the kernel still accepts TCP)."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what `freeze` stopped."""
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self.thaw()
                self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
