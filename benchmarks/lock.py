"""One sweep per output folder at a time: an exclusive lock on `OUT/.lock`.

Two sweeps on one folder would both train every cell and race on its records. The lock is
`flock`: the kernel drops it when its holder dies, even by SIGKILL, so the lock of a dead process
is taken over with no cleanup and no stale-PID guessing; the file holds the holder's PID for the
message. The file itself stays (removing it would race with a process opening it).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class LockHeld(RuntimeError):
    """Another live process holds the folder."""


@contextmanager
def folder_lock(out: Path):
    """Hold `out`'s lock for the block; raise LockHeld (naming the holder's PID) if another has it."""
    path = Path(out) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeld(f"{out} is in use by another sweep (PID {holder}); wait for it to end or use another "
                           f"--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
