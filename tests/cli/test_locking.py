"""The CLI's file lock: exclusive across processes, bounded waits, released when a holder dies,
and no POSIX-only module imported at the top (so the CLI starts on Windows)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.cli.client.locking import LockTimeout, file_lock

HOLDER = """
import sys, time
from pathlib import Path
from broker.cli.client.locking import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def hold(path: Path) -> subprocess.Popen[str]:
    """Another process holding the lock on `path` (until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_a_held_lock_makes_others_wait_then_time_out(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    holder = hold(path)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught, file_lock(path, wait=0.3):
            pass
        assert 0.3 <= time.monotonic() - started < 5
        assert str(path) in caught.value.format_message()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: the operating system released its lock.
    with file_lock(path, wait=5):
        pass


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with file_lock(path), pytest.raises(LockTimeout), file_lock(path, wait=0.05):
        pass
    with file_lock(path, wait=0.05):
        pass


def test_the_cli_starts_without_posix_only_modules() -> None:
    # `fcntl` does not exist on Windows: importing it anywhere at the top would stop the CLI.
    script = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import pkgutil, importlib, broker.cli.client as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module('broker.cli.client.' + m.name)\n"
        "from broker.cli import build\n"
        "build().main(['--help'], prog_name='broker')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "credential-process" in result.stdout
