"""One sweep per output folder at a time: an exclusive lock on `OUT/.lock`.

Two sweeps on one folder would both train every cell and race on its records. The lock is
`flock`: the kernel drops it when its holder dies, even by SIGKILL, so the lock of a dead process
is taken over with no cleanup and no stale-PID guessing; the file holds the holder's PID for the
message. The file itself stays (removing it would race with a process opening it).

The lock file is written (its PID), so it must be this folder's own file: a symbolic link there
(which would make the PID overwrite its target, anywhere), another file's hard link, a folder or
a FIFO is refused (`UnsafePath`, exit 2) rather than replaced, since replacing it would race
with another sweep taking the lock at the same moment.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from benchmarks.atomic import UnsafePath, unsafe_link

LOCK_NAME = ".lock"


class LockHeld(RuntimeError):
    """Another live process holds the folder."""


@contextmanager
def folder_lock(out: Path):
    """Hold `out`'s lock for the block; raise LockHeld (naming the holder's PID) if another has it."""
    path = Path(out) / LOCK_NAME
    try:  # O_NONBLOCK: a FIFO there must not hang the open; the descriptor is not inherited (PEP 446)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:
        if path.is_symlink():
            raise unsafe_link(path, Path(out)) from None
        if error.errno == errno.EISDIR:
            raise UnsafePath(f"{path} is a folder, but the folder's lock file goes there; remove it") from None
        raise
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
            what = "not a plain file" if not stat.S_ISREG(found.st_mode) else f"a file with {found.st_nlink} hard links"
            raise UnsafePath(f"{path} is {what}; the lock writes its PID there, so it must be the folder's own "
                             f"file: remove it")
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
