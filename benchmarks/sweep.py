"""Runs a sweep: groups cells into jobs, runs them (in-process, in a process pool, or as Ray
tasks) and writes one record per cell as each job ends.

A job is one program: a single cell on a loop backend, or on the `func` backend every cell
that differs only in seed, LR_base and LR_meta (an ensemble trained in one batched program).
"""
from __future__ import annotations

import os
from dataclasses import replace

from tqdm.auto import tqdm

from benchmarks.config import Cell, Settings, Sweep
from benchmarks.job import run_job
from benchmarks.records import is_finished, write_record


def group_jobs(cells: list[Cell], settings: Settings) -> list[list[Cell]]:
    """Ensemble func cells that share everything but seed/LR_base/LR_meta; others run alone."""
    jobs: dict = {}
    for cell in cells:
        if cell.backend == "func" and settings.ensemble:
            key = replace(cell, seed=0, lr_base=1.0, lr_meta=1.0)
        else:
            key = cell
        jobs.setdefault(key, []).append(cell)
    return list(jobs.values())


def _summary_line(record: dict) -> str:
    cell = record["cell"]
    head = f"{record['cell_id']}: {record['status']}"
    if record["status"] != "ok":
        return f"{head} ({record.get('error')})"
    final = [e for e in record["evaluations"] if e["split"] == "test" and e["eval_k_shot"] == cell["k_shot"]
             and e["iteration"] == cell["iterations"]]
    one = next((e for e in final if e["eval_steps"] == 1), final[0])
    return (f"{head}  test MSE@{one['eval_steps']} {one['mse']:.3f} ± {one['mse_ci95']:.3f} (n={one['n_test_tasks']})"
            f"  {record['sec_per_iter'] * 1e3:.2f} ms/iter")


def run_sweep(sweep: Sweep, out, executor: str = "local", workers: int = 1, address: str | None = None,
              threads: int | None = None, progress: bool = True) -> list[dict]:
    """Run every unfinished cell of `sweep`, writing records under out/runs/; return new records."""
    todo = [c for c in sweep.cells if not is_finished(out, c.cell_id)]
    jobs = group_jobs(todo, sweep.settings)
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress)
    done = []

    def finish(records):
        for record in records:
            write_record(out, record)
            done.append(record)
            bar.update(1)
            bar.write(_summary_line(record))

    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    if executor == "ray":
        from benchmarks.executors import run_ray

        run_ray(jobs, sweep.settings, finish, workers, address, threads)
    elif workers <= 1:
        for job in jobs:
            finish(run_job(job, sweep.settings, threads))
    else:
        from benchmarks.executors import run_pool

        run_pool(jobs, sweep.settings, finish, workers, threads)
    bar.close()
    return done
