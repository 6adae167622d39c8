"""What the report computes from run records: frames, seed pooling, selection by validation,
and the per-task statistics of the chosen configurations. Nothing here draws or writes.

Cells are grouped by the cell schema (`benchmarks.config.SCHEMA`), never by a list kept here: a
configuration is a cell without its pooled keys (the seed), and table (a) chooses one per group
of compared keys (task, algorithm, backend, K, network); the other keys are what is chosen.

The folder's metric (`benchmarks.records.folder_metric`, a `tasks.problem.Metric`: MSE for the
sine families, accuracy for classification) names the frames' columns (`mse`, `mse_ci95`,
`val_mse`... or `accuracy`, `accuracy_ci95`, `val_accuracy`...; `metric_columns`) and sets the
direction: every function that compares takes the metric (default MSE, the records before
metrics), so one folder is read in one metric throughout.

Selection is by validation, never by test: a "best configuration" is the one with the best
(lowest MSE, highest accuracy) seed-pooled meta-validation value after SELECT_STEPS adaptation
step at the final iteration, at the K it was trained for; configurations with a diverged or
failed seed rank after complete ones. Only its test numbers are then reported.

Non-finite values are never dropped: a seed-pooled value with any non-finite seed is itself
non-finite, such a configuration ranks last in either direction, and the mean of its finite
seeds is kept beside it with their count (`n_finite` of `n_seeds`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks import statistics
from benchmarks.config import SCHEMA
from benchmarks.records import RecordError, folder_metric, metric_columns
from tasks.problem import MSE, Metric

log = logging.getLogger(__name__)

#: every list of cell keys below comes from the cell schema (`benchmarks.config.SCHEMA`)
CELL_COLUMNS = SCHEMA.names
RUN_COLUMNS = ["status", "engine", "sec_per_iter", "sec_per_iter_member", "compile_seconds", "ensemble_size",
               "peak_memory_mb", "device", "shares_training_with"]


def eval_columns(metric: Metric = MSE) -> list[str]:
    """An evaluation row's columns for a folder in `metric`: its value and interval, and for any metric
    but MSE the loss the model was trained on (`loss`, `loss_ci95`: the cross-entropy beside accuracy)."""
    extra = [] if metric.name == "mse" else ["loss", "loss_ci95"]
    clash = sorted(set(metric_columns(metric)) & set(CELL_COLUMNS + RUN_COLUMNS + _FRAME_COLUMNS))
    if clash:
        raise RecordError(f"metric name {metric.name!r} is also a column of the report's frames ({', '.join(clash)}); "
                          "a metric needs a name of its own")
    return ["iteration", "split", "eval_k_shot", "eval_steps", *metric_columns(metric), *extra, "n_test_tasks",
            "n_sets", "set_sd"]


#: further columns of the report's frames a metric's columns must not take (`eval_columns`)
_FRAME_COLUMNS = ["cell_id", "error", "label", "n_tasks", "n_seeds", "n_finite", "any_nan", "sd", "ci2", "n_cells",
                  "n_ok"]
EVAL_COLUMNS = eval_columns(MSE)
#: a configuration is a cell without its seed: seeds are pooled
CONFIG_COLUMNS = SCHEMA.config
GROUP_COLUMNS = SCHEMA.compared  # table (a): one best configuration each (task, algorithm, backend, K, network)
SHOWN_COLUMNS = SCHEMA.shown  # a configuration in the tables: its group, then what was chosen
SPEED_COLUMNS = ["device"] + SCHEMA.timed  # the speed table: one row each
SELECT_STEPS = 1  # adaptation steps of the validation value that chooses a configuration
TABLE_STEPS = (1, 5, 10)
#: every algorithm is compared, task by task, with each of these (when the folder has it)
PAIRED_REFERENCES = ("maml", "pretrain")
SPEED_REFERENCE = ("maml", "l2l")  # the speed table's yardstick: learn2learn MAML


def per_task_word(metric: Metric = MSE) -> str:
    """What the per-task store holds, as the report says it: "errors" for a lower-is-better metric
    (MSE), "values" for a higher-is-better one (an accuracy is no error)."""
    return "values" if metric.higher_is_better else "errors"


def extrapolated(config, steps) -> bool:
    """Whether `steps` adaptation steps lie beyond the configuration's trained inner steps S (its
    `inner_steps`): the learned initialisation (and rates) were meta-trained for S steps, so a
    number after more is a rule applied beyond its training horizon (Meta-SGD trained at S = 1 and
    scored after 10: a one-step rule applied ten times). Decision: the one rule for every algorithm,
    by its cell's S, pre-training and Reptile included (pre-training trains no inner loop at all,
    so no number of steps is a trained horizon for it); the tables mark such numbers with
    `tables.EXTRAPOLATION_MARK`, the figures draw the trained S."""
    return int(steps) > int(config["inner_steps"])


def ci_note(metric: Metric = MSE) -> str:
    """How seeds are pooled into one value, and the t-formula interval the tables print (`mean ± h`)
    only where no per-task store exists (older records), in the metric's words."""
    label = metric.label
    return (
        f"Pooling seeds: the {label} is the mean over seeds of each seed's mean over the same n test (or validation) "
        f"tasks. `{label} [low, high]`: its 95% interval is the two-way bootstrap of the per-task store, the one "
        "interval of every mean, median, IQM and blow-up rate (definition under (a2)); the point is the records' "
        "mean (float64), the interval resamples the stored per-task values. `mean ± h`: **t-formula**, printed "
        "only where no per-task store exists (records made before it): h = sqrt(mean_s(ci_s^2) + "
        "(t_{0.975,S-1} * sd_s / sqrt(S))^2), where ci_s = 1.96 * sd_tasks / sqrt(n) is seed s's own per-task "
        "interval and sd_s the spread of the S per-seed means. "
        "The first term is the task-sampling uncertainty; it is not divided by S because every seed is scored on "
        f"the same tasks, so the seeds' task {per_task_word(metric)} are not independent. The second is the "
        "training-seed spread (Student t, S-1 degrees of freedom). Both terms count the seed x task interaction, so "
        "the interval is conservative (wider than the bootstrap's); with one seed it is the per-task interval "
        "alone and says nothing about seed-to-seed variation. A seed with a non-finite "
        f"{label} makes the pooled {label} non-finite; the mean of the finite seeds is then shown beside it as "
        "`[f/S seeds finite: mean [low, high]]` (or `± h`), pooled over those f seeds only.")


CI_NOTE = ci_note(MSE)


# ----------------------------------------------------------------------------- frames

def summary_frame(records: list[dict], every_iteration: bool = False) -> pd.DataFrame:
    """One row per (cell, split, eval K, adaptation step) at the cell's last evaluated iteration,
    or at every evaluated iteration with `every_iteration`.

    summary.csv holds the last iteration only, the one every table reads: at every iteration the
    ten-seed reference's would be several times larger (tens of MB) for numbers the records and
    `metabench.Results.evaluations` still give. Cells without evaluations (diverged, failed) keep one
    row with empty metrics so they stay visible in the table. The metric's columns are named after it
    (`eval_columns`); records in two metrics are refused (RecordError, `records.folder_metric`).
    """
    columns = eval_columns(folder_metric(records))
    rows = []
    for record in records:
        base = {**{k: record["cell"][k] for k in CELL_COLUMNS}, **{k: record.get(k) for k in RUN_COLUMNS}}
        evaluations = record.get("evaluations") or [{}]
        if not every_iteration:
            last = max((e.get("iteration") or 0 for e in evaluations), default=0)
            evaluations = [e for e in evaluations if (e.get("iteration") or 0) == last]
        rows.extend({**base, **{k: e.get(k) for k in columns}} for e in evaluations)
    return pd.DataFrame(rows, columns=CELL_COLUMNS + columns + RUN_COLUMNS)


def curve_frame(records: list[dict]) -> pd.DataFrame:
    """Meta-training curves: one row per (cell, logged iteration): loss and initial gradient norm."""
    rows = [{**{k: r["cell"][k] for k in CELL_COLUMNS}, **point} for r in records for point in r.get("curve", [])]
    return pd.DataFrame(rows, columns=CELL_COLUMNS + ["iteration", "loss", "grad_norm"])


def cell_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record (cell): its settings, status, error and speed."""
    rows = [{"cell_id": r["cell_id"], **{k: r["cell"][k] for k in CELL_COLUMNS}, "error": r.get("error"),
             **{k: r.get(k) for k in RUN_COLUMNS}} for r in records]
    frame = pd.DataFrame(rows, columns=["cell_id"] + CELL_COLUMNS + ["error"] + RUN_COLUMNS)
    for column in ("sec_per_iter", "sec_per_iter_member", "ensemble_size", "compile_seconds"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["compile_seconds"] = frame["compile_seconds"].fillna(0.0)  # records before compiled engines: none
    return frame


def final_evaluations(records: list[dict]) -> pd.DataFrame:
    """Evaluations of `ok` cells at each cell's last evaluated iteration (columns: `eval_columns`)."""
    metric = folder_metric(records)
    columns = eval_columns(metric)
    rows = [{"cell_id": r["cell_id"], **{k: r["cell"][k] for k in CELL_COLUMNS}, **{k: e.get(k) for k in columns}}
            for r in records if r["status"] == "ok" for e in r.get("evaluations") or []]
    frame = pd.DataFrame(rows, columns=["cell_id"] + CELL_COLUMNS + columns)
    if frame.empty:
        return frame
    for column in (*metric_columns(metric), "n_sets", "set_sd"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame[frame["iteration"] == frame.groupby("cell_id")["iteration"].transform("max")]


# ----------------------------------------------------------------------------- pooling seeds

def pooled_columns(metric: Metric = MSE) -> list[str]:
    """`pool_seeds`' value columns for `metric` (`mse`, ... `mse_finite_ci95` for MSE)."""
    value, ci = metric_columns(metric)
    return [value, ci, "n_tasks", "n_seeds", "n_finite", f"{value}_finite", f"{value}_finite_ci95"]


POOLED_COLUMNS = pooled_columns(MSE)


def pool_seeds(final: pd.DataFrame, keys: list[str] = CONFIG_COLUMNS, metric: Metric = MSE) -> pd.DataFrame:
    """Per (keys, split, eval K, steps): the metric pooled over seeds with its CI (see CI_NOTE);
    columns `pooled_columns(metric)`, shown here for MSE.

    `mse` is the mean over all `n_seeds` seeds: non-finite (NaN if a seed is NaN, else inf) as
    soon as one seed is. `mse_finite` and its CI pool the `n_finite` finite seeds only.
    """
    by = keys + ["split", "eval_k_shot", "eval_steps"]
    name, ci_name = metric_columns(metric)
    if final.empty:
        return pd.DataFrame(columns=by + pooled_columns(metric))
    mse = final[name].astype(float)
    finite = np.isfinite(mse)
    frame = final.assign(_finite=finite, _nan=mse.isna(), _mse=mse.where(finite),
                         _ci2=(final[ci_name].astype(float) ** 2).where(finite))
    grouped = frame.groupby(by, sort=False).agg(
        n_seeds=("_mse", "size"), n_finite=("_finite", "sum"), any_nan=("_nan", "any"), mse_finite=("_mse", "mean"),
        sd=("_mse", "std"), ci2=("_ci2", "mean"), n_tasks=("n_test_tasks", "min")).reset_index()
    n_finite = grouped["n_finite"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (stats.t.ppf(0.975, np.maximum(n_finite - 1, 1)) * grouped["sd"].fillna(0.0).to_numpy()
                   / np.sqrt(n_finite))
        grouped["mse_finite_ci95"] = np.where(n_finite > 0, np.sqrt(grouped["ci2"].to_numpy() + between ** 2), np.nan)
    complete = n_finite == grouped["n_seeds"].to_numpy()
    grouped["mse"] = np.where(complete, grouped["mse_finite"], np.where(grouped["any_nan"], np.nan, np.inf))
    grouped["mse_ci95"] = np.where(complete, grouped["mse_finite_ci95"], np.nan)
    grouped = grouped.rename(columns=dict(zip(POOLED_COLUMNS, pooled_columns(metric))))
    return grouped[by + pooled_columns(metric)]


# ----------------------------------------------------------------------------- selection by validation

def config_scores(cells: pd.DataFrame, pooled: pd.DataFrame, metric: Metric = MSE) -> pd.DataFrame:
    """One row per configuration: cells (ok / all) and the pooled validation and test value after
    SELECT_STEPS steps at the trained K, final iteration (columns val_* and test_*: `val_mse`,
    `val_accuracy`...)."""
    counts = cells.assign(ok=cells["status"] == "ok").groupby(CONFIG_COLUMNS, sort=False).agg(
        n_cells=("cell_id", "size"), n_ok=("ok", "sum")).reset_index()
    own = pooled[(pooled["eval_k_shot"] == pooled["k_shot"]) & (pooled["eval_steps"] == SELECT_STEPS)]
    columns = pooled_columns(metric)
    for split, prefix in (("validation", "val"), ("test", "test")):
        part = own[own["split"] == split][CONFIG_COLUMNS + columns]
        counts = counts.merge(part.rename(columns={c: f"{prefix}_{c}" for c in columns}), on=CONFIG_COLUMNS,
                              how="left")
    return counts


def ranked(scores: pd.DataFrame, metric: Metric = MSE) -> pd.DataFrame:
    """Configurations in selection order: every seed finished `ok` first, then the best validation
    value in the metric's direction (lowest MSE, highest accuracy), non-finite last in either."""
    val = scores[f"val_{metric.name}"].astype(float)
    order = -val if metric.higher_is_better else val
    key = scores.assign(_partial=scores["n_ok"] < scores["n_cells"], _val=order.where(np.isfinite(val), np.inf))
    return key.sort_values(["_partial", "_val"], kind="stable").drop(columns=["_partial", "_val"])


def best_configs(scores: pd.DataFrame, by: list[str], metric: Metric = MSE) -> pd.DataFrame:
    """The selected configuration per group `by`; groups with no validation value are dropped."""
    candidates = scores[scores["val_n_seeds"].notna()] if "val_n_seeds" in scores else scores.iloc[:0]
    if candidates.empty:
        return candidates
    return ranked(candidates, metric).groupby(by, sort=False).head(1).sort_values(by).reset_index(drop=True)


def matching(frame: pd.DataFrame, config) -> pd.DataFrame:
    """The rows of `frame` that belong to configuration `config` (any row with CONFIG_COLUMNS)."""
    mask = np.ones(len(frame), dtype=bool)
    for column in CONFIG_COLUMNS:
        mask &= (frame[column] == config[column]).to_numpy()
    return frame[mask]


def config_columns(config, keys: list[str]) -> dict:
    """`keys` of a configuration as the tables print them: cell keys under their schema labels (K,
    S, LR_base...), integers as integers and rates in `%g`; other columns (device) as they are."""
    def text(key):
        kind = SCHEMA.types.get(key)
        return int(config[key]) if kind == "int" else f"{config[key]:g}" if kind == "float" else config[key]
    return {SCHEMA.labels.get(key, key): text(key) for key in keys}


def mode(series: pd.Series, prefer=None):
    """The most common value; ties go to `prefer` if tied, else to the largest (K=10 over K=5)."""
    counts = series.value_counts()
    top = list(counts[counts == counts.max()].index)
    return prefer if prefer in top else max(top)


def config_label(config) -> str:
    return (f"{config['algorithm']} [{config['backend']}, S={config['inner_steps']}, LR_base={config['lr_base']:g}, "
            f"LR_meta={config['lr_meta']:g}]")


def best_per_algorithm(scores: pd.DataFrame, task: str, k_shot: int, metric: Metric = MSE) -> pd.DataFrame:
    """The best configuration of each algorithm (any backend) trained on `task` at `k_shot`, labelled."""
    best = best_configs(scores[(scores["task"] == task) & (scores["k_shot"] == k_shot)], ["algorithm"], metric)
    return best.assign(label=[config_label(row) for _, row in best.iterrows()])


# ----------------------------------------------------------------------------- per-task statistics

def _key(config) -> tuple:
    return tuple(config[c] for c in CONFIG_COLUMNS)


def _same_tasks_key(zero_mse) -> float | str:
    """The stored zero-predictor MSE as the identity of an evaluation set's tasks: equal MSEs, equal
    tasks. A store without one (NaN: a metric without MSE yardsticks) identifies its tasks by their
    count only, so every NaN is the same key ("nan"; NaN != NaN would call every seed's set another)."""
    zero = float(zero_mse)
    return "nan" if math.isnan(zero) else zero


class TaskErrors:
    """Per-task errors of the `ok` cells (the per-task store, `benchmarks.artifacts`) stacked per
    configuration, and their statistics (`benchmarks.statistics`) in the folder's `metric`'s
    direction, memoised: a bootstrap takes about a second. Empty (falsy) for folders made before
    the store existed.

    Blow-ups: for MSE (`Metric.scaled_blowups`) the threshold is `statistics.blowup_threshold` of
    the stored zero-predictor and untrained MSEs; for any other metric those are NaN in the store
    and the threshold is inf (a blow-up is a non-finite value only). An MSE store whose zero-predictor
    MSE is not finite has no yardstick: its configuration gets no per-task statistics (a warning,
    and "–" in the tables), never a NaN threshold that would count no blow-up."""

    def __init__(self, cells: pd.DataFrame, artifacts: dict | None = None, metric: Metric = MSE):
        self.cells = cells[cells["status"] == "ok"]
        self.statuses = cells["status"].value_counts()
        self.artifacts = artifacts or {}
        self.metric = metric
        self._memo: dict[tuple, object] = {}

    def __bool__(self) -> bool:
        return bool(self.artifacts)

    def missing(self) -> str:
        """Why there are no per-task errors, for the tables and figures that have none to show: no
        cell finished `ok` (only those store them), or the records predate the per-task store."""
        word = per_task_word(self.metric)
        if self.cells.empty:
            counts = ", ".join(f"{n} {status}" for status, n in self.statuses.items()) or "no records"
            return f"no cell finished `ok` ({counts}; see (c)), and only finished cells store per-task {word}"
        return f"these records have no per-task {word} (made before the per-task store)"

    def errors(self, config, split: str, eval_k: int) -> tuple[np.ndarray, float, float] | None:
        """([n_seeds, eval_steps + 1, n_tasks] in seed order, blow-up threshold, zero-predictor MSE) of
        the configuration's `ok` seeds; None unless every one stored errors for (split, eval K) on the
        same tasks (the zero predictor's MSE identifies them; the threshold also depends on the seeds'
        untrained networks, `statistics.error_scale`)."""
        key = ("errors", _key(config), split, int(eval_k))
        if key not in self._memo:
            self._memo[key] = self._stack(config, split, int(eval_k))
        return self._memo[key]

    def _stack(self, config, split: str, eval_k: int):
        arrays, zeros, untrained = [], set(), []
        for cell_id in matching(self.cells, config).sort_values("seed")["cell_id"]:
            found = self.artifacts.get(cell_id)
            if found is None or (split, eval_k) not in found.errors:
                return None
            arrays.append(found.errors[(split, eval_k)])
            zeros.add(_same_tasks_key(found.zero_mse[(split, eval_k)]))
            untrained.append(getattr(found, "untrained_mse", np.nan))
        if not arrays:
            return None
        if len({a.shape for a in arrays}) > 1 or len(zeros) > 1:
            log.warning("seeds of %s were scored on different %s tasks at K=%d: no per-task statistics",
                        config_label(config), split, eval_k)
            return None
        zero = zeros.pop()
        zero = math.nan if zero == "nan" else zero
        scaled = self.metric.scaled_blowups
        if scaled and not math.isfinite(zero):
            log.warning("the store of %s holds no finite zero-predictor MSE for %s K=%d (the blow-up yardstick): "
                        "no per-task statistics", config_label(config), split, eval_k)
            return None
        self._memo[("yardstick", _key(config), split, eval_k)] = (zero, untrained)
        return np.stack(arrays), statistics.blowup_threshold(zero, untrained, scaled=scaled), zero

    def thresholds(self, config, split: str, eval_k: int, factors=statistics.SENSITIVITY_FACTORS) -> list[float] | None:
        """The blow-up threshold at each of `factors` x the error scale (`statistics.blowup_threshold`;
        at BLOWUP_FACTOR exactly `errors`' own); None without per-task errors or for a metric without
        scaled blow-ups (its threshold is inf whatever the factor)."""
        if not self.metric.scaled_blowups or self.errors(config, split, eval_k) is None:
            return None
        zero, untrained = self._memo[("yardstick", _key(config), split, int(eval_k))]
        return [statistics.blowup_threshold(zero, untrained, factor=factor) for factor in factors]

    def summary(self, config, split: str, eval_k: int, steps: int, bootstrap: bool = True) -> dict | None:
        """`statistics.summarize` at one step (Estimates mean, median, iqm, blowup: at that step) plus
        blowup_cumulative (blown up at any step <= `steps`, `statistics.blown_up_by`, same resamples),
        n_seeds and n_tasks; None without per-task errors. `bootstrap=False`: point estimates only."""
        key = ("summary", _key(config), split, int(eval_k), int(steps))
        if (key, True) in self._memo:
            return self._memo[(key, True)]
        if (key, bootstrap) not in self._memo:
            found = self.errors(config, split, eval_k)
            if found is None or steps >= found[0].shape[1]:
                self._memo[(key, bootstrap)] = None
            else:
                values, threshold, _ = found
                n_resamples = statistics.N_RESAMPLES if bootstrap else 0
                result = statistics.summarize(values[:, steps], threshold, n_resamples=n_resamples,
                                              higher_is_better=self.metric.higher_is_better)
                ever = statistics.blown_up_by(values[:, :steps + 1], threshold)[:, -1]
                result["blowup_cumulative"], = statistics.shares([ever], n_resamples)
                self._memo[(key, bootstrap)] = {**result, "n_seeds": values.shape[0], "n_tasks": values.shape[2]}
        return self._memo[(key, bootstrap)]

    def finite_mean(self, config, split: str, eval_k: int, steps: int) -> tuple[statistics.Estimate, int] | None:
        """(the mean over the seeds whose every stored value at `steps` is finite, with its two-way
        bootstrap interval; their number) for the tables' `[f/S seeds finite: ...]`; None without
        per-task errors or with no such seed."""
        key = ("finite", _key(config), split, int(eval_k), int(steps))
        if key not in self._memo:
            found = self.errors(config, split, eval_k)
            values = None if found is None or steps >= found[0].shape[1] else found[0][:, steps]
            finite = None if values is None else values[np.isfinite(values).all(axis=1)]
            self._memo[key] = None if finite is None or not len(finite) else (statistics.summarize(
                finite, np.inf, higher_is_better=self.metric.higher_is_better)["mean"], len(finite))
        return self._memo[key]

    def sensitivity(self, config, split: str, eval_k: int, steps: int,
                    factors=statistics.SENSITIVITY_FACTORS) -> list[statistics.Estimate] | None:
        """The blow-up rate at `steps` (at that step) with the threshold at each of `factors` x the
        error scale, each with its two-way bootstrap interval (the same resamples as `summary`); None
        without per-task errors or for a metric without scaled blow-ups (`thresholds`)."""
        key = ("sensitivity", _key(config), split, int(eval_k), int(steps), tuple(factors))
        if key not in self._memo:
            found, thresholds = self.errors(config, split, eval_k), self.thresholds(config, split, eval_k, factors)
            self._memo[key] = None if thresholds is None or steps >= found[0].shape[1] else statistics.shares(
                [statistics.blown_up(found[0][:, steps], threshold) for threshold in thresholds])
        return self._memo[key]

    def compare(self, config, reference, split: str, eval_k: int, steps: int) -> dict | None:
        """`statistics.compare` of `config` against `reference` at one step, plus n_tasks and seeds;
        None when either lacks per-task errors or they were not scored on the same tasks. B against
        A is A against B mirrored (differences negated, P(better) -> 1 - P)."""
        key = ("compare", _key(config), _key(reference), split, int(eval_k), int(steps))
        mirror = ("compare", _key(reference), _key(config), split, int(eval_k), int(steps))
        if key not in self._memo and self._memo.get(mirror) is not None:
            found = self._memo[mirror]
            self._memo[key] = {
                **{name: statistics.Estimate(-e.value, -e.high, -e.low)
                   for name, e in found.items() if name.endswith("difference")},
                "p_improvement": statistics.Estimate(1 - found["p_improvement"].value,
                                                     1 - found["p_improvement"].high, 1 - found["p_improvement"].low),
                "n_tasks": found["n_tasks"], "n_seeds": found["n_seeds_reference"],
                "n_seeds_reference": found["n_seeds"]}
        if key not in self._memo:
            a, b = self.errors(config, split, eval_k), self.errors(reference, split, eval_k)
            same = a is not None and b is not None and a[0].shape[2] == b[0].shape[2] and \
                _same_tasks_key(a[2]) == _same_tasks_key(b[2])
            if a is not None and b is not None and not same:
                log.warning("%s and %s were not scored on the same %s tasks at K=%d: not compared",
                            config_label(config), config_label(reference), split, eval_k)
            self._memo[key] = None if not same or steps >= min(a[0].shape[1], b[0].shape[1]) else {
                **statistics.compare(a[0][:, steps], b[0][:, steps], higher_is_better=self.metric.higher_is_better),
                "n_tasks": a[0].shape[2],
                "n_seeds": a[0].shape[0], "n_seeds_reference": b[0].shape[0]}
        return self._memo[key]


def chosen_test_ks(best: pd.DataFrame, pooled: pd.DataFrame):
    """(configuration, test eval K) for each chosen configuration (table (a)) and each K its test
    set was evaluated at: the rows of robust.csv, variance.csv and blowup_amplitude.csv."""
    evaluated = pooled[pooled["split"] == "test"]
    for _, config in best.iterrows():
        for eval_k in sorted(matching(evaluated, config)["eval_k_shot"].unique()):
            yield config, eval_k


def robust_frame(best: pd.DataFrame, pooled: pd.DataFrame, task_errors: TaskErrors,
                 steps=TABLE_STEPS) -> pd.DataFrame:
    """Per chosen configuration (table (a)), test eval K and step: the per-task statistics with their
    two-way bootstrap intervals: mean, median, IQM, the blow-up rate at the step (`blowup`) and by it
    (`blowup_cumulative`), and the at-step rate at the other SENSITIVITY_FACTORS (`blowup_3x`...;
    NaN for a metric without scaled blow-ups). Empty without per-task errors."""
    rows = []
    if not task_errors:
        return pd.DataFrame(rows)
    for config, eval_k in chosen_test_ks(best, pooled):
        for step in steps:
            found = task_errors.summary(config, "test", eval_k, step)
            if found is None:
                continue
            row = {**{c: config[c] for c in CONFIG_COLUMNS}, "eval_k_shot": int(eval_k), "eval_steps": step,
                   "n_seeds": found["n_seeds"], "n_tasks": found["n_tasks"]}
            estimates = {name: found[name] for name in ("mean", "median", "iqm", "blowup", "blowup_cumulative")}
            rates = task_errors.sensitivity(config, "test", eval_k, step)
            for factor, i in SENSITIVITY_COLUMNS.items():
                estimates[factor] = statistics.Estimate(np.nan) if rates is None else rates[i]
            for name, estimate in estimates.items():
                row.update({name: estimate.value, f"{name}_low": estimate.low, f"{name}_high": estimate.high})
            rows.append(row)
    return pd.DataFrame(rows)


#: the relative precisions (95% half-width / |mean|) variance.csv gives the seeds needed for
VARIANCE_PRECISIONS = (0.10, 0.05)


def precision_column(precision: float) -> str:
    """variance.csv's column of the seeds needed for a 95% half-width of `precision` x |mean|."""
    return f"seeds_for_{precision * 100:g}pct"


def variance_frame(best: pd.DataFrame, pooled: pd.DataFrame, task_errors: TaskErrors,
                   steps=TABLE_STEPS) -> pd.DataFrame:
    """Per chosen configuration (table (a)) with two or more seeds, test eval K and step: the
    variance components of its seed x task values (`statistics.variance_components`), the 95%
    half-width of the mean they imply for this design, and the seeds a mean over the same number
    of tasks needs for each of VARIANCE_PRECISIONS. Rows with a non-finite value are left out
    (a blow-up has no variance). Empty without per-task errors."""
    rows = []
    if not task_errors:
        return pd.DataFrame(rows)
    for config, eval_k in chosen_test_ks(best, pooled):
        found = task_errors.errors(config, "test", eval_k)
        if found is None:
            continue
        for step in steps:
            if step >= found[0].shape[1]:
                continue
            parts = statistics.variance_components(found[0][:, step])
            if parts is None:
                continue
            row = {**{c: config[c] for c in CONFIG_COLUMNS}, "eval_k_shot": int(eval_k), "eval_steps": step,
                   "n_seeds": parts.n_seeds, "n_tasks": parts.n_tasks, "mean": parts.mean,
                   "var_seed": parts.seed, "var_task": parts.task, "var_interaction": parts.interaction,
                   "halfwidth": parts.halfwidth(parts.n_seeds, parts.n_tasks)}
            for precision in VARIANCE_PRECISIONS:
                row[precision_column(precision)] = parts.seeds_needed(precision * abs(parts.mean), parts.n_tasks)
            rows.append(row)
    return pd.DataFrame(rows)


def sensitivity_column(factor: float) -> str:
    """robust.csv's column of the blow-up rate at `factor` x the error scale (`blowup_3x`)."""
    return f"blowup_{factor:g}x"


#: robust.csv's threshold-sensitivity columns -> index in SENSITIVITY_FACTORS (the rule's own factor is `blowup`)
SENSITIVITY_COLUMNS = {sensitivity_column(f): i for i, f in enumerate(statistics.SENSITIVITY_FACTORS)
                       if f != statistics.BLOWUP_FACTOR}


def paired_frame(scores: pd.DataFrame, pooled: pd.DataFrame, task_errors: TaskErrors,
                 references=PAIRED_REFERENCES, steps=TABLE_STEPS) -> pd.DataFrame:
    """Every algorithm's best configuration against each reference algorithm's, per (task, trained
    K, test eval K, step), on the shared test tasks (empty without per-task errors)."""
    rows = []
    if not task_errors or scores.empty:
        return pd.DataFrame(rows)
    evaluated = pooled[pooled["split"] == "test"]
    for task, k_shot in sorted(set(zip(scores["task"], scores["k_shot"]))):
        best = best_per_algorithm(scores, task, k_shot, task_errors.metric).set_index("algorithm", drop=False)
        for reference in (r for r in references if r in best.index):
            base = best.loc[reference]
            for algorithm in (a for a in best.index if a != reference):
                config = best.loc[algorithm]
                eval_ks = set(matching(evaluated, config)["eval_k_shot"]) & set(
                    matching(evaluated, base)["eval_k_shot"])
                for eval_k in sorted(eval_ks):
                    for step in steps:
                        found = task_errors.compare(config, base, "test", eval_k, step)
                        if found is None:
                            continue
                        row = {"task": task, "k_shot": int(k_shot), "eval_k_shot": int(eval_k), "eval_steps": step,
                               "algorithm": algorithm, "reference": reference, "label": config["label"],
                               "reference_label": base["label"], "n_tasks": found["n_tasks"],
                               "n_seeds": found["n_seeds"], "n_seeds_reference": found["n_seeds_reference"],
                               "inner_steps": int(config["inner_steps"]),
                               "reference_inner_steps": int(base["inner_steps"])}
                        for name in ("mean_difference", "median_difference", "p_improvement"):
                            estimate = found[name]
                            row.update({name: estimate.value, f"{name}_low": estimate.low,
                                        f"{name}_high": estimate.high})
                        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- speed

def speed_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """Median s/iter over cells per (device, algorithm, backend, S, meta-batch, network: `SPEED_COLUMNS`),
    and the ratio to learn2learn MAML on the same device, S, meta-batch and network (NaN where it was
    not run).

    A compiled engine's one-off compile is not in s/iter: `compile_seconds` (median) is apart and
    `train_seconds`, the projected training time of one program over the cells' iterations, adds it
    once (compile + s/iter x iterations), so a compile that never pays off shows there."""
    timed = cells[np.isfinite(cells["sec_per_iter"].astype(float))]
    keys = SPEED_COLUMNS
    columns = keys + ["sec_per_iter", "sec_per_iter_member", "compile_seconds", "train_seconds", "ensemble_min",
                      "ensemble_max", "n_cells", "ratio", "ratio_member"]
    if timed.empty:
        return pd.DataFrame(columns=columns)
    frame = timed.groupby(keys).agg(sec_per_iter=("sec_per_iter", "median"),
                                    sec_per_iter_member=("sec_per_iter_member", "median"),
                                    compile_seconds=("compile_seconds", "median"),
                                    iterations=("iterations", "median"),
                                    ensemble_min=("ensemble_size", "min"), ensemble_max=("ensemble_size", "max"),
                                    n_cells=("cell_id", "size")).reset_index()
    frame["train_seconds"] = frame["compile_seconds"] + frame["sec_per_iter"] * frame["iterations"]
    frame["sec_per_iter_member"] = frame["sec_per_iter_member"].fillna(frame["sec_per_iter"])
    reference = frame[(frame["algorithm"] == SPEED_REFERENCE[0]) & (frame["backend"] == SPEED_REFERENCE[1])]
    same = [c for c in keys if c not in ("algorithm", "backend")]  # the yardstick runs the same program size
    reference = reference[same + ["sec_per_iter"]].rename(columns={"sec_per_iter": "_ref"})
    frame = frame.merge(reference, on=same, how="left")
    frame["ratio"] = frame["sec_per_iter"] / frame["_ref"]
    frame["ratio_member"] = frame["sec_per_iter_member"] / frame["_ref"]
    return frame[columns]


# ----------------------------------------------------------------------------- everything together

@dataclass
class Analysis:
    """Everything the tables and figures are drawn from."""

    records: list[dict]
    cells: pd.DataFrame
    curves: pd.DataFrame
    final: pd.DataFrame
    pooled: pd.DataFrame
    scores: pd.DataFrame
    best: pd.DataFrame  # table (a)
    speed: pd.DataFrame  # from the sweep's own cells (timed while other workers ran)
    task_errors: TaskErrors
    speed_suite: pd.DataFrame = field(default_factory=pd.DataFrame)  # OUT/speed.csv, if the speed suite ran
    scope: dict = field(default_factory=dict)  # the (task, K) the per-algorithm figures show
    figure_best: pd.DataFrame = field(default_factory=pd.DataFrame)  # best configuration per algorithm in scope
    robust: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-task statistics of table (a)'s rows
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)  # paired comparisons
    variance: pd.DataFrame = field(default_factory=pd.DataFrame)  # variance components of table (a)'s rows
    by_amplitude: pd.DataFrame = field(default_factory=pd.DataFrame)  # blow-up rate per task amplitude bin
    metric: Metric = MSE  # the folder's one metric (`benchmarks.records.folder_metric`): column, label, direction


def analyse(records: list[dict], artifacts: dict | None = None, speed_suite: pd.DataFrame | None = None) -> Analysis:
    """Frames, selection and statistics of `records`; `artifacts`: cell_id -> per-task store entry
    (`benchmarks.artifacts.load_task_errors`); `speed_suite`: the speed suite's `speed.csv`.
    Records in two metrics are refused (RecordError, `records.folder_metric`)."""
    metric = folder_metric(records)
    cells = cell_frame(records)
    final = final_evaluations(records)
    pooled = pool_seeds(final, metric=metric)
    scores = config_scores(cells, pooled, metric)
    best = best_configs(scores, GROUP_COLUMNS, metric)
    task_errors = TaskErrors(cells, artifacts, metric)
    analysis = Analysis(records, cells, curve_frame(records), final, pooled, scores, best, speed_frame(cells),
                        task_errors, speed_suite if speed_suite is not None else pd.DataFrame(), metric=metric)
    analysis.robust = robust_frame(best, pooled, task_errors)
    analysis.paired = paired_frame(scores, pooled, task_errors)
    analysis.variance = variance_frame(best, pooled, task_errors)
    from benchmarks.task_parameters import amplitude_frame  # it reads an Analysis: imported here, not above
    analysis.by_amplitude = amplitude_frame(analysis)
    selectable = scores[scores["val_n_seeds"].notna()]
    if selectable.empty:
        return analysis
    task = mode(selectable["task"], prefer="sine")  # Finn et al.'s task wins a tie
    k_shot = mode(selectable[selectable["task"] == task]["k_shot"], prefer=10)  # and Finn's K = 10
    analysis.scope = {"task": task, "k_shot": int(k_shot)}
    analysis.figure_best = best_per_algorithm(scores, task, k_shot, metric)
    return analysis
