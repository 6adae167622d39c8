"""Numbers the report must not claim: divergence and blow-up read off the target scale,
intervals from a single task, percentages in exponent notation, non-finite task parameters.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest
import torch

from algorithms.evaluation import summarize as evaluation_summary
from benchmarks import figures, statistics
from benchmarks.analysis import analyse
from benchmarks.artifacts import Artifacts
from benchmarks.cli import main
from benchmarks.config import Cell
from benchmarks.job import DIVERGENCE_FACTOR
from benchmarks.records import load_records
from benchmarks.statistics import Estimate
from benchmarks.tables import fmt_estimate, fmt_mse, fmt_pooled, fmt_rate, tables_markdown
from tasks import get_task

TINY = """
algorithm = ["maml", "pretrain"]
backend = "func"
iterations = 20
meta_batch = 5
seed = 0
eval_steps = 2
n_test_tasks = 20
n_validation_tasks = 20
log_every = 10
"""


@pytest.fixture
def no_figures(monkeypatch):
    """The report without drawing (the tables are what these tests read; drawing costs seconds)."""
    monkeypatch.setattr(figures, "FIGURE_MAKERS", {})


def run(tmp_path, text: str, *extra: str) -> int:
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    return main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--threads", "1", *extra])


# ----------------------------------------------------------------------------- defect 7: scale

def test_tiny_targets_train_and_are_scored_not_diverged(tmp_path, no_figures):
    """Amplitudes 1e-4..1e-3: an untrained net's error is far above 1e4 x the targets' mean square,
    yet nothing diverged; the evaluation's blow-up yardstick is not the targets' scale either."""
    code = run(tmp_path, TINY, "--set", "task_params={amplitude_range = [0.0001, 0.001]}")
    assert code == 0
    records = load_records(tmp_path / "out")
    assert [(r["status"], r["error"]) for r in records] == [("ok", None)] * 2
    with open(tmp_path / "out" / "robust.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(float(row["blowup"]) == 0 for row in rows)
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "made before the per-task store" not in text and "Per-task errors are stored" in text
    assert "diverged" not in text.split("## (c)")[1].split("##")[0]


def test_the_thresholds_are_todays_on_sine_scale_targets():
    """max(zero predictor, untrained network): on Finn's sine the zero predictor's MSE (about 4) is
    far above an untrained net's outputs' mean square (0.02-0.5), so the threshold is bitwise today's."""
    for zero in (4.2, 3.965816020965576, 0.5):
        assert statistics.blowup_threshold(zero, [0.45, 0.02]) == statistics.BLOWUP_FACTOR * zero
        assert statistics.blowup_threshold(zero) == statistics.BLOWUP_FACTOR * zero
        assert DIVERGENCE_FACTOR * statistics.error_scale(zero, 0.45) == DIVERGENCE_FACTOR * zero
    # tiny targets: the untrained network's outputs set the scale (the largest seed's); none stored: today's
    assert statistics.blowup_threshold(1.7e-7, [0.45, 0.02]) == pytest.approx(4.5)
    assert statistics.blowup_threshold(1.7e-7, [np.nan]) == pytest.approx(1.7e-6)
    assert statistics.error_scale(0.0, 0.0) == statistics.SCALE_FLOOR  # nothing to measure against: the floor
    assert statistics.error_scale(1e-30, np.inf) == statistics.SCALE_FLOOR  # a non-finite scale is no scale


def test_divergence_reasons_name_the_scale_that_bound():
    from benchmarks.job import _divergence

    assert _divergence(0.006, 1.67e-7, 0.03) is None  # an untrained net's ordinary error on tiny targets
    assert _divergence(1e19, 3.97, 0.03) == "above 10000 x the zero predictor's MSE (3.97)"  # the words of today
    assert _divergence(3.97e4, 3.97, 0.03) is None and _divergence(3.9701e4, 3.97, 0.03) is not None
    assert "untrained network's MSE on zero targets 0.03" in _divergence(400.0, 1.67e-7, 0.03)
    assert _divergence(float("nan"), 3.97, 0.03) == "non-finite"


def _cell(seed=0, **fields) -> Cell:
    return Cell(**{"algorithm": "maml", "backend": "func", "task": "sine", "k_shot": 10, "inner_steps": 1,
                   "lr_base": 0.01, "lr_meta": 0.001, "meta_batch": 5, "iterations": 20, "seed": seed, **fields})


def _record(cell: Cell, status="ok", error=None, evaluations=(), artifacts=None) -> dict:
    record = {"cell_id": cell.cell_id, "cell": cell.__dict__, "status": status, "error": error, "settings": {},
              "environment": {}, "device": "cpu", "peak_memory_mb": 1.0, "sec_per_iter": 0.01,
              "sec_per_iter_member": 0.01, "ensemble_size": 1, "compile_seconds": 0.0, "engine": "accelerated",
              "curve": [], "evaluations": list(evaluations)}
    if artifacts is not None:
        record["_artifacts"] = artifacts
    return record


def test_a_folder_where_every_cell_diverged_says_so(tmp_path):
    records = [_record(_cell(seed=s), "diverged", "training loss nan at iteration 10: non-finite") for s in (0, 1)]
    records.append(_record(_cell(seed=2), "failed", "RuntimeError: boom"))
    text = tables_markdown(analyse(records, {}), tmp_path, {}, {})
    assert "made before the per-task store" not in text  # not blamed on the records' age
    assert "no cell finished `ok` (2 diverged, 1 failed" in text


# ----------------------------------------------------------------------------- defect 8: intervals

def test_one_task_gives_no_interval_anywhere():
    one = np.array([[6.9]])
    for errors in (one, np.array([[6.9], [7.1], [6.5]])):  # one task; one task x three seeds
        for name, estimate in statistics.summarize(errors, 42.0).items():
            assert math.isnan(estimate.low) and math.isnan(estimate.high), name
    for name, estimate in statistics.compare(one, np.array([[5.0]])).items():
        assert math.isnan(estimate.low) and math.isnan(estimate.high), name
    # two tasks: an interval (one seed: over the tasks alone, as the t interval's per-task term)
    assert not math.isnan(statistics.summarize(np.array([[6.9, 1.0]]), 42.0)["median"].low)
    # the per-record t interval: n = 1 has none; n = 2 has one
    assert np.isnan(evaluation_summary(torch.tensor([[6.9], [5.0]]))["mse_ci95"]).all()
    assert np.isfinite(evaluation_summary(torch.tensor([[6.9, 1.0]]))["mse_ci95"]).all()


def test_undefined_intervals_print_as_na():
    assert fmt_mse(6.9, float("nan")) == "6.9 ± n/a"
    assert fmt_mse(6.9, float("inf")) == "6.9 ± n/a"  # a spread that overflowed: no interval either
    assert fmt_mse(6.9, 0.25, 600, 3) == "6.9 ± 0.25 (n=600×3)"  # unchanged
    assert fmt_mse(float("inf"), float("nan")) == "inf"
    assert fmt_estimate(Estimate(6.9, np.nan, np.nan)) == "6.9 [n/a]"
    assert fmt_estimate(Estimate(6.9, 6.0, 7.5)) == "6.9 [6, 7.5]"
    assert fmt_rate(Estimate(0.0, np.nan, np.nan)) == "0 [n/a]"
    assert fmt_rate(Estimate(0.0), interval=False) == "0"  # a point estimate asked for as one
    pooled = pd.Series({"mse": np.inf, "mse_ci95": np.nan, "n_tasks": 1, "n_seeds": 2, "n_finite": 1,
                        "mse_finite": 6.9, "mse_finite_ci95": np.nan})
    assert fmt_pooled(pooled) == "inf [1/2 seeds finite: 6.9 ± n/a]"


def test_a_one_task_report_claims_no_certainty(tmp_path):
    """n_test_tasks = 1: no `± 0`, no `[6.9, 6.9]`; `n/a` with a note; the CSV columns NaN."""
    records = []
    for seed, value in ((0, 6.9), (1, 6.1)):
        evaluations = [{"iteration": 20, "split": split, "eval_k_shot": 10, "eval_steps": s, "mse": value,
                        "mse_ci95": float("nan"), "n_test_tasks": 1} for split in ("validation", "test")
                       for s in range(11)]
        errors = {(split, 10): np.full((11, 1), value) for split in ("validation", "test")}
        artifacts = Artifacts([np.zeros((1, 1), np.float32)], [0.01], errors, {"test": 1, "validation": 1},
                              {key: 4.0 for key in errors})
        records.append(_record(_cell(seed=seed), evaluations=evaluations, artifacts=artifacts))
    a = analyse(records, {r["cell_id"]: r["_artifacts"] for r in records})
    text = tables_markdown(a, tmp_path, {}, {})
    assert "± 0" not in text and "[6.9, 6.9]" not in text and "[6.1, 6.9]" not in text
    assert "6.5 [n/a]" in text and "± 0" not in text  # a bootstrap over one task has no interval
    assert "`n/a`: no interval" in text and "n/a" not in text.splitlines()[0]
    assert a.robust[["median_low", "median_high", "iqm_low", "iqm_high"]].isna().all().all()


# ----------------------------------------------------------------------------- defect 13

@pytest.mark.parametrize("rate, text", [
    (1.0, "100%"), (0.9995, "99.95%"), (0.996, "99.6%"), (0.34, "34%"), (0.0017, "0.17%"),
    (5.6e-5, "0.0056%"), (1e-7, "0.00001%"), (0.5, "50%"), (0.05, "5%")])
def test_percentages_never_print_in_exponent_notation(rate, text):
    assert fmt_rate(Estimate(rate), interval=False) == text


def test_percentage_intervals_too():
    assert fmt_rate(Estimate(0.999, 0.99, 1.0)) == "99.9% [99, 100]"
    assert fmt_rate(Estimate(0.0056e-2, 0.0, 0.00017)) == "0.0056% [0, 0.017]"


@pytest.mark.parametrize("params, named", [
    ({"noise": float("inf")}, "noise"), ({"noise": float("nan")}, "noise"), ({"noise": 1e39}, "noise"),
    ({"amplitude_range": [0.1, 1e39]}, "amplitude_range"), ({"x_range": [-float("inf"), 5.0]}, "x_range")])
def test_task_parameters_must_be_finite(params, named):
    with pytest.raises(ValueError, match=named):
        get_task("sine", **params)
    with pytest.raises(ValueError, match=named):
        get_task("sine-freq", **params)


def test_infinite_noise_is_a_config_error(tmp_path, capsys):
    assert run(tmp_path, TINY + "task_params = {noise = inf}\n") == 2
    err = capsys.readouterr().err
    assert "noise" in err and "inf" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
