"""Report layer: tables and figures regenerated from stored run records, without training.

Most tests build small synthetic records (fast, and with numbers chosen so the right answer
is known); one runs the real CLI on a tiny sweep.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks import plots  # noqa: E402
from benchmarks.analysis import analyse, pool_seeds, speed_frame  # noqa: E402
from benchmarks.artifacts import Artifacts  # noqa: E402
from benchmarks.config import Cell  # noqa: E402
from benchmarks.records import RecordError, write_record  # noqa: E402
from benchmarks.report import FIGURES, FORMATS, write_report  # noqa: E402
from benchmarks.tables import tables_markdown  # noqa: E402

STEPS = range(11)
GRID = np.linspace(-5, 5, 100)
N_TASKS = 50
ZERO_MSE = 4.0  # the blow-up threshold is 10 x this
#: task j's error is the step's mean x FACTOR[j] (mean exactly 1): the same tasks for every record
FACTOR = np.random.default_rng(0).permutation(np.linspace(0.5, 1.5, N_TASKS))


def make_record(algorithm="maml", backend="l2l", seed=0, k_shot=10, inner_steps=1, lr_base=0.01, lr_meta=0.001,
                meta_batch=25, iterations=100, status="ok", val=1.0, test=1.0, sec=0.01, ensemble=1,
                eval_ks=(5, 10), error=None, store=True, blowups=None) -> dict:
    """A run record shaped like `benchmarks.job._run_job`'s, with chosen final MSEs:
    `val`/`test` after one step at the trained K, higher at step 0, 1.5x at the other K.

    `store`: with per-task errors (the test split's task j = the mean x FACTOR[j]);
    `blowups`: (from step, n): the first n test tasks' errors are 1e6 from that step on, at
    every eval K, and the record's means include them."""
    cell = Cell(algorithm, backend, "sine", k_shot, inner_steps, lr_base, lr_meta, meta_batch, iterations, seed)
    record = {"cell_id": cell.cell_id, "cell": asdict(cell), "status": status, "error": error, "settings": {},
              "environment": {}, "device": "cpu", "peak_memory_mb": 100.0}
    if status == "failed":
        return record
    record.update(sec_per_iter=sec * ensemble, sec_per_iter_member=sec, ensemble_size=ensemble,
                  curve=[{"iteration": i, "loss": 3.0 / (1 + i / 10) + 0.01 * seed, "grad_norm": 5.0 + i / 50 + seed}
                         for i in range(10, iterations + 1, 10)])
    if status != "ok":
        record["evaluations"] = []
        return record
    evaluations = []
    for iteration in (iterations // 2, iterations):
        for split, base in (("validation", val), ("test", test)):
            for eval_k in eval_ks:
                for steps in STEPS:
                    mse = base * (3.0 if steps == 0 else 1.0 - 0.03 * (steps - 1)) * (1.0 if eval_k == k_shot else 1.5)
                    mse *= 2.0 if iteration < iterations else 1.0
                    mse += 0.01 * seed
                    evaluations.append({"iteration": iteration, "split": split, "eval_k_shot": eval_k,
                                        "eval_steps": steps, "mse": mse, "mse_ci95": 0.1 * mse,
                                        "n_test_tasks": N_TASKS})
    errors = {}
    for row in evaluations:
        if row["iteration"] == iterations:
            key = (row["split"], row["eval_k_shot"])
            errors.setdefault(key, np.zeros((len(STEPS), N_TASKS)))[row["eval_steps"]] = row["mse"] * FACTOR
    if blowups:
        start, n = blowups
        for key, values in errors.items():
            if key[0] == "test":
                values[start:, :n] = 1e6
        for row in evaluations:
            if row["iteration"] == iterations and row["split"] == "test" and row["eval_steps"] >= start:
                row["mse"] = float(errors[("test", row["eval_k_shot"])][row["eval_steps"]].mean())
    if store:
        record["_artifacts"] = Artifacts(params=[np.zeros((1, 1), np.float32)], lrs=[lr_base], errors=errors,
                                         n_sets={"test": 1, "validation": 1},
                                         zero_mse={key: ZERO_MSE for key in errors})
    support = np.linspace(0.2, 4.8, k_shot)
    record["evaluations"] = evaluations
    record["qualitative"] = {"x": GRID.tolist(), "truth": np.sin(GRID).tolist(), "support_x": support.tolist(),
                             "support_y": np.sin(support).tolist(),
                             "pred": {str(s): (np.sin(GRID) * (1 - 1 / (s + 2))).tolist() for s in (0, 1, 10)}}
    return record


def full_sweep() -> list[dict]:
    """Every figure has its data: two algorithms x two backends, S in {1, 2}, a 2x2 LR grid, two
    seeds; learn2learn MAML as the speed reference; one diverged and one failed cell."""
    records = []
    for algorithm, backends in (("maml", ("l2l", "func")), ("pretrain", ("torch", "func"))):
        for backend in backends:
            for inner_steps in (1, 2):
                for lr_base in (0.01, 0.05):
                    for lr_meta in (0.001, 0.01):
                        for seed in (0, 1):
                            good = 0.3 if algorithm == "maml" else 2.0
                            val = good * (1 + 10 * lr_base + 10 * lr_meta) / inner_steps
                            ensemble = 8 if backend == "func" else 1
                            sec = {"l2l": 0.05, "func": 0.002, "torch": 0.004}[backend] * inner_steps
                            records.append(make_record(algorithm, backend, seed, inner_steps=inner_steps,
                                                       lr_base=lr_base, lr_meta=lr_meta, val=val, test=val * 1.1,
                                                       sec=sec, ensemble=ensemble))
    records.append(make_record("maml", "l2l", seed=2, lr_base=0.5, status="diverged",
                               error="non-finite loss at iteration 30"))
    records.append(make_record("maml", "l2l", seed=3, lr_base=0.5, status="failed",
                               error="Traceback...\nRuntimeError: out of memory"))
    return records


def stored(records) -> dict:
    """cell_id -> per-task store entry, as `benchmarks.artifacts.load_task_errors` gives it."""
    return {r["cell_id"]: r["_artifacts"] for r in records if "_artifacts" in r and r["status"] == "ok"}


def write_records(out, records):
    for record in records:
        write_record(out, record)
    return out


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = write_records(tmp_path_factory.mktemp("full"), full_sweep())
    return out, write_report(out)


def test_full_report_writes_every_output(full_report):
    out, report = full_report
    # one K, not Finn's setup; made-up per-task stores are not the test tasks the sine streams redraw
    assert set(report.skipped) == {"fig11_error_vs_k", "fig13_reproduction", "fig15_blowup_amplitude"}
    assert "redraw" in report.skipped["fig15_blowup_amplitude"]
    for name in set(FIGURES) - set(report.skipped):
        for fmt in FORMATS:
            path = out / "figures" / f"{name}.{fmt}"
            assert path.exists() and path.stat().st_size > 1000, path
    assert (out / "figures" / "fig1_adaptation_steps.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (out / "figures" / "fig1_adaptation_steps.svg").read_bytes()[:500]
    summary = pd.read_csv(out / "summary.csv")
    assert {"algorithm", "backend", "split", "eval_k_shot", "eval_steps", "mse", "mse_ci95", "n_test_tasks",
            "sec_per_iter", "status"} <= set(summary.columns)
    assert set(summary["status"]) == {"ok", "diverged", "failed"}
    curves = pd.read_csv(out / "curves.csv")
    assert {"iteration", "loss", "grad_norm"} <= set(curves.columns) and len(curves) > 0
    tables = (out / "tables.md").read_text()
    for heading in ("## (a) Best configuration", "## (b) Speed", "## (c) Diverged and failed cells", "## Figures"):
        assert heading in tables
    assert "out of memory" in tables and "non-finite loss at iteration 30" in tables
    assert "t_{0.975,S-1}" in tables  # the CI method is stated under the table
    assert tables.count("**skipped**") == len(report.skipped)  # only the figures without their data
    assert not list(out.rglob("*.tmp"))


def _table_a(tables: str) -> list[dict]:
    """The Markdown table under heading (a), parsed back into rows."""
    block = tables.split("## (a)")[1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in block[2:]]


def test_best_configuration_is_chosen_by_validation_not_test(tmp_path):
    # config A: best on validation, worse on test; config B: the reverse
    records = [make_record("maml", "l2l", seed, lr_base=0.01, val=0.5, test=0.9) for seed in (0, 1)]
    records += [make_record("maml", "l2l", seed, lr_base=0.05, val=0.8, test=0.3) for seed in (0, 1)]
    write_records(tmp_path, records)
    write_report(tmp_path)
    rows = _table_a((tmp_path / "tables.md").read_text())
    own = [r for r in rows if r["eval K"] == "10"]
    assert len(own) == 1 and own[0]["LR_base"] == "0.01"
    assert own[0]["test MSE@1"].startswith("0.905 [")  # 0.9 + 0.01 * mean seed
    assert own[0]["val MSE@1"].startswith("0.505 [")
    assert own[0]["seeds"] == "2" and own[0]["test n"] == "50" and own[0]["cells ok"] == "2/2"
    other = [r for r in rows if r["eval K"] == "**5**"]
    assert len(other) == 1 and other[0]["LR_base"] == "0.01"  # same model, evaluated at K=5
    # every MSE in the table carries an interval
    for row in rows:
        for column in ("val MSE@1", "test MSE@1", "test MSE@5", "test MSE@10"):
            assert "[" in row[column]


def test_a_config_with_a_diverged_seed_ranks_after_complete_ones(tmp_path):
    records = [make_record("maml", "l2l", 0, lr_base=0.05, val=0.1, test=0.1),
               make_record("maml", "l2l", 1, lr_base=0.05, status="diverged", error="non-finite loss at iteration 10")]
    records += [make_record("maml", "l2l", seed, lr_base=0.01, val=0.5, test=0.5) for seed in (0, 1)]
    analysis = analyse(records)
    assert analysis.best.iloc[0]["lr_base"] == 0.01


def test_non_finite_evaluations_stay_visible(tmp_path):
    record = make_record("metasgd", "l2l", 0)
    for evaluation in record["evaluations"]:
        if evaluation["split"] == "test" and evaluation["eval_steps"] >= 7:
            evaluation["mse"], evaluation["mse_ci95"] = math.inf, math.nan
    tables = tables_markdown(analyse([record]), tmp_path, FIGURES, {})
    assert "test K=10 from step 7" in tables and "test K=5 from step 7" in tables
    row = next(r for r in _table_a(tables) if r["eval K"] == "10")
    assert row["test MSE@10"] == "inf†" and row["test MSE@5"].startswith("0.88 ±")


def test_seed_pooling_combines_task_and_seed_uncertainty():
    final = pd.DataFrame({"algorithm": "maml", "split": "test", "eval_k_shot": 10, "eval_steps": 1,
                          "seed": [0, 1], "mse": [1.0, 2.0], "mse_ci95": [0.1, 0.3], "n_test_tasks": 50})
    pooled = pool_seeds(final, ["algorithm"]).iloc[0]
    between = stats.t.ppf(0.975, 1) * np.std([1.0, 2.0], ddof=1) / math.sqrt(2)
    assert pooled["mse"] == pytest.approx(1.5)
    assert pooled["mse_ci95"] == pytest.approx(math.sqrt((0.1 ** 2 + 0.3 ** 2) / 2 + between ** 2))
    assert pooled["n_seeds"] == 2 and pooled["n_tasks"] == 50
    single = pool_seeds(final.iloc[:1], ["algorithm"]).iloc[0]
    assert single["mse_ci95"] == pytest.approx(0.1)  # one seed: the per-task interval alone


def test_speed_ratios_to_learn2learn_maml():
    records = [make_record("maml", "l2l", s, sec=0.1) for s in (0, 1)]
    records += [make_record("maml", "func", s, sec=0.005, ensemble=4) for s in (0, 1)]
    records += [make_record("maml", "func", s, inner_steps=2, sec=0.01, ensemble=4) for s in (0, 1)]
    speed = speed_frame(analyse(records).cells).set_index(["backend", "inner_steps"])
    assert speed.loc[("l2l", 1), "ratio"] == pytest.approx(1.0)
    assert speed.loc[("func", 1), "sec_per_iter"] == pytest.approx(0.02)
    assert speed.loc[("func", 1), "ratio"] == pytest.approx(0.2)
    assert speed.loc[("func", 1), "ratio_member"] == pytest.approx(0.05)
    assert math.isnan(speed.loc[("func", 2), "ratio"])  # no l2l MAML at S=2: no ratio


def test_missing_data_skips_figures_with_a_reason(tmp_path, caplog):
    # one algorithm, one backend, one S, one LR pair: no pre-training baseline, no grid, no S axis
    out = write_records(tmp_path, [make_record("maml", "l2l", seed) for seed in (0, 1)])
    stale = out / "figures" / "fig4_lr_heatmaps.png"
    stale.parent.mkdir()
    stale.write_bytes(b"from an earlier report")
    with caplog.at_level("WARNING", logger="benchmarks.figures"):
        report = write_report(out)
    assert set(report.skipped) == {"fig3_qualitative_sine_half", "fig4_lr_heatmaps", "fig5b_speed_vs_inner_steps",
                                   "fig8_paired_comparison", "fig9_paired_ecdf", "fig10_stability_map",
                                   "fig11_error_vs_k", "fig13_reproduction", "fig15_blowup_amplitude"}
    assert "maml, pretrain" in report.skipped["fig8_paired_comparison"]  # nothing to compare MAML with
    assert "pretrain" in report.skipped["fig3_qualitative_sine_half"]
    assert "LR_base" in report.skipped["fig4_lr_heatmaps"]
    assert "S" in report.skipped["fig5b_speed_vs_inner_steps"]
    tables = (out / "tables.md").read_text()
    for name, reason in report.skipped.items():
        assert f"`{name}`: **skipped**: {reason}" in tables
        assert name in caplog.text
        assert not (out / "figures" / f"{name}.png").exists()  # no stale figure left behind
    for name in set(FIGURES) - set(report.skipped):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.svg").exists()


def test_all_failed_sweep_still_reports(tmp_path):
    out = write_records(tmp_path, [make_record("maml", "l2l", 0, status="failed", error="ValueError: bad")])
    report = write_report(out)
    assert set(report.skipped) == set(FIGURES)
    tables = (out / "tables.md").read_text()
    assert "ValueError: bad" in tables and "no configuration can be chosen" in tables


def test_empty_folder_raises_record_error(tmp_path):
    with pytest.raises(RecordError, match="no run records"):
        write_report(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(RecordError, match="no run records"):
        write_report(tmp_path)
    assert not (tmp_path / "summary.csv").exists()


def test_corrupt_record_raises_and_writes_nothing(tmp_path):
    out = write_records(tmp_path, [make_record("maml", "l2l", 0)])
    (out / "runs" / "broken.json").write_text('{"cell_id": "broken", "cell": {')
    with pytest.raises(RecordError, match="broken.json"):
        write_report(out)
    assert not (out / "summary.csv").exists() and not (out / "tables.md").exists()
    assert not (out / "figures").exists()
    (out / "runs" / "broken.json").write_text(json.dumps({"cell_id": "broken"}))  # valid JSON, not a record
    with pytest.raises(RecordError, match="missing"):
        write_report(out)


def test_plot_functions_draw_into_a_given_ax(full_report):
    analysis = analyse(full_sweep())
    figure_count = len(plt.get_fignums())
    fig, axes = plt.subplots(2, 3)
    try:
        test = analysis.pooled[analysis.pooled["split"] == "test"].assign(label=lambda f: f["algorithm"])
        curves = analysis.curves.assign(label=lambda f: f["algorithm"])
        grid = analysis.scores[(analysis.scores["algorithm"] == "maml") & (analysis.scores["backend"] == "l2l")
                               & (analysis.scores["inner_steps"] == 1)].rename(columns={"test_mse": "mse"})
        speed = analysis.speed.assign(series=lambda f: f["backend"], label=lambda f: f["algorithm"] + f["backend"])
        calls = [
            (plots.plot_adaptation, axes[0, 0], test[test["eval_k_shot"] == 10]),
            (plots.plot_training_curves, axes[0, 1], curves),
            (plots.plot_qualitative, axes[0, 2], full_sweep()[0]["qualitative"]),
            (plots.plot_lr_heatmap, axes[1, 0], grid),
            (plots.plot_speed_bars, axes[1, 1], speed[speed["inner_steps"] == 1]),
            (plots.plot_speed_vs_steps, axes[1, 2], speed),
        ]
        for function, ax, data in calls:
            assert function(ax, data) is ax
            assert ax.has_data(), function.__name__
        assert len(plt.get_fignums()) == figure_count + 1  # none made a figure of its own
    finally:
        plt.close(fig)


def test_real_tiny_sweep_reports(tmp_path):
    from benchmarks.cli import main

    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = ["maml", "pretrain"]\nbackend = "func"\niterations = 20\nseed = [0, 1]\n'
                      "eval_every = 10\nlog_every = 5\nn_test_tasks = 20\nn_validation_tasks = 20\n")
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 0
    assert set(FIGURES) - {"fig4_lr_heatmaps", "fig5b_speed_vs_inner_steps", "fig10_stability_map", "fig11_error_vs_k",
                   "fig13_reproduction"} <= {
        p.stem for p in (out / "figures").glob("*.png")}
    assert main(["report", str(out)]) == 0
    rows = _table_a((out / "tables.md").read_text())
    assert {r["algorithm"] for r in rows} == {"maml", "pretrain"}


# ----------------------------------------------------------------------------- issue 10: statistics a reviewer trusts

def test_pooling_never_drops_a_non_finite_seed():
    final = pd.DataFrame({"algorithm": "maml", "split": "test", "eval_k_shot": 5, "eval_steps": 10,
                          "seed": [0, 1, 2], "mse": [0.3077, math.nan, math.nan],
                          "mse_ci95": [0.038, math.nan, math.nan], "n_test_tasks": 600})
    pooled = pool_seeds(final, ["algorithm"]).iloc[0]
    assert math.isnan(pooled["mse"]) and math.isnan(pooled["mse_ci95"])  # not seed 0 alone
    assert pooled["n_seeds"] == 3 and pooled["n_finite"] == 1
    assert pooled["mse_finite"] == pytest.approx(0.3077) and pooled["mse_finite_ci95"] == pytest.approx(0.038)
    overflow = pool_seeds(final.assign(mse=[0.3, math.inf, 0.5], mse_ci95=[0.1, math.nan, 0.1]), ["algorithm"]).iloc[0]
    assert overflow["mse"] == math.inf and overflow["n_finite"] == 2
    assert overflow["mse_finite"] == pytest.approx(0.4)  # the finite seeds, counted as 2 beside it


def test_a_nan_seed_is_visible_in_the_table_and_ranks_last(tmp_path):
    records = [make_record("maml", "l2l", seed, k_shot=20, eval_ks=(5, 20), store=False) for seed in (0, 1, 2)]
    for record in records[1:]:
        for row in record["evaluations"]:
            if row["split"] == "test" and row["eval_k_shot"] == 5 and row["eval_steps"] >= 10:
                row["mse"], row["mse_ci95"] = math.nan, math.nan
    tables = tables_markdown(analyse(records), tmp_path, FIGURES, {})
    row = next(r for r in _table_a(tables) if r["eval K"] == "**5**")
    assert row["test MSE@10"].startswith("nan [1/3 seeds finite: 1.095 ±"), row["test MSE@10"]  # seed 0 alone
    assert row["seeds"] == "3"
    # a configuration with a non-finite validation seed loses to a complete finite one
    bad = [make_record("maml", "l2l", seed, lr_base=0.05, val=0.1) for seed in (0, 1)]
    for row in bad[1]["evaluations"]:
        if row["split"] == "validation":
            row["mse"] = math.inf
    good = [make_record("maml", "l2l", seed, lr_base=0.01, val=0.5) for seed in (0, 1)]
    assert analyse(bad + good).best.iloc[0]["lr_base"] == 0.01


def test_blowup_rate_stands_next_to_every_mean(tmp_path):
    # 2 of 50 test tasks blow up from step 7, in both seeds: 4% from step 7 (so at 10), none at 1 and 5
    records = [make_record("maml", "l2l", seed, blowups=(7, 2)) for seed in (0, 1)]
    records += [make_record("pretrain", "torch", seed, test=2.0, val=2.0) for seed in (0, 1)]
    out = write_records(tmp_path, records)
    write_report(out)
    tables = (out / "tables.md").read_text()
    row = next(r for r in _table_a(tables) if r["algorithm"] == "maml" and r["eval K"] == "10")
    assert row["blow-up@1"] == "0" and row["blow-up@5"] == "0†" and row["blow-up@10"] == "4%†"
    assert row["val blow-up@1"] == "0"
    assert float(row["test MSE@10"].split()[0]) > 1e4  # the mean carries the blow-ups ...
    robust = tables.split("## (a2)")[1].split("\n\n")[1]
    maml = next(line for line in robust.splitlines() if line.startswith("| maml | l2l | 10 | 10 |"))
    cells = [c.strip() for c in maml.strip("|").split("|")]
    header = [c.strip() for c in robust.splitlines()[0].strip("|").split("|")]
    values = dict(zip(header, cells))
    assert float(values["median@10"].split()[0]) < 1.0  # ... the median and IQM show the typical task
    assert float(values["IQM@10"].split()[0]) < 1.0 and values["blow-up@10"].startswith("4% [")
    assert values["seeds×tasks"] == "2×50"
    assert "10 x its evaluation set's zero-predictor MSE" in tables and "2,000 bootstrap resamples" in tables
    assert (out / "robust.csv").exists() and (out / "figures" / "fig7_blowup_rate.png").exists()
    all_configs = tables.split("### All configurations")[1]
    assert "test blow-up@1" in all_configs and "val blow-up@1" in all_configs


def test_folders_without_per_task_errors_still_report(tmp_path):
    out = write_records(tmp_path, [make_record(a, b, seed, store=False) for a, b in (("maml", "l2l"),
                                                                                      ("pretrain", "torch"))
                                   for seed in (0, 1)])
    report = write_report(out)
    tables = (out / "tables.md").read_text()
    assert "no per-task errors" in tables
    row = _table_a(tables)[0]
    assert row["blow-up@10"] == "–" and row["test MSE@10"].count("±") == 1
    assert {"fig7_blowup_rate", "fig8_paired_comparison"} <= set(report.skipped)
    assert not (out / "paired.csv").exists() and not (out / "robust.csv").exists()


def test_paired_comparisons_against_maml_and_pretraining(tmp_path):
    records = [make_record("maml", "func", seed, test=0.5, val=0.5) for seed in (0, 1)]
    records += [make_record("msl", "func", seed, test=0.5, val=0.5) for seed in (0, 1)]  # MSL at S=1 is MAML
    records += [make_record("pretrain", "func", seed, test=2.0, val=2.0) for seed in (0, 1)]
    analysis = analyse(records, stored(records))
    paired = analysis.paired.set_index(["algorithm", "reference", "eval_k_shot", "eval_steps"])
    same = paired.loc[("msl", "maml", 10, 1)]
    assert same["mean_difference"] == 0 and same["p_improvement"] == 0.5
    versus = paired.loc[("maml", "pretrain", 10, 1)]
    # every task: maml's (0.5 + 0.01 seed) x FACTOR against pretrain's (2.0 + ...) x FACTOR, stored as float16
    assert versus["p_improvement"] == 1.0 and versus["mean_difference_high"] < 0
    assert versus["mean_difference"] == pytest.approx(-1.5 * np.mean(FACTOR), rel=1e-3)
    mirrored = paired.loc[("pretrain", "maml", 10, 1)]
    assert mirrored["mean_difference"] == pytest.approx(-versus["mean_difference"])
    assert mirrored["p_improvement"] == pytest.approx(1 - versus["p_improvement"])
    tables = tables_markdown(analysis, tmp_path, FIGURES, {})
    assert "### Against maml" in tables and "### Against pretrain" in tables and "P(better)@10" in tables


def test_reference_algorithms_are_a_setting(monkeypatch):
    from benchmarks import analysis as analysis_module

    records = [make_record(a, "func", seed) for a in ("maml", "fomaml", "anil") for seed in (0, 1)]
    frame = analysis_module.paired_frame(analyse(records).scores, analyse(records).pooled,
                                         analyse(records, stored(records)).task_errors, references=("anil",))
    assert set(frame["reference"]) == {"anil"} and set(frame["algorithm"]) == {"maml", "fomaml"}


def test_identical_curves_remain_distinguishable():
    frame = pd.concat([pd.DataFrame({"label": f"{name} [func, S=1]", "algorithm": name, "eval_steps": range(11),
                                     "mse": 3.0 / (1 + np.arange(11)), "mse_ci95": 0.1}) for name in ("maml", "msl")])
    fig, ax = plt.subplots()
    try:
        plots.plot_adaptation(ax, frame)
        lines = {line.get_label().split(" [")[0]: line for line in ax.get_lines()}
        maml, msl = lines["maml"], lines["msl"]
        assert maml.get_linestyle() != msl.get_linestyle() and maml.get_marker() != msl.get_marker()
        assert maml.get_color() != msl.get_color()
        assert msl.get_markerfacecolor() == "none"  # hollow on top: the line underneath shows through
        assert "= maml, identical" in msl.get_label() and "identical" not in maml.get_label()
    finally:
        plt.close(fig)


def test_one_style_per_algorithm_in_every_figure():
    from algorithms import ALGORITHMS

    styles = [plots.algorithm_style(name) for name in ALGORITHMS]
    assert len({s["color"] for s in styles}) == len(styles)  # distinct, fixed by registry order
    assert len({(s["marker"], str(s["linestyle"])) for s in styles}) == len(styles)
    assert plots.algorithm_style("maml") == plots.algorithm_style("maml")
    analysis = analyse(full_sweep())
    curves = analysis.curves.assign(label=lambda f: f["algorithm"])
    adaptation = analysis.pooled[analysis.pooled["split"] == "test"].assign(label=lambda f: f["algorithm"] + " [x]")
    speed = analysis.speed.assign(label=lambda f: f["algorithm"] + f["backend"])
    fig, axes = plt.subplots(1, 3)
    try:
        plots.plot_training_curves(axes[0], curves)
        plots.plot_adaptation(axes[1], adaptation[adaptation["eval_k_shot"] == 10])
        plots.plot_speed_vs_steps(axes[2], speed)
        for ax in axes:
            for line in ax.get_lines():
                name = line.get_label().split(" ")[0].split("[")[0].replace("l2l", "").replace("func", "").replace(
                    "torch", "")
                if name in ALGORITHMS:
                    assert line.get_color() == plots.algorithm_style(name)["color"], (ax, line.get_label())
    finally:
        plt.close(fig)


def test_figure_labels_use_readme_names():
    analysis = analyse(full_sweep())
    labels = list(analysis.figure_best["label"])
    assert all("LR_base=" in label and "LR_meta=" in label for label in labels)
    assert not any("α" in label or "β" in label for label in labels)


def test_one_eval_k_uses_the_canvas():
    from benchmarks import figures

    records = [make_record(a, "func", seed, eval_ks=(10,)) for a in ("maml", "pretrain") for seed in (0, 1)]
    fig = figures._fig_adaptation(analyse(records, stored(records)), plt)
    try:
        fig.canvas.draw()
        mean_panel = fig.axes[0].get_position()
        assert mean_panel.width > 0.6, mean_panel  # not a quarter of the figure
        assert len([ax for ax in fig.axes if ax.get_visible()]) == 2  # mean and IQM rows
    finally:
        plt.close(fig)


def test_speed_figures_name_their_source(tmp_path):
    import matplotlib.pyplot as pyplot

    from benchmarks import figures

    records = full_sweep()
    analysis = analyse(records)
    fig = figures._fig_speed_bars(analysis, pyplot)
    assert "under contention" in fig.axes[0].get_title()
    pyplot.close(fig)
    suite = pd.DataFrame([{"kind": "meta_iteration", "algorithm": a, "backend": b, "inner_steps": s, "meta_batch": 25,
                           "members": 1, "mode": None, "ms_median": ms * s}
                          for a, b, ms in (("maml", "l2l", 27.0), ("maml", "func", 0.7), ("pretrain", "torch", 0.6))
                          for s in (1, 5)]
                         + [{"kind": "ensemble", "algorithm": "maml", "backend": "func", "inner_steps": 1,
                             "meta_batch": 25, "members": 27, "mode": "ensemble", "ms_median": 7.0}])
    analysis = analyse(records, speed_suite=suite)
    for make in (figures._fig_speed_bars, figures._fig_speed_steps):
        fig = make(analysis, pyplot)
        title = fig.axes[0].get_title()
        assert "speed suite" in title and "contention" not in title
        pyplot.close(fig)
    fig = figures._fig_speed_bars(analysis, pyplot)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "maml [func, 27-member ensemble, per member]" in labels and "maml [l2l]" in labels
    pyplot.close(fig)


def test_a_failed_report_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    import os

    out = write_records(tmp_path, [make_record(a, "func", seed) for a in ("maml", "pretrain") for seed in (0, 1)])
    write_report(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "runs" not in p.parts}
    write_records(out, [make_record("fomaml", "func", 0)])  # new records: every output would change
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        write_report(out)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "runs" not in p.parts}
    assert after == before  # not one new figure beside old tables
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_no_import_circle_between_report_and_paper():
    import subprocess
    import sys

    code = ("import sys, benchmarks.paper, benchmarks.tables, benchmarks.figures; "
            "print('benchmarks.report' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_qualitative_figure_names_its_task_and_takes_its_pair_from_the_setting(monkeypatch):
    """Records before the task was stored fitted `sine-half`; a record naming its task is titled
    with it; `QUALITATIVE_PAIR` (the report's `--qualitative-pair`) picks the panels."""
    from benchmarks import figures

    records = [make_record(a, "func", seed) for a in ("maml", "pretrain", "fomaml") for seed in (0, 1)]
    fig = figures._fig_qualitative(analyse(records), plt)
    try:
        assert "`sine-half`" in fig._suptitle.get_text(), fig._suptitle.get_text()
        assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["MAML", "pre-training"]
    finally:
        plt.close(fig)
    for record in records:
        record["qualitative"]["task"] = "sine-freq"
    monkeypatch.setattr(figures, "QUALITATIVE_PAIR", ("fomaml", "maml"))
    fig = figures._fig_qualitative(analyse(records), plt)
    try:
        assert "`sine-freq`" in fig._suptitle.get_text() and "sine-half" not in fig._suptitle.get_text()
        assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["fomaml", "MAML"]
    finally:
        plt.close(fig)
    records[4]["qualitative"]["task"] = "sine"  # fomaml's seed 0, the one drawn; maml's stays sine-freq
    with pytest.raises(figures.Skip, match="different tasks"):
        figures._fig_qualitative(analyse(records), plt)
