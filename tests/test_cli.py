"""The command line, in-process through `benchmarks.cli.main([...])`.

Bad input: exit status 2, one message on stderr naming the problem, nothing written.
Good input: tiny sweeps (tens of iterations, tens of tasks) with `--threads 1`; one slow
test trains MAML via learn2learn long enough to check that it learns.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import metabench
from algorithms import HyperParams, get_algorithm, list_algorithms
from algorithms.evaluation import evaluate
from benchmarks.cli import main
from benchmarks.config import Cell, load_sweep
from benchmarks.records import load_records
from tasks import evaluation_set, get_task, list_tasks

ROOT = Path(__file__).resolve().parents[1]

TINY = """
algorithm = "maml"
backend = "func"
iterations = 20
meta_batch = 5
seed = 0
eval_steps = 2
n_test_tasks = 20
n_validation_tasks = 20
log_every = 10
"""

SUMMARY_COLUMNS = ["algorithm", "backend", "task", "k_shot", "inner_steps", "lr_base", "lr_meta", "meta_batch",
                   "iterations", "seed", "eval_steps", "mse", "mse_ci95", "n_test_tasks", "sec_per_iter"]


def write_config(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(config: Path, out: Path, *extra: str) -> int:
    return main(["run", "--config", str(config), "--out", str(out), "--threads", "1", *extra])


# ----------------------------------------------------------------------------- list

def test_list_prints_every_task_and_algorithm_with_its_backends(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    for task in list_tasks():
        assert task in lines, f"task {task!r} not listed:\n{out}"
    algorithms = list_algorithms()
    assert len(algorithms) >= 7, algorithms
    for name, backends in algorithms.items():
        line = next((line for line in lines if line.startswith(f"{name}:")), None)
        assert line is not None, f"algorithm {name!r} not listed:\n{out}"
        listed = [b.strip() for b in line.split(":", 1)[1].split(",")]
        assert sorted(listed) == sorted(backends), (name, listed, backends)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, expected", [
    (('"maml"', '"mamal"'), ["'mamal'", "maml", "reptile"]),
    (('"func"', '"tensorflow"'), ["'tensorflow'", "l2l", "func", "jax"]),
    (("seed = 0", 'seed = 0\ntask = "cosine"'), ["'cosine'", "sine", "sine-half"]),
    (("seed = 0", "seed = 0\nlr_base = 0"), ["lr_base", "> 0"]),
    (("seed = 0", "seed = 0\nlr_meta = -0.001"), ["lr_meta", "-0.001"]),
    (("seed = 0", "seed = 0\ninner_steps = -1"), ["inner_steps", "-1"]),
    (("seed = 0", "seed = 0\nk_shot = 0"), ["k_shot", ">= 1"]),
    (("meta_batch = 5", "meta_batch = 0"), ["meta_batch", ">= 1"]),
    (("seed = 0", "seed = []"), ["seed", "empty"]),
    (("seed = 0", "seed = [0,"), ["malformed TOML"]),
    (("seed = 0", "seed = 0\nlearning_rate = 0.1"), ["'learning_rate'", "lr_base"]),
    (("iterations = 20", 'iterations = "ten"'), ["iterations", "'ten'", "int"]),
    (("iterations = 20", "iterations = 2.5"), ["iterations", "int"]),
    (("seed = 0", "seed = 1000000"), ["seed", "1000000"]),
    (("seed = 0", "seed = 0\ntask_params = {noise = -1}"), ["noise", "-1"]),
    (("seed = 0", 'seed = 0\ndevice = "tpu"'), ["device", "'tpu'"]),
], ids=["algorithm", "backend", "task", "lr_base=0", "lr_meta<0", "inner_steps=-1", "k_shot=0", "meta_batch=0",
        "empty-grid", "malformed-toml", "unknown-key", "wrong-type", "float-iterations", "reserved-seed",
        "task-param", "device"])
def test_bad_config_exits_2_naming_the_problem_and_writes_nothing(tmp_path, capsys, change, expected):
    old, new = change
    assert old in TINY, old
    config = write_config(tmp_path, TINY.replace(old, new, 1))
    out = tmp_path / "out"
    code = run(config, out)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert err.startswith("error:"), err
    for piece in expected:
        assert piece in err, f"{piece!r} not in stderr: {err}"
    assert not out.exists(), f"--out created: {sorted(p.name for p in out.rglob('*'))}"


@pytest.mark.parametrize("override, expected", [
    ("lr_base=-1", ["lr_base", "-1"]),
    ("iterations=ten", ["iterations", "'ten'"]),
    ("no_such_key=1", ["'no_such_key'"]),
    ("lr_base", ["--set", "key=value"]),
    ("algorithm=[]", ["algorithm", "empty"]),
])
def test_bad_set_override_exits_2(tmp_path, capsys, override, expected):
    out = tmp_path / "out"
    code = run(write_config(tmp_path, TINY), out, "--set", override)
    err = capsys.readouterr().err
    assert code == 2, f"--set {override}: exit {code}, stderr: {err}"
    for piece in expected:
        assert piece in err, f"{piece!r} not in stderr: {err}"
    assert not out.exists(), f"--out created: {sorted(p.name for p in out.rglob('*'))}"


@pytest.mark.parametrize("override, expected", [
    ("iterations=10000000", ["iterations", "10000000", "--limit iterations=N"]),
    ("inner_steps=100000", ["inner_steps", "--limit inner_steps=N"]),
    ("eval_steps=1000000", ["eval_steps", "--limit eval_steps=N"]),
    ("k_shot=4611686018427387904", ["k_shot", "4611686018427387904"]),
    ("meta_batch=1000000", ["meta_batch", "--limit meta_batch=N"]),
    ("n_test_tasks=10000000", ["n_test_tasks", "--limit n_test_tasks=N"]),
    ("eval_k_shot=[5, 4611686018427387904]", ["eval_k_shot"]),
    ("seed=[" + ", ".join(map(str, range(10001))) + "]", ["10,001", "--limit cells=N"]),
    ('device="cuda:abc"', ["device", "'cuda:abc'", "cuda:N"]),
], ids=["iterations", "inner_steps", "eval_steps", "k_shot", "meta_batch", "n_test_tasks", "eval_k_shot",
        "cells", "device"])
def test_absurd_sizes_exit_2_naming_the_limit(tmp_path, capsys, override, expected):
    out = tmp_path / "out"
    code = run(write_config(tmp_path, TINY), out, "--set", override)
    err = capsys.readouterr().err
    assert code == 2, f"--set {override[:40]}: exit {code}, stderr: {err}"
    for piece in expected:
        assert piece in err, f"{piece!r} not in stderr: {err}"
    assert not out.exists()


def test_a_grid_product_above_the_cell_limit_fails_before_expanding(tmp_path, capsys):
    rates = ", ".join(repr(0.001 * (1 + i / 1000)) for i in range(1000))
    config = write_config(tmp_path, TINY + f"lr_base = [{rates}]\nlr_meta = [{rates}]\n".replace("seed = 0", ""))
    assert run(config, tmp_path / "out") == 2
    assert "1,000,000 cells" in capsys.readouterr().err


def test_a_limit_can_be_raised(tmp_path):
    config = write_config(tmp_path, TINY)
    sweep = load_sweep(config, ["iterations=20000000"], limits={"iterations": 50_000_000})
    assert {c.iterations for c in sweep.cells} == {20_000_000}


@pytest.mark.parametrize("option, expected", [
    (["--threads", "-5"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--threads", "100000"], "--limit threads=N"),
    (["--limit", "iterations=ten"], "--limit"),
    (["--limit", "speed=5"], "'speed'"),
    (["--executor", "ray", "--address", "nohost"], "HOST:PORT"),
], ids=["threads<0", "threads=0", "threads-huge", "limit-value", "limit-key", "address"])
def test_bad_options_exit_2(tmp_path, capsys, option, expected):
    out = tmp_path / "out"
    code = main(["run", "--config", str(write_config(tmp_path, TINY)), "--out", str(out), *option])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, (code, err)
    assert not out.exists()


def test_config_that_never_ends_fails_fast(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(Path("/dev/zero"), out) == 2
    assert "/dev/zero" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", [["--device", "cuda"], ["--set", 'device="cuda:1"']], ids=["option", "config"])
def test_cuda_without_a_gpu_is_bad_input_and_writes_nothing(tmp_path, capsys, how):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, TINY), out, *how) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "cuda" in err, err
    assert not out.exists()


def test_set_applies_to_every_grid_table():
    """ci.toml sets iterations and inner_steps in each [[grid]] table: --set overrides them there too."""
    sweep = load_sweep(ROOT / "benchmarks" / "configs" / "ci.toml", ["iterations=50", "inner_steps=2"])
    assert {(c.iterations, c.inner_steps) for c in sweep.cells} == {(50, 2)}, \
        sorted({(c.iterations, c.inner_steps) for c in sweep.cells})


def test_invalid_set_of_a_key_a_grid_table_sets_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--config", str(ROOT / "benchmarks" / "configs" / "ci.toml"), "--out", str(out),
                 "--set", "inner_steps=-7"])
    err = capsys.readouterr().err
    assert code == 2 and "inner_steps" in err and "-7" in err, (code, err)
    assert not out.exists()


def test_help_states_every_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert f"\n  {code}" in text, f"exit status {code!r} not documented:\n{text}"
    assert "--threads" in text and "default 1" in text


def test_threads_default_to_one_per_job():
    from benchmarks.cli import build_parser

    assert build_parser().parse_args(["run", "--config", "c", "--out", "o"]).threads == 1


def test_many_skipped_combinations_are_summarised_in_one_line(tmp_path, capsys):
    config = write_config(tmp_path, TINY.replace('"maml"', '["maml", "reptile", "pretrain", "fomaml"]')
                          .replace('"func"', '"l2l"').replace("iterations = 20", "iterations = 2"))
    assert run(config, tmp_path / "out") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line and "figure" not in line]
    assert len(lines) == 1 and "skipped 2 combinations" in lines[0] and "--show-skipped" in lines[0], lines


def test_grid_where_every_combination_is_skipped_exits_2(tmp_path, capsys):
    config = write_config(tmp_path, TINY.replace('"maml"', '"reptile"').replace('"func"', '"l2l"'))
    out = tmp_path / "out"
    code = run(config, out)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "empty" in err and "'reptile' has no backend 'l2l'" in err, err
    assert not out.exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    code = run(tmp_path / "nope.toml", out)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "nope.toml" in err and "does not exist" in err, err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_config_exits_2(tmp_path, capsys, kind):
    if kind == "directory":
        config = tmp_path / "configs"
        config.mkdir()
    else:
        config = tmp_path / "latin1.toml"
        config.write_bytes(TINY.replace('"maml"', '"maml\xe9"').encode("latin-1"))
    out = tmp_path / "out"
    code = run(config, out)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert str(config) in err, err
    assert not out.exists()


@pytest.mark.parametrize("mode", [0o644, 0o755], ids=["plain-file", "executable-file"])
def test_output_folder_inside_a_regular_file_exits_2(tmp_path, capsys, mode):
    """chmod-based unwritable folders mean nothing to root: use a path under a regular file."""
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    blocker.chmod(mode)
    out = blocker / "out"
    code = run(write_config(tmp_path, TINY), out)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert str(out) in err, err
    assert blocker.read_text() == "not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.txt", "sweep.toml"], sorted(p.name for p in tmp_path.iterdir())


def test_output_folder_that_is_a_file_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("x")
    code = run(write_config(tmp_path, TINY), out)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "not a folder" in err, err
    assert out.read_text() == "x"


def test_argparse_errors_exit_2(tmp_path, capsys):
    config = write_config(tmp_path, TINY)
    with pytest.raises(SystemExit) as info:
        main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--device", "tpu"])
    assert info.value.code == 2, info.value.code
    assert "tpu" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["run", "--out", str(tmp_path / "out")])
    assert info.value.code == 2, info.value.code
    assert "--config" in capsys.readouterr().err
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_on_a_folder_without_runs_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["report", str(empty)])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "no run records" in err and str(empty) in err, err
    assert list(empty.iterdir()) == [], list(empty.iterdir())


def test_report_on_a_corrupt_record_exits_2(tmp_path, capsys):
    folder = tmp_path / "sweep"
    (folder / "runs").mkdir(parents=True)
    (folder / "runs" / "maml-l2l.json").write_text('{"cell_id": "maml-l2l", "status": ')
    code = main(["report", str(folder)])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "corrupt run record" in err and "maml-l2l.json" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["runs"], sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- configs

def test_example_config_is_one_valid_cell():
    sweep = load_sweep(ROOT / "benchmarks" / "configs" / "example.toml")
    assert sweep.cells == [Cell("maml", "l2l", "sine", 10, 1, 0.01, 0.001, 25, 300, 0)], sweep.cells
    assert sweep.skipped == [], sweep.skipped
    assert (sweep.settings.eval_every, sweep.settings.eval_steps, sweep.settings.n_test_tasks) == (100, 10, 600), \
        sweep.settings


@pytest.mark.parametrize("name, cells, jobs", [
    ("smoke", 7, 7),
    ("ci", 16, 16),  # one cell per job: no two func cells differ only in seed or rates
    ("bench", 6 * 2 * 27 + 27 + 2, 6 * 2 + 1 + 2),  # 27-member ensembles per (algorithm, S), pretrain at S = 1 only, 2 l2l cells
    ("paper", 7 * 3 * 3, 7 * 3),  # 3-seed ensembles per (algorithm, K)
])
def test_shipped_configs_parse_and_group_into_jobs(name, cells, jobs):
    """Every shipped sweep parses (a typo there would only show in a 20-minute run) and groups
    into the ensemble jobs its comments promise."""
    from benchmarks.sweep import group_jobs

    sweep = load_sweep(ROOT / "benchmarks" / "configs" / f"{name}.toml")
    assert len(sweep.cells) == cells, len(sweep.cells)
    assert len(group_jobs(sweep.cells, sweep.settings)) == jobs

# ----------------------------------------------------------------------------- runs

def test_set_overrides_the_config(tmp_path):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, TINY), out, "--set", "iterations=30", "--set", "seed=[0, 1]") == 0
    records = load_records(out)
    assert sorted((r["cell"]["iterations"], r["cell"]["seed"]) for r in records) == [(30, 0), (30, 1)], \
        [r["cell_id"] for r in records]
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["iterations"]) == {30} and set(summary["iteration"]) == {30}, \
        (set(summary["iterations"]), set(summary["iteration"]))


def test_combinations_without_the_backend_are_skipped_with_a_reason(tmp_path, capsys):
    config = write_config(tmp_path, TINY.replace('"maml"', '["maml", "reptile"]').replace('"func"', '"l2l"'))
    out = tmp_path / "out"
    code = run(config, out)
    err = capsys.readouterr().err
    assert code == 0, f"exit {code}, stderr: {err}"
    assert "skipped: algorithm 'reptile' has no backend 'l2l'" in err, err
    assert "func" in err and "torch" in err, f"reptile's real backends not named: {err}"
    records = load_records(out)
    assert [(r["cell"]["algorithm"], r["cell"]["backend"], r["status"]) for r in records] == [
        ("maml", "l2l", "ok")], [r["cell_id"] for r in records]


def test_tiny_run_writes_long_format_summary_and_records(tmp_path):
    config = write_config(tmp_path, TINY.replace('"maml"', '["maml", "fomaml"]') + "eval_every = 10\n")
    out = tmp_path / "out"
    assert run(config, out) == 0
    summary = pd.read_csv(out / "summary.csv")
    missing = set(SUMMARY_COLUMNS) - set(summary.columns)
    assert not missing, f"summary.csv lacks {sorted(missing)}; has {list(summary.columns)}"
    # per cell, at the last iteration (20): splits {validation, test} x eval K {10} x steps 0..2
    assert len(summary) == 2 * 2 * 1 * 3 and set(summary["iteration"]) == {20}, (len(summary), set(summary["iteration"]))
    assert summary.groupby("algorithm").size().to_dict() == {"fomaml": 6, "maml": 6}, \
        summary.groupby("algorithm").size().to_dict()
    every = metabench.load(out).evaluations  # the API keeps every evaluated iteration
    assert len(every) == 2 * 2 * 2 * 1 * 3 and set(every["iteration"]) == {10, 20}, (len(every), set(every["iteration"]))
    keys = ["algorithm", "split", "eval_k_shot", "eval_steps"]
    last = every[every["iteration"] == 20].sort_values(keys).reset_index(drop=True)
    assert last["mse"].tolist() == summary.sort_values(keys)["mse"].tolist()
    final = summary[(summary["iteration"] == 20) & (summary["split"] == "test")]
    for algorithm, rows in final.groupby("algorithm"):
        assert sorted(rows["eval_steps"]) == [0, 1, 2], (algorithm, sorted(rows["eval_steps"]))
        assert set(rows["n_test_tasks"]) == {20}, set(rows["n_test_tasks"])
        assert (rows["mse"] > 0).all() and rows["mse"].map(math.isfinite).all(), rows["mse"].tolist()
        assert (rows["mse_ci95"] > 0).all(), rows["mse_ci95"].tolist()
        assert (rows["sec_per_iter"] > 0).all(), rows["sec_per_iter"].tolist()
    validation = summary[summary["split"] == "validation"]
    assert set(validation["n_test_tasks"]) == {20}, set(validation["n_test_tasks"])

    paths = sorted((out / "runs").glob("*.json"))
    assert len(paths) == 2, paths
    for path in paths:
        record = json.loads(path.read_text())
        assert path.name == f"{record['cell_id']}.json", (path.name, record["cell_id"])
        assert record["status"] == "ok" and record["error"] is None, (record["status"], record["error"])
        assert record["cell"]["algorithm"] in ("maml", "fomaml") and record["cell"]["iterations"] == 20, record["cell"]
        assert len(record["evaluations"]) == 12, len(record["evaluations"])


def test_same_config_and_seed_give_identical_numbers(tmp_path):
    config = write_config(tmp_path, TINY.replace('"func"', '["func", "l2l"]'))
    first, second = tmp_path / "first", tmp_path / "second"
    assert run(config, first) == 0 and run(config, second) == 0
    keys = ["backend", "iteration", "split", "eval_k_shot", "eval_steps"]
    a = pd.read_csv(first / "summary.csv").sort_values(keys).reset_index(drop=True)
    b = pd.read_csv(second / "summary.csv").sort_values(keys).reset_index(drop=True)
    assert len(a) == 2 * 2 * 3, len(a)
    pd.testing.assert_frame_equal(a[keys + ["mse", "mse_ci95"]], b[keys + ["mse", "mse_ci95"]], check_exact=True)
    other = tmp_path / "other-seed"
    assert run(config, other, "--set", "seed=1") == 0
    c = pd.read_csv(other / "summary.csv").sort_values(keys).reset_index(drop=True)
    assert not a["mse"].equals(c["mse"]), "seed 1 gave seed 0's numbers"


LEARNS = """
algorithm = "maml"
backend = "l2l"
k_shot = 10
inner_steps = 1
lr_base = 0.01
lr_meta = 0.01
meta_batch = 10
iterations = 300
seed = 0
eval_steps = 1
n_test_tasks = 100
n_validation_tasks = 20
log_every = 100
"""


@pytest.mark.slow
def test_maml_via_learn2learn_learns(tmp_path):
    """300 iterations (~5 s): 1-step test MSE of the trained network vs the same network
    untrained (the runner's weights come from seed + 1), on the same 100 test tasks.
    Measured: trained ~1.3-1.5 vs untrained ~3.6-4.2 over seeds 0-3 (ratio <= 0.42)."""
    out = tmp_path / "out"
    assert run(write_config(tmp_path, LEARNS), out) == 0
    (record,) = load_records(out)
    trained = next(e["mse"] for e in record["evaluations"]
                   if (e["split"], e["eval_k_shot"], e["eval_steps"], e["iteration"]) == ("test", 10, 1, 300))

    hp = HyperParams(inner_steps=1, lr_base=0.01, lr_meta=0.01, meta_batch=10, iterations=300)
    learner = get_algorithm("maml", "l2l", hp, torch.Generator().manual_seed(0 + 1))
    test = evaluation_set(get_task("sine", k_shot=10, n_query=10), "test", n_tasks=100)
    untrained = evaluate(learner.adaptation(), test, steps=1)
    untrained_one_step = float(untrained.loc[untrained["eval_steps"] == 1, "mse"].iloc[0])
    assert trained < 0.6 * untrained_one_step, \
        f"1-step test MSE: trained {trained:.3f}, untrained {untrained_one_step:.3f} (need < 0.6x)"
    assert trained < 2.0, f"1-step test MSE after 300 iterations: {trained:.3f}"


# ----------------------------------------------------------------------------- task families

def test_a_sine_freq_sweep_runs_and_records_its_family(tmp_path):
    config = write_config(tmp_path, TINY + 'task = "sine-freq"\ntask_params = { frequency_range = [0.9, 1.1] }\n')
    out = tmp_path / "out"
    assert run(config, out) == 0
    [record] = load_records(out)
    assert record["status"] == "ok" and record["cell"]["task"] == "sine-freq", (record["status"], record["error"])
    finals = [e for e in record["evaluations"] if e["split"] == "test" and e["iteration"] == 20]
    assert finals and all(math.isfinite(e["mse"]) and e["mse"] > 0 for e in finals), finals
    assert "frequency_range" in json.dumps(record), "the family's frequency range is not among the recorded settings"
    assert record["qualitative"]["task"] == "sine-half", record["qualitative"].keys()


def test_the_sine_freq_example_config_is_maml_against_pretraining():
    sweep = load_sweep(ROOT / "benchmarks" / "configs" / "sine_freq.toml")
    assert sorted((c.algorithm, c.backend, c.task, c.k_shot, c.inner_steps) for c in sweep.cells) == [
        ("maml", "func", "sine-freq", 10, 1), ("pretrain", "func", "sine-freq", 10, 1)], sweep.cells
    assert all(100 <= c.iterations <= 1000 for c in sweep.cells), sweep.cells


@pytest.mark.parametrize("pair, expected", [("maml", "two different"), ("maml,maml", "two different"),
                                            ("maml,nope", "'nope'")])
def test_a_bad_qualitative_pair_exits_2(tmp_path, capsys, pair, expected):
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path), "--qualitative-pair", pair])
    assert info.value.code == 2, info.value.code
    assert expected in capsys.readouterr().err


def test_report_draws_the_chosen_qualitative_pair(tmp_path, monkeypatch):
    from benchmarks import figures

    out = tmp_path / "out"
    assert run(write_config(tmp_path, TINY.replace('"maml"', '["maml", "fomaml"]')), out) == 0
    seen = []
    draw = figures._fig_qualitative
    monkeypatch.setitem(figures.FIGURE_MAKERS, "fig3_qualitative_sine_half",
                        lambda a, plt: seen.append(figures.QUALITATIVE_PAIR) or draw(a, plt))
    assert main(["report", str(out), "--qualitative-pair", "fomaml,maml"]) == 0
    assert seen == [("fomaml", "maml")] and figures.QUALITATIVE_PAIR == ("maml", "pretrain"), seen
    assert (out / "figures" / "fig3_qualitative_sine_half.png").exists()
