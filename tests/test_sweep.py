"""Sweep execution: resume after SIGKILL, divergence, failures, parallel executors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.cli import main
from benchmarks.records import load_records

ROOT = Path(__file__).resolve().parents[1]

SWEEP = """
algorithm = ["maml", "fomaml", "reptile", "pretrain"]
backend = "func"
inner_steps = 1
iterations = 150
seed = [0, 1]
eval_every = 75
log_every = 25
n_test_tasks = 50
n_validation_tasks = 50
ensemble = false
"""


def _numbers(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "summary.csv")
    return frame.drop(columns=["sec_per_iter", "sec_per_iter_member", "peak_memory_mb"]).sort_values(
        list(frame.columns[:14])).reset_index(drop=True)


def _cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkilled_sweep_resumes_to_the_same_results(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert main(["run", "--config", str(config), "--out", str(reference)]) == 0

    proc = _cli("run", "--config", str(config), "--out", str(resumed))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((resumed / "runs").glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = sorted(p.name for p in (resumed / "runs").glob("*.json"))
    assert 2 <= len(finished_before) < 8, f"kill landed outside the sweep: {finished_before}"
    for path in (resumed / "runs").glob("*.json"):  # nothing half-written survives a kill
        json.loads(path.read_text())

    second = _cli("run", "--config", str(config), "--out", str(resumed))
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    trained_again = stdout.count(": ok")
    assert trained_again == 8 - len(finished_before), (
        f"resume retrained {trained_again} cells, expected {8 - len(finished_before)}\n{stderr}")
    pd.testing.assert_frame_equal(_numbers(reference), _numbers(resumed))


def test_diverging_cell_is_recorded_and_sweep_goes_on(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP.replace('["maml", "fomaml", "reptile", "pretrain"]', '"maml"')
                      .replace("seed = [0, 1]", "seed = 0").replace("inner_steps = 1", "lr_base = [0.01, 1000.0]"))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    status = {r["cell"]["lr_base"]: r for r in load_records(tmp_path / "out")}
    assert status[1000.0]["status"] == "diverged", status[1000.0]["status"]
    assert "training loss" in status[1000.0]["error"], status[1000.0]["error"]
    assert status[0.01]["status"] == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to provoke a failure")
def test_failed_cells_are_recorded_and_exit_nonzero(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP.replace('["maml", "fomaml", "reptile", "pretrain"]', '"maml"').replace("seed = [0, 1]", "seed = 0"))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 1
    (record,) = load_records(tmp_path / "out")
    assert record["status"] == "failed" and "CUDA" in record["error"], record["error"]
    assert "FAILED" in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_parallel_executors_match_in_process_run(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP.replace('["maml", "fomaml", "reptile", "pretrain"]', '["maml", "pretrain"]'))
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["run", "--config", str(config), "--out", str(serial)]) == 0
    assert main(["run", "--config", str(config), "--out", str(parallel), "--executor", executor, "--workers", "2"]) == 0
    pd.testing.assert_frame_equal(_numbers(serial), _numbers(parallel))
