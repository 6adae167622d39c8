"""The `jax` backend (jit + vmap + optax) against the `func` engine, number for number.

- its meta-gradient equals func's on the same batch and initial weights (float32, S in {1, 2, 5},
  MAML and first-order MAML), and the comparison can tell the two algorithms apart;
- a seeded 100-iteration run through the shared runner (`benchmarks.job.run_job`) and the shared
  torch evaluation agrees with func's on test MSE;
- the learner speaks torch (tensors in, tensors out, on the run's device), rejects what it cannot
  do with a clear error, and sizes XLA's CPU thread pool from torch's thread count.

The registry-wide conformance test and the float64 comparisons with direct autograd and finite
differences (tests/test_algorithms.py) cover it too. Skipped, with the reason, where jax is not
installed.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from algorithms import HyperParams, get_algorithm
from algorithms.jax_engine import missing_packages
from tasks import TaskBatch, evaluation_set, get_task

pytestmark = [pytest.mark.skipif(bool(missing_packages()),
                                 reason=f"jax backend not installed (missing: {', '.join(missing_packages())})"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py

FAMILY = get_task("sine")
GRADIENT_TOLERANCE = 1e-5  # float32: ||jax - func|| / ||func|| over the whole meta-gradient (measured <= 2e-7)
# After 100 Adam steps the two float32 programs' rounding differences (different op orders) have
# grown: measured 7e-5 (MAML) and 2e-6 (FOMAML) relative on test MSE; MAML and FOMAML themselves
# differ by ~1e-2 there, so the check is not blind.
RUN_TOLERANCE = 1e-3


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _gradients(algorithm: str, backend: str, inner_steps: int, batch: TaskBatch, seed: int = 1):
    hp = HyperParams(inner_steps=inner_steps, lr_base=0.01, meta_batch=len(batch))
    learner = get_algorithm(algorithm, backend, hp, torch.Generator().manual_seed(seed))
    stacked = backend == "func"
    loss, grads = learner.meta_gradient(TaskBatch.stack([batch]) if stacked else batch)
    return float(loss.reshape(-1)[0]), _flat([g[0] for g in grads] if stacked else grads), learner


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("inner_steps", [1, 2, 5])
def test_meta_gradient_equals_func(algorithm, inner_steps):
    batch = FAMILY.sample(25, torch.Generator().manual_seed(inner_steps))
    func_loss, func_grad, func = _gradients(algorithm, "func", inner_steps, batch)
    jax_loss, jax_grad, learner = _gradients(algorithm, "jax", inner_steps, batch)
    for p, q in zip(learner.meta_parameters, func.meta_parameters, strict=True):  # same initial weights
        assert torch.equal(p, q[0].detach()), "initial weights differ from make_network(seed)'s"
    assert all(g.dtype == torch.float32 for g in learner.meta_gradient(batch)[1])
    error = _relative(jax_grad, func_grad)
    message = f"{algorithm} S={inner_steps}: relative meta-gradient error {error:.1e}, loss {jax_loss} vs {func_loss}"
    print(message)
    assert error < GRADIENT_TOLERANCE and abs(jax_loss - func_loss) <= 1e-6 * func_loss, message
    other = "fomaml" if algorithm == "maml" else "maml"
    blind = _relative(_gradients(other, "jax", inner_steps, batch)[1], func_grad)
    assert blind > 100 * GRADIENT_TOLERANCE, f"{other} is within {blind:.1e} of {algorithm}: the check is blind"


def _test_mse(algorithm: str, backend: str) -> dict[int, float]:
    from benchmarks.config import Cell, Settings
    from benchmarks.job import run_job

    settings = Settings(n_test_tasks=100, n_validation_tasks=20, log_every=50)
    cell = Cell(algorithm, backend, inner_steps=2, lr_base=0.01, meta_batch=10, iterations=100, seed=3)
    record, = run_job([cell], settings, threads=1)
    assert record["status"] == "ok", record["error"]
    return {e["eval_steps"]: e["mse"] for e in record["evaluations"] if e["split"] == "test"}


@pytest.mark.slow
def test_seeded_run_agrees_with_func_on_test_mse():
    runs = {(a, b): _test_mse(a, b) for a in ("maml", "fomaml") for b in ("func", "jax")}
    for algorithm in ("maml", "fomaml"):
        ours, theirs = runs[algorithm, "jax"], runs[algorithm, "func"]
        error = max(abs(ours[k] - theirs[k]) / theirs[k] for k in theirs)
        print(f"{algorithm}: test MSE after 0/1/10 steps jax {[ours[k] for k in (0, 1, 10)]} "
              f"func {[theirs[k] for k in (0, 1, 10)]}: relative difference {error:.1e}")
        assert error < RUN_TOLERANCE, f"{algorithm}: jax and func test MSE differ by {error:.1e} relative"
    apart = max(abs(runs["maml", "jax"][k] - runs["fomaml", "jax"][k]) / runs["maml", "jax"][k] for k in (1, 10))
    assert apart > 10 * RUN_TOLERANCE, f"MAML and FOMAML runs differ by only {apart:.1e}: the check is blind"


def test_speaks_torch_and_evaluates_like_the_others():
    from algorithms.evaluation import evaluate

    hp = HyperParams(inner_steps=1, lr_base=0.01, lr_meta=1e-2, meta_batch=5)
    learner = get_algorithm("maml", "jax", hp, torch.Generator().manual_seed(0))
    batch = FAMILY.sample(5, torch.Generator().manual_seed(0))
    before = learner.meta_parameters
    metrics = learner.step(batch)
    assert isinstance(metrics["loss"], torch.Tensor) and metrics["loss"].dim() == 0
    after = learner.meta_parameters
    assert all(isinstance(p, torch.Tensor) and not torch.equal(p, q) for p, q in zip(after, before))
    kept = after[0].clone()
    after[0].add_(1.0)  # a copy: mutating it leaves the learner alone
    assert torch.equal(learner.meta_parameters[0], kept)
    adaptation = learner.adaptation()
    assert adaptation.lrs == [0.01] * 6
    frame = evaluate(adaptation, evaluation_set(FAMILY, "test", 10), steps=2)
    assert frame.mse.notna().all() and len(frame) == 3


def test_rejects_ensembles_and_stacked_batches():
    hp = HyperParams(inner_steps=1, meta_batch=5)
    with pytest.raises(ValueError, match="ensembles are a 'func' feature"):
        get_algorithm("maml", "jax", [hp, hp], [torch.Generator(), torch.Generator()])
    learner = get_algorithm("maml", "jax", hp, torch.Generator().manual_seed(0))
    stacked = TaskBatch.stack([FAMILY.sample(5, torch.Generator().manual_seed(0))])
    with pytest.raises(ValueError, match=r"\[tasks, points, 1\]"):
        learner.meta_gradient(stacked)


def test_a_run_compiles_its_step_once():
    """The jitted step's inputs keep their types across steps (Adam's step count is committed to
    the device like the step's outputs), so a run compiles once; it compiled twice before (0.5 s)."""
    hp = HyperParams(inner_steps=1, meta_batch=5, lr_base=0.0123, lr_meta=0.00123)  # settings no other test uses
    learner = get_algorithm("maml", "jax", hp, torch.Generator().manual_seed(0))
    for seed in range(3):
        learner.step(FAMILY.sample(5, torch.Generator().manual_seed(seed)))
    assert learner.jit_step._cache_size() == 1


def test_one_torch_thread_makes_one_xla_thread():
    """XLA sizes its CPU pool once, from PJRT_NPROC (a fresh process: this one's jax is loaded)."""
    code = ("import os, torch; torch.set_num_threads(1); os.environ.pop('PJRT_NPROC', None);"
            "from algorithms import HyperParams, get_algorithm;"
            "get_algorithm('maml', 'jax', HyperParams(), torch.Generator());"
            "print(os.environ['PJRT_NPROC'], os.environ['XLA_FLAGS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "1" and "--xla_cpu_multi_thread_eigen=false" in out, out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_cuda_matches_cpu(algorithm):
    hp = HyperParams(inner_steps=3, lr_base=0.01, meta_batch=10)
    batch = FAMILY.sample(10, torch.Generator().manual_seed(4))
    cpu = get_algorithm(algorithm, "jax", hp, torch.Generator().manual_seed(2))
    gpu = get_algorithm(algorithm, "jax", hp, torch.Generator().manual_seed(2), device="cuda")
    _, cpu_grads = cpu.meta_gradient(batch)
    loss, gpu_grads = gpu.meta_gradient(batch.to("cuda"))
    assert loss.device.type == "cuda" and all(g.device.type == "cuda" for g in gpu_grads)
    error = _relative(_flat(gpu_grads).cpu(), _flat(cpu_grads))
    assert error < GRADIENT_TOLERANCE, f"{algorithm}: CUDA vs CPU meta-gradient relative error {error:.1e}"
    gpu.step(batch.to("cuda"))
    assert all(p.device.type == "cuda" for p in gpu.adaptation().params)
