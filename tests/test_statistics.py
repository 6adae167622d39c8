"""Robust statistics (`benchmarks.statistics`): blow-up rates, median/IQM, the two-way
bootstrap, paired comparisons. Each check recomputes the number directly (numpy/scipy on the
explicitly resampled data) so that a wrong shortcut in the fast implementation fails."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import statistics as st


def _direct_interval(values) -> tuple[float, float]:
    values = np.asarray(values)
    return (np.quantile(values, 0.025, method="lower"), np.quantile(values, 0.975, method="higher"))


def test_blowup_rate_on_a_constructed_set():
    zero_mse = 4.0  # threshold 10 x 4 = 40
    errors = np.array([[0.3, np.inf, 39.9, 40.0, 40.1, 1e6],
                       [np.nan, 0.2, 0.1, 0.5, 2.0, 3.0]])
    blown = st.blown_up(errors, st.blowup_threshold(zero_mse))
    # non-finite (inf, NaN) and strictly above 40 blew up; exactly 40 did not
    assert blown.tolist() == [[False, True, False, False, True, True], [True, False, False, False, False, False]]
    assert st.blowup_rate(errors, st.blowup_threshold(zero_mse)) == pytest.approx(4 / 12)
    assert st.blowup_threshold(np.array([4.0, 2.0])) == pytest.approx(30.0)  # per-task values: their mean
    assert st.summarize(errors, 40.0, n_resamples=0)["blowup"].value == pytest.approx(4 / 12)


def test_iqm_and_median_match_a_direct_computation_with_blowups_ranked_worst():
    rng = np.random.default_rng(3)
    errors = rng.lognormal(size=(3, 40))
    errors[0, :3] = [np.inf, np.nan, 1e9]
    ranked = np.where(np.isfinite(errors), errors, np.inf).ravel()
    assert st.iqm(errors) == pytest.approx(stats.trim_mean(ranked, 0.25))
    ordered = np.sort(ranked)
    assert st.iqm(errors) == pytest.approx(ordered[30:90].mean())  # 120 values: the middle 60
    assert st.median(errors) == pytest.approx((ordered[59] + ordered[60]) / 2)
    assert math.isinf(st.mean(errors))  # the mean does not drop a blow-up
    half_blown = np.where(np.arange(8) < 3, np.inf, 1.0)[None, :]  # 3 of 8 > a quarter: inside the middle half
    assert math.isinf(st.iqm(half_blown)) and st.median(half_blown) == 1.0


@pytest.mark.parametrize("n_seeds, n_tasks", [(3, 50), (1, 41), (2, 7)])
def test_bootstrap_intervals_match_direct_resampling(n_seeds, n_tasks):
    rng = np.random.default_rng(n_tasks)
    errors = rng.lognormal(size=(n_seeds, n_tasks))
    errors[0, 3] = np.inf
    errors[-1, 5] = 50.0
    result = st.summarize(errors, 10.0, n_resamples=400, seed=5)
    ranked = st.as_errors(errors)
    direct = {"mean": [], "median": [], "iqm": [], "blowup": []}
    for seed_idx, task_idx in st.resample_indices(n_seeds, n_tasks, 400, seed=5):
        for s, t in zip(seed_idx, task_idx):
            sample = ranked[s][:, t]  # seeds drawn with replacement, tasks drawn once for all seeds
            direct["mean"].append(sample.mean())
            direct["median"].append(np.median(sample))
            direct["iqm"].append(stats.trim_mean(sample.ravel(), 0.25))
            direct["blowup"].append(st.blown_up(sample, 10.0).mean())
    assert len(direct["mean"]) == 400
    for name, values in direct.items():
        low, high = _direct_interval(values)
        assert (result[name].low, result[name].high) == pytest.approx((low, high), rel=1e-12), name
    assert result["iqm"].value == pytest.approx(st.iqm(errors))
    assert result["median"].low <= result["median"].value <= result["median"].high


def test_bootstrap_is_reproducible_and_seeded():
    rng = np.random.default_rng(0)
    errors = rng.lognormal(size=(3, 200))
    first, again = st.summarize(errors, 40.0), st.summarize(errors, 40.0)
    assert first == again  # a fixed Generator seed: the same intervals every time
    other = st.summarize(errors, 40.0, seed=st.BOOTSTRAP_SEED + 1)
    assert other["iqm"].value == first["iqm"].value and other["iqm"].low != first["iqm"].low
    assert st.N_RESAMPLES == 2000 and "2,000" in st.METHOD_NOTE


def test_paired_difference_is_the_mean_of_per_task_differences():
    rng = np.random.default_rng(1)
    a = rng.lognormal(size=(3, 60))
    b = rng.lognormal(size=(2, 60))
    per_task = a.mean(axis=0) - b.mean(axis=0)  # each algorithm averaged over its own seeds, task by task
    assert st.paired_differences(a, b) == pytest.approx(per_task)
    result = st.compare(a, b, n_resamples=0)
    assert result["mean_difference"].value == pytest.approx(per_task.mean())
    assert result["mean_difference"].value == pytest.approx(a.mean() - b.mean())
    assert result["median_difference"].value == pytest.approx(np.median(per_task))
    wins = np.mean([[np.mean(a[i] < b[j]) for j in range(2)] for i in range(3)])
    assert result["p_improvement"].value == pytest.approx(wins)


def test_probability_of_improvement_with_one_seed_is_the_share_of_tasks_won():
    a = np.array([[1.0, 2.0, 3.0, 4.0, np.inf]])
    b = np.array([[2.0, 2.0, 1.0, 5.0, np.inf]])
    result = st.compare(a, b, n_resamples=0)
    assert result["p_improvement"].value == pytest.approx((1 + 0.5 + 0 + 1 + 0.5) / 5)  # ties (also both blown): ½
    assert st.paired_differences(a, b).tolist() == [-1.0, 0.0, 2.0, -1.0, 0.0]  # both blown up: a tie
    same = st.compare(a, a)
    assert same["mean_difference"].value == 0 and same["median_difference"].value == 0
    assert same["p_improvement"] == st.Estimate(0.5, 0.5, 0.5)  # identical algorithms: no difference, surely


def test_paired_bootstrap_matches_direct_resampling_on_shared_tasks():
    rng = np.random.default_rng(2)
    a = rng.lognormal(size=(3, 30))
    b = rng.lognormal(size=(2, 30)) + 1.5
    a[1, 4] = np.inf
    result = st.compare(a, b, n_resamples=300, seed=9)
    ranked_a, ranked_b = st.as_errors(a), st.as_errors(b)
    direct = {"mean_difference": [], "median_difference": [], "p_improvement": []}
    for seeds_a, seeds_b, tasks in st.paired_resamples(3, 2, 30, 300, seed=9):
        for i, j, t in zip(seeds_a, seeds_b, tasks):
            sample_a, sample_b = ranked_a[i][:, t], ranked_b[j][:, t]  # the same task draw for both
            d = st.paired_differences(sample_a, sample_b)
            direct["mean_difference"].append(d.mean())
            direct["median_difference"].append(np.median(d))
            direct["p_improvement"].append(np.mean([[np.mean((x < y) + 0.5 * (x == y)) for y in sample_b]
                                                    for x in sample_a]))
    assert len(direct["p_improvement"]) == 300
    for name, values in direct.items():
        low, high = _direct_interval(values)
        assert (result[name].low, result[name].high) == pytest.approx((low, high), rel=1e-12), name
    assert result["mean_difference"].value == math.inf  # A blew up on one task B did not
    assert result["median_difference"].high < 0  # ... yet A is better on the typical task, and surely so


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same tasks"):
        st.compare(np.ones((2, 5)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="n_seeds, n_tasks"):
        st.summarize(np.ones(5), 1.0)
