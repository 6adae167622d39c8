"""Parallel executors for sweep jobs: a local process pool, or Ray (optional extra).

Worker processes die with their parent: each asks the kernel for SIGKILL when its parent dies
(Linux `prctl(PR_SET_PDEATHSIG)`; elsewhere a thread watches the parent's PID), so killing a
sweep, even with SIGKILL, never leaves ~570 MB workers training for nobody. Workers ignore
SIGINT: Ctrl-C reaches the whole process group, and the parent decides (it kills them).
A cluster that cannot be reached or dies is an environment problem (`ClusterError`, exit 3),
found within seconds rather than after a multi-minute hang. SIGINT/SIGTERM end a Ray sweep as
they end a local one (`benchmarks.signals`): Ray's handlers are not kept, and an interrupt that
Ray's C++ wait turns into a SystemError is raised as the interrupt it is.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from queue import Empty

from benchmarks.signals import handlers_kept, interrupt_behind

PR_SET_PDEATHSIG = 1
CONNECT_TIMEOUT_S = 10.0  # an unreachable --address fails after this, not after Ray's minutes of retries
POLL_S = 1.0  # the parent wakes this often while waiting (signals, cluster health)


class ClusterError(RuntimeError):
    """The workers' environment failed: a Ray cluster that cannot be reached or died, a worker
    process killed from outside (e.g. by the out-of-memory killer)."""


def quiet_dependencies() -> None:
    """Silence what dependencies print on import, which would land inside progress bars: gym's
    deprecation banner (learn2learn imports gym; it is a print, not a warning), Ray's warnings, and
    what torch.compile says on CPU-only machines (a CUDA_HOME note; that it traces through the
    engine's cached-constant helper, which is what we want)."""
    warnings.filterwarnings("ignore", module="ray")
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)  # e.g. "Token authentication is disabled ..."
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if "gym" not in sys.modules:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            try:
                import gym  # noqa: F401
            except Exception:  # gym is optional: only learn2learn needs it
                pass


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` does (see the module doc)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):  # not Linux: watch the parent
        def watch():
            while os.getppid() == parent_pid:
                time.sleep(POLL_S)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before we asked
        os._exit(1)


_progress_queue = None  # in a worker: where its jobs report their iterations (set by _worker_init)


def _worker_init(parent_pid: int, progress_queue=None) -> None:
    global _progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    quiet_dependencies()
    _progress_queue = progress_queue


def _to_progress_queue(message) -> None:
    """A Reporter's sink inside a pool worker (a module function: it pickles by name)."""
    if _progress_queue is not None:
        _progress_queue.put(message)


def _drain(queue, report) -> None:
    """Hand every queued (job index, iterations) to `report`."""
    while True:
        try:
            report(*queue.get_nowait())
        except Empty:
            return


def _kill_children() -> None:
    for child in multiprocessing.active_children():
        child.kill()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def run_pool(jobs, settings, finish, workers: int, threads: int, report=None, tensorboard=None) -> None:
    """Local processes ('spawn': safe with CUDA and threads); records are written as jobs end:
    `finish(job index, records)`. Jobs report their iterations through a queue, handed to
    `report(job index, iterations)` whenever the parent wakes.

    On any exit other than success (an interrupt, a full disk while writing) the workers are
    killed at once instead of being waited for.
    """
    from benchmarks.job import run_job
    from benchmarks.progress import Reporter

    context = multiprocessing.get_context("spawn")
    queue = context.Queue() if report is not None else None
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)) or 1, mp_context=context,
                               initializer=_worker_init, initargs=(os.getpid(), queue))
    try:
        index = {pool.submit(run_job, job, settings, threads, Reporter(_to_progress_queue, i) if queue else None,
                             tensorboard): i
                 for i, job in enumerate(jobs)}
        pending = set(index)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            if queue is not None:
                _drain(queue, report)
            for future in done:
                finish(index[future], future.result())
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        _kill_children()
        raise ClusterError("a worker process died (killed from outside, or by the system for lack of memory?); "
                           "finished cells are kept, rerun to resume") from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        _kill_children()
        raise
    pool.shutdown(wait=True)


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a `HOST:PORT` or `ray://HOST:PORT` address, None for `auto`/`local`;
    ConfigError (bad input) for anything else."""
    if address in ("auto", "local"):
        return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        from benchmarks.config import ConfigError

        raise ConfigError(f"--address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto)")
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to the address within `timeout` (Ray itself retries for minutes)."""
    target = parse_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as error:
        raise ClusterError(f"cannot reach the Ray cluster at {address} within {timeout:g} s: "
                           f"{error.strerror or error}") from None


def _alive_nodes(ray) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 goes to /dev/null for the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def start_ray(address: str | None, workers: int):
    """Join the cluster at `address` (or start a local instance); ClusterError within seconds when
    that fails. Idempotent: the CLI calls it before anything is written, `run_ray` again."""
    try:
        import ray
        import ray.exceptions
    except ImportError:
        raise ClusterError("--executor ray needs the optional extra: pip install 'ray==2.60.0'") from None
    if ray.is_initialized():
        return ray
    if address:
        check_reachable(address)
    try:  # Ray's C++ client logs every connection retry (we report the outcome once); ray.init takes SIGTERM over
        with _stderr_silenced(), handlers_kept():
            ray.init(address=address, num_cpus=None if address else max(1, workers), include_dashboard=False,
                     ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, TimeoutError, ray.exceptions.RayError) as error:
        raise ClusterError(f"cannot start or join Ray{f' at {address}' if address else ''}: "
                           f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not _alive_nodes(ray):
        ray.shutdown()
        raise ClusterError(f"the Ray cluster{f' at {address}' if address else ''} has no live node")
    return ray


def run_ray(jobs, settings, finish, workers: int, address: str | None, threads: int, report=None,
            tensorboard=None) -> None:
    """Each job is a Ray task; `address` joins a cluster, default a local Ray instance.
    `finish` and `report` as in `run_pool` (progress travels through a Ray queue actor);
    `tensorboard` as in `run_job`: on a remote cluster each worker writes its event files on its
    own machine, at that path."""
    ray = start_ray(address, workers)
    from ray.exceptions import RayError

    try:
        queue = None
        if report is not None:
            from ray.util.queue import Queue

            queue = Queue()
        remote = ray.remote(num_cpus=1)(_ray_job)
        index = {remote.remote(job, settings, threads, queue, i, tensorboard): i for i, job in enumerate(jobs)}
        pending = list(index)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            if queue is not None:
                _drain(queue, report)
            if not ready:
                if not _alive_nodes(ray):
                    raise ClusterError("every Ray node died (a dead raylet?); finished cells are kept, rerun to resume")
                continue
            finish(index[ready[0]], ray.get(ready[0]))
    except RayError as error:
        raise ClusterError(f"the Ray cluster failed: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    except SystemError as error:  # a signal handler raised inside Ray's C++ code (CoreWorker.wait, get)
        interrupt = interrupt_behind(error)
        if interrupt is None:
            raise
        raise interrupt from None
    finally:
        if not address:
            ray.shutdown()


def _ray_job(job, settings, threads, queue=None, index=0, tensorboard=None):
    quiet_dependencies()
    from benchmarks.job import run_job
    from benchmarks.progress import Reporter

    return run_job(job, settings, threads, None if queue is None else Reporter(queue.put, index, interval=1.0),
                   tensorboard)
