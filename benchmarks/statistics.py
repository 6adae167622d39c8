"""Robust statistics of per-task adaptation errors: blow-up rates, median and interquartile mean
(IQM) with bootstrap intervals, and paired comparisons between two algorithms on shared tasks.

Pure functions over numpy arrays; `benchmarks.analysis` feeds them from the per-task store.
Errors are the per-task values of the folder's metric (`tasks.problem.Metric`) as an array
[n_seeds, n_tasks] for one configuration at one (split, eval K, adaptation step): query MSEs
(lower is better) for the sine families, accuracies for classification. Everything below is
written for lower-is-better errors; a higher-is-better metric (`higher_is_better=True`) is
negated on the way in and its estimates negated back (an interval's bounds swapped), so every
rule holds in the metric's direction: a non-finite value ranks worst (a NaN accuracy as -inf),
a paired difference is A - B in the metric's units with the better side stated by the
direction (positive: A better for accuracy), and P(improvement) is P(A better than B).

Decisions (stated once, used everywhere):
- **Non-finite errors are blow-ups and rank worst.** A NaN or inf MSE is treated as +inf: the
  mean containing one is non-finite (never silently dropped), while the median and IQM stay
  finite as long as fewer than half (a quarter) of the values blew up.
- **One interval method.** Every interval the report prints for a mean, median, IQM, blow-up rate
  or paired statistic is the two-way bootstrap below (`summarize`, `shares`, `compare`); the
  t-formula of `benchmarks.analysis.ci_note` only where no per-task store exists.
- **Blow-up at and by a step.** `blown_up` is the at-step rule: a task above the threshold at step
  s (it may drop back later). `blown_up_by` is the cumulative one: blown up at any step <= s.
  Both are reported (robust.csv `blowup`, `blowup_cumulative`); "the rate after s steps" is the
  at-step one.
- **Threshold sensitivity.** SENSITIVITY_FACTORS (3, 10, 100) x the error scale, each rate with
  the same resamples (`shares`), so the rates are ordered resample by resample.
- **Blow-up.** For a metric with scaled blow-ups (`Metric.scaled_blowups`: MSE only) a task's
  adaptation blew up at a step when its MSE is non-finite or above
  BLOWUP_FACTOR x the error scale (`error_scale`): the larger of the evaluation set's
  zero-predictor MSE (the mean, over all its tasks, of the query MSE of predicting 0, as the
  per-task store keeps it per split and eval K; about 4.2 for Finn's sine, so the threshold is
  about 42) and the untrained network's MSE on zero targets (the mean square of its outputs on
  the training probe's query points, the largest over the configuration's seeds; 0.02-0.5 for
  Finn's network), at least SCALE_FLOOR. Adaptation that makes a task ten times worse than
  predictors that know nothing (predicting 0, or the untrained network) has diverged. The
  untrained network's term is what keeps the rule free of the targets' scale: with amplitudes
  of 1e-3 the zero predictor's MSE is 2e-7 and an ordinary error would read as a blow-up. It
  binds only where the targets are smaller than an untrained network's outputs, so on sine-scale
  targets the threshold is the zero predictor's alone, bitwise; records stored before the
  untrained network's MSE was kept are judged by the zero predictor alone. The same scale,
  times `benchmarks.job.DIVERGENCE_FACTOR`, marks a training run diverged. For any other
  metric (accuracy) a blow-up is a non-finite value only (`blowup_threshold(..., scaled=False)`
  is inf): the yardstick is made of MSEs, which such a store holds as NaN. A NaN threshold is
  refused (ValueError), never used: it would silently count only non-finite values.
- **Undefined intervals.** An interval needs a sample to vary: with fewer than MIN_TASKS test
  tasks every bootstrap resample is the same (and a t interval needs n >= 2 and a finite
  spread), so the bounds are NaN (printed `n/a`), never a zero-width interval that claims
  certainty. One seed with several tasks keeps its interval: the tasks are resampled, as in the
  per-task t interval, and it says nothing about seed-to-seed variation.
- **IQM** is the mean of the middle 50% of all seed x task values (scipy's `trim_mean` with 25%
  cut from each end, as rliable computes it).
- **Bootstrap.** Seeds and tasks are crossed, not nested: every seed of every algorithm is
  scored on the *same* test tasks. A resample therefore draws the seeds with replacement (within
  the configuration, so stratified by configuration) and, independently, the tasks with
  replacement once, shared by every seed (Owen's 2007 "pigeonhole" bootstrap for crossed
  designs; slightly conservative). A paired comparison applies the same task draw to both
  algorithms and draws each algorithm's seeds separately. N_RESAMPLES resamples from a numpy
  Generator seeded with BOOTSTRAP_SEED afresh for every statistic, so a number does not depend
  on what else was computed; the 95% interval is the percentile interval, taken conservatively
  (the lower bound rounds down, the upper up, so an infinite resample never becomes NaN by
  interpolation). `scipy.stats.bootstrap` resamples one axis of independent samples and has no
  crossed two-way resampling, hence the code below.
- **Paired difference** on task j: A's value minus B's, each averaged over its seeds (both
  non-finite: a tie, 0). The mean and median over tasks are reported; negative means A is better
  for a lower-is-better metric (MSE), positive for a higher-is-better one (accuracy).
- **Probability of improvement** P(A better than B): per task, the share of seed pairs (a, b) in
  which A's value is better than B's in the metric's direction (lower MSE, higher accuracy; ties
  count 1/2), averaged over tasks (rliable's definition). With one seed each it is the share of
  tasks on which A beats B.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tasks.problem import MSE, Metric

BLOWUP_FACTOR = 10.0
#: the blow-up factors of the threshold-sensitivity table and figure: the rule's, about half a decade
#: below it and a decade above it (does a conclusion depend on the factor?)
SENSITIVITY_FACTORS = (3.0, BLOWUP_FACTOR, 100.0)
#: the smallest error scale (an MSE): targets and untrained outputs both (near) 0, e.g. a plug-in
#: network initialised to output 0, still leave a threshold above 0 (rounding error is no blow-up)
SCALE_FLOOR = 1e-12
MIN_TASKS = 2  # fewer test tasks: no interval (every resample would be the same)
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
IQM_CUT = 0.25
CHUNK = 25  # resamples evaluated at once: CHUNK x seeds x tasks arrays small enough to stay in cache



def method_note(metric: Metric = MSE) -> str:
    """The tables' statement of the blow-up rule and the bootstrap, in the metric's words."""
    if metric.scaled_blowups:
        blowup = (f"Blow-up (at a step): a task's adapted query MSE is non-finite or above {BLOWUP_FACTOR:g} x its "
                  "evaluation set's zero-predictor MSE (the mean query MSE of predicting 0 over all its tasks), or "
                  "x the untrained network's MSE on zero targets where that is larger (only for targets smaller "
                  "than an untrained network's outputs). ")
    else:
        blowup = (f"Blow-up: a task's adapted {metric.label} is non-finite; the squared-error threshold (a multiple "
                  f"of predicting 0) does not apply to {metric.label}, so a finite value never counts as one. ")
    return (blowup + "Median and IQM (mean of the middle "
            "50%) are over every seed x task value, non-finite values ranking worst. Their 95% intervals, like "
            "those of the means and blow-up rates, are "
            f"percentile intervals of {N_RESAMPLES:,} bootstrap resamples (numpy Generator seed {BOOTSTRAP_SEED}) "
            "that draw the seeds with replacement and, independently, the shared test tasks with replacement (a "
            "two-way bootstrap for crossed seeds x tasks; every seed is scored on the same tasks). With fewer than "
            f"{MIN_TASKS} tasks there is no interval (n/a).")


METHOD_NOTE = method_note(MSE)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (NaN bounds: not bootstrapped)."""

    value: float
    low: float = np.nan
    high: float = np.nan


def as_errors(values) -> np.ndarray:
    """float64 copy with every non-finite value (NaN, -inf, inf) as +inf: a blow-up ranks worst."""
    array = np.array(values, dtype=np.float64)
    array[~np.isfinite(array)] = np.inf
    return array


def error_scale(zero_mse, untrained_mse=np.nan) -> float:
    """The MSE an error is judged against, free of the targets' scale: the larger of the zero
    predictor's MSE (a scalar, or per-task values: their mean) and the untrained network's MSE on
    zero targets (a scalar, or one per seed: their largest; NaN or non-finite: not known), at
    least SCALE_FLOOR. Where the zero predictor's is the larger it is returned as is (bitwise)."""
    untrained = np.asarray(untrained_mse, dtype=np.float64).ravel()
    untrained = untrained[np.isfinite(untrained)]
    return max(float(np.mean(zero_mse)), float(untrained.max()) if untrained.size else 0.0, SCALE_FLOOR)


def blowup_threshold(zero_mse, untrained_mse=np.nan, scaled: bool = True, factor: float = BLOWUP_FACTOR) -> float:
    """`factor` (default BLOWUP_FACTOR) x the error scale (`error_scale`; today's zero-predictor
    threshold on sine-scale targets); another factor only for the sensitivity table
    (SENSITIVITY_FACTORS). `scaled=False` (a metric without `scaled_blowups`): inf, a blow-up is a
    non-finite value only. A scaled threshold needs a finite zero-predictor MSE (ValueError): from a
    NaN one the scale would be NaN or the floor, counting nothing or everything."""
    if not scaled:
        return np.inf
    if not np.isfinite(np.mean(zero_mse)):
        raise ValueError(f"a blow-up threshold needs a finite zero-predictor MSE, got {np.mean(zero_mse)!r}")
    return factor * error_scale(zero_mse, untrained_mse)


def blown_up(errors, threshold) -> np.ndarray:
    """Boolean array like `errors`: non-finite, or above `threshold` (a scalar, or per task on the last
    axis; inf: non-finite only). A NaN threshold is refused (ValueError): it would count nothing."""
    if np.isnan(np.asarray(threshold, dtype=np.float64)).any():
        raise ValueError("a NaN blow-up threshold counts nothing; use inf for 'non-finite values only'")
    errors = np.asarray(errors, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(errors) | (errors > np.asarray(threshold, dtype=np.float64))


def blowup_rate(errors, threshold) -> float:
    return float(blown_up(errors, threshold).mean())


def blown_up_by(errors_by_step, threshold) -> np.ndarray:
    """The cumulative blow-up: `errors_by_step` [..., steps, n_tasks] (step 0 first) -> a boolean array
    like it, true at step s where the task blew up at any step <= s. `blown_up` is the at-step one:
    a task above the threshold at step 2 and back below it at step 5 is blown up by step 5 but not
    at step 5. At step 0 both are the same."""
    blown = blown_up(errors_by_step, threshold)
    return np.logical_or.accumulate(blown, axis=-2) if blown.shape[-2] else blown


def iqm(values) -> float:
    """Interquartile mean of all values (scipy `trim_mean`, 25% cut from each end)."""
    return float(stats.trim_mean(as_errors(values).ravel(), IQM_CUT))


def median(values) -> float:
    return float(np.median(as_errors(values)))


def mean(values) -> float:
    return float(np.mean(as_errors(values)))


# ----------------------------------------------------------------------------- resampling

def resample_indices(n_seeds: int, n_tasks: int, n_resamples: int = N_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of bootstrap draws for one configuration: (seed indices [c, n_seeds], task indices
    [c, n_tasks]). The same arguments always give the same draws."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, CHUNK):
        size = min(CHUNK, n_resamples - start)
        yield rng.integers(0, n_seeds, (size, n_seeds)), rng.integers(0, n_tasks, (size, n_tasks))


def paired_resamples(n_seeds_a: int, n_seeds_b: int, n_tasks: int, n_resamples: int = N_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Chunks of bootstrap draws for a paired comparison: (A's seed indices [c, Sa], B's [c, Sb],
    task indices [c, n_tasks], shared by A and B). All seed draws come first; resamples are then
    grouped by the seed multiplicities they drew (every row of a chunk drew the same), so that
    the per-task differences of a group are computed and sorted once. Deterministic."""
    rng = np.random.default_rng(seed)
    seeds_a = rng.integers(0, n_seeds_a, (n_resamples, n_seeds_a))
    seeds_b = rng.integers(0, n_seeds_b, (n_resamples, n_seeds_b))
    key = np.concatenate([_counts(seeds_a, n_seeds_a), _counts(seeds_b, n_seeds_b)], axis=1)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    for group in range(inverse.max() + 1 if n_resamples else 0):
        rows = np.flatnonzero(inverse.ravel() == group)
        for start in range(0, rows.size, CHUNK):
            part = rows[start:start + CHUNK]
            yield seeds_a[part], seeds_b[part], rng.integers(0, n_tasks, (part.size, n_tasks))


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """[c, draws] indices -> [c, n] multiplicities (row-wise bincount; int32: half the memory traffic)."""
    rows = indices.shape[0]
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.int32)


def _weighted_sum(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum(weights * values) along the last axis, where a zero weight ignores an infinite value
    and +inf together with -inf gives NaN."""
    total = (weights * np.where(np.isfinite(values), values, 0.0)).sum(axis=-1)
    up = (weights * (values == np.inf)).sum(axis=-1) > 0
    down = (weights * (values == -np.inf)).sum(axis=-1) > 0
    total = np.where(up, np.inf, np.where(down, -np.inf, total))
    return np.where(up & down, np.nan, total)


def _order_stats(ordered: np.ndarray, weights: np.ndarray, n: int, with_iqm: bool = True) -> dict[str, np.ndarray]:
    """Median (and IQM) of weighted samples without expanding them.

    `ordered` [n_values] ascending; `weights` [c, n_values] integer multiplicities, each row
    summing to `n`. Row r is the sample holding ordered[i] weights[r, i] times; the result is
    exactly `np.median` and `scipy.stats.trim_mean(., 0.25)` of that sample (up to rounding)."""
    rows = weights.shape[0]
    upper = np.cumsum(weights, axis=1, dtype=np.int64)  # upper[r, i]: expanded positions covered by elements 0..i
    offsets = (n + 1) * np.arange(rows)
    flat = (upper + offsets[:, None]).ravel()  # rows laid end to end, still sorted: one searchsorted

    def covering(positions: list[int]) -> np.ndarray:
        """[rows, k]: how many elements lie wholly before each expanded position, i.e. the index of
        the element holding it."""
        queries = np.asarray(positions)[None, :] + offsets[:, None]
        return np.searchsorted(flat, queries.ravel(), side="right").reshape(rows, -1) - (
            upper.shape[1] * np.arange(rows))[:, None]

    def value(index: np.ndarray) -> np.ndarray:
        return ordered[np.minimum(index, ordered.size - 1)]

    middle = covering([(n - 1) // 2, n // 2])
    with np.errstate(invalid="ignore"):
        result = {"median": (value(middle[:, 0]) + value(middle[:, 1])) / 2}
    if not with_iqm:
        return result
    cut = int(IQM_CUT * n)
    finite = np.where(np.isfinite(ordered), ordered, 0.0)
    running = np.cumsum(weights * finite, axis=1)  # running[r, i]: sum of the copies of elements 0..i

    def partial(position: int, index: np.ndarray) -> np.ndarray:
        """Sum of the first `position` values of the expanded sorted sample."""
        whole = np.where(index > 0, np.take_along_axis(running, np.maximum(index - 1, 0)[:, None], 1)[:, 0], 0.0)
        before = np.where(index > 0, np.take_along_axis(upper, np.maximum(index - 1, 0)[:, None], 1)[:, 0], 0)
        return whole + (position - before) * finite[np.minimum(index, ordered.size - 1)]

    bounds = covering([cut, n - cut, n - cut - 1])
    iqm_value = (partial(n - cut, bounds[:, 1]) - partial(cut, bounds[:, 0])) / (n - 2 * cut)
    result["iqm"] = np.where(np.isinf(value(bounds[:, 2])), np.inf, iqm_value)  # a blow-up inside the middle half
    return result


def _interval(boot: np.ndarray, n_tasks: int) -> tuple[float, float]:
    """The percentile interval; NaN (undefined) with fewer than MIN_TASKS tasks or a NaN resample."""
    alpha = (1 - CONFIDENCE) / 2
    if n_tasks < MIN_TASKS or np.isnan(boot).any():
        return np.nan, np.nan
    return (float(np.quantile(boot, alpha, method="lower")), float(np.quantile(boot, 1 - alpha, method="higher")))


# ----------------------------------------------------------------------------- one configuration

def _negated(estimate: Estimate) -> Estimate:
    """-estimate, its interval's bounds swapped (0 - x: a zero stays 0, never -0)."""
    return Estimate(0.0 - estimate.value, 0.0 - estimate.high, 0.0 - estimate.low)


def _lower_is_better(values, higher_is_better: bool) -> np.ndarray:
    """The values as lower-is-better errors: negated for a higher-is-better metric (NaN stays NaN)."""
    values = np.asarray(values, dtype=np.float64)
    return 0.0 - values if higher_is_better else values


def summarize(errors, threshold, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
              higher_is_better: bool = False) -> dict[str, Estimate]:
    """Mean, median, IQM and blow-up rate of one configuration's errors [n_seeds, n_tasks], each with
    its two-way bootstrap interval (`n_resamples=0`: point estimates only). `higher_is_better`: the
    values are a higher-is-better metric (non-finite ranks lowest); its threshold must be inf (a
    blow-up is then a non-finite value only, `blowup_threshold(..., scaled=False)`)."""
    if not higher_is_better:
        return _summarize(errors, threshold, n_resamples, seed)
    if np.isfinite(np.asarray(threshold, dtype=np.float64)).any():
        raise ValueError(f"a higher-is-better metric has no blow-up threshold but non-finite values, got {threshold!r}")
    found = _summarize(_lower_is_better(errors, True), threshold, n_resamples, seed)
    return {name: estimate if name == "blowup" else _negated(estimate) for name, estimate in found.items()}


def _summarize(errors, threshold, n_resamples: int, seed: int) -> dict[str, Estimate]:
    values = as_errors(errors)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"errors must be a non-empty [n_seeds, n_tasks] array, got shape {values.shape}")
    n_seeds, n_tasks = values.shape
    n = values.size
    blown = blown_up(values, threshold).astype(np.float64)
    point = {"mean": mean(values), "median": median(values), "iqm": iqm(values), "blowup": float(blown.mean())}
    if n_resamples <= 0:
        return {name: Estimate(value) for name, value in point.items()}
    order = np.argsort(values.ravel(), kind="stable")
    ordered = values.ravel()[order]
    seed_of, task_of = np.divmod(order, n_tasks)
    finite = np.where(np.isfinite(values), values, 0.0)
    infinite = np.isinf(values).astype(np.float64)
    boot: dict[str, list[np.ndarray]] = {name: [] for name in point}
    for seed_idx, task_idx in resample_indices(n_seeds, n_tasks, n_resamples, seed):
        seeds, tasks = _counts(seed_idx, n_seeds), _counts(task_idx, n_tasks)
        seed_weights, task_weights = seeds.astype(np.float64), tasks.astype(np.float64)  # BLAS

        def total(matrix: np.ndarray) -> np.ndarray:  # sum over the resampled seed x task values
            return np.einsum("ct,st,cs->c", task_weights, matrix, seed_weights)  # no BLAS threads: shared cores

        boot["mean"].append(np.where(total(infinite) > 0, np.inf, total(finite) / n))
        boot["blowup"].append(total(blown) / n)
        robust = _order_stats(ordered, np.take(seeds, seed_of, axis=1) * np.take(tasks, task_of, axis=1), n)
        boot["median"].append(robust["median"])
        boot["iqm"].append(robust["iqm"])
    return {name: Estimate(point[name], *_interval(np.concatenate(boot[name]), n_tasks)) for name in point}


def shares(indicators, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[Estimate]:
    """The share of true values of each of `indicators` [m, n_seeds, n_tasks] (booleans: a task x seed
    blew up, at another threshold or by a step) with its two-way bootstrap interval: the draws of
    `summarize` (same seed, same resamples), so the share of `blown_up(errors, threshold)` is
    `summarize(errors, threshold)["blowup"]` exactly, and one loop serves the m indicators."""
    matrices = np.asarray(indicators, dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1] == 0 or matrices.shape[2] == 0:
        raise ValueError(f"indicators must be a [m, n_seeds, n_tasks] array, got shape {matrices.shape}")
    _, n_seeds, n_tasks = matrices.shape
    n = n_seeds * n_tasks
    point = [float(matrix.mean()) for matrix in matrices]
    if n_resamples <= 0:
        return [Estimate(value) for value in point]
    boot: list[list[np.ndarray]] = [[] for _ in point]
    for seed_idx, task_idx in resample_indices(n_seeds, n_tasks, n_resamples, seed):
        seed_weights = _counts(seed_idx, n_seeds).astype(np.float64)
        task_weights = _counts(task_idx, n_tasks).astype(np.float64)
        for found, matrix in zip(boot, matrices):
            found.append(np.einsum("ct,st,cs->c", task_weights, matrix, seed_weights) / n)  # as in `_summarize`
    return [Estimate(value, *_interval(np.concatenate(found), n_tasks)) for value, found in zip(point, boot)]


# ----------------------------------------------------------------------------- paired comparison

def _seed_mean(values: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
    """Weighted mean over seeds: [S] weights x [S, T] errors -> [T] (any weighted inf: inf)."""
    finite = np.where(np.isfinite(values), values, 0.0)
    infinite = seed_weights @ np.isinf(values).astype(np.float64) > 0
    return np.where(infinite, np.inf, seed_weights @ finite / seed_weights.sum())


def _differences(a_mean: np.ndarray, b_mean: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(a_mean) & np.isinf(b_mean), 0.0, a_mean - b_mean)


def paired_differences(errors_a, errors_b) -> np.ndarray:
    """Per-task difference [n_tasks]: A's seed-mean error minus B's (both infinite: 0)."""
    a, b = as_errors(errors_a), as_errors(errors_b)
    return _differences(_seed_mean(a, np.ones(a.shape[0])), _seed_mean(b, np.ones(b.shape[0])))


def compare(errors_a, errors_b, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
            higher_is_better: bool = False) -> dict[str, Estimate]:
    """A against B on the same tasks: mean and median of the per-task differences (A - B, in the
    metric's units; negative: A better, or positive with `higher_is_better`) and the probability of
    improvement P(A better than B in the metric's direction), each with its bootstrap interval.
    `errors_a` [Sa, T] and `errors_b` [Sb, T]: task j must be the same task in both."""
    if not higher_is_better:
        return _compare(errors_a, errors_b, n_resamples, seed)
    found = _compare(_lower_is_better(errors_a, True), _lower_is_better(errors_b, True), n_resamples, seed)
    return {name: estimate if name == "p_improvement" else _negated(estimate) for name, estimate in found.items()}


def _compare(errors_a, errors_b, n_resamples: int, seed: int) -> dict[str, Estimate]:
    a, b = as_errors(errors_a), as_errors(errors_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.size == 0 or b.size == 0:
        raise ValueError(f"paired errors need the same tasks: shapes {a.shape} and {b.shape}")
    (sa, n_tasks), sb = a.shape, b.shape[0]
    wins = (a[:, None, :] < b[None, :, :]) + 0.5 * (a[:, None, :] == b[None, :, :])  # [Sa, Sb, T], ties 1/2
    diff = paired_differences(a, b)
    point = {"mean_difference": float(_weighted_sum(diff, np.ones(n_tasks)) / n_tasks),
             "median_difference": float(np.median(diff)),
             "p_improvement": float(wins.mean())}
    if n_resamples <= 0:
        return {name: Estimate(value) for name, value in point.items()}
    boot: dict[str, list[np.ndarray]] = {name: [] for name in point}
    cached = None  # (seed multiplicities, sorted differences, their order, per-task P) of the current group
    for seed_a, seed_b, task_idx in paired_resamples(sa, sb, n_tasks, n_resamples, seed):
        weights_a, weights_b = _counts(seed_a[:1], sa)[0], _counts(seed_b[:1], sb)[0]
        key = (tuple(weights_a), tuple(weights_b))
        if cached is None or cached[0] != key:
            d = _differences(_seed_mean(a, weights_a), _seed_mean(b, weights_b))
            order = np.argsort(d, kind="stable")
            per_task = np.einsum("a,abt,b->t", weights_a, wins, weights_b) / (sa * sb)
            cached = (key, d[order], order, per_task[order])
        _, ordered, order, per_task = cached
        tasks = np.take(_counts(task_idx, n_tasks), order, axis=1)
        boot["mean_difference"].append(_weighted_sum(ordered, tasks) / n_tasks)
        boot["median_difference"].append(_order_stats(ordered, tasks, n_tasks, with_iqm=False)["median"])
        boot["p_improvement"].append(tasks @ per_task / n_tasks)
    boot = {name: np.concatenate(values) for name, values in boot.items()}
    return {name: Estimate(point[name], *_interval(boot[name], n_tasks)) for name in point}


@dataclass(frozen=True)
class VarianceComponents:
    """The variance of one configuration's seed x task values split into its sources, for planning:
    how many seeds and tasks a claim of a given precision needs. Two-way crossed random effects
    with one value per (seed, task), estimated by the ANOVA method of moments (negative estimates
    clipped at 0): `seed` (a model's offset, shared by all its tasks), `task` (a task's difficulty,
    shared by every model: the test tasks are the same for every seed) and `interaction` (a model
    on a task beyond both; with one value per pair it also holds the measurement noise)."""

    mean: float
    seed: float
    task: float
    interaction: float
    n_seeds: int
    n_tasks: int

    def variance_of_mean(self, n_seeds: int, n_tasks: int) -> float:
        """Var of the grand mean of `n_seeds` new seeds scored on `n_tasks` new tasks."""
        return self.seed / n_seeds + self.task / n_tasks + self.interaction / (n_seeds * n_tasks)

    def halfwidth(self, n_seeds: int, n_tasks: int) -> float:
        """The normal-approximation 95% half-width of that mean (the bootstrap's, to first order)."""
        return float(stats.norm.ppf(0.5 + CONFIDENCE / 2) * np.sqrt(self.variance_of_mean(n_seeds, n_tasks)))

    def seeds_needed(self, halfwidth: float, n_tasks: int) -> float:
        """The fewest seeds whose mean over `n_tasks` tasks has a 95% half-width <= `halfwidth`;
        inf where the task term alone is wider (more tasks are needed, not more seeds)."""
        z2 = stats.norm.ppf(0.5 + CONFIDENCE / 2) ** 2
        room = halfwidth ** 2 / z2 - self.task / n_tasks
        if room <= 0:
            return np.inf
        return float(max(1, np.ceil((self.seed + self.interaction / n_tasks) / room)))


def variance_components(values) -> VarianceComponents | None:
    """`VarianceComponents` of `values` [n_seeds, n_tasks] (one configuration, one step); None
    with fewer than 2 seeds or 2 tasks, or any non-finite value (a blow-up has no variance)."""
    x = np.asarray(values, dtype=np.float64)
    n_seeds, n_tasks = x.shape
    if n_seeds < 2 or n_tasks < 2 or not np.isfinite(x).all():
        return None
    grand = x.mean()
    seed_means, task_means = x.mean(axis=1), x.mean(axis=0)
    ms_seed = n_tasks * ((seed_means - grand) ** 2).sum() / (n_seeds - 1)
    ms_task = n_seeds * ((task_means - grand) ** 2).sum() / (n_tasks - 1)
    residual = x - seed_means[:, None] - task_means[None, :] + grand
    ms_interaction = (residual ** 2).sum() / ((n_seeds - 1) * (n_tasks - 1))
    return VarianceComponents(mean=float(grand), seed=float(max(0.0, (ms_seed - ms_interaction) / n_tasks)),
                              task=float(max(0.0, (ms_task - ms_interaction) / n_seeds)),
                              interaction=float(ms_interaction), n_seeds=n_seeds, n_tasks=n_tasks)
