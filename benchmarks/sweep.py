"""Runs a sweep: groups cells into jobs, runs them (in-process, in a process pool, or as Ray
tasks) and writes one record per cell as each job ends.

A job is one program: a single cell on a loop backend, or on the `func` backend up to
`MAX_ENSEMBLE` cells that differ only in seed, LR_base and LR_meta (an ensemble trained in one
batched program). An ensemble member computes bitwise what the cell alone computes, so how cells
are grouped (which other cells share the sweep, a resume that retrains only the missing members,
the split into chunks) never changes a number. Cells that differ only in a hyperparameter their
learner's training never reads (pre-training's LR_base: `MetaLearner.test_time_keys`) go into one
job on any backend and share one training there (`job.shared_training`), each evaluated at its own
value; split across jobs (chunks, a resume), they train again, to the same bits.

Compiled cells (`compile = true`, or where `compile = "auto"` projects less CPU time than eager:
`benchmarks.compile_choice.plan`) train alone. "auto" is decided over the whole
sweep's cells, per group that would ensemble eagerly, so a resume decides as the first run did;
each job carries its group's choice (`Job.compile_choice`) into the worker and its records.

Resume: cells whose finished record exists are skipped, provided that record was made under the
same fingerprint (`benchmarks.fingerprint`), on the same hardware included (except under Ray,
whose workers compute) and, for the per-task loop backends, at the same torch threads; otherwise
the sweep refuses before training.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from benchmarks.compile_choice import CompileChoice, eager_key, plan, settings_per_cell
from benchmarks.config import TENSORBOARD_FOLDER, Cell, Settings, Sweep
from benchmarks.fingerprint import check_poolable, check_resumable, fingerprint
from benchmarks.progress import ProgressBar, Reporter, longest_first
from benchmarks.records import FINISHED, identity, metric_columns, record_metric, scan_records, write_record
from benchmarks.signals import Interrupted, deferred

#: Members per ensemble job: bounds a job's memory (a 700k-rate list is not one 700k-member
#: program) while keeping the batching gain (bench.toml's ensembles have 27 members).
MAX_ENSEMBLE = 128


class Job(list):
    """A job's cells (a list, as executors and the progress bar read it) and the `CompileChoice`
    they train with, decided over the whole sweep (`compile_choice.plan`), so that a job of an eager
    group's missing members (a resume) trains eager like the rest; pickled with it to a worker."""

    compile_choice = None


def group_jobs(cells: list[Cell], settings: Settings, max_ensemble: int = MAX_ENSEMBLE,
               choices: dict[Cell, CompileChoice] | None = None) -> list[Job]:
    """Ensemble cells that share everything but seed/LR_base/LR_meta where their engine ensembles
    exactly (the accelerated `func` engine, eager); others run alone (a compiled program's floats
    may depend on the ensemble's size). `choices`: the sweep's `compile_choice.plan` (default:
    planned over `cells`)."""
    choices = choices if choices is not None else plan(cells, settings)
    jobs: dict = {}
    for cell in cells:
        key = cell if choices[cell].compiled else eager_key(cell, settings)
        jobs.setdefault(key, []).append(cell)
    planned = []
    for job in jobs.values():
        for i in range(0, len(job), max_ensemble):
            planned.append(Job(job[i:i + max_ensemble]))
            planned[-1].compile_choice = choices[job[i]]
    return planned


def _summary_line(record: dict) -> str:
    cell = record["cell"]
    head = f"{record['cell_id']}: {record['status']}"
    if record["status"] != "ok":
        return f"{head} ({record.get('error')})"
    final = [e for e in record["evaluations"] if e["split"] == "test" and e["eval_k_shot"] == cell["k_shot"]
             and e["iteration"] == cell["iterations"]]
    one = next((e for e in final if e["eval_steps"] == 1), final[0])
    metric = record_metric(record)
    value, ci = (one[column] for column in metric_columns(metric))
    ci = f"{ci:.3f}" if ci is not None and abs(ci) < float("inf") else "n/a"  # NaN (one task): no interval
    return (f"{head}  test {metric.label}@{one['eval_steps']} {value:.3f} ± {ci} (n={one['n_test_tasks']})"
            f"  {record['sec_per_iter'] * 1e3:.2f} ms/iter" +
            (f" (+ {record['compile_seconds']:.1f} s compile)" if record.get("compile_seconds") else ""))


def pending_cells(sweep: Sweep, out, executor: str = "local", threads: int = 1) -> tuple[list[Cell], int]:
    """The cells still to train and how many are finished.

    Raises FingerprintError when a finished record of one of these cells was made under other
    settings, RecordError on a corrupt or conflicting record, or when the new cells would be pooled
    (other seeds of one configuration) with records of the folder made under other settings, since
    the report would then refuse: better before training than after.
    """
    existing = scan_records(out, sweep.limits)  # records above the default limits: this sweep's --limit reads them
    # check_resumable resolves compile = "auto" over the cells it is given, as the jobs will
    check_resumable(existing, sweep.cells, sweep.settings, out, same_hardware=executor != "ray", threads=threads)
    resolved = settings_per_cell(sweep.cells, sweep.settings)
    planned = {identity({"cell": asdict(c)}): {"cell_id": c.cell_id, "cell": asdict(c), "status": "ok",
                                                 "fingerprint": fingerprint(c, resolved(c), threads=threads)}
               for c in sweep.cells}
    check_poolable([record for key, (_, record) in existing.items() if key not in planned] + list(planned.values()))

    def finished(cell):
        found = existing.get(identity({"cell": asdict(cell)}))
        return found is not None and found[1]["status"] in FINISHED

    todo = [c for c in sweep.cells if not finished(c)]
    return todo, len(sweep.cells) - len(todo)


def run_sweep(sweep: Sweep, out, executor: str = "local", workers: int = 1, address: str | None = None,
              threads: int = 1, progress: bool = True) -> list[dict]:
    """Run every unfinished cell of `sweep`, writing records under out/runs/; return new records.

    An `Interrupted` (SIGINT/SIGTERM) leaves every written record whole (a job's records are
    written as a unit) and carries `finished` (cells of the sweep with a finished record) and
    `total` for the message.
    """
    todo, finished_before = pending_cells(sweep, out, executor, threads)
    choices = plan(sweep.cells, sweep.settings)  # over the whole sweep: a resume decides as the first run
    jobs = longest_first(group_jobs(todo, sweep.settings, choices=choices), sweep.settings)  # order: only the makespan
    in_process = executor != "ray" and (workers <= 1 or len(jobs) <= 1)
    bar = ProgressBar(jobs, 1 if in_process else workers, enabled=progress, settings=sweep.settings)
    board = Path(out) / TENSORBOARD_FOLDER if sweep.settings.tensorboard else None  # under OUT, never elsewhere
    done = []

    def finish(index, records):
        with deferred():
            for record in records:
                write_record(out, record)
                done.append(record)
                bar.write(_summary_line(record))
        bar.job_done(index, len(records))

    try:
        if executor == "ray":
            from benchmarks.executors import run_ray

            run_ray(jobs, sweep.settings, finish, workers, address, threads, bar.update, tensorboard=board)
        elif in_process:
            from benchmarks.job import run_job

            for i, job in enumerate(jobs):
                finish(i, run_job(job, sweep.settings, threads, Reporter(lambda m: bar.update(*m), i), board))
        else:
            from benchmarks.executors import run_pool

            run_pool(jobs, sweep.settings, finish, workers, threads, bar.update, tensorboard=board)
    except Interrupted as interrupt:
        interrupt.finished = finished_before + sum(r["status"] in FINISHED for r in done)
        interrupt.total = len(sweep.cells)
        raise
    finally:
        bar.close()
    return done
