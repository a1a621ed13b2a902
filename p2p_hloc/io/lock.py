"""Exclusive locks on output files shared by several runs (``<file>.lock``).

The lock is an ``flock`` on a small file next to the output: the kernel drops it
when its process dies, even by ``kill -9``, so a stale lock file is harmless
and is simply locked again. It needs a filesystem with working ``flock`` (local
disks; NFS v4 and Lustre with ``flock`` enabled).

A process that holds a lock may enter it again (nested ``file_lock`` of the
same file): ``match_pairs`` holds its matches file's lock for the whole run,
and the write phase inside it takes the same lock.
"""

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from .. import logger

_held: Dict[str, Tuple[int, int]] = {}  # lock file -> (pid, depth)


class LockTimeout(TimeoutError):
    """The lock was held by another run for longer than the timeout."""


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def file_lock(
    path: Path, what: str = "", timeout: Optional[float] = None, poll: float = 0.5
) -> Iterator[Path]:
    """Hold the lock of ``path`` (the file ``<path>.lock``) inside the block.

    Args:
        path: the output file to protect (it need not exist).
        what: what the holder does, for the messages (e.g. "writing features").
        timeout: seconds to wait for another holder; ``None``: wait for ever.
        poll: seconds between two attempts while waiting.
    Yields:
        The lock file's path.
    """
    lpath = lock_path(path)
    lpath.parent.mkdir(parents=True, exist_ok=True)
    key = str(lpath.resolve())
    pid, depth = _held.get(key, (None, 0))
    if pid == os.getpid():  # held by this process: nested
        _held[key] = (pid, depth + 1)
        try:
            yield lpath
        finally:
            _held[key] = (pid, depth)
        return
    fd = os.open(lpath, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not told:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                logger.info(
                    "Waiting for %s: another run holds it (%s).",
                    lpath,
                    holder or "holder unknown",
                )
                told = True
            if timeout is not None and time.monotonic() - start > timeout:
                raise LockTimeout(
                    f"{lpath} is still held by another run after {timeout:g} s "
                    f"({os.pread(fd, 200, 0).decode(errors='replace').strip()})"
                )
            time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}: {what}".encode(), 0)
        if told:
            logger.info("Got %s after %.0f s.", lpath, time.monotonic() - start)
        _held[key] = (os.getpid(), 1)
        try:
            yield lpath
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the flock
