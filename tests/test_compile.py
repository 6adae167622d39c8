"""Compiled engines (`compile = true`): the same meta-gradient as eager, no recompiles as MSL's
weights anneal, compile time recorded apart from the step time, and compiled runs never ensemble
(a compiled program's floats may depend on its shapes, so a cell's numbers would depend on
which other cells shared its program)."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from algorithms import HyperParams, get_algorithm
from benchmarks.cli import main
from benchmarks.config import parse_sweep
from benchmarks.sweep import group_jobs
from tasks import TaskBatch, get_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAMILY = get_task("sine")


def _relative(grads, reference) -> float:
    return max(float((g - r).norm() / r.norm().clamp_min(1e-30)) for g, r in zip(grads, reference))


@pytest.mark.parametrize(("name", "inner_steps"), [("maml", 2), ("metasgd", 2), ("anil", 2), ("msl", 2)])
def test_compiled_accelerated_engine_matches_eager(name, inner_steps):
    """Float32 at LR_base 0.3 (where differences grow): rounding only, 1e-5 relative (measured
    ≤ 5e-6). MSL's annealed weights change every iteration without a recompile (a recompile
    would raise here)."""
    torch._dynamo.reset()
    hp = HyperParams(inner_steps=inner_steps, lr_base=0.3, meta_batch=5, iterations=20, msl_anneal_iters=10)
    batch = TaskBatch.stack([FAMILY.sample(5, torch.Generator().manual_seed(3))])
    eager = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1))
    compiled = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1), compile=True)
    assert compiled.engine == "accelerated+compile" and eager.engine == "accelerated"
    for iteration in (0, 1, 4):
        loss_ref, reference = eager.meta_gradient(batch, iteration)
        with torch.compiler.set_stance("fail_on_recompile" if iteration else "default"):
            loss, grads = compiled.meta_gradient(batch, iteration)
        assert _relative(grads, reference) < 1e-5, (name, iteration)
        assert float((loss - loss_ref).abs().max()) < 1e-5 * float(loss_ref.abs().max())
        if iteration == 0:
            first = compiled.compile_seconds
            assert first > 0
    assert compiled.compile_seconds == first  # one program for every iteration


def test_the_cpp_wrapper_changes_no_float(monkeypatch):
    """On CPU the compiled program calls its kernels from Inductor's C++ wrapper (faster per
    call); the kernels are the ones the Python wrapper calls, so 10 Adam steps of second-order
    MAML at S = 3, LR_base 0.3 end bitwise on the same weights either way."""
    def train(options):
        torch._dynamo.reset()
        learner = get_algorithm("maml", "func", HyperParams(inner_steps=3, lr_base=0.3, meta_batch=5),
                                torch.Generator().manual_seed(1), compile=True)
        compile_ = torch.compile
        calls = []

        def recording(fn, **kwargs):
            calls.append(kwargs.get("options"))
            kwargs["options"] = options
            return compile_(fn, **kwargs)

        monkeypatch.setattr(torch, "compile", recording)
        generator = torch.Generator().manual_seed(3)
        for iteration in range(10):
            learner.step(TaskBatch.stack([FAMILY.sample(5, generator)]), iteration)
        monkeypatch.setattr(torch, "compile", compile_)
        assert calls == [{"cpp_wrapper": True}]  # what the engine asks for on CPU
        return torch.cat([p.flatten() for p in learner.params])

    cpp, python = train({"cpp_wrapper": True}), train(None)
    assert cpp.isfinite().all() and torch.equal(cpp, python)


def test_a_compiled_learner_is_one_run():
    hp = HyperParams(inner_steps=1)
    with pytest.raises(ValueError, match="compile=True runs one"):
        get_algorithm("maml", "func", [hp, hp], [torch.Generator(), torch.Generator()], compile=True)


SWEEP = """
algorithm = "fomaml"
backend = "func"
inner_steps = 1
lr_base = [0.01, 0.1]
iterations = 30
eval_every = 0
log_every = 10
eval_steps = 1
n_test_tasks = 20
n_validation_tasks = 20
compile = {compile}
"""


def test_compiled_runs_do_not_ensemble_and_record_their_compile_apart(tmp_path: Path):
    eager = parse_sweep(tomllib.loads(SWEEP.format(compile="false")))
    compiled = parse_sweep(tomllib.loads(SWEEP.format(compile="true")))
    assert [len(job) for job in group_jobs(eager.cells, eager.settings)] == [2]
    assert [len(job) for job in group_jobs(compiled.cells, compiled.settings)] == [1, 1]

    config = tmp_path / "compiled.toml"
    config.write_text(SWEEP.format(compile="true").replace("lr_base = [0.01, 0.1]", "lr_base = 0.1"))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json")]
    assert record["status"] == "ok" and record["engine"] == "accelerated+compile"
    # the compile (seconds) is recorded apart; the step time (milliseconds) does not contain it
    assert record["compile_seconds"] > 0 and record["sec_per_iter"] < record["compile_seconds"] / 10
    summary = (tmp_path / "out" / "tables.md").read_text()
    assert "compile" in summary
