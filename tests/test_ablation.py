"""The fidelity-ablation report (`benchmarks.ablation`) on tiny folders: 20-iteration runs of the
base sweep `benchmarks/configs/ablation.toml` with the ablations' own overrides."""
from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest

from benchmarks import ablation
from benchmarks.artifacts import load_task_errors
from benchmarks.config import load_sweep
from benchmarks.paper import PUBLISHED
from benchmarks.records import load_records
from benchmarks.sweep import run_sweep

TINY = ["iterations=20", "seed=[0, 1]", "n_test_tasks=4", "n_test_sets=2", "n_validation_tasks=4", "eval_steps=1",
        "eval_every=0", "log_every=10"]


def _run(out, *overrides):
    """The sweep's records only (no report: its figures cost more than the training here)."""
    records = run_sweep(load_sweep(ablation.CONFIG, [*TINY, *overrides]), out, progress=False)
    assert records and all(r["status"] == "ok" for r in records)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    _run(root / "reference")
    _run(root / "reference", 'algorithm="pretrain"', "lr_base=[0.01, 0.1]")  # a tuned test-time rate, as committed
    _run(root / "ablations" / "init", *ablation.ABLATIONS["init"])
    _run(root / "ablations" / "eval-query", *ablation.ABLATIONS["eval-query"])
    _run(root / "ablations" / "pretrain-support", *ablation.ABLATIONS["pretrain-support"])
    return root


def _per_task(folder, algorithm="maml"):
    records = load_records(folder)
    stores = load_task_errors(folder, records)
    by_seed = {r["cell"]["seed"]: stores[r["cell_id"]].errors[("test", 5)][1] for r in records
               if r["cell"]["algorithm"] == algorithm}
    return np.stack([by_seed[s] for s in sorted(by_seed)]).astype(np.float64)


def test_the_base_sweep_is_the_references_maml_cells():
    """At its defaults the base file's cells are reference.toml's MAML cells trained at K = 10 (the K = 10 -> 5
    transfer the ablations study), under the same settings."""
    base = load_sweep(ablation.CONFIG)
    reference = load_sweep(ablation.ROOT / "benchmarks" / "configs" / "reference.toml")
    assert set(base.cells) == {c for c in reference.cells if c.algorithm == "maml" and c.k_shot == 10}
    assert base.settings == reference.settings
    raw = tomllib.loads(ablation.CONFIG.read_text())
    assert raw["iterations"] == 70000 and raw["eval_k_shot"] == [5] and raw["seed_streams"] == "independent"


def test_every_ablation_parses():
    for name, overrides in ablation.ABLATIONS.items():
        sweep = load_sweep(ablation.CONFIG, list(overrides))
        assert sweep.cells, name


def test_the_report_pairs_each_ablation_with_the_baseline(folders):
    written = ablation.write_report(folders / "ablations", folders / "reference")
    assert [p.name for p in written] == list(ablation.FILES)
    frame = pd.read_csv(folders / "ablations" / "ablations.csv", keep_default_na=False, na_values=[""])
    assert list(frame["ablation"]) == ["init", "eval-query", "pretrain-support"]  # `ABLATIONS` order
    init = frame[frame["ablation"] == "init"].iloc[0]
    ours, base = _per_task(folders / "ablations" / "init"), _per_task(folders / "reference")
    assert (init["n_seeds"], init["n_tasks"], init["n_paired_seeds"]) == (2, 8, 2)
    assert init["mean"] == pytest.approx(ours.mean(), rel=1e-12)
    assert init["baseline_mean"] == pytest.approx(base.mean(), rel=1e-12)
    assert init["difference"] == pytest.approx((ours - base).mean(), rel=1e-9, abs=1e-12)
    assert init["difference"] != 0  # Finn's initialisation trains another network
    for name in ("mean", "baseline_mean", "difference"):
        low, high = name.replace("_mean", "") + "_low", name.replace("_mean", "") + "_high"
        assert init[low] <= init[name] <= init[high], name
    assert init["paper"] == float(PUBLISHED.query("algorithm == 'maml' and eval_steps == 1")["published"].iloc[0])
    assert init["overrides"] == 'init="finn"'
    # only the test tasks' query points differ: training is the baseline's, the same tasks are compared
    query = frame[frame["ablation"] == "eval-query"].iloc[0]
    assert query["n_tasks"] == 8 and query["difference"] == pytest.approx((_per_task(
        folders / "ablations" / "eval-query") - base).mean(), rel=1e-9, abs=1e-12)
    # pre-training pairs with the reference's pre-training at the base sweep's LR_base (test below)
    pre = frame[frame["ablation"] == "pretrain-support"].iloc[0]
    assert pre["algorithm"] == "pretrain" and np.isfinite(pre["difference"]) and not isinstance(pre["note"], str)
    # a reference without the algorithm: nothing to pair with (the report's note names it)
    assert ablation._baseline_for({"algorithm": "pretrain"}, {}, folders / "reference") is None
    assert pre["paper"] == float(PUBLISHED.query("algorithm == 'pretrain' and eval_steps == 1")["published"].iloc[0])
    text = (folders / "ablations" / "ablations.md").read_text()
    assert "| init | `init=\"finn\"` | maml | func |" in text and "paired by seed and test task" in text


def test_other_test_sets_are_refused_and_nothing_is_written(folders, tmp_path, capsys):
    other = tmp_path / "reference"
    _run(other, "n_test_sets=1")
    before = {p.name for p in (folders / "ablations").iterdir()}
    assert ablation.main([str(folders / "ablations"), "--baseline", str(other)]) == 2
    assert "cannot be paired" in capsys.readouterr().err
    assert {p.name for p in (folders / "ablations").iterdir()} == before


def test_bad_folders_and_names_exit_2(tmp_path, capsys):
    assert ablation.main([str(tmp_path / "missing"), "--baseline", str(tmp_path)]) == 2
    assert "no ablation folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ablation.main([str(tmp_path / "empty"), "--baseline", str(tmp_path)]) == 2
    assert "run a sweep" in capsys.readouterr().err  # the baseline folder holds no records
    assert ablation.main([str(tmp_path / "x"), "--run", "--only", "inti"]) == 2
    assert "unknown ablation(s) 'inti'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_list_prints_every_ablation(capsys):
    assert ablation.main(["unused", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(ablation.ABLATIONS)
    assert "--set 'init=\"finn\"'" in lines[0]


def test_a_group_with_several_configurations_pairs_with_the_base_sweeps(folders):
    """The reference tunes pre-training's test-time LR_base: its ablation pairs with the base sweep's
    LR_base (0.01), not a guess and not a refusal."""
    frame = ablation.ablation_frame(folders / "ablations", folders / "reference")
    row = frame[(frame["ablation"] == "pretrain-support") & (frame["algorithm"] == "pretrain")].iloc[0]
    records = load_records(folders / "reference")
    stores = load_task_errors(folders / "reference", records)
    chosen = [stores[r["cell_id"]].errors[("test", 5)][1] for r in sorted(records, key=lambda r: r["cell"]["seed"])
              if r["cell"]["algorithm"] == "pretrain" and r["cell"]["lr_base"] == 0.01]
    assert len(chosen) == 2 and row["baseline_mean"] == pytest.approx(float(np.mean(chosen)), rel=1e-12)


def test_the_eval_query_ablation_is_a_re_evaluation_of_the_baseline(folders, tmp_path):
    """`n_eval_query` is an evaluation setting: re-evaluating the baseline's models with it gives, bitwise,
    the per-task errors of training the ablation from scratch (so the committed ablation costs no training)."""
    from benchmarks.reevaluate import evaluation_overrides, reevaluate

    out = tmp_path / "eval-query"
    reevaluate(folders / "reference", out, evaluation_overrides(['n_eval_query="k"']), progress=lambda *a: None)
    assert np.array_equal(_per_task(out), _per_task(folders / "ablations" / "eval-query"))
    assert not np.array_equal(_per_task(out), _per_task(folders / "reference"))
