"""The persistent cache of compiled programs (`algorithms.base.compile_cache_dir`): one folder per
torch version and machine, shared by every cell, seed and worker; a warm compile gives bitwise
the floats of a cold one, in a fraction of the time, also for other learning rates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import algorithms.base as base
from algorithms import HyperParams, get_algorithm

ROOT = Path(__file__).resolve().parents[1]


def test_cache_folder_is_per_torch_version_and_machine(monkeypatch):
    import benchmarks.hardware

    folder = base.compile_cache_dir("cpu")
    assert folder.parent == ROOT / ".cache" / "inductor"
    assert folder.name.startswith(f"{torch.__version__}-")
    monkeypatch.setattr(benchmarks.hardware, "hardware", lambda device="cpu": "another processor [AVX2]")
    assert base.compile_cache_dir("cpu").name != folder.name


def test_compiling_uses_the_project_cache_unless_told_otherwise(monkeypatch, tmp_path):
    """Unset or torch's own default (`/tmp/torchinductor_<user>`): the project folder; any other
    folder (the user's, the speed suite's empty one for cold compiles) is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    learner = get_algorithm("maml", "func", HyperParams(meta_batch=2), torch.Generator().manual_seed(0))
    for before in (None, default_cache_dir()):
        if before is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", before)
        assert learner._compiled_call(("probe", before), lambda: (lambda x: x + 1), 1) == 2
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(base.compile_cache_dir("cpu"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    learner._compiled_call("probe-user", lambda: (lambda x: x), 1)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)


_RUN = """
import json, sys, torch
torch.set_num_threads(1)
from algorithms import HyperParams, get_algorithm
from tasks import TaskBatch, get_task
lr_meta = float(sys.argv[1])
hp = HyperParams(inner_steps=1, meta_batch=5, lr_meta=lr_meta, iterations=3)
learner = get_algorithm("maml", "func", hp, torch.Generator().manual_seed(0), compile=True)
family = get_task("sine")
for i in range(3):
    learner.step(TaskBatch.stack([family.sample(5, torch.Generator().manual_seed(i))]), i)
print(json.dumps({"params": torch.cat([p.detach().flatten() for p in learner.meta_parameters]).tolist(),
                  "compile_seconds": learner.compile_seconds}))
"""


def _compiled_run(cache: Path, lr_meta: float) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _RUN, str(lr_meta)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_warm_compile_is_bitwise_the_cold_one_and_far_cheaper(tmp_path):
    """Fresh processes (no in-memory caches): cold, then warm on the same folder, then warm with
    another LR_meta (a rate is no part of the key, and the warm program follows the new rate:
    it matches the eager run to rounding and differs from the first run)."""
    from tasks import TaskBatch, get_task

    cold = _compiled_run(tmp_path, 1e-3)
    warm = _compiled_run(tmp_path, 1e-3)
    assert warm["params"] == cold["params"]  # bitwise: floats through JSON round-trip exactly
    assert warm["compile_seconds"] < 0.5 * cold["compile_seconds"], (cold["compile_seconds"], warm["compile_seconds"])
    other = _compiled_run(tmp_path, 0.1)
    assert other["compile_seconds"] < 0.5 * cold["compile_seconds"]
    eager = get_algorithm("maml", "func", HyperParams(inner_steps=1, meta_batch=5, lr_meta=0.1, iterations=3),
                          torch.Generator().manual_seed(0))
    family = get_task("sine")
    for i in range(3):
        eager.step(TaskBatch.stack([family.sample(5, torch.Generator().manual_seed(i))]), i)
    reference = torch.cat([p.detach().flatten() for p in eager.meta_parameters])
    assert torch.allclose(torch.tensor(other["params"]), reference, rtol=0, atol=1e-5)
    assert float((torch.tensor(other["params"]) - torch.tensor(cold["params"])).abs().max()) > 1e-2


def test_an_unwritable_project_folder_falls_back_to_torchs_default(monkeypatch, tmp_path):
    """A read-only checkout (or an install in site-packages) must still compile."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(base, "COMPILE_CACHE_ROOT", blocker / "inductor")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    base.use_compile_cache("cpu")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_a_sweep_says_what_compiling_cost():
    """`run` prints the compile seconds of the cells it trained (none when nothing compiled)."""
    from benchmarks.cli import compile_summary

    assert compile_summary([{"compile_seconds": 0.3, "engine": "generic"}, {}]) is None  # eager: a self-check
    line = compile_summary([{"compile_seconds": 12.25, "engine": "accelerated+compile"},
                            {"compile_seconds": 0.5, "engine": "generic+compile"}, {"engine": "accelerated"}])
    assert line.startswith("compile: 12.8 s over 2 compiled cells")
