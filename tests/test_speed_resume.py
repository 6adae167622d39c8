"""An interrupted speed suite keeps what finished, says how to resume, and the resumed run skips it
(`benchmarks/speed/resume.py`, `benchmarks/speed/conftest.py`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.speed import resume

ROOT = Path(__file__).resolve().parents[1]
#: four quick benchmarks, the two slow-ish S = 100 ones last (so a signal lands while one runs)
SELECTION = "maml-func-S1-B25 or checkpoint_inner"
EXPECTED = ["test_meta_iteration[fomaml-func-S1-B25]", "test_meta_iteration[maml-func-S1-B25]",
            "test_checkpoint_inner[plain]", "test_checkpoint_inner[checkpointed]"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SPEED_") and k not in ("MAKELEVEL", "MAKEFLAGS", "PYTEST_XDIST_WORKER")}
    return {**env, "SPEED_SECONDS": "0.02", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_speed_suite_says_how_to_resume_and_the_resume_skips_what_finished(tmp_path, signum):
    env, json_path = _env(), tmp_path / "speed.json"
    partial = tmp_path / "speed.partial.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/speed",
                             "-k", SELECTION, f"--benchmark-json={json_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _lines(partial) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, out[-2000:] + err[-2000:]
    last = err.strip().splitlines()[-1]
    kept = _lines(partial)
    assert 1 <= kept < len(EXPECTED)
    assert last.startswith(f"{signum.name}: stopped; the {kept} finished benchmark(s) are kept in {partial}; "
                           "resume with: "), last
    command = last.split("resume with: ", 1)[1]
    assert "SPEED_PARTIAL" not in command and f"--benchmark-json={json_path}" in command
    if signum != signal.SIGINT:
        return
    rerun = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming: {kept} finished benchmark(s) from {partial} are not measured again" in rerun.stderr
    assert f"{len(EXPECTED) - kept} passed" in rerun.stdout
    names = [b["name"] for b in json.loads(json_path.read_text())["benchmarks"]]
    assert sorted(names) == sorted(EXPECTED)  # the kept ones joined the new JSON, none twice
    assert not partial.exists()  # complete: the next run measures afresh


def test_only_records_measured_under_the_same_settings_count_as_finished(tmp_path, monkeypatch):
    monkeypatch.delenv("SPEED_SECONDS", raising=False)
    now = resume.settings()
    path = tmp_path / "partial.jsonl"
    path.write_text("\n".join([
        json.dumps({"name": "a", "settings": now}),
        json.dumps({"name": "b", "settings": {**now, "SPEED_SECONDS": "9"}}),  # another configuration
        json.dumps({"name": "c", "settings": {**now, "cpu": "another machine"}}),
        json.dumps({"name": "d"}),  # written before records carried their settings
        '{"name": "e", "sett',  # cut off by a kill
    ]) + "\n")
    done, other = resume.finished(path, now)
    assert list(done) == ["a"] and other == 4
    assert resume.finished(tmp_path / "absent.jsonl", now) == ({}, 0)


def test_the_resume_command_under_make_is_make_speed_with_its_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MAKELEVEL", "1")
    monkeypatch.setenv("MAKEFLAGS", " -- OUT=runs/x YARDSTICK=maml:higher")
    assert resume.resume_command(None, tmp_path / "speed.partial.jsonl") == "make speed OUT=runs/x YARDSTICK=maml:higher"
    monkeypatch.setenv("MAKEFLAGS", "")
    assert resume.resume_command(None, Path("runs/bench/speed.partial.jsonl")) == "make speed OUT=runs/bench"


def test_a_benchmark_interrupted_before_its_first_round_is_dropped_before_the_json_is_written():
    """The race the signal test can hit: a benchmark with no round yet would make pytest-benchmark fail
    while writing its JSON (exit 1, not 130/143); it measured nothing and is dropped."""
    from types import SimpleNamespace

    empty = []

    class Bench:
        def __init__(self, rounds):
            self.rounds = rounds

        def __bool__(self):
            return bool(self.rounds)

    kept = Bench([0.1])
    config = SimpleNamespace(_benchmarksession=SimpleNamespace(benchmarks=[kept, Bench(empty)]))
    state = resume.Resume.__new__(resume.Resume)
    state.config = config
    state.drop_unmeasured()
    assert config._benchmarksession.benchmarks == [kept]
