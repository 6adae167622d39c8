"""The vectorised `func` engine against independent computations.

- its hand-written gradients and reverse pass against autograd, and its meta-gradients
  against learn2learn's (number for number, same seed and batch);
- a seeded training run against learn2learn's;
- an ensemble against its members trained one by one (bitwise);
- gradient checkpointing against no checkpointing, and its memory;
- CUDA against CPU (skipped without a GPU).
"""
from __future__ import annotations

import pytest
import torch

from algorithms import HyperParams, get_learner_class
from algorithms.adam import StackedAdam
from algorithms.evaluation import adaptation_curve
from algorithms.functional import adapt, expand_per_task, first_gradient_norm
from algorithms.network import flat_task_losses, make_network, mlp_gradients, task_losses
from benchmarks.speed.measure import peak_memory_bytes
from benchmarks.training import meta_train
from tasks import TaskBatch, evaluation_set, get_task

FAMILY = get_task("sine")
FUNC_ALGORITHMS = ["maml", "fomaml", "msl", "metasgd", "anil", "reptile", "pretrain"]


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _batch(n_tasks=6, seed=3):
    return FAMILY.sample(n_tasks, torch.Generator().manual_seed(seed))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _ensemble(algorithm, inner_steps, n_tasks=5, device="cpu", **options):
    """Three members with different seeds, LR_base and LR_meta, and their stacked batch."""
    rates = [(0.01, 1e-3), (0.03, 3e-3), (0.005, 5e-4)]
    hps = [HyperParams(inner_steps=inner_steps, lr_base=lb, lr_meta=lm, meta_batch=n_tasks, iterations=100)
           for lb, lm in rates]
    learner = get_learner_class(algorithm, "func")(hps, [torch.Generator().manual_seed(i) for i in range(3)],
                                                   device=device, **options)
    batch = TaskBatch.stack([_batch(n_tasks, 10 + i) for i in range(3)])
    return learner, batch


# -- hand-written pieces against autograd --------------------------------------------------

@pytest.mark.parametrize("shared", [True, False], ids=["shared-init", "per-task"])
def test_hand_written_gradients_equal_autograd(shared):
    batch = _batch()
    params = [p.detach() for p in make_network(torch.Generator().manual_seed(0)).parameters()]
    if shared:  # one parameter set for all tasks, folded into the rows of each product
        params = [p.unsqueeze(0) for p in params]
    else:
        params = [p + 0.01 * torch.randn((6, *p.shape), generator=torch.Generator().manual_seed(1)) for p in params]
    leaves = [p.clone().requires_grad_() for p in expand_per_task([p[0] for p in params], 6)] if shared else \
        [p.clone().requires_grad_() for p in params]
    reference = torch.autograd.grad(task_losses(leaves, batch.x_support, batch.y_support).sum(), leaves)
    ours = mlp_gradients(params, batch.x_support, batch.y_support)
    for r, o in zip(reference, ours):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(flat_task_losses(params, batch.x_support, batch.y_support),
                               task_losses(leaves, batch.x_support, batch.y_support).detach())


def test_adapt_and_gradient_norm_equal_autograd_loop():
    batch = _batch()
    params = [p.detach() for p in make_network(torch.Generator().manual_seed(0)).parameters()]
    lrs = [None, None, 0.05, 0.05, 0.05, 0.05]  # ANIL-style: a frozen first layer
    start = expand_per_task(params, 6)
    reference = [p.clone().requires_grad_() for p in start]
    for params_after in list(adapt(start, batch.x_support, batch.y_support, lrs, 3, create_graph=False))[1:]:
        grads = torch.autograd.grad(task_losses(reference, batch.x_support, batch.y_support).sum(), reference[2:])
        reference = reference[:2] + [p - 0.05 * g for p, g in zip(reference[2:], grads)]
        for r, o in zip(reference, params_after):
            torch.testing.assert_close(o.detach(), r.detach(), rtol=1e-5, atol=1e-7)
    leaves = [p.clone().requires_grad_() for p in expand_per_task(params, 6)]
    grads = torch.autograd.grad(task_losses(leaves, batch.x_support, batch.y_support).sum(), leaves[2:])
    norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))
    torch.testing.assert_close(first_gradient_norm(params, batch.x_support, batch.y_support, lrs), norms)


@pytest.mark.parametrize("algorithm", FUNC_ALGORITHMS[:5] + ["pretrain"])
@pytest.mark.parametrize("inner_steps", [0, 1, 3])
def test_hand_written_meta_gradient_equals_autograd(algorithm, inner_steps):
    """The reverse pass by hand equals autograd through the same forward (3-member ensemble)."""
    learner, batch = _ensemble(algorithm, inner_steps)
    loss, grads = learner.meta_gradient(batch, iteration=3)
    ref_loss, ref_grads = learner.meta_gradient_autograd(batch, iteration=3)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert len(grads) == len(ref_grads) == len(learner.meta_parameters)
    for g, r in zip(grads, ref_grads):
        assert _relative(g, r) < 1e-5


# -- (a) meta-gradients against learn2learn -------------------------------------------------

@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "msl", "metasgd", "anil"])
@pytest.mark.parametrize("inner_steps", [1, 2, 5])
def test_meta_gradient_equals_learn2learn(algorithm, inner_steps):
    hp = HyperParams(inner_steps=inner_steps, lr_base=0.01, meta_batch=7, iterations=100)
    batch = _batch(7)
    reference = get_learner_class(algorithm, "l2l")(hp, torch.Generator().manual_seed(1))
    learner = get_learner_class(algorithm, "func")(hp, torch.Generator().manual_seed(1))
    ref_loss, ref_grads = reference.meta_gradient(batch, iteration=3)
    loss, grads = learner.meta_gradient(TaskBatch.stack([batch]), iteration=3)
    assert abs(float(loss[0]) - float(ref_loss)) <= 1e-6 * abs(float(ref_loss))
    for r, g in zip(ref_grads, grads):
        assert _relative(g[0], r) < 1e-5


@pytest.mark.parametrize("algorithm", ["reptile", "pretrain"])
def test_meta_gradient_equals_torch_loop(algorithm):
    hp = HyperParams(inner_steps=3, lr_base=0.01, meta_batch=7)
    batch = _batch(7)
    reference = get_learner_class(algorithm, "torch")(hp, torch.Generator().manual_seed(1))
    ref_loss, ref_grads = reference.meta_gradient(batch)
    loss, grads = get_learner_class(algorithm, "func")(hp, torch.Generator().manual_seed(1)).meta_gradient(
        TaskBatch.stack([batch]))
    assert abs(float(loss[0]) - float(ref_loss)) <= 1e-6 * abs(float(ref_loss))
    for r, g in zip(ref_grads, grads):
        # Reptile's θ − φ cancels ~2 digits (|θ − φ| ≈ 1e-2·|θ|): float32 rounding of φ shows at ~1e-4
        assert _relative(g[0], r) < (3e-4 if algorithm == "reptile" else 1e-5)


def test_stacked_adam_equals_torch_adam():
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(2, 4, 3, generator=gen), torch.randn(2, 5, generator=gen)]
    lrs = [1e-2, 3e-3]
    stacked = [p.clone() for p in start]
    adam = StackedAdam(stacked, torch.tensor(lrs))
    singles = [[p[m].clone().requires_grad_() for p in start] for m in range(2)]
    torch_adams = [torch.optim.Adam(params, lr=lr) for params, lr in zip(singles, lrs)]
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen) for p in start]
        adam.step(grads)
        for m, opt in enumerate(torch_adams):
            for p, g in zip(singles[m], grads):
                p.grad = g[m].clone()
            opt.step()
    for m in range(2):
        for p, s in zip(stacked, singles[m]):
            torch.testing.assert_close(p[m], s.detach(), rtol=1e-6, atol=1e-7)


# -- (b) a seeded training run against learn2learn -----------------------------------------

@pytest.mark.slow
def test_training_run_equals_learn2learn():
    """200 MAML iterations (Finn's setting) on identical batches: same weights, same test MSEs."""
    iterations = 200
    hp = HyperParams(inner_steps=1, lr_base=0.01, lr_meta=1e-3, meta_batch=25, iterations=iterations)
    test = evaluation_set(FAMILY, "test", 100)
    finals = {}
    for backend in ("func", "l2l"):
        learner = get_learner_class("maml", backend)(hp, torch.Generator().manual_seed(1))
        for _ in meta_train(learner, FAMILY, [torch.Generator().manual_seed(0)], iterations, set()):
            pass
        adaptation = learner.adaptation()
        finals[backend] = adaptation.params, adaptation_curve(adaptation, test, 10).mean(1)
    (params, mse), (ref_params, ref_mse) = finals["func"], finals["l2l"]
    # measured: weights within 3e-7 and MSEs within 4e-5 relative after 300 iterations
    for p, r in zip(params, ref_params):
        assert _relative(p, r) < 1e-5
    assert float(((mse - ref_mse).abs() / ref_mse).max()) < 1e-4, (mse, ref_mse)


# -- (c) an ensemble equals its members trained alone ---------------------------------------

@pytest.mark.parametrize("algorithm", FUNC_ALGORITHMS)
def test_ensemble_members_equal_runs_alone_bitwise(algorithm):
    """A cell's numbers depend on its configuration alone: trained in an ensemble of any size
    or alone, with 1 or 2 threads, a member ends with bitwise the same weights. At S = 5 and
    LR_base up to 0.1 training amplifies any rounding difference (it turned 1e-7 into 0.3 in
    the weights before products of one-wide matrices stopped depending on the batch size)."""
    iterations, n_tasks = 150, 10
    rates = [(0.1, 3e-3), (0.03, 1e-3), (0.01, 3e-3)]
    hps = [HyperParams(inner_steps=5, lr_base=lb, lr_meta=lm, meta_batch=n_tasks, iterations=iterations)
           for lb, lm in rates]

    def train(members, threads):
        torch.set_num_threads(threads)
        learner = get_learner_class(algorithm, "func")([hps[m] for m in members],
                                                       [torch.Generator().manual_seed(m) for m in members])
        streams = [torch.Generator().manual_seed(100 + m) for m in members]
        for _ in meta_train(learner, FAMILY, streams, iterations, set()):
            pass
        return [torch.cat([p[i].flatten() for p in learner.meta_parameters]) for i in range(len(members))]

    together = train([0, 1, 2], threads=2)
    assert all(torch.isfinite(t).all() for t in together[1:]), "training diverged: pick other rates"
    for m in range(3):
        alone = train([m], threads=1)[0]
        assert torch.equal(alone, together[m]), (
            f"member {m} (LR_base {rates[m][0]}): alone differs by {(alone - together[m]).abs().max():.3g}")
    pair = train([2, 0], threads=1)  # another ensemble size and order
    assert torch.equal(pair[0], together[2]) and torch.equal(pair[1], together[0])


# -- (d) gradient checkpointing --------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["maml", "msl", "metasgd", "anil"])
@pytest.mark.parametrize("segment", [True, 1, 3])
def test_checkpointing_gives_the_same_meta_gradient(algorithm, segment):
    learner, batch = _ensemble(algorithm, inner_steps=7)
    loss, grads = learner.meta_gradient(batch, iteration=3)
    checkpointed, _ = _ensemble(algorithm, inner_steps=7, checkpoint_inner=segment)
    ck_loss, ck_grads = checkpointed.meta_gradient(batch, iteration=3)
    torch.testing.assert_close(ck_loss, loss, rtol=1e-6, atol=0)  # segments sum the weighted losses in another order
    for g, c in zip(grads, ck_grads):
        torch.testing.assert_close(c, g, rtol=1e-6, atol=0)
    ref_loss, ref_grads = checkpointed.meta_gradient_autograd(batch, iteration=3)  # torch.utils.checkpoint
    for g, r in zip(grads, ref_grads):
        assert _relative(g, r) < 1e-5


def test_checkpoint_rejects_bad_segment():
    with pytest.raises(ValueError, match="checkpoint_inner"):
        _ensemble("maml", 3, checkpoint_inner=0)


def test_checkpointing_bounds_memory_at_100_steps():
    """Peak torch memory of one S = 100 second-order meta-gradient (measured: 33 MB -> 5.5 MB)."""
    batch = TaskBatch.stack([_batch(25, 0)])
    hp = HyperParams(inner_steps=100, meta_batch=25, lr_base=0.01)
    peaks = {}
    for flag in (False, True):
        learner = get_learner_class("maml", "func")(hp, torch.Generator().manual_seed(1), checkpoint_inner=flag)
        peaks[flag] = peak_memory_bytes(lambda: learner.meta_gradient(batch))
    assert peaks[True] < peaks[False] / 3, peaks


# -- (e) CUDA -----------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", FUNC_ALGORITHMS)
def test_cuda_matches_cpu(algorithm):
    cpu, batch = _ensemble(algorithm, inner_steps=3)
    gpu, _ = _ensemble(algorithm, inner_steps=3, device="cuda")
    loss, grads = cpu.meta_gradient(batch, iteration=3)
    gpu_loss, gpu_grads = gpu.meta_gradient(batch.to("cuda"), iteration=3)
    assert gpu_loss.device.type == "cuda" and all(g.device.type == "cuda" for g in gpu_grads)
    torch.testing.assert_close(gpu_loss.cpu(), loss, rtol=1e-5, atol=1e-6)
    for g, c in zip(grads, gpu_grads):
        assert _relative(c.cpu(), g) < 1e-4
    streams = [torch.Generator().manual_seed(m) for m in range(3)]
    reports = list(meta_train(gpu, FAMILY, streams, 20, {20}))
    assert torch.isfinite(reports[-1]["loss"]).all()
    adaptation = gpu.adaptation(0)
    assert all(p.device.type == "cuda" for p in adaptation.params)
    curve = adaptation_curve(adaptation, evaluation_set(FAMILY, "test", 20).to("cuda"), 3)
    assert curve.device.type == "cuda" and torch.isfinite(curve).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd"])
def test_the_compiled_step_on_cuda_trains_like_eager_on_cpu(algorithm):
    """The traced whole-step program (`compile=True`) on CUDA (Triton kernels): its meta-gradient
    equals the CPU engine's, and 10 steps at S = 3 train like eager CPU steps (float32 rounding)."""
    hp = HyperParams(inner_steps=3, lr_base=0.05, meta_batch=5)
    cpu = get_learner_class(algorithm, "func")(hp, torch.Generator().manual_seed(1))
    gpu = get_learner_class(algorithm, "func")(hp, torch.Generator().manual_seed(1), device="cuda", compile=True)
    batch = TaskBatch.stack([FAMILY.sample(5, torch.Generator().manual_seed(3))])
    _, grads = cpu.meta_gradient(batch)
    _, gpu_grads = gpu.meta_gradient(batch.to("cuda"))
    assert all(_relative(g.cpu(), c) < 1e-4 for g, c in zip(gpu_grads, grads))
    streams = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for iteration in range(10):
        cpu.step(TaskBatch.stack([FAMILY.sample(5, streams[0])]), iteration)
        gpu.step(TaskBatch.stack([FAMILY.sample(5, streams[1])]).to("cuda"), iteration)
    assert gpu.compile_seconds > 0 and all(p.device.type == "cuda" for p in gpu.meta_parameters)
    assert all(_relative(g.detach().cpu(), c.detach()) < 1e-4 for g, c in zip(gpu.meta_parameters, cpu.meta_parameters))
