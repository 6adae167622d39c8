"""Issue 23, statistics: one interval method (the two-way bootstrap) for means, medians, IQMs and
blow-up rates wherever per-task errors exist; blow-up at step s and by step s (cumulative); the
blow-up threshold's sensitivity (3x, 10x, 100x); numbers beyond the trained inner steps S marked
as extrapolation. Constructed data with known answers; records from tests/test_report.py's builder."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_report import N_TASKS, ZERO_MSE, _table_a, make_record, stored  # noqa: E402

from benchmarks import figures, statistics  # noqa: E402
from benchmarks.analysis import analyse, extrapolated  # noqa: E402
from benchmarks.figures import FIGURES  # noqa: E402
from benchmarks.tables import (CUMULATIVE, EXTRAPOLATION_MARK, EXTRAPOLATION_NOTE, best_table,  # noqa: E402
                               fmt_estimate, robust_table, sensitivity_table, tables_markdown)

THRESHOLD = statistics.BLOWUP_FACTOR * ZERO_MSE


# ----------------------------------------------------------------------------- the bootstrap interval of the mean

def test_bootstrap_interval_of_the_mean_has_the_known_answer():
    # two seeds at -1 and +1, every task 0: a resample's mean is the mean of two drawn seeds, -1, 0 or +1
    # (1/4, 1/2, 1/4), so the 95% percentile interval is exactly [-1, 1] (the t-formula's is +-12.7)
    errors = np.array([[-1.0] * 40, [1.0] * 40])
    mean = statistics.summarize(errors, np.inf)["mean"]
    assert (mean.value, mean.low, mean.high) == (0.0, -1.0, 1.0)
    # one seed, tasks half 0 and half 2: the resampled mean is about N(1, 1/n), n = 400: [0.902, 1.098]
    half = np.array([[0.0, 2.0] * 200])
    mean = statistics.summarize(half, np.inf)["mean"]
    assert mean.value == 1.0
    assert mean.low == pytest.approx(1 - 1.96 / 20, abs=0.015) and mean.high == pytest.approx(1 + 1.96 / 20, abs=0.015)


def _records(**kw):
    return [make_record("maml", "func", seed, **kw) for seed in (0, 1)]


def test_table_means_carry_the_bootstrap_interval_where_per_task_errors_exist(tmp_path):
    records = _records()
    a = analyse(records, stored(records))
    row = next(r for _, r in best_table(a).iterrows() if r["eval K"] == 10)
    robust = a.robust[(a.robust["eval_k_shot"] == 10) & (a.robust["eval_steps"] == 1)].iloc[0]
    pooled = a.pooled[(a.pooled["split"] == "test") & (a.pooled["eval_k_shot"] == 10)
                      & (a.pooled["eval_steps"] == 1)].iloc[0]
    # the records' mean, the bootstrap interval of the per-task store (robust.csv's mean_low, mean_high)
    assert row["test MSE@1"] == fmt_estimate(statistics.Estimate(pooled["mse"], robust["mean_low"],
                                                                  robust["mean_high"]), 4)
    assert "±" not in "".join(map(str, row.values)) and "[" in row["val MSE@1"]
    text = tables_markdown(a, tmp_path, FIGURES, {})
    assert "±" not in text.split("## (a)")[1].split("\n\n")[1]
    # without a per-task store: the t-formula, labelled as such in the note
    old = analyse(records)
    row = next(r for _, r in best_table(old).iterrows() if r["eval K"] == 10)
    assert "±" in row["test MSE@1"] and "[" not in row["test MSE@1"]
    assert "**t-formula**, printed only where no per-task store exists" in tables_markdown(old, tmp_path, FIGURES, {})


def test_the_finite_seeds_mean_is_bootstrapped_too():
    records = _records(blowups=(7, 2))
    for row in records[1]["evaluations"]:
        if row["split"] == "test" and row["eval_steps"] >= 7:
            row["mse"] = np.inf
    records[1]["_artifacts"].errors[("test", 10)][7:, :2] = np.inf
    a = analyse(records, stored(records))
    cell = next(r for _, r in best_table(a).iterrows() if r["eval K"] == 10)["test MSE@10"]
    assert cell.startswith("inf [1/2 seeds finite: ") and "±" not in cell, cell


# ----------------------------------------------------------------------------- at step s and by step s

def test_cumulative_blowup_is_at_least_the_at_step_one_and_equal_at_step_0():
    rng = np.random.default_rng(1)
    errors = rng.lognormal(0.0, 3.0, size=(3, 11, 200))  # tasks cross the threshold up and down
    at = statistics.blown_up(errors, THRESHOLD)
    by = statistics.blown_up_by(errors, THRESHOLD)
    assert (by >= at).all() and (by[:, 0] == at[:, 0]).all() and (by[:, 1:] >= by[:, :-1]).all()
    assert (by > at).any()  # the data do drop back
    rates_at, rates_by = statistics.shares(at[:, 5][None]), statistics.shares(by[:, 5][None])
    assert rates_by[0].value >= rates_at[0].value and rates_by[0].low >= rates_at[0].low


def test_a_task_that_blows_up_at_step_2_and_recovers_at_step_5_counts_only_by_step_5():
    errors = np.full((1, 11, 4), 1.0)
    errors[0, 2:5, 0] = 1e6  # task 0 blows up at step 2, back below the threshold from step 5
    at, by = statistics.blown_up(errors, THRESHOLD), statistics.blown_up_by(errors, THRESHOLD)
    assert not at[0, 5, 0] and by[0, 5, 0] and at[0, 2, 0] and not by[0, 1, 0]
    # through the report: robust.csv's columns and table (a2)
    records = _records()
    for record in records:
        record["_artifacts"].errors[("test", 10)][2:5, :3] = 1e6  # 3 of 50 tasks, both seeds
    a = analyse(records, stored(records))
    row = a.robust[(a.robust["eval_k_shot"] == 10) & (a.robust["eval_steps"] == 5)].iloc[0]
    assert row["blowup"] == 0 and row["blowup_cumulative"] == pytest.approx(3 / N_TASKS)
    first = a.robust[(a.robust["eval_k_shot"] == 10) & (a.robust["eval_steps"] == 1)].iloc[0]
    assert first["blowup"] == first["blowup_cumulative"] == 0
    table = robust_table(a.robust).set_index("eval K").loc[10]
    assert table["blow-up@5"].startswith("0") and table[CUMULATIVE.format(5)].startswith("6% [")
    # the same draws as the at-step rate: summarize's blow-up is shares' exactly
    values = stored(records)[records[0]["cell_id"]].errors[("test", 10)][None, 3]
    assert statistics.shares([statistics.blown_up(values, THRESHOLD)])[0] == statistics.summarize(
        values, THRESHOLD)["blowup"]


# ----------------------------------------------------------------------------- threshold sensitivity

def test_threshold_sensitivity_rates_are_monotone_in_the_factor():
    rng = np.random.default_rng(2)
    errors = rng.lognormal(1.0, 2.5, size=(3, 300))
    thresholds = [f * ZERO_MSE for f in statistics.SENSITIVITY_FACTORS]
    assert statistics.SENSITIVITY_FACTORS == (3.0, 10.0, 100.0)
    rates = statistics.shares([statistics.blown_up(errors, t) for t in thresholds])
    for low, high in zip(rates, rates[1:]):  # a higher factor counts a subset, resample by resample
        assert low.value > high.value and low.low >= high.low and low.high >= high.high
    assert rates[1] == statistics.summarize(errors, thresholds[1])["blowup"]  # 10x is the tables' rule
    # through the report: blowup_3x >= blowup >= blowup_100x, and the table lists the factors
    records = _records()
    for record in records:
        record["_artifacts"].errors[("test", 10)][5:, :4] = 0.5 * THRESHOLD  # above 3x only
        record["_artifacts"].errors[("test", 10)][5:, 4:6] = 5 * THRESHOLD  # above 10x too
    a = analyse(records, stored(records))
    row = a.robust[(a.robust["eval_k_shot"] == 10) & (a.robust["eval_steps"] == 10)].iloc[0]
    assert (row["blowup_3x"], row["blowup"], row["blowup_100x"]) == pytest.approx((6 / 50, 2 / 50, 0))
    table, quiet = sensitivity_table(a.robust)
    assert list(table.columns[-3:]) == ["3×@10", "10×@10", "100×@10"] and "maml [func] K=10→5" in quiet
    assert table.iloc[0]["3×@10"].startswith("12% [")


def test_threshold_sensitivity_only_for_metrics_with_scaled_blowups(tmp_path):
    from test_report_metric import make_cls_record  # noqa: F401  (the classification builder)

    records = [make_cls_record(seed=seed) for seed in (0, 1)]
    a = analyse(records, stored(records))
    assert a.robust["blowup_3x"].isna().all() and a.robust["blowup_100x"].isna().all()
    assert sensitivity_table(a.robust)[0].empty
    assert "threshold sensitivity" not in tables_markdown(a, tmp_path, FIGURES, {})
    with pytest.raises(figures.Skip, match="scaled_blowups"):
        figures.make_figure("fig14_blowup_threshold", a, plt)


# ----------------------------------------------------------------------------- extrapolation marks

def test_extrapolation_marks_exactly_the_steps_beyond_the_trained_s(tmp_path):
    assert [extrapolated({"inner_steps": 5}, s) for s in (0, 1, 5, 6, 10)] == [False] * 3 + [True] * 2
    records = [make_record("maml", "func", seed, inner_steps=1) for seed in (0, 1)]
    records += [make_record("fomaml", "func", seed, inner_steps=5) for seed in (0, 1)]
    a = analyse(records, stored(records))
    best = best_table(a)
    for _, row in best.iterrows():
        s = int(row["S"])
        for step in (1, 5, 10):
            for column in (f"test MSE@{step}", f"blow-up@{step}"):
                assert row[column].endswith(EXTRAPOLATION_MARK) == (step > s), (row["algorithm"], column, row[column])
        assert not row["val MSE@1"].endswith(EXTRAPOLATION_MARK)
    robust = robust_table(a.robust)
    for _, row in robust.iterrows():
        for step in (1, 5, 10):
            for column in (f"median@{step}", f"IQM@{step}", f"blow-up@{step}", CUMULATIVE.format(step)):
                assert row[column].endswith(EXTRAPOLATION_MARK) == (step > int(row["S"])), (row["algorithm"], column)
    text = tables_markdown(a, tmp_path, FIGURES, {})
    assert EXTRAPOLATION_NOTE in text
    headline = text.split("## Headline")[1].split("\n\n")[1].splitlines()
    fomaml = next(line for line in headline if line.startswith("| fomaml"))
    maml = next(line for line in headline if line.startswith("| maml"))
    assert fomaml.count(EXTRAPOLATION_MARK) == 1 and fomaml.endswith(f"{EXTRAPOLATION_MARK} |")  # after 10 steps
    assert maml.count(EXTRAPOLATION_MARK) == 2  # after 5 and 10 steps
    # trained at S = 10: nothing is marked, and no note
    trained = [make_record("maml", "func", seed, inner_steps=10) for seed in (0, 1)]
    a = analyse(trained, stored(trained))
    text = tables_markdown(a, tmp_path, FIGURES, {})
    assert EXTRAPOLATION_MARK not in text


def test_figures_draw_the_trained_steps_and_say_so():
    records = [make_record("maml", "func", seed, inner_steps=1, blowups=(5, 3)) for seed in (0, 1)]
    a = analyse(records, stored(records))
    for name in ("fig1_adaptation_steps", "fig7_blowup_rate", "fig14_blowup_threshold"):
        fig = figures.make_figure(name, a, plt)
        try:
            caption = figures.caption(name, fig)
            assert "beyond the trained inner steps" in caption, name
            if name != "fig14_blowup_threshold":
                lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "trained_steps"]
                assert lines and all(line.get_xdata()[0] == 1 for line in lines), name
        finally:
            plt.close(fig)


def test_threshold_figure_rates_fall_with_the_factor():
    records = [make_record("maml", "func", seed, inner_steps=1, blowups=(5, 3)) for seed in (0, 1)]
    a = analyse(records, stored(records))
    fig = figures.make_figure("fig14_blowup_threshold", a, plt)
    try:
        curves = [line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert curves
        for line in curves:
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            assert list(x) == list(statistics.SENSITIVITY_FACTORS) and (np.diff(y) <= 0).all()
    finally:
        plt.close(fig)
    assert "fig14_blowup_threshold" in FIGURES and "fig14_blowup_threshold" in figures.FIGURE_MAKERS
