"""The report layer reads the folder's metric (issue 21): a classification folder (accuracy,
higher is better) is labelled, selected, compared, checked for blow-ups and regressed on
accuracy, never on a lower-is-better "MSE".

Records and per-task stores are built synthetically (as in test_report.py), with numbers chosen
so that the right answer is known.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from benchmarks import statistics  # noqa: E402
from benchmarks.analysis import analyse  # noqa: E402
from benchmarks.artifacts import Artifacts  # noqa: E402
from benchmarks.cli import main  # noqa: E402
from benchmarks.config import Cell  # noqa: E402
from benchmarks.document import Figure, render_markdown  # noqa: E402
from benchmarks.records import write_record  # noqa: E402
from benchmarks.render_html import render_html  # noqa: E402
from benchmarks.render_latex import render_latex  # noqa: E402
from benchmarks.tables import report_blocks  # noqa: E402
from tasks.problem import accuracy  # noqa: E402

STEPS = range(6)
N_TASKS = 40
#: task j's accuracy is the step's mean + OFFSET[j] (mean 0): the same tasks for every record
OFFSET = np.random.default_rng(1).permutation(np.linspace(-0.1, 0.1, N_TASKS))
CHANCE = 0.5
METRIC = accuracy(2).declaration()


def make_cls_record(algorithm="maml", backend="func", seed=0, lr_base=0.01, val=0.7, test=0.7, iterations=100,
                    metric=METRIC, scale=1.0, store=True) -> dict:
    """A classification record: `val`/`test` are the accuracies after one step at the trained K
    (chance at step 0, rising by 0.01 a step after), + 0.01 x seed; `scale` multiplies every
    value (a metric in other units)."""
    cell = Cell(algorithm, backend, "gauss-class", 5, 1, lr_base, 0.001, 25, iterations, seed)
    record = {"cell_id": cell.cell_id, "cell": asdict(cell), "status": "ok", "error": None, "settings": {},
              "environment": {}, "device": "cpu", "peak_memory_mb": 100.0, "metric": metric,
              "sec_per_iter": 0.01, "sec_per_iter_member": 0.01, "ensemble_size": 1,
              "curve": [{"iteration": i, "loss": 0.7 - i / 1000, "grad_norm": 1.0}
                        for i in range(10, iterations + 1, 10)]}
    evaluations, errors = [], {}
    for split, base in (("validation", val), ("test", test)):
        values = np.zeros((len(STEPS), N_TASKS))
        for steps in STEPS:
            value = (CHANCE if steps == 0 else base + 0.01 * (steps - 1)) + 0.01 * seed
            values[steps] = (value + OFFSET) * scale
            evaluations.append({"iteration": iterations, "split": split, "eval_k_shot": 5, "eval_steps": steps,
                                "loss": 0.5, "loss_ci95": 0.01, metric["name"]: float(values[steps].mean()),
                                f"{metric['name']}_ci95": 0.02 * scale, "n_test_tasks": N_TASKS})
        errors[(split, 5)] = values
    record["evaluations"] = evaluations
    if store:
        record["_artifacts"] = Artifacts(params=[np.zeros((1, 1), np.float32)], lrs=[lr_base], errors=errors,
                                         n_sets={"test": 1, "validation": 1},
                                         zero_mse={key: math.nan for key in errors})
    return record


def stored(records) -> dict:
    return {r["cell_id"]: r["_artifacts"] for r in records if "_artifacts" in r}


def write_records(out: Path, records) -> Path:
    for record in records:
        write_record(out, dict(record))
    return out


def grid() -> list[dict]:
    """maml: LR_base 0.01 is the more accurate on validation (0.8) but the less on test; anil is
    more accurate than maml everywhere; pretrain is the least accurate."""
    records = []
    for seed in (0, 1):
        records.append(make_cls_record("maml", seed=seed, lr_base=0.01, val=0.8, test=0.6))
        records.append(make_cls_record("maml", seed=seed, lr_base=0.05, val=0.6, test=0.75))
        records.append(make_cls_record("anil", seed=seed, lr_base=0.01, val=0.85, test=0.85))
        records.append(make_cls_record("pretrain", seed=seed, lr_base=0.01, val=0.55, test=0.55))
    return records


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory):
    out = write_records(tmp_path_factory.mktemp("cls"), grid())
    assert main(["report", str(out)]) == 0
    return out


def test_table_a_chooses_the_highest_validation_accuracy():
    analysis = analyse(grid(), stored(grid()))
    assert analysis.metric.name == "accuracy"
    chosen = analysis.best.set_index("algorithm")
    assert chosen.loc["maml", "lr_base"] == 0.01  # validation 0.8 beats 0.6 (its test is the worse one)
    assert chosen.loc["maml", "val_accuracy"] == pytest.approx(0.805)
    assert analysis.figure_best.set_index("algorithm").loc["maml", "lr_base"] == 0.01


def test_table_a_shows_accuracy_and_the_chance_level(report_folder):
    tables = (report_folder / "tables.md").read_text()
    block = tables.split("## (a)")[1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in block[2:]]
    maml = next(r for r in rows if r["algorithm"] == "maml")
    assert maml["LR_base"] == "0.01" and maml["val accuracy@1"].startswith("0.805 [")
    assert maml["test accuracy@1"].startswith("0.605 [")
    assert "highest mean **validation** accuracy" in tables
    assert "chance = 0.5" in tables


def test_the_more_accurate_algorithm_is_better_in_paired_comparisons():
    records = grid()
    paired = analyse(records, stored(records)).paired.set_index(["algorithm", "reference", "eval_steps"])
    anil = paired.loc[("anil", "maml", 1)]  # anil 0.85 (+ seed) against maml's chosen 0.6 (+ seed), every task
    assert anil["p_improvement"] == 1.0 and anil["p_improvement_low"] == 1.0
    assert anil["mean_difference"] == pytest.approx(0.25, abs=2e-3) and anil["mean_difference_low"] > 0
    assert anil["median_difference"] == pytest.approx(0.25, abs=2e-3)
    maml = paired.loc[("maml", "pretrain", 1)]  # maml's chosen 0.6 against pretrain's 0.55
    assert maml["p_improvement"] == 1.0 and maml["mean_difference"] == pytest.approx(0.05, abs=2e-3)
    back = paired.loc[("pretrain", "maml", 1)]
    assert back["p_improvement"] == 0.0 and back["mean_difference"] == pytest.approx(-maml["mean_difference"])


def test_statistics_follow_the_direction():
    values = np.array([[0.2, 0.9, 0.6, 0.7]])
    up = statistics.summarize(values, math.inf, n_resamples=200, higher_is_better=True)
    down = statistics.summarize(values, math.inf, n_resamples=200)
    assert up["median"].value == down["median"].value == pytest.approx(0.65)
    assert up["median"].low <= 0.65 <= up["median"].high
    nan = np.array([[0.2, np.nan, 0.6, 0.7]])  # a non-finite value ranks worst: low for accuracy
    assert statistics.summarize(nan, math.inf, 0, higher_is_better=True)["mean"].value == -math.inf
    assert statistics.summarize(nan, math.inf, 0)["mean"].value == math.inf
    better = statistics.compare([[0.9, 0.8]], [[0.5, 0.6]], n_resamples=0, higher_is_better=True)
    assert better["p_improvement"].value == 1.0 and better["mean_difference"].value == pytest.approx(0.3)


def test_accuracies_are_never_counted_as_blowups():
    # tiny and large accuracies alike: with no MSE yardstick (NaN zero_mse) only a non-finite value blows up
    records = [make_cls_record("maml", seed=s, val=0.02, test=0.02) for s in (0, 1)]
    records += [make_cls_record("anil", seed=s, val=0.9, test=0.9) for s in (0, 1)]
    analysis = analyse(records, stored(records))
    assert not analysis.robust.empty and (analysis.robust["blowup"] == 0).all()
    assert (analysis.robust["blowup_high"] == 0).all()
    found = analysis.task_errors.errors(analysis.best.iloc[0], "test", 5)
    assert found is not None and found[1] == math.inf  # the threshold: non-finite only


def test_nan_yardsticks_never_make_a_nan_threshold():
    with pytest.raises(ValueError, match="zero-predictor"):
        statistics.blowup_threshold(math.nan)
    with pytest.raises(ValueError, match="threshold"):
        statistics.blown_up([1.0, 2.0], math.nan)
    assert statistics.blowup_threshold(math.nan, scaled=False) == math.inf
    assert statistics.blowup_threshold(4.0) == 40.0  # the MSE rule as before


def _without_figures_html(text: str) -> str:
    text = re.sub(r"<figure\b.*?</figure>", "", text, flags=re.S)
    return re.sub(r"<p><code>fig[^<]*</code>: <strong>skipped</strong>.*?</p>", "", text, flags=re.S)


def test_no_mse_anywhere_in_a_classification_report(report_folder):
    """Figures (captions, axes) belong to benchmarks.figures; every table, note, LaTeX file and CSV
    header of the report proper names accuracy."""
    tables = (report_folder / "tables.md").read_text()
    text = "\n".join(line for line in tables.splitlines() if not line.startswith("- `fig"))
    assert "MSE" not in text, [line for line in text.splitlines() if "MSE" in line][:5]
    assert "accuracy" in text
    for path in (report_folder / "latex").glob("*.tex"):
        assert "MSE" not in path.read_text(), path
    html = _without_figures_html((report_folder / "index.html").read_text())
    assert "MSE" not in html, [line for line in html.splitlines() if "MSE" in line][:3]
    for path in report_folder.glob("*.csv"):
        header = list(pd.read_csv(path, nrows=0).columns)
        assert not [c for c in header if "mse" in c.lower()], (path, header)
    summary = pd.read_csv(report_folder / "summary.csv")
    assert {"accuracy", "accuracy_ci95", "loss", "loss_ci95"} <= set(summary.columns)
    assert summary["accuracy"].notna().all()
    # the same blocks with no figure at all: nothing says MSE in any format
    records = grid()
    blocks = [b for b in report_blocks(analyse(records, stored(records)), report_folder, {}, {})
              if not isinstance(b, Figure)]
    for text in (render_markdown(blocks), *render_latex(blocks).values(), render_html(blocks, {})):
        assert "MSE" not in text


def test_sine_notes_keep_their_words():
    """The MSE wording is the metric-aware wording at MSE (the committed reports regenerate bitwise)."""
    from benchmarks.analysis import CI_NOTE, ci_note
    from benchmarks.tables import PAIRED_NOTE, paired_note
    from tasks.problem import MSE

    assert ci_note(MSE) == CI_NOTE and paired_note(MSE) == PAIRED_NOTE
    assert statistics.method_note(MSE) == statistics.METHOD_NOTE
    assert "lower" in PAIRED_NOTE and "higher" in paired_note(accuracy(2))


def test_a_folder_mixing_metrics_is_refused(tmp_path, capsys):
    from test_report import make_record

    sine = make_record("maml", "func", 0)
    sine.pop("_artifacts", None)
    write_records(tmp_path, [sine, make_cls_record(store=False)])
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "different metrics" in err and "accuracy" in err and "mse" in err and "Traceback" not in err, err
    assert not (tmp_path / "tables.md").exists() and not (tmp_path / "summary.csv").exists()


# ----------------------------------------------------------------------------- regress

def _tolerances(tmp_path: Path, name: str = "accuracy", **invariants) -> Path:
    lines = [f"[{name}]", "rtol = 0.0", "atol = 0.01", f"[{name}_ci95]", "rtol = 0.1", "atol = 0.01",
             "[invariants]", "diverged_above = 1000.0"] + [f"{k} = {v!r}" for k, v in invariants.items()]
    path = tmp_path / f"tolerances-{name}.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def _regress(base: Path, candidate: Path, tolerances: Path) -> int:
    return main(["regress", "--baseline", str(base), "--candidate", str(candidate), "--tolerances", str(tolerances)])


def _regress_folder(tmp_path: Path, name: str, **changes) -> Path:
    """maml more accurate than pretrain (0.8 against 0.6); `changes`: maml's test accuracy."""
    records = [make_cls_record("pretrain", seed=s, val=0.6, test=0.6, store=False) for s in (0, 1)]
    records += [make_cls_record("maml", seed=s, val=0.8, test=changes.get("maml", 0.8), store=False) for s in (0, 1)]
    return write_records(tmp_path / name, records)


def test_regress_a_classification_baseline_against_itself_passes(tmp_path, capsys):
    base = _regress_folder(tmp_path, "base")
    assert _regress(base, _regress_folder(tmp_path, "candidate"), _tolerances(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "(accuracy, accuracy_ci95)" in out, out


def test_regress_a_less_accurate_candidate_fails(tmp_path, capsys):
    base = _regress_folder(tmp_path, "base", maml=0.5)
    candidate = _regress_folder(tmp_path, "candidate", maml=0.5)  # no number moves: only the invariant fails
    assert _regress(base, candidate, _tolerances(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "maml (func) does not beat pretrain" in out and "accuracy 0.5050 vs 0.6050" in out, out
    assert "higher is better" in out, out


def test_regress_values_above_diverged_above_are_numbers_for_another_metric(tmp_path, capsys):
    """`diverged_above` is an MSE yardstick: a metric without scaled blow-ups is compared by value
    however large (only a non-finite value is compared by class)."""
    reward = {"name": "reward", "label": "reward", "higher_is_better": True, "chance": None}
    base = write_records(tmp_path / "base", [make_cls_record(seed=s, metric=reward, scale=5000.0, store=False)
                                             for s in (0, 1)])
    candidate = write_records(tmp_path / "candidate", [
        make_cls_record(seed=s, test=0.5, metric=reward, scale=5000.0, store=False) for s in (0, 1)])
    assert _regress(base, candidate, _tolerances(tmp_path, "reward")) == 1
    out = capsys.readouterr().out
    assert "moved beyond tolerance" in out and "reward" in out, out


def test_regress_needs_the_metrics_tolerances_and_one_metric(tmp_path, capsys):
    from test_report import make_record

    base = _regress_folder(tmp_path, "base")
    mse_only = tmp_path / "mse.toml"
    mse_only.write_text("[mse]\nrtol = 0.03\natol = 0.001\n[mse_ci95]\nrtol = 0.1\natol = 0.001\n")
    assert _regress(base, base, mse_only) == 2
    err = capsys.readouterr().err
    assert "lacks [accuracy]" in err and str(mse_only) in err, err
    sine = make_record("maml", "func", 0)
    sine.pop("_artifacts")
    other = write_records(tmp_path / "sine", [sine])
    assert _regress(base, other, _tolerances(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "accuracy" in err and "mse" in err and "Traceback" not in err, err


def test_the_default_tolerances_still_serve_sine_and_may_hold_accuracy(tmp_path):
    from benchmarks.regress import DEFAULT_TOLERANCES, load_tolerances
    from tasks.problem import MSE

    assert load_tolerances() == load_tolerances(DEFAULT_TOLERANCES, MSE)
    both = tmp_path / "both.toml"
    both.write_text(DEFAULT_TOLERANCES.read_text().replace(
        "[invariants]", "[accuracy]\nrtol = 0\natol = 0.01\n[accuracy_ci95]\nrtol = 0\natol = 0.01\n\n[invariants]"))
    assert load_tolerances(both)["mse"] == load_tolerances()["mse"]
    assert load_tolerances(both, accuracy(2))["accuracy"] == {"rtol": 0, "atol": 0.01}
    assert json.dumps(load_tolerances(both)["invariants"]) == json.dumps(load_tolerances()["invariants"])


# ----------------------------------------------------------------------------- hostile and edge cases

def test_a_non_finite_accuracy_ranks_last_not_first():
    """+inf would be the "highest" accuracy: non-finite values rank worst in either direction."""
    records = [make_cls_record("maml", seed=s, lr_base=0.01, val=0.6, test=0.6) for s in (0, 1)]
    hostile = [make_cls_record("maml", seed=s, lr_base=0.05, val=0.9, test=0.9, store=False) for s in (0, 1)]
    for record in hostile:
        for row in record["evaluations"]:
            row["accuracy"] = math.inf
    analysis = analyse(records + hostile)
    assert analysis.best.iloc[0]["lr_base"] == 0.01


def test_a_metric_named_like_a_report_column_is_refused(tmp_path, capsys):
    clash = {"name": "algorithm", "label": "algorithm", "higher_is_better": True, "chance": None}
    write_records(tmp_path, [make_cls_record(metric=clash, store=False)])
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metric name 'algorithm'" in err and "Traceback" not in err, err


def test_an_mse_store_without_a_finite_yardstick_gets_no_blowup_rate(caplog):
    """An MSE store whose zero-predictor MSE is NaN (a damaged file) has no threshold: no per-task
    statistics and a warning, never a NaN threshold that counts no blow-up."""
    from test_report import make_record, stored as sine_stored

    records = [make_record("maml", "func", seed) for seed in (0, 1)]
    for record in records:
        record["_artifacts"].zero_mse = {key: math.nan for key in record["_artifacts"].zero_mse}
    analysis = analyse(records, sine_stored(records))
    assert analysis.robust.empty
    assert "no finite zero-predictor MSE" in caplog.text


def test_a_tolerance_that_is_not_a_table_is_refused(tmp_path, capsys):
    base = _regress_folder(tmp_path, "base")
    bad = tmp_path / "bad.toml"
    bad.write_text("accuracy = 3\n[accuracy_ci95]\nrtol = 0.1\natol = 0.01\n")
    assert _regress(base, base, bad) == 2
    err = capsys.readouterr().err
    assert "[accuracy]" in err and str(bad) in err, err
