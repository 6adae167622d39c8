"""metabench's Python API, for notebooks and scripts (docs/api.md): run a sweep, read a results
folder as pandas DataFrames, register your own algorithm or task.

    import metabench
    results = metabench.run({"algorithm": ["maml", "pretrain"], "backend": "func"}, "runs/notebook")
    results.best      # each algorithm's configuration chosen on validation, with its test MSE
    results.robust    # medians, IQMs and blow-up rates with bootstrap intervals
    results.paired    # each algorithm against maml and pretrain on the same test tasks

It is the command line's code, not a second implementation: `run` makes the checks of `metabench
run` (bad input raises `ConfigError` naming the key and the value, before anything is written),
resumes a folder's finished cells and rewrites its report; `Results` holds what the report is
computed from (`benchmarks.analysis`, `benchmarks.statistics`). Interrupting a run keeps every
finished cell: the same call again resumes.
"""
from __future__ import annotations

import importlib.metadata
import tomllib
import warnings
from collections.abc import Mapping
from functools import cached_property
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from algorithms import list_algorithms, register_algorithm
from benchmarks.config import ConfigError
from benchmarks.plugins import PluginError
from benchmarks.records import RecordError
from tasks import list_tasks, register_task

__all__ = ["ConfigError", "PluginError", "RecordError", "Results", "list_algorithms", "list_tasks", "load",
           "register_algorithm", "register_task", "run", "tune"]


def _version() -> str:
    """The checkout's pyproject.toml when run from one (it may be ahead of an installed copy), else
    the installed distribution's: the version is declared once, in pyproject.toml."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "metabench":
            return project["version"]
    return importlib.metadata.version("metabench")


__version__ = _version()


class Results:
    """A results folder (`OUT/runs/` and the report beside it) as DataFrames, each computed on first
    use with the report's own functions, so they are the numbers of `tables.md` and its CSV files.

    Raises RecordError when the folder holds no record, a corrupt one, or seeds made under other
    settings (which would be pooled into one number).
    """

    def __init__(self, folder: str | PathLike):
        from benchmarks.fingerprint import check_poolable
        from benchmarks.records import load_records

        self.folder = Path(folder)
        #: the run records, as stored (one dict per cell, sorted by cell id)
        self.records: list[dict] = load_records(self.folder)
        check_poolable(self.records)

    def __repr__(self) -> str:
        statuses = pd.Series([r["status"] for r in self.records]).value_counts().to_dict()
        return f"Results({str(self.folder)!r}: {len(self.records)} cells, {statuses})"

    @cached_property
    def cells(self) -> pd.DataFrame:
        """One row per cell: its settings, status (ok, diverged, failed), error, engine and speed."""
        from benchmarks.analysis import cell_frame

        return cell_frame(self.records)

    @cached_property
    def summary(self) -> pd.DataFrame:
        """summary.csv: one row per (cell, split, eval K, adaptation step) at the cell's last iteration."""
        from benchmarks.analysis import summary_frame

        return summary_frame(self.records)

    @cached_property
    def evaluations(self) -> pd.DataFrame:
        """summary.csv's columns at every evaluated iteration (every `eval_every`), e.g. for learning curves."""
        from benchmarks.analysis import summary_frame

        return summary_frame(self.records, every_iteration=True)

    @cached_property
    def curves(self) -> pd.DataFrame:
        """Meta-training curves: one row per (cell, logged iteration) with loss and gradient norm."""
        from benchmarks.analysis import curve_frame

        return curve_frame(self.records)

    @cached_property
    def analysis(self):
        """Everything the report is drawn from (`benchmarks.analysis.Analysis`); its per-task
        statistics take about a second per chosen configuration, once."""
        from benchmarks.analysis import analyse
        from benchmarks.report import load_speed_suite

        return analyse(self.records, self._artifacts, load_speed_suite(self.folder))

    @property
    def scores(self) -> pd.DataFrame:
        """Every configuration (seeds pooled) with its validation score, ranked."""
        return self.analysis.scores

    @property
    def best(self) -> pd.DataFrame:
        """Table (a): per task, algorithm, backend, K and network, the configuration chosen on validation."""
        return self.analysis.best

    @property
    def robust(self) -> pd.DataFrame:
        """robust.csv: per chosen configuration, test K and step, mean, median, IQM and blow-up rate,
        each with its bootstrap interval (`_low`, `_high`); empty without per-task errors."""
        return self.analysis.robust

    @property
    def paired(self) -> pd.DataFrame:
        """paired.csv: each algorithm's best configuration against maml's and pretrain's on the same
        test tasks: mean and median difference, P(improvement), with bootstrap intervals."""
        return self.analysis.paired

    @property
    def speed(self) -> pd.DataFrame:
        """Median seconds per meta-iteration per (device, algorithm, backend, S, meta-batch)."""
        return self.analysis.speed

    @cached_property
    def _artifacts(self) -> dict:
        from benchmarks.artifacts import load_task_errors

        return load_task_errors(self.folder, self.records)

    def task_errors(self, split: str | None = "test", eval_k_shot: int | None = None) -> pd.DataFrame:
        """One row per (cell, split, eval K, adaptation step, task): the query MSE each `ok` cell's
        final initialisation reached on each evaluation task, with the cell's settings. These are
        what medians, blow-up rates and paired comparisons are computed from; tasks share their
        `task_index` across cells (the evaluation sets are fixed). `split`: "test", "validation" or
        None for both. Empty for folders written before per-task errors were stored."""
        frames = []
        for cell_id, stored in self._artifacts.items():
            for (found_split, k), values in stored.errors.items():  # [steps + 1, tasks]
                if (split is not None and found_split != split) or (eval_k_shot is not None and k != eval_k_shot):
                    continue
                step, task = np.divmod(np.arange(values.size), values.shape[1])
                frames.append(pd.DataFrame({"cell_id": cell_id, "split": found_split, "eval_k_shot": k,
                                            "eval_steps": step, "task_index": task,
                                            "mse": values.astype(np.float64).ravel()}))
        settings = self.cells.drop(columns=["error"])
        columns = list(settings.columns) + ["split", "eval_k_shot", "eval_steps", "task_index", "mse"]
        if not frames:
            return pd.DataFrame(columns=columns)
        return settings.merge(pd.concat(frames, ignore_index=True), on="cell_id")[columns]


def load(folder: str | PathLike) -> Results:
    """The results in `folder` (a sweep's output folder, e.g. "results/reference"); see `Results`."""
    return Results(folder)


def run(config: Mapping | str | PathLike, out: str | PathLike, *, overrides=None, workers: int = 1,
        threads: int = 1, device: str | None = None, executor: str = "local", address: str | None = None,
        plugins=(), limits: Mapping | None = None, progress: bool = True) -> Results:
    """Train every unfinished cell of a sweep into `out` and write its report, as `metabench run`
    does (the same checks, resume and folder lock); returns `load(out)`.

    config: a dict with a sweep file's keys (`[[grid]]` tables as a list of dicts under "grid";
        docs/sweep-reference.md) or the path of a sweep TOML file.
    overrides: {key: value}, or ["key=TOML value", ...] as `--set` takes them; they win over the
        config everywhere, in every grid table too.
    workers, threads, device ("cpu", "cuda" or "cuda:N"), executor ("local" or "ray"), address,
        plugins (modules or .py files that register algorithms or tasks), limits ({name: N}, as
        `--limit`): the command's options of the same names.
    Cells that failed are recorded (status "failed" in `results.cells`) and warned about.
    """
    from benchmarks.cli import execute_sweep
    from benchmarks.config import load_sweep

    source, pairs, limits, plugins = _checked(config, out, overrides, workers, threads, device, executor, address,
                                              plugins, limits)
    sweep = load_sweep(source, pairs, limits)
    records, _ = execute_sweep(sweep, out, executor, workers, address, threads, plugins, progress=progress)
    _warn_failed([r for r in records if r["status"] == "failed"])
    return load(out)


def tune(config: Mapping | str | PathLike, out: str | PathLike, *, overrides=None, workers: int = 1,
         threads: int = 1, device: str | None = None, executor: str = "local", address: str | None = None,
         plugins=(), limits: Mapping | None = None, progress: bool = True) -> Results:
    """Tune a sweep's list-valued hyperparameters on validation at its full budget by successive
    halving, as `metabench tune` does (docs/tuning.md): the rungs below the last into
    `out/rungs/<r>/`, the survivors at the full budget into `out/runs/` with the report, and
    `out/tuning.csv`; returns `load(out)`. `config` needs a `tuning` table (a dict under "tuning"
    in a dict config); the other arguments as `run`'s. A rung with failed cells stops the tuning
    with a warning (the same call again retrains them and goes on)."""
    from benchmarks.cli import add_plugins
    from benchmarks.tuning import load_tuning
    from benchmarks.tuning import tune as tune_plan

    source, pairs, limits, plugins = _checked(config, out, overrides, workers, threads, device, executor, address,
                                              plugins, limits)
    plan = load_tuning(source, pairs, limits)
    add_plugins(plan.sweep, plugins)
    result = tune_plan(plan, out, executor, workers, address, threads, progress=progress, log=lambda *_: None)
    _warn_failed(result.failed)
    for line in result.warnings:
        warnings.warn(line, RuntimeWarning, stacklevel=2)
    return load(out)


def _checked(config, out, overrides, workers, threads, device, executor, address, plugins, limits):
    """`run`'s and `tune`'s arguments checked as the command checks its options: (the config as
    `load_sweep` takes it, the overrides as (key, value) pairs, the limits, the plug-ins, imported)."""
    from benchmarks.cli import check_run_options
    from benchmarks.plugins import load_plugins

    if not isinstance(config, (Mapping, str, PathLike)):
        raise TypeError(f"config must be a dict or a TOML file path, got {type(config).__name__} {config!r}")
    limits = check_run_options(out, executor, workers, threads, address, dict(limits or {}))
    plugins = [plugins] if isinstance(plugins, str) else list(plugins)
    load_plugins(plugins)
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else \
        [overrides] if isinstance(overrides, str) else list(overrides or [])
    if device is not None:
        pairs.append(("device", device))
    return dict(config) if isinstance(config, Mapping) else config, pairs, limits, plugins


def _warn_failed(failed: list[dict]) -> None:
    if failed:
        warnings.warn(f"{len(failed)} cell(s) failed (see results.cells.error), e.g. {failed[0]['cell_id']}: "
                      f"{failed[0]['error']}", RuntimeWarning, stacklevel=2)
