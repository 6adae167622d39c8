"""SIGINT and SIGTERM end a command cleanly: no traceback, one line, exit 128 + signal number.

The handlers raise `Interrupted` (a BaseException, so the `except Exception` that turns a failed
job into a record does not swallow it) wherever the main thread is. Inside `deferred()` a signal
only marks itself pending and is raised when the block ends: the records of one job are written
as a unit (finish the write rather than abandon it halfway; each file is atomic anyway).
A second signal while the first is being handled (cleanup that takes too long) exits at once:
every file is atomic, and what a kill leaves (a hidden `.tmp` file) is swept by the next run.
Libraries that take the signals over (Ray's `init` installs a SIGTERM handler that calls
`sys.exit`) run inside `handlers_kept()`; a handler's exception raised inside a library's C code
(Ray's wait reports it as a SystemError) is found again by `interrupt_behind`.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A SIGINT/SIGTERM arrived; `exit_code` is 130 or 143."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


_state = {"deferring": 0, "pending": None, "raised": False}


def _handler(signum, frame):
    if _state["raised"] or (_state["deferring"] and _state["pending"]):
        os._exit(128 + signum)  # asked twice: no more cleanup
    if _state["deferring"]:
        _state["pending"] = signum
        return
    _state["raised"] = True
    raise Interrupted(signum)


@contextmanager
def interruptible():
    """Turn SIGINT/SIGTERM into `Interrupted` for the block (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state.update(pending=None, raised=False)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def handlers_kept():
    """SIGINT/SIGTERM handlers that the block installs are put back as they were when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set from C, not by Python; cannot be restored from here
                signal.signal(s, handler)


def interrupt_behind(error: BaseException) -> BaseException | None:
    """The `Interrupted` or KeyboardInterrupt that caused `error` (directly or further down its
    chain), e.g. a SystemError from C code in which a signal handler raised; None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def deferred():
    """Hold SIGINT/SIGTERM until the block ends, then raise `Interrupted` if one came."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if not _state["deferring"] and _state["pending"]:
            signum, _state["pending"] = _state["pending"], None
            _state["raised"] = True
            raise Interrupted(signum)
