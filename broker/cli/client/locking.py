"""An exclusive lock on a sidecar file, on Linux, macOS and Windows alike.

POSIX uses `fcntl.flock`, Windows `msvcrt.locking`, each imported only where it exists. Both
locks belong to an open file, so the operating system drops them when the holder exits or
crashes: a lock is never left stale, and the lock file itself may stay on disk.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.cli.client.errors import ClientError
from broker.cli.client.store import ensure_private_dir

WAIT_SECONDS = 120.0  # longer than one issue may take (the CLI's read timeout is 60 s)
_POLL_FIRST, _POLL_MAX = 0.01, 0.1


class LockTimeout(ClientError):
    """Another process held the lock for longer than we were willing to wait."""


if sys.platform == "win32":

    def _try_lock(fd: int) -> bool:
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:

    def _try_lock(fd: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def file_lock(
    path: Path,
    *,
    wait: float = WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created 0600 if missing); LockTimeout after `wait`."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = clock() + wait
        pause = _POLL_FIRST
        while not _try_lock(fd):
            if clock() >= deadline:
                raise LockTimeout(
                    f"Another broker process has held {path} for over {wait:.0f} s.",
                    hint="Wait for it to finish, or find it (ps) and stop it; then try again.",
                )
            sleep(pause)
            pause = min(pause * 2, _POLL_MAX)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
