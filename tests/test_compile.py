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
    ≤ 5e-6). MSL's annealed weights change every iteration with one program for all of them."""
    hp = HyperParams(inner_steps=inner_steps, lr_base=0.3, meta_batch=5, iterations=20, msl_anneal_iters=10)
    batch = TaskBatch.stack([FAMILY.sample(5, torch.Generator().manual_seed(3))])
    eager = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1))
    compiled = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1), compile=True)
    assert compiled.engine == "accelerated+compile" and eager.engine == "accelerated"
    for iteration in (0, 1, 4):
        loss_ref, reference = eager.meta_gradient(batch, iteration)
        loss, grads = compiled.meta_gradient(batch, iteration)
        assert _relative(grads, reference) < 1e-5, (name, iteration)
        assert float((loss - loss_ref).abs().max()) < 1e-5 * float(loss_ref.abs().max())
        if iteration == 0:
            first = compiled.compile_seconds
            assert first > 0
    assert compiled.compile_seconds == first and len(compiled._programs) == 1  # one program for every iteration


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "msl"])
def test_the_compiled_step_trains_like_the_eager_one(name):
    """The compiled step (meta-gradient and Adam in one program, state updated in place) against
    eager steps: 20 iterations of S = 5 at LR_base 0.05 (5x the default; 0.1 diverges) on fresh
    batches, where training amplifies rounding (measured ≤ 2.2e-7 relative on the weights,
    Meta-SGD and ANIL); the step counter and Adam's moments advance as eager ones do, and MSL's
    annealing uses one program."""
    hp = HyperParams(inner_steps=5, lr_base=0.05, meta_batch=5, iterations=20, msl_anneal_iters=10)
    eager = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1))
    compiled = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1), compile=True)
    streams = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for iteration in range(20):
        losses = [learner.step(TaskBatch.stack([FAMILY.sample(5, g)]), iteration)["loss"]
                  for learner, g in zip((eager, compiled), streams)]
        gap = float((losses[1] - losses[0]).abs().max())
        assert losses[0].isfinite().all() and gap <= 1e-4 * float(losses[0].abs().max()), iteration
    assert _relative(compiled.meta_parameters, eager.meta_parameters) < 2e-6
    assert compiled.optimizer.step_count == eager.optimizer.step_count == 20
    assert _relative([compiled.optimizer.v], [eager.optimizer.v]) < 1e-4
    assert [key[0] for key in compiled._programs] == ["step"]  # training builds one program


def test_a_compiled_program_calls_no_dynamo_and_keys_on_shapes(monkeypatch):
    """The engine's programs run without TorchDynamo (no guard evaluation per call): a step with
    Dynamo's entry point disabled still runs; a new batch shape is a new program, never a call
    of the old one on the wrong shapes."""
    learner = get_algorithm("fomaml", "func", HyperParams(inner_steps=1, meta_batch=5),
                            torch.Generator().manual_seed(1), compile=True)
    learner.step(TaskBatch.stack([FAMILY.sample(5, torch.Generator().manual_seed(3))]))

    def no_dynamo(*args, **kwargs):
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(torch, "compile", no_dynamo)
    learner.step(TaskBatch.stack([FAMILY.sample(5, torch.Generator().manual_seed(4))]))
    assert len(learner._programs) == 1
    learner.step(TaskBatch.stack([FAMILY.sample(7, torch.Generator().manual_seed(5))]))
    assert len(learner._programs) == 2 and all(p.isfinite().all() for p in learner.meta_parameters)


def test_a_meta_parameter_baked_into_a_program_is_refused():
    """A tensor the traced function reads from outside its inputs becomes a constant of the
    program; a meta-parameter read that way would be frozen at its first value, so it raises."""
    learner = get_algorithm("maml", "func", HyperParams(inner_steps=1, meta_batch=5),
                            torch.Generator().manual_seed(1), compile=True)
    data = [torch.ones(2)]
    with pytest.raises(RuntimeError, match="baked in"):
        learner._compile_traced(lambda x: (x * learner.meta_parameters[1].detach()[0, 0],), data,
                                keep=learner.meta_parameters)


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
