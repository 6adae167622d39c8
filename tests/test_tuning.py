"""Issue 23, "tuning at the reported budget": successive halving on validation (`benchmarks.tuning`,
`python -m benchmarks tune`), at tiny sizes (sine and `gauss-class`, 6-36 iterations, 10 tasks).

What is proved: the rungs' iterations and survivor counts; the survivors are the validation-best
by the report's own selection, in the metric's direction (accuracy: higher); a winner at the edge
of its grid extends it one step beyond and the extension is recorded; an interrupted tuning
resumes without training any cell twice; bad input exits 2 with nothing written; tuning.csv's
columns are the documented ones.
"""
from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmarks import tuning
from benchmarks.analysis import SELECT_STEPS, analyse
from benchmarks.cli import main
from benchmarks.config import LIMITS, SCHEMA, Cell, ConfigError
from benchmarks.records import load_records
from benchmarks.signals import Interrupted

ROOT = Path(__file__).resolve().parents[1]

BASE = {"algorithm": "maml", "backend": "func", "iterations": 36, "meta_batch": 5, "seed": [0, 1],
        "lr_base": [0.001, 0.01, 0.1], "eval_steps": 1, "n_test_tasks": 10, "n_validation_tasks": 10,
        "log_every": 6, "compile": False}


def sweep_text(tuning_table: dict | None = None, **keys) -> str:
    """A sweep file: BASE with `keys` changed (None: removed), then a [tuning] table."""
    values = {k: v for k, v in {**BASE, **keys}.items() if v is not None}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    if tuning_table is not None:
        lines += ["[tuning]", *(f"{k} = {json.dumps(v)}" for k, v in tuning_table.items())]
    return "\n".join(lines) + "\n"


TINY = sweep_text()


def write(tmp_path: Path, text: str, name: str = "tune.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def no_report(monkeypatch):
    """The report (figures: ~15 s) is `run`'s own, tested there; here it is a stub."""
    monkeypatch.setattr("benchmarks.report.write_report",
                        lambda out, limits=None: SimpleNamespace(tables=Path(out) / "tables.md"))


def pooled_validation(records: list[dict], metric: str = "mse") -> dict:
    """Seed-pooled validation value after SELECT_STEPS at the trained K, computed here by hand
    from the records: {lr_base: value}."""
    values: dict = {}
    for record in records:
        cell = record["cell"]
        (value,) = [e[metric] for e in record["evaluations"] if e["split"] == "validation"
                    and e["eval_steps"] == SELECT_STEPS and e["eval_k_shot"] == cell["k_shot"]
                    and e["iteration"] == cell["iterations"]]
        values.setdefault(cell["lr_base"], []).append(value)
    return {lr: sum(v) / len(v) for lr, v in values.items()}


# ----------------------------------------------------------------------------- the plan (no training)

def test_rung_iterations_survivors_and_budget_at_the_reported_budget():
    plan = tuning.load_tuning(ROOT / "benchmarks" / "configs" / "tuned.toml")
    assert len(plan.groups) == 7 and {len(c) for c in plan.groups.values()} == {9}
    # Reptile at its customary several inner steps (at S = 1 it is pre-training), everyone else at S = 1
    assert {group[1]: {c.inner_steps for c in cells} for group, cells in plan.groups.items()} == {
        **{a: {1} for a in ("maml", "fomaml", "msl", "metasgd", "anil", "pretrain")}, "reptile": {5}}
    assert plan.rungs == 3 and plan.kept == [9, 3, 1]
    assert [plan.iterations(r) for r in range(3)] == [7778, 23333, 70000]  # 70,000 / 9 and / 3, rounded
    assert [plan.seeds_at(r) for r in range(3)] == [[0, 1, 2]] * 3
    assert plan.budget == 9 * 3 * 7778 + 3 * 3 * 23333 + 1 * 3 * 70000 == 630_003
    assert plan.sweep.settings.n_test_sets == 1 and plan.sweep.settings.compile is False
    # fewer rungs on request: the first starts higher; seeds_per_rung thins the lower rungs only
    raw = {"algorithm": "maml", "backend": "func", "iterations": 70000, "seed": [0, 1, 2],
           "lr_base": [0.003, 0.01, 0.03], "lr_meta": [0.0003, 0.001, 0.003],
           "tuning": {"rungs": 2, "seeds_per_rung": 1}}
    plan = tuning.plan_tuning(raw)
    assert plan.kept == [9, 3] and [plan.iterations(r) for r in range(2)] == [23333, 70000]
    assert [plan.seeds_at(r) for r in range(2)] == [[0], [0, 1, 2]]
    assert plan.budget == 9 * 1 * 23333 + 3 * 3 * 70000
    # as many rungs as the candidates allow: 4 candidates at eta 2 -> 4, 2, 1; iterations >= 1
    plan = tuning.plan_tuning({"algorithm": "maml", "backend": "func", "iterations": 2, "lr_base": [0.1, 0.2],
                               "inner_steps": [1, 2], "tuning": {"eta": 2}})
    assert plan.kept == [4, 2, 1] and [plan.iterations(r) for r in range(3)] == [1, 1, 2]


def test_the_groups_are_the_schemas_compared_keys_and_the_candidates_the_rest():
    plan = tuning.plan_tuning({"algorithm": ["maml", "fomaml"], "backend": "func", "k_shot": [5, 10],
                               "lr_meta": [0.001, 0.003], "seed": [3, 4]})
    assert len(plan.groups) == 4 and all(len(c) == 2 for c in plan.groups.values())
    assert tuning.GROUP_KEYS == SCHEMA.compared
    assert "seed" not in tuning.TUNED_KEYS and "iterations" not in tuning.TUNED_KEYS
    assert set(tuning.TUNED_KEYS) | set(SCHEMA.compared) | {"seed", "iterations"} == set(SCHEMA.names)


def test_a_winner_at_the_edge_extends_its_grid_one_step_beyond():
    cells = [Cell(algorithm="maml", backend="func", lr_base=b, lr_meta=m, inner_steps=s)
             for b in (0.01, 0.03) for m in (0.001, 0.003) for s in (0, 1)]
    winner = next(c for c in cells if (c.lr_base, c.lr_meta, c.inner_steps) == (0.03, 0.001, 0))
    new, notes = tuning.extensions(cells, winner, LIMITS)
    # rates log-spaced by the grid's ratio (0.03 * 3, 0.001 / 3), the corner included; S = 0 - 1 is invalid
    assert sorted({(c.lr_base, c.lr_meta) for c in new}) == sorted(
        {(0.09, 0.001), (0.09, 0.003), (0.01, 0.000333333333333), (0.03, 0.000333333333333),
         (0.09, 0.000333333333333)})
    assert len(new) == 10 and len(set(new)) == 10 and not set(new) & set(cells)
    assert len(notes) == 1 and "inner_steps" in notes[0] and "-1" in notes[0]
    interior = [Cell(algorithm="maml", backend="func", meta_batch=b) for b in (5, 10, 15)]
    assert tuning.extensions(interior, interior[1], LIMITS) == ([], [])
    new, _ = tuning.extensions(interior, interior[2], LIMITS)  # integers step by the grid's difference
    assert [c.meta_batch for c in new] == [20]


# ----------------------------------------------------------------------------- training

def test_survivors_are_the_validation_best_and_the_report_selects_the_chosen(tmp_path, monkeypatch, capsys):
    no_report(monkeypatch)
    config = write(tmp_path, sweep_text({"seeds_per_rung": 1, "max_extensions": 0}))
    out = tmp_path / "out"
    assert main(["tune", "--config", str(config), "--out", str(out), "--threads", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "budget per group: 3 x 1 x 12 + 1 x 2 x 36 = 108 iterations" in stdout, stdout
    rung0 = load_records(out / "rungs" / "0")
    assert {(r["cell"]["iterations"], r["cell"]["seed"]) for r in rung0} == {(12, 0)} and len(rung0) == 3
    summary = pd.read_csv(out / "rungs" / "0" / "summary.csv")  # what the rung trained and cost, stated
    assert set(zip(summary["lr_base"], summary["seed"])) == {(r["cell"]["lr_base"], r["cell"]["seed"]) for r in rung0}
    assert not (out / "rungs" / "0" / "tables.md").exists()
    values = pooled_validation(rung0)
    best = min(values, key=values.get)
    final = load_records(out)
    assert {(r["cell"]["lr_base"], r["cell"]["iterations"], r["cell"]["seed"]) for r in final} == {
        (best, 36, 0), (best, 36, 1)}
    table = pd.read_csv(out / "tuning.csv")
    assert list(table.columns) == [*SCHEMA.compared, *tuning.TUNED_KEYS, "rung", "iterations", "seeds", "val_mse",
                                   "extension", "survived", "chosen", "at_edge"]
    assert list(table.columns) == tuning.columns(tuning.MSE)
    first = table[table["rung"] == 0].set_index("lr_base")
    for lr, value in values.items():
        assert first.loc[lr, "val_mse"] == pytest.approx(value, rel=1e-12)
    assert first["survived"].to_dict() == {lr: lr == best for lr in values}
    last = table[table["rung"] == 1]
    assert len(last) == 1 and last["chosen"].all() and last["seeds"].tolist() == [2]
    assert last["val_mse"].iloc[0] == pytest.approx(pooled_validation(final)[best], rel=1e-12)
    chosen = analyse(final).best  # what `report DIR` selects
    assert chosen["lr_base"].tolist() == [best]
    assert (table["iterations"] * table["seeds"]).sum() == 108


def test_direction_is_the_metrics_higher_accuracy_survives(tmp_path):
    text = """
task = "gauss-class"
network = "relu-8"
algorithm = "maml"
backend = "func"
iterations = 8
meta_batch = 4
seed = 0
lr_base = [0.001, 0.5]
eval_steps = 1
n_test_tasks = 10
n_validation_tasks = 20
compile = false
[tuning]
eta = 2
max_extensions = 0
"""
    plan = tuning.load_tuning(write(tmp_path, text))
    result = tuning.tune(plan, tmp_path / "out", progress=False, report=False)
    values = pooled_validation(load_records(tmp_path / "out" / "rungs" / "0"), "accuracy")
    assert len(set(values.values())) == 2, values  # the test needs two different accuracies
    table = result.table
    assert "val_accuracy" in table.columns
    survivor = table[(table["rung"] == 0) & table["survived"]]["lr_base"].tolist()
    assert survivor == [max(values, key=values.get)]


def test_edge_extension_is_trained_at_rung_0_and_recorded(tmp_path, capsys):
    config = write(tmp_path, sweep_text({"max_extensions": 1}, lr_base=[0.01, 0.03], seed=0))
    plan = tuning.load_tuning(config)
    assert plan.kept == [2, 1]
    result = tuning.tune(plan, tmp_path / "out", progress=False, report=False)
    rung0 = load_records(tmp_path / "out" / "rungs" / "0")
    values = pooled_validation(rung0)
    assert len(values) == 3  # the winner of {0.01, 0.03} sat at an edge: one more rate, one step beyond
    added = (set(values) - {0.01, 0.03}).pop()
    assert added in (0.09, 0.00333333333333)
    table = result.table
    rows = table[table["rung"] == 0].set_index("lr_base")
    assert rows.loc[added, "extension"] == 1 and rows.loc[0.01, "extension"] == 0
    assert rows["survived"].sum() == 1 and rows["survived"].idxmax() == min(values, key=values.get)
    chosen = table[table["chosen"] & (table["rung"] == 1)].iloc[0]
    grid = sorted(values)
    edge = {grid[0]: "lr_base=low", grid[-1]: "lr_base=high"}.get(chosen["lr_base"], "")
    assert (chosen["at_edge"] if isinstance(chosen["at_edge"], str) else "") == edge
    warned = [w for w in result.warnings if "not bracketed" in w]
    assert bool(warned) == bool(edge)
    if edge:
        assert "lr_base" in warned[0] and f"{chosen['lr_base']:g}" in warned[0]


def test_an_interrupted_tuning_resumes_and_trains_no_cell_twice(tmp_path, monkeypatch):
    config = write(tmp_path, sweep_text({"eta": 2, "max_extensions": 1}, algorithm=["maml", "fomaml"],
                                        lr_base=[0.01, 0.03], seed=0, iterations=12))
    plan = tuning.load_tuning(config)
    assert len(plan.groups) == 2
    import benchmarks.job as job

    real, trained, calls = job.run_job, [], {"n": 0, "stop": None}

    def counting(cells, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise Interrupted(signal.SIGINT)
        trained.extend(c.cell_id for c in cells)
        return real(cells, *args, **kwargs)

    monkeypatch.setattr(job, "run_job", counting)
    whole = tuning.tune(tuning.load_tuning(config), tmp_path / "whole", progress=False, report=False)
    reference, trained[:] = list(trained), []
    assert len(reference) == len(set(reference))
    calls.update(n=0, stop=3)  # during the first extension round, after rung 0
    with pytest.raises(Interrupted) as caught:
        tuning.tune(tuning.load_tuning(config), tmp_path / "cut", progress=False, report=False)
    assert caught.value.rung == 0
    assert not (tmp_path / "cut" / "tuning.csv").exists()
    calls.update(n=0, stop=None)
    resumed = tuning.tune(tuning.load_tuning(config), tmp_path / "cut", progress=False, report=False)
    assert sorted(trained) == sorted(reference), "a cell was trained twice, or one was missed"
    pd.testing.assert_frame_equal(resumed.table, whole.table)
    trained[:] = []
    tuning.tune(tuning.load_tuning(config), tmp_path / "cut", progress=False, report=False)
    assert trained == []  # finished: a rerun trains nothing


# ----------------------------------------------------------------------------- bad input

BAD = [
    ("[tuning]\neta = 1\n", r"eta must be an integer >= 2, got 1"),
    ("[tuning]\neta = \"3\"\n", r"eta must be an integer >= 2, got '3'"),
    ("[tuning]\netta = 3\n", r"unknown \[tuning\] key\(s\) 'etta' \(did you mean 'eta'\?\); valid keys: eta, rungs, "),
    ("[tuning]\nrungs = 4\n", r"rungs = 4 .* valid: 0 \(as many as they allow\) or 1 to 2"),
    ("[tuning]\nseeds_per_rung = 3\n", r"seeds_per_rung = 3 .* valid: 0 \(all\) or 1 to 2"),
    ("[tuning]\nmax_extensions = -1\n", r"max_extensions must be an integer >= 0, got -1"),
    ("tuning = 3\n", r"tuning must be a table \(\[tuning\]\), got 3"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_tuning_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, message):
    config = write(tmp_path, extra + TINY if extra.startswith("tuning =") else TINY + extra)
    out = tmp_path / "out"
    assert main(["tune", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    (sweep_text(lr_base=0.01), r"no hyperparameter to tune: .*lr_base, lr_meta"),
    (sweep_text(iterations=[12, 36]), r"iterations = \[12, 36\]: .* one value"),
    (sweep_text(algorithm=["maml", "fomaml"]) + '[[grid]]\n\n[[grid]]\nalgorithm = "maml"\ninner_steps = 2\n',
     r"unequal grids: .*maml.*6 configurations.*fomaml.*3 configurations.*valid: the same"),
])
def test_a_sweep_without_an_equal_grid_to_tune_exits_2(tmp_path, capsys, text, message):
    out = tmp_path / "out"
    assert main(["tune", "--config", str(write(tmp_path, text)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists()


def test_run_refuses_a_tuning_table_and_names_tune(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--config", str(write(tmp_path, TINY + "\n[tuning]\neta = 3\n")), "--out", str(out)]) == 2
    assert "python -m benchmarks tune" in capsys.readouterr().err
    assert not out.exists()


def test_tuning_keys_and_columns_are_documented():
    reference = (ROOT / "docs" / "sweep-reference.md").read_text(encoding="utf-8")
    for key in ("eta", "rungs", "seeds_per_rung", "max_extensions"):
        assert f"| `{key}` |" in reference, key
    outputs = (ROOT / "docs" / "outputs.md").read_text(encoding="utf-8")
    table = outputs[outputs.index("### `tuning.csv`"):]
    table = table[:table.index("\n### ")]
    for column in tuning.COLUMNS:
        assert f"| `{column.replace('<metric>', 'mse')}` |" in table, column
    with pytest.raises(ConfigError, match=r"unknown \[tuning\] key"):
        tuning.parse_tuning({"etaa": 2})
    assert math.ceil(9 / 3) == tuning.plan_tuning(
        {"algorithm": "maml", "backend": "func", "lr_base": [0.1, 0.2, 0.3], "lr_meta": [1e-3, 2e-3, 3e-3]}).kept[1]


def test_an_output_folder_holding_other_records_is_refused_before_writing(tmp_path, capsys):
    """OUT/runs/ holds the tuned configurations only: `report OUT` selects among all it holds."""
    from benchmarks.config import parse_sweep
    from benchmarks.sweep import run_sweep

    out = tmp_path / "out"
    run_sweep(parse_sweep({**BASE, "iterations": 6, "seed": 0, "lr_base": 0.01}), out, progress=False)
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["tune", "--config", str(write(tmp_path, TINY)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not a cell of this tuning's last rung" in err and "new --out" in err, err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_set_reaches_the_tuning_table(tmp_path):
    config = write(tmp_path, TINY)
    assert tuning.load_tuning(config, ["tuning.eta=2", "tuning.max_extensions=0"]).tuning == tuning.Tuning(
        eta=2, max_extensions=0)
    assert tuning.load_tuning(config, ["tuning={rungs = 1}"]).rungs == 1
    with pytest.raises(ConfigError, match=r"'etta' \(did you mean 'eta'\?\)"):
        tuning.load_tuning(config, ["tuning.etta=2"])


def test_one_rung_is_the_whole_grid_and_its_extensions_at_the_full_budget(tmp_path):
    config = write(tmp_path, sweep_text({"rungs": 1, "max_extensions": 1}, lr_base=[0.01, 0.03], seed=0,
                                        iterations=6))
    result = tuning.tune(tuning.load_tuning(config), tmp_path / "out", progress=False, report=False)
    assert not (tmp_path / "out" / "rungs").exists()
    records = load_records(tmp_path / "out")
    assert len(records) == 3 and {r["cell"]["iterations"] for r in records} == {6}
    assert result.table["chosen"].sum() == 1 and result.table["extension"].tolist().count(1) == 1


def test_the_python_api_tunes_as_the_command_does(tmp_path, monkeypatch, one_thread):
    """`metabench.tune` takes a dict with a "tuning" table, runs the same rungs as `tune` and returns
    the folder's `Results`; bad input raises ConfigError with nothing written."""
    import metabench

    no_report(monkeypatch)
    config = {**BASE, "iterations": 9, "tuning": {"eta": 3, "max_extensions": 0}}
    results = metabench.tune(config, tmp_path / "api", progress=False)
    table = pd.read_csv(tmp_path / "api" / "tuning.csv")
    assert sorted(table["iterations"].unique()) == [3, 9]
    assert table.loc[table["chosen"], "lr_base"].nunique() == 1  # one configuration, on each of its rows
    assert {r["cell"]["iterations"] for r in load_records(tmp_path / "api")} == {9}
    assert len(results.cells) == 2  # the survivor's two seeds at the full budget
    with pytest.raises(metabench.ConfigError, match="eta"):
        metabench.tune({**config, "tuning": {"eta": 1}}, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
