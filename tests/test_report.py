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
from benchmarks.config import Cell  # noqa: E402
from benchmarks.records import RecordError, write_record  # noqa: E402
from benchmarks.report import (FIGURES, FORMATS, analyse, pool_seeds, speed_frame, tables_markdown,  # noqa: E402
                               write_report)

STEPS = range(11)
GRID = np.linspace(-5, 5, 100)


def make_record(algorithm="maml", backend="l2l", seed=0, k_shot=10, inner_steps=1, lr_base=0.01, lr_meta=0.001,
                meta_batch=25, iterations=100, status="ok", val=1.0, test=1.0, sec=0.01, ensemble=1,
                eval_ks=(5, 10), error=None) -> dict:
    """A run record shaped like `benchmarks.job._run_job`'s, with chosen final MSEs:
    `val`/`test` after one step at the trained K, higher at step 0, 1.5x at the other K."""
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
                                        "eval_steps": steps, "mse": mse, "mse_ci95": 0.1 * mse, "n_test_tasks": 50})
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
    assert report.skipped == {}
    for name in FIGURES:
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
    assert "**skipped**" not in tables
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
    assert own[0]["test MSE@1"].startswith("0.905 ±")  # 0.9 + 0.01 * mean seed
    assert own[0]["val MSE@1"].startswith("0.505 ±")
    assert own[0]["seeds"] == "2" and own[0]["test n"] == "50" and own[0]["cells ok"] == "2/2"
    other = [r for r in rows if r["eval K"] == "**5**"]
    assert len(other) == 1 and other[0]["LR_base"] == "0.01"  # same model, evaluated at K=5
    # every MSE in the table carries an interval
    for row in rows:
        for column in ("val MSE@1", "test MSE@1", "test MSE@5", "test MSE@10"):
            assert "±" in row[column]


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
    tables = tables_markdown(analyse([record]), tmp_path, {})
    assert "test K=10 from step 7" in tables and "test K=5 from step 7" in tables
    row = next(r for r in _table_a(tables) if r["eval K"] == "10")
    assert row["test MSE@10"] == "inf" and row["test MSE@5"].startswith("0.88 ±")


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
    with caplog.at_level("WARNING", logger="benchmarks.report"):
        report = write_report(out)
    assert set(report.skipped) == {"fig3_qualitative_sine_half", "fig4_lr_heatmaps", "fig5b_speed_vs_inner_steps"}
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
    assert set(FIGURES) - {"fig4_lr_heatmaps", "fig5b_speed_vs_inner_steps"} <= {
        p.stem for p in (out / "figures").glob("*.png")}
    assert main(["report", str(out)]) == 0
    rows = _table_a((out / "tables.md").read_text())
    assert {r["algorithm"] for r in rows} == {"maml", "pretrain"}
