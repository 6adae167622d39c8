"""Blow-up rate against a task's own parameter (the sine families' amplitude A): which tasks does
a fixed inner learning rate blow up on?

Why: at a fixed LR_base the support loss's curvature grows with A² (y = A·sin(x + φ)), so a rate
that is safe for small amplitudes overshoots on the largest ones. The per-task store keeps each
test task's error, not its parameters; the test sets are fixed streams (`tasks.evaluation_set`,
set j from the test seed + j), so the parameters are drawn again here, exactly as the job drew
them (`benchmarks.job.evaluation_sets`, from the record's own task family and settings), and
matched to the stored errors task by task.

Decisions:
- Only a family whose batches carry the parameter (`TaskBatch.params[PARAMETER]`: the sine
  families) and a folder in MSE (`Metric.scaled_blowups`: the blow-up yardstick is an MSE) get
  rows. The redrawn tasks must be the stored ones: their count and their zero predictor's MSE
  (which the store keeps, computed by the same function) must be equal, bitwise; otherwise no row
  (a warning), never a misattributed one.
- Bins: BINS equal-width bins between the smallest and largest amplitude drawn (Finn's range is
  [0.1, 5.0)), so each bin holds about a fifth of the tasks; a bin's rate is the share of its
  tasks × seeds blown up at the step, with the two-way bootstrap interval of `statistics.shares`
  restricted to the bin's tasks (its seeds and tasks resampled as everywhere else).
- Rows: table (a)'s chosen configurations (as robust.csv), at every evaluated test K and at
  TABLE_STEPS.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from benchmarks import statistics
from benchmarks.analysis import CONFIG_COLUMNS, TABLE_STEPS, Analysis, chosen_test_ks, matching
from benchmarks.records import stored_cell, stored_settings

log = logging.getLogger(__name__)

PARAMETER = "amplitude"
BINS = 5


def test_parameters(record: dict, eval_k: int, memo: dict | None = None) -> tuple[np.ndarray, float] | None:
    """(the PARAMETER of every test task `record` was scored on at `eval_k`, in the order the per-task
    store keeps them: set 0's tasks, then set 1's, ...; the zero predictor's MSE of those tasks, which
    must equal the store's to prove they are the same tasks); None for a family without it."""
    from benchmarks.config import cell_family
    from benchmarks.job import evaluation_sets, zero_predictor_mse

    cell, settings = stored_cell(record), stored_settings(record)
    family = cell_family(cell, settings)
    key = (repr(family), int(eval_k), repr(settings))
    if memo is not None and key in memo:
        return memo[key]
    batches = evaluation_sets(family, settings, [int(eval_k)], "cpu")[("test", int(eval_k))]
    found = None
    if all(PARAMETER in (batch.params or {}) for batch in batches):
        found = (np.concatenate([batch.params[PARAMETER].double().numpy() for batch in batches]),
                 zero_predictor_mse({"test": batches})["test"])
    if memo is not None:
        memo[key] = found
    return found


def amplitude_frame(a: Analysis, steps=TABLE_STEPS) -> pd.DataFrame:
    """Per chosen configuration, test eval K, step and amplitude bin: the blow-up rate at that step
    with its 95% two-way bootstrap interval (columns documented in docs/outputs.md,
    `blowup_amplitude.csv`). Empty for a folder without per-task stores or not in MSE."""
    rows: list[dict] = []
    if not a.task_errors or not a.metric.scaled_blowups or a.best.empty:
        return pd.DataFrame(rows)
    memo: dict = {}
    by_id = {r.get("cell_id"): r for r in reversed(a.records)}  # one pass; a repeated id: the first, as ever
    for config, eval_k in chosen_test_ks(a.best, a.pooled):
        cell_ids = matching(a.task_errors.cells, config)["cell_id"]
        record = by_id.get(cell_ids.iloc[0]) if len(cell_ids) else None
        if record is None:
            continue
        found = a.task_errors.errors(config, "test", eval_k)
        if found is None:
            continue
        values, threshold, _ = found
        try:
            amplitude = test_parameters(record, int(eval_k), memo)
        except (KeyError, ValueError, TypeError) as error:  # a plug-in family not loaded, a changed family
            log.warning("%s: cannot redraw its test tasks (%s): no blow-up by amplitude", record["cell_id"], error)
            continue
        if amplitude is None:
            continue
        amplitude, zero = amplitude
        if amplitude.shape[0] != values.shape[2] or zero != found[2]:
            log.warning("%s: the redrawn test tasks at K=%d are not the stored ones (%d tasks, zero-predictor "
                        "MSE %r; stored: %d, %r): no blow-up by amplitude", record["cell_id"], eval_k,
                        amplitude.shape[0], zero, values.shape[2], found[2])
            continue
        edges = np.linspace(amplitude.min(), amplitude.max(), BINS + 1)
        bins = np.clip(np.searchsorted(edges, amplitude, side="right") - 1, 0, BINS - 1)
        for step in steps:
            if step >= values.shape[1]:
                continue
            blown = statistics.blown_up(values[:, step], threshold)
            for b in range(BINS):
                in_bin = bins == b
                if not in_bin.any():
                    continue
                estimate, = statistics.shares([blown[:, in_bin]])
                rows.append({**{c: config[c] for c in CONFIG_COLUMNS}, "eval_k_shot": int(eval_k),
                             "eval_steps": int(step), "amplitude_low": float(edges[b]),
                             "amplitude_high": float(edges[b + 1]), "n_seeds": values.shape[0],
                             "n_tasks": int(in_bin.sum()), "blowup": estimate.value,
                             "blowup_low": estimate.low, "blowup_high": estimate.high})
    return pd.DataFrame(rows)
