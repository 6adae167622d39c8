"""Parallel executors for sweep jobs: a local process pool, or Ray (optional extra)."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed


def run_pool(jobs, settings, finish, workers: int, threads: int) -> None:
    """Local processes ('spawn': safe with CUDA and threads); records are written as jobs end."""
    from benchmarks.job import run_job

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(run_job, job, settings, threads) for job in jobs]
        for future in as_completed(futures):
            finish(future.result())


def run_ray(jobs, settings, finish, workers: int, address: str | None, threads: int) -> None:
    """Each job is a Ray task; `address` joins a cluster, default a local Ray instance."""
    try:
        import ray
    except ImportError:
        raise SystemExit("--executor ray needs the optional extra: pip install 'ray==2.60.0' "
                         "(or `make setup-ray`)") from None
    from benchmarks.job import run_job

    ray.init(address=address, num_cpus=None if address else max(1, workers), include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(run_job)
        pending = [remote.remote(job, settings, threads) for job in jobs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finish(ray.get(ready[0]))
    finally:
        if not address:
            ray.shutdown()
