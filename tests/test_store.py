"""The result store's integrity: a record says what produced it and is never reused, merged or
counted when it should not be (fingerprints, ids, duplicates, lock, stale files, exit codes,
regress inputs, report sets). Tiny in-process sweeps (20 iterations, 20 tasks, one thread).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import records as records_module
from benchmarks.cli import main
from benchmarks.config import Cell, load_sweep
from benchmarks.records import RecordError, load_records, write_atomic

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baseline"

TINY = """
algorithm = "maml"
backend = "func"
iterations = 20
meta_batch = 5
seed = 0
eval_steps = 1
n_test_tasks = 20
n_validation_tasks = 20
log_every = 10
"""


def run(tmp_path: Path, out: Path, *extra: str, text: str = TINY) -> int:
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    return main(["run", "--config", str(config), "--out", str(out), "--threads", "1", *extra])


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny sweep (two seeds); tests copy it before changing anything."""
    base = tmp_path_factory.mktemp("finished")
    assert run(base, base / "out", "--set", "seed=[0, 1]") == 0
    return base / "out"


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


# ----------------------------------------------------------------------------- fingerprints (defect 1)

@pytest.mark.parametrize("change, named", [
    ("n_test_tasks=30", "n_test_tasks: 20 -> 30"),
    ("eval_steps=2", "eval_steps: 1 -> 2"),
    ("n_query=5", "n_query: 10 -> 5"),
    ("task_params={noise=0.1}", "task.noise: 0.0 -> 0.1"),
], ids=["n_test_tasks", "eval_steps", "n_query", "task_params"])
def test_rerun_under_other_settings_refuses_naming_them(finished, tmp_path, capsys, change, named):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    assert run(tmp_path, out, "--set", "seed=[0, 1]", "--set", change) == 2
    err = capsys.readouterr().err
    assert named in err and "another --out" in err and "2 cells" in err, err
    assert snapshot(out) == before, "a refused run changed the folder"


def test_rerun_under_the_same_fingerprint_trains_nothing(finished, tmp_path, capsys):
    """`ensemble` and `--threads` are not in the fingerprint: they do not change a number."""
    out = copy_of(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "runs").iterdir()}
    assert run(tmp_path, out, "--set", "seed=[0, 1]", "--set", "ensemble=false") == 0
    assert {p.name: p.read_bytes() for p in (out / "runs").iterdir()} == before


def test_record_from_before_fingerprints_is_not_reused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    for path in (out / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        del record["fingerprint"]
        path.write_text(json.dumps(record))
    assert run(tmp_path, out, "--set", "seed=[0, 1]") == 2
    err = capsys.readouterr().err
    assert "numerics_version: (not recorded) -> " in err, err


def test_fingerprint_holds_what_changes_numbers_and_not_what_does_not():
    from benchmarks.fingerprint import fingerprint

    cell = Cell("msl", "func")
    base = load_sweep_settings()
    fp = fingerprint(cell, base)
    assert {"numerics_version", "torch", "device", "lr_base", "seed", "n_test_tasks", "eval_steps", "n_query",
            "msl_anneal_iters", "task.noise", "log_every", "eval_every", "hardware"} <= set(fp), sorted(fp)
    assert "ensemble" not in fp and "threads" not in fp  # the func engine: bitwise at any thread count
    assert fingerprint(Cell("maml", "l2l"), base, threads=2)["threads"] == 2  # a per-task loop: not
    assert "msl_anneal_iters" not in fingerprint(Cell("maml", "func"), base)  # only MSL reads it
    from dataclasses import replace
    assert fingerprint(cell, replace(base, task_params={"noise": 0.0})) == fp  # resolved task parameters
    assert fingerprint(cell, replace(base, eval_k_shot=(10,))) == fp  # () means the training K
    assert fingerprint(cell, replace(base, device="cuda:1"))["device"] == "cuda"


def load_sweep_settings():
    from benchmarks.config import Settings

    return Settings()


def test_report_refuses_to_pool_seeds_made_under_other_settings(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    path = next((out / "runs").glob("*seed1.json"))
    record = json.loads(path.read_text())
    record["fingerprint"]["n_test_tasks"] = 600
    record["settings"]["n_test_tasks"] = 600
    path.write_text(json.dumps(record))
    from benchmarks.fingerprint import check_poolable

    with pytest.raises(RecordError, match="n_test_tasks"):
        check_poolable(load_records(out))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "seed0" in err and "seed1" in err and "n_test_tasks: 20 -> 600" in err, err
    # and a sweep that would add such a seed refuses before training
    assert run(tmp_path, out, "--set", "seed=[0, 2]") == 2
    assert "cannot pool" in capsys.readouterr().err
    assert not list((out / "runs").glob("*seed2.json"))


# ----------------------------------------------------------------------------- hardware

def _set_hardware(out: Path, value, only: str = "*.json") -> None:
    for path in (out / "runs").glob(only):
        record = json.loads(path.read_text())
        if value is None:
            del record["fingerprint"]["hardware"]
        else:
            record["fingerprint"]["hardware"] = value
        path.write_text(json.dumps(record))


def test_hardware_names_this_processor():
    from benchmarks.hardware import hardware

    name = hardware("cpu")
    assert torch.backends.cpu.get_cpu_capability() in name and name == hardware(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hardware_of_a_cuda_run_names_the_gpu():
    from benchmarks.hardware import hardware

    name = hardware("cuda")
    assert name.startswith(hardware("cpu")) and torch.cuda.get_device_name(0) in name, name


@pytest.mark.parametrize("stored, named", [("Other CPU [AVX2]", "hardware: 'Other CPU [AVX2]' -> "),
                                           (None, "hardware: (not recorded) -> ")], ids=["other", "not-recorded"])
def test_a_folder_made_on_other_hardware_is_not_resumed(finished, tmp_path, capsys, stored, named):
    """Another processor gives other floats: resuming would mix two machines' numbers silently."""
    out = copy_of(finished, tmp_path)
    _set_hardware(out, stored)
    before = snapshot(out)
    assert run(tmp_path, out, "--set", "seed=[0, 1]") == 2
    err = capsys.readouterr().err
    assert named in err and "another --out" in err, err
    assert snapshot(out) == before, "a refused run changed the folder"


def test_a_resume_at_other_threads_refuses_only_where_threads_change_numbers(tmp_path, capsys):
    """func: bitwise at any thread count, so a resume at 2 threads trains nothing; the torch
    loop backend moves with the thread count, so the same resume refuses naming it."""
    text = TINY.replace('backend = "func"', 'backend = ["func", "torch"]')
    out = tmp_path / "out"
    assert run(tmp_path, out, text=text) == 0
    before = snapshot(out)
    assert main(["run", "--config", str(tmp_path / "sweep.toml"), "--out", str(out), "--threads", "2"]) == 2
    err = capsys.readouterr().err
    assert "threads: 1 -> 2  (1 cell)" in err and "maml-torch" in err, err
    assert snapshot(out) == before
    runs = {p.name: p.read_bytes() for p in (out / "runs").iterdir()}
    assert main(["run", "--config", str(tmp_path / "sweep.toml"), "--out", str(out), "--threads", "2",
                 "--set", 'backend="func"']) == 0
    assert {p.name: p.read_bytes() for p in (out / "runs").iterdir()} == runs  # trained nothing


def test_seeds_from_two_machines_pool_and_the_report_names_both(finished, tmp_path, capsys):
    from benchmarks.fingerprint import check_poolable, check_resumable
    from benchmarks.records import scan_records

    out = copy_of(finished, tmp_path)
    _set_hardware(out, "Other CPU [AVX2]", only="*seed1.json")
    check_poolable(load_records(out))  # no error: within-tolerance float differences, not other settings
    assert main(["report", str(out)]) == 0
    tables = (out / "tables.md").read_text()
    from benchmarks.hardware import hardware
    assert f"{hardware()} (1 run)" in tables and "Other CPU [AVX2] (1 run)" in tables, tables[:800]
    sweep = load_sweep(_config(tmp_path), ["seed=[0, 1]"])
    with pytest.raises(Exception, match="hardware"):
        check_resumable(scan_records(out), sweep.cells, sweep.settings, out)
    check_resumable(scan_records(out), sweep.cells, sweep.settings, out, same_hardware=False)  # Ray: workers compute


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "sweep.toml"
    config.write_text(TINY)
    return config


def test_regress_compares_across_hardware(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    _set_hardware(out, "Other CPU [AVX2]")
    assert main(["regress", "--baseline", str(finished), "--candidate", str(out)]) == 0, capsys.readouterr()


# ----------------------------------------------------------------------------- ids (defect 4)

def test_distinct_rates_get_distinct_ids(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(TINY + "lr_base = [0.01, 0.010000001, 0.0100000001]\nlr_meta = [0.001, 0.0010000001]\n")
    cells = load_sweep(config).cells
    ids = {c.cell_id for c in cells}
    assert len(cells) == 6 and len(ids) == 6, sorted(ids)
    assert "maml-func-sine-K10-S1-lrb0.01-lrm0.001-B5-it20-seed0" in ids, sorted(ids)
    assert "maml-func-sine-K10-S1-lrb0.010000001-lrm0.0010000001-B5-it20-seed0" in ids, sorted(ids)


def test_committed_record_names_are_still_their_ids():
    paths = sorted(ROOT.glob("results/*/runs/*.json"))
    if not paths:
        pytest.skip("no committed results")
    wrong = []
    for path in paths:
        record = json.loads(path.read_text())
        if f"{Cell(**record['cell']).cell_id}.json" != path.name:
            wrong.append(path.name)
    assert not wrong, wrong[:5]


# ----------------------------------------------------------------------------- duplicates, inconsistent records (defect 5)

def test_a_copy_under_another_name_counts_once(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    original = next((out / "runs").glob("*seed0.json"))
    shutil.copy(original, out / "runs" / "copy-of-seed0.json")
    assert len(load_records(out)) == 2
    assert main(["report", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary[(summary.seed == 0) & (summary.split == "test") & (summary.eval_steps == 1)]) == 1


def test_a_conflicting_copy_is_an_error_naming_both_files(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    original = next((out / "runs").glob("*seed0.json"))
    record = json.loads(original.read_text())
    record["evaluations"][0]["mse"] += 1.0
    (out / "runs" / "other.json").write_text(json.dumps(record))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert original.name in err and "other.json" in err and "conflicting" in err, err


@pytest.mark.parametrize("defect", ["no-evaluations", "missing-artifacts"])
def test_an_ok_record_without_its_numbers_is_an_error_naming_it(finished, tmp_path, capsys, defect):
    out = copy_of(finished, tmp_path)
    path = next((out / "runs").glob("*seed1.json"))
    record = json.loads(path.read_text())
    if defect == "no-evaluations":
        record["evaluations"] = []
    else:
        record["artifacts"] = path.with_suffix(".npz").name
        path.with_suffix(".npz").unlink(missing_ok=True)
    path.write_text(json.dumps(record))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert path.name in err and "inconsistent" in err, err
    assert run(tmp_path, out, "--set", "seed=[0, 1]") == 2  # a sweep does not silently retrain around it
    assert path.name in capsys.readouterr().err


# ----------------------------------------------------------------------------- lock, stale files, fsync (defects 6, 7)

def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder(tmp_path, capsys):
    from benchmarks.lock import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):
        assert run(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert f"PID {os.getpid()}" in err and "another --out" in err, err
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())


def test_the_lock_of_a_dead_process_is_taken_over_and_stale_tmp_files_swept(tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid}\n")  # a holder that died (its flock died with it)
    stale = [out / "runs" / ".maml.json.x1.tmp", out / "runs" / ".maml.npz.x2.tmp"]
    for path in stale:
        path.write_text("half")
    old_report_tmp = out / ".summary.csv.x3.tmp"
    old_report_tmp.write_text("half")
    os.utime(old_report_tmp, (1, 1))
    assert run(tmp_path, out) == 0
    assert not any(p.exists() for p in stale + [old_report_tmp]), sorted(p.name for p in out.rglob(".*"))


def test_write_atomic_flushes_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(tmp_path / "a.json", "{}")
    assert synced == [False, True], synced


# ----------------------------------------------------------------------------- report written as a set (defect 10)

def test_a_failing_set_write_leaves_the_old_set_whole(tmp_path, monkeypatch):
    from benchmarks.records import write_files_atomically

    write_files_atomically(tmp_path, {"summary.csv": "old", "tables.md": "old", "figures/a.png": b"old"})
    before = snapshot(tmp_path)
    (tmp_path / "figures" / "b.png").mkdir()  # a folder where the new set writes a file
    with pytest.raises(IsADirectoryError):
        write_files_atomically(tmp_path, {"summary.csv": "new", "figures/b.png": b"new"})
    (tmp_path / "figures" / "b.png").rmdir()
    assert snapshot(tmp_path) == before

    real = os.replace
    calls = []

    def fail_late(src, dst):  # the disk fills up while the new set is moved in
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_late)
    with pytest.raises(OSError):
        write_files_atomically(tmp_path, {"summary.csv": "new", "tables.md": "new", "figures/a.png": None})
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    write_files_atomically(tmp_path, {"summary.csv": "new", "tables.md": "new", "figures/a.png": None})
    assert snapshot(tmp_path) == {Path("summary.csv"): b"new", Path("tables.md"): b"new"}


# ----------------------------------------------------------------------------- environment: exit 3 (defect 8)

def test_runs_a_file_exits_3_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").write_text("not a folder")
    assert run(tmp_path, out) == 3
    err = capsys.readouterr().err
    assert "runs" in err and "is a file" in err and "Traceback" not in err, err


def test_summary_csv_a_folder_exits_3_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "summary.csv").mkdir(parents=True)
    assert run(tmp_path, out) == 3
    assert "summary.csv" in capsys.readouterr().err
    assert not list((out / "runs").glob("*.json")), "trained although the report could not be written"


def test_a_full_disk_while_writing_a_record_exits_3(tmp_path, capsys, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(records_module, "write_atomic", full)
    assert run(tmp_path, tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun" in err, err


def test_an_unreachable_ray_address_exits_3_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert run(tmp_path, tmp_path / "out", "--executor", "ray", "--address", f"127.0.0.1:{port}") == 3
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "cannot reach" in err, err


# ----------------------------------------------------------------------------- regress inputs (defect 10)

needs_baseline = pytest.mark.skipif(not (BASELINE / "runs").is_dir(), reason="no committed baseline")


@needs_baseline
@pytest.mark.parametrize("text, expected", [
    (None, "does not exist"),
    ("", "empty"),
    ("[mse\nrtol = ", "malformed TOML"),
    ("[mse_ci95]\nrtol = 0.1\natol = 0.001\n", "lacks [mse]"),
    ("[mse]\nrtol = 0.03\natol = 0.001\n[mse_ci95]\nrtol = 0.1\natol = 0.001\n[speed]\nrtol = 1\natol = 1\n",
     "unknown key(s) 'speed'"),
    ("[mse]\nrtol = 0.03\n[mse_ci95]\nrtol = 0.1\natol = 0.001\n", "exactly rtol and atol"),
    ("[mse]\nrtol = -1\natol = 0.001\n[mse_ci95]\nrtol = 0.1\natol = 0.001\n", "mse.rtol"),
    ("[mse]\nrtol = 0.03\natol = 0.001\n[mse_ci95]\nrtol = 0.1\natol = 0.001\n[invariants]\nbeats = 1\n",
     "unknown invariant 'beats'"),
], ids=["missing", "empty", "malformed", "no-mse", "unknown-metric", "no-atol", "negative", "unknown-invariant"])
def test_bad_tolerances_file_exits_2(tmp_path, capsys, text, expected):
    tolerances = tmp_path / "tolerances.toml"
    if text is not None:
        tolerances.write_text(text)
    code = main(["regress", "--baseline", str(BASELINE), "--candidate", str(BASELINE), "--tolerances", str(tolerances)])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and str(tolerances) in err, (code, err)


@needs_baseline
def test_candidate_without_finished_cells_is_a_regression_with_a_message(tmp_path, capsys):
    candidate = tmp_path / "candidate"
    (candidate / "runs").mkdir(parents=True)
    for path in (BASELINE / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        record.update(status="failed", error="RuntimeError: boom", evaluations=[])
        (candidate / "runs" / path.name).write_text(json.dumps(record))
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 1
    out, err = capsys.readouterr()
    assert "no finished cell" in out and "16 failed" in out and "boom" in out and "REGRESSION" in out, out
    assert "Traceback" not in out + err


def _copy_of_baseline(tmp_path) -> Path:
    """A candidate folder holding copies of the committed baseline's records, to edit."""
    candidate = tmp_path / "candidate"
    shutil.copytree(BASELINE / "runs", candidate / "runs")
    return candidate


@needs_baseline
def test_bitwise_sentence_only_when_nothing_moved(tmp_path, capsys):
    candidate = _copy_of_baseline(tmp_path)
    path = next((candidate / "runs").glob("fomaml-func-*-S3-*.json"))
    record = json.loads(path.read_text())
    record["evaluations"][3]["mse"] *= 2
    path.write_text(json.dumps(record))
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 1
    out = capsys.readouterr().out
    assert "moved beyond tolerance" in out and "bitwise" not in out, out


@needs_baseline
def test_regress_refuses_sides_made_under_other_settings(tmp_path, capsys):
    candidate = _copy_of_baseline(tmp_path)
    for path in (candidate / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        record["settings"]["n_test_tasks"] = 20
        record["fingerprint"]["n_test_tasks"] = 20
        path.write_text(json.dumps(record))
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 2
    assert "n_test_tasks: 600 -> 20  (16 cells)" in capsys.readouterr().err


@needs_baseline
def test_a_record_whose_fingerprint_disagrees_with_its_settings_is_refused(tmp_path, capsys):
    """Editing a record's settings but not its fingerprint (or the reverse) must not slip through."""
    candidate = _copy_of_baseline(tmp_path)
    path = next((candidate / "runs").glob("*.json"))
    record = json.loads(path.read_text())
    record["settings"]["n_test_tasks"] = 20
    path.write_text(json.dumps(record))
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 2
    err = capsys.readouterr().err
    assert "fingerprint disagrees" in err and "n_test_tasks: fingerprint 600, settings 20" in err, err


# ----------------------------------------------------------------------------- quiet output (issue 12)

def test_no_dependency_banner_in_a_sweep_with_workers(tmp_path):
    """learn2learn imports gym, which prints a deprecation banner, in the parent and in each worker."""
    config = tmp_path / "sweep.toml"
    config.write_text(TINY.replace('"func"', '"l2l"').replace("seed = 0", "seed = [0, 1]").replace("= 20", "= 4"))
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--config", str(config), "--out",
                             str(tmp_path / "out"), "--workers", "2"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Gym" not in result.stderr and "Warning" not in result.stderr, result.stderr
