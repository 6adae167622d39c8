"""`compile = "auto"` (issue 24): new sweeps compile where the declared cost model
(`benchmarks.compile_choice`) projects less CPU time than eager, decided per group of cells from
their configuration alone; records state the choice, fingerprints hold it resolved, records from
before read as `false`, committed sweep files pin `false`."""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.cli import compile_summary, main
from benchmarks.compile_choice import COSTS, choose, plan, projected_seconds, step_ms, table_markdown
from benchmarks.config import Cell, ConfigError, Settings, load_sweep, parse_sweep
from benchmarks.fingerprint import check_resumable, differences, record_fingerprint
from benchmarks.job import run_job
from benchmarks.records import read_record, record_settings, scan_records
from benchmarks.sweep import group_jobs, pending_cells

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baseline"
BASELINE_CELL = "fomaml-func-sine-K10-S3-lrb0.02-lrm0.001-B25-it200-seed0"
#: the committed sweep files whose results are committed: each pins the eager path
PINNED = ["paper", "bench", "ci", "classification", "tanh", "sine_freq"]
AUTO = Settings()  # a new sweep's default
TINY = Settings(n_test_tasks=4, n_validation_tasks=4, log_every=5, eval_steps=1, n_query=3)


def maml(iterations: int, **values) -> Cell:
    return Cell("maml", "func", iterations=iterations, **values)


def break_even(order: str = "second", steps: int = 1, meta_batch: int = 25) -> float:
    """Iterations at which a lone cell's compile pays for itself, from the committed table."""
    t = step_ms(COSTS["cpu"], order, steps, meta_batch)
    return t["cold"] * 1e3 / (t["eager"] - t["compiled"])


# ----------------------------------------------------------------------------- the decision

def test_the_choice_flips_at_the_break_even_iteration_count():
    point = break_even()
    below, above = maml(int(point) - 10), maml(int(point) + 10)
    assert not choose(below, AUTO).compiled and choose(above, AUTO).compiled
    for cell in (below, above):  # the recorded projections (rounded to ms) say the same
        choice = choose(cell, AUTO)
        assert choice.compiled == (choice.projected_s["compiled"] < choice.projected_s["eager"])
    flips = [n for n in range(int(point) - 50, int(point) + 50) if choose(maml(n), AUTO).compiled
             != choose(maml(n - 1), AUTO).compiled]
    assert len(flips) == 1 and point < flips[0] <= point + 1


def test_a_finn_length_single_cell_compiles_and_bench_like_ensembles_stay_eager():
    finn = choose(maml(70_000), AUTO)
    assert finn.compiled and finn.setting == "auto" and "70,000 iterations" in finn.reason
    bench = load_sweep(ROOT / "benchmarks" / "configs" / "bench.toml", [("compile", "auto")])
    choices = plan(bench.cells, bench.settings)
    func = [c for c in bench.cells if c.backend == "func" and c.algorithm not in ("pretrain", "reptile")]
    assert len(func) == 5 * 2 * 27 and not any(choices[c].compiled for c in bench.cells)
    assert all("27 cells" in choices[c].reason for c in func)  # 27-member ensembles at 2,000 iterations
    assert all(len(job) == 27 for job in group_jobs(func, bench.settings, choices=choices))


def test_learners_that_cannot_compile_stay_eager_and_others_follow_the_setting():
    for cell in (Cell("maml", "l2l", iterations=70_000), Cell("pretrain", "func", iterations=70_000)):
        for setting in ("auto", True):
            choice = choose(cell, replace(AUTO, compile=setting))
            assert not choice.compiled and "no compiled path" in choice.reason
    assert choose(maml(10), replace(AUTO, compile=True)).compiled
    assert not choose(maml(70_000), replace(AUTO, compile=False)).compiled
    assert not choose(maml(70_000), replace(AUTO, device="cuda")).compiled  # no constants measured there


def test_more_members_need_more_iterations_and_a_group_decides_together():
    """An eager ensemble amortises dispatch, so a group of n cells needs more iterations per cell
    before n compiled runs pay off; the plan decides per group, and a resume that trains only one
    member of an eager group trains it eager too (its job carries the group's choice)."""
    table = COSTS["cpu"]
    lone = projected_seconds(table, "second", 1, 25, 20_000, 1)
    many = projected_seconds(table, "second", 1, 25, 20_000, 27)
    assert many["eager"] / 27 < lone["eager"]  # the ensemble's gain
    iterations = next(n for n in range(1_000, 1_000_000, 1_000) if choose(maml(n), AUTO, 1).compiled
                      and not choose(maml(n), AUTO, 9).compiled)
    cells = [maml(iterations, seed=s, lr_base=lr) for s in range(3) for lr in (0.01, 0.02, 0.03)]
    choices = plan(cells, AUTO)
    assert not any(choices[c].compiled for c in cells) and "9 cells" in choices[cells[0]].reason
    job, = group_jobs(cells[:1], AUTO, choices=choices)  # the one member a resume retrains
    assert job == cells[:1] and not job.compile_choice.compiled and "9 cells" in job.compile_choice.reason
    alone, = group_jobs(cells[:1], AUTO)  # planned on its own it would compile
    assert alone.compile_choice.compiled
    sent = pickle.loads(pickle.dumps(job))  # to a spawned worker: the choice travels with the cells
    assert sent == job and sent.compile_choice == job.compile_choice
    assert [len(j) for j in group_jobs(cells, replace(AUTO, ensemble=False))] == [1] * 9  # not ensembled: alone


def test_the_choice_reads_the_configuration_only():
    cell = maml(30_000)
    assert choose(cell, AUTO) == choose(cell, AUTO)
    assert choose(cell, replace(AUTO, seed_streams="offset", n_test_tasks=5)).compiled == choose(cell, AUTO).compiled
    assert choose(replace(cell, lr_base=0.5, seed=7), AUTO).projected_s == choose(cell, AUTO).projected_s


def test_docs_quote_the_committed_constants():
    assert table_markdown() in (ROOT / "docs" / "speed.md").read_text(encoding="utf-8"), (
        "docs/speed.md: paste `python -m benchmarks.compile_choice --table`")


# ----------------------------------------------------------------------------- the setting

def test_auto_is_the_new_default_and_the_values_parse():
    base = {"algorithm": "maml", "backend": "func"}
    assert parse_sweep(base).settings.compile == "auto"
    for value in (True, False, "auto"):
        assert parse_sweep({**base, "compile": value}).settings.compile == value
    for bad in ("yes", "Auto", 1, 0, "true", [True]):
        with pytest.raises(ConfigError, match=r"compile .*valid choices: true, false, \"auto\"") as error:
            parse_sweep({**base, "compile": bad})
        assert repr(bad) in str(error.value)
    assert "did you mean 'auto'" in str(pytest.raises(ConfigError, parse_sweep, {**base, "compile": "atuo"}).value)


def test_a_bad_value_exits_2_through_the_cli_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\ncompile = "sometimes"\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "'sometimes'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_committed_sweep_files_pin_the_eager_path():
    for name in PINNED:
        assert load_sweep(ROOT / "benchmarks" / "configs" / f"{name}.toml").settings.compile is False, name


# ----------------------------------------------------------------------------- records and fingerprints

def test_old_records_read_as_false_and_keep_their_fingerprints(tmp_path):
    record = read_record(BASELINE / "runs" / f"{BASELINE_CELL}.json")
    assert record["fingerprint"]["compile"] is False and record["settings"]["compile"] is False
    assert record_settings({}).compile is False  # a record from before the key
    assert record_fingerprint(record) == record["fingerprint"]  # agrees with its own settings
    old = {k: v for k, v in record["fingerprint"].items() if k != "compile"}
    assert differences(old, record["fingerprint"], Cell(**record["cell"])) == []
    assert differences(old, {**record["fingerprint"], "compile": True}) == ["compile: False -> True"]
    (tmp_path / "runs").mkdir()
    for suffix in (".json", ".npz"):
        shutil.copy(BASELINE / "runs" / f"{BASELINE_CELL}{suffix}", tmp_path / "runs")
    ci = load_sweep(ROOT / "benchmarks" / "configs" / "ci.toml")
    check_resumable(scan_records(tmp_path), ci.cells, ci.settings, tmp_path, same_hardware=False)
    # under "auto" its 200-iteration cells resolve to false: the same fingerprints, so they resume
    auto = load_sweep(ROOT / "benchmarks" / "configs" / "ci.toml", [("compile", "auto")])
    todo, finished = pending_cells(auto, tmp_path, executor="ray")
    assert finished == 1 and len(todo) == len(auto.cells) - 1


def test_the_record_states_the_choice_and_its_fingerprint_the_resolved_value():
    cells = [Cell("fomaml", "func", k_shot=3, meta_batch=4, iterations=4, seed=s) for s in (0, 1)]
    records = run_job(cells, TINY, threads=1)  # "auto", a job built by hand: its cells are the group
    for record in records:
        assert record["status"] == "ok", record.get("error")
        choice = record["compile_choice"]
        assert choice["setting"] == "auto" and choice["compiled"] is False and "2 cells" in choice["reason"]
        assert set(choice["projected_s"]) == {"eager", "compiled"}
        assert record["settings"]["compile"] is False and record["fingerprint"]["compile"] is False
        assert record_fingerprint(json.loads(json.dumps(record, default=str))) == record["fingerprint"]
    pinned, = run_job(cells[:1], replace(TINY, compile=False), threads=1)
    assert pinned["compile_choice"] == {"setting": False, "compiled": False, "reason": "compile = false",
                                        "projected_s": None}


def test_the_planned_fingerprints_hold_the_resolved_choice(tmp_path):
    sweep = parse_sweep({"algorithm": "maml", "backend": "func", "iterations": [100, 70_000]})
    choices = plan(sweep.cells, sweep.settings)
    assert [choices[c].compiled for c in sweep.cells] == [False, True]
    assert [len(job) for job in group_jobs(sweep.cells, sweep.settings, choices=choices)] == [1, 1]
    todo, finished = pending_cells(sweep, tmp_path)
    assert len(todo) == 2 and finished == 0


def test_the_summary_line_gives_the_compile_seconds_and_what_auto_chose():
    auto = lambda compiled: {"setting": "auto", "compiled": compiled, "reason": "", "projected_s": {}}  # noqa: E731
    line = compile_summary([{"compile_seconds": 7.25, "engine": "accelerated+compile", "compile_choice": auto(True)},
                            {"compile_seconds": 0.0, "engine": "accelerated", "compile_choice": auto(False)}])
    assert line.startswith("compile: 7.2 s over 1 compiled cell (") and 'compile = "auto" compiled 1 of 2 cells' in line
    line = compile_summary([{"compile_seconds": 0.0, "engine": "accelerated", "compile_choice": auto(False)}])
    assert line.startswith("compile: 0.0 s over 0 compiled cells") and "compiled 0 of 1 cells" in line
    assert compile_summary([{"compile_seconds": 0.0, "engine": "accelerated",
                             "compile_choice": {"setting": False, "compiled": False}}]) is None


# ----------------------------------------------------------------------------- one program for every rate and seed

@pytest.mark.slow
def test_rates_and_seeds_are_inputs_so_a_second_cell_reuses_the_compiled_program(tmp_path, monkeypatch):
    """Two compiled jobs differing only in LR_base, LR_meta and seed, in one process, on an empty
    cache: the first compiles (Inductor's FX graph cache misses), the second only loads it (hits,
    no new miss) and its compile takes a fraction of the first's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    settings = replace(TINY, compile=True)
    cell = Cell("fomaml", "func", k_shot=3, meta_batch=4, iterations=3, seed=0)
    first, = run_job([cell], settings, threads=1)
    libraries = sorted((tmp_path / "cache" / "aoti").glob("*.so"))  # CPU: `algorithms.base.compiled_program`
    assert first["engine"] == "accelerated+compile" and libraries
    second, = run_job([replace(cell, lr_base=0.05, lr_meta=0.003, seed=5)], settings, threads=1)
    assert sorted((tmp_path / "cache" / "aoti").glob("*.so")) == libraries  # nothing compiled again
    assert second["compile_seconds"] < first["compile_seconds"] / 2
    assert not torch.equal(torch.tensor(first["curve"][-1]["loss"]), torch.tensor(second["curve"][-1]["loss"]))
