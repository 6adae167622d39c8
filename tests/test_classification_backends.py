"""Issue 21, engine half: few-shot classification (`gauss-class`, cross-entropy) on every backend.

MAML, FOMAML, ANIL, Meta-SGD, Reptile and pre-training train with the task's loss on every backend
that offers them, with the plain loop's meta-gradients (float64, S = 1 and 5), and every other
backend refuses with the reason, at parse time in a sweep; networks with running statistics
(BatchNorm) are refused by every backend."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from algorithms import ALGORITHMS, HyperParams, get_algorithm, get_learner_class, register_network
from algorithms.network import NETWORKS
from benchmarks.config import parse_sweep
from tasks import get_task

NETWORK = "relu-64"  # the tutorial's 10 -> 64 -> 2
NAMES = ["maml", "fomaml", "anil", "metasgd", "reptile", "pretrain"]
BACKENDS = ["torch", "func", "generic", "l2l", "higher", "jax"]
#: what runs on classification, and the engine each names (func's accelerated engine trains 1 -> 1 MSE only)
OFFERED = {
    "maml": {"torch": "loop", "func": "generic", "generic": "generic", "l2l": "learn2learn", "higher": "higher"},
    "fomaml": {"torch": "loop", "func": "generic", "generic": "generic", "l2l": "learn2learn"},
    "anil": {"torch": "loop", "func": "generic", "generic": "generic", "l2l": "learn2learn"},
    "metasgd": {"torch": "loop", "func": "generic", "generic": "generic", "l2l": "learn2learn"},
    "reptile": {"torch": "loop", "func": "generic"},
    "pretrain": {"torch": "loop", "func": "generic"},
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def family(**params):
    return get_task("gauss-class", **params)


def batch64(fam, tasks=3, seed=0):
    return fam.sample(tasks, torch.Generator().manual_seed(seed)).map(lambda t: t.double())


def learner(name, backend, steps, fam, lr=0.3):
    hp = HyperParams(inner_steps=steps, lr_base=lr, meta_batch=3)
    return get_algorithm(name, backend, hp, torch.Generator().manual_seed(7), network=NETWORK,
                         problem=fam.problem).double()


def _net(ps, x):
    w1, b1, w2, b2 = ps
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def _ce(logits, labels):
    onehot = nn.functional.one_hot(labels[..., 0].long(), logits.shape[-1]).to(logits.dtype)
    return -(torch.log_softmax(logits, dim=-1) * onehot).sum(-1).mean()


def scratch_reptile(params, batch, steps, lr):
    """Reptile with cross-entropy from nothing but autograd: θ − mean_t φ_t, and the query loss."""
    theta = [p.detach().clone() for p in params]
    pseudo, total = [torch.zeros_like(p) for p in theta], 0.0
    for t in range(len(batch)):
        phi = theta
        for _ in range(steps):
            phi = [p.requires_grad_() for p in (q.detach().clone() for q in phi)]
            grads = torch.autograd.grad(_ce(_net(phi, batch.x_support[t]), batch.y_support[t]), phi)
            phi = [p.detach() - lr * g for p, g in zip(phi, grads)]
        total += _ce(_net(phi, batch.x_query[t]), batch.y_query[t]).item() / len(batch)
        pseudo = [acc + (a - b) / len(batch) for acc, a, b in zip(pseudo, theta, phi)]
    return torch.tensor(total, dtype=torch.float64), pseudo


def scratch_pretrain(params, batch):
    """Joint pre-training with cross-entropy: every task's support and query points, one network."""
    params = [p.detach().clone().requires_grad_() for p in params]
    x = torch.cat([batch.x_support, batch.x_query], 1)
    y = torch.cat([batch.y_support, batch.y_query], 1)
    loss = _ce(_net(params, x), y)
    return loss.detach(), list(torch.autograd.grad(loss, params))


def _close(got, want, who):
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=0), who
    assert len(grads) == len(ref_grads), who
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13), who


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("name", NAMES)
def test_every_offered_backend_gives_the_loops_meta_gradient(name, steps):
    fam = family()
    batch = batch64(fam)
    reference = learner(name, "torch", steps, fam)
    want = reference.meta_gradient(batch, iteration=1)
    if name == "reptile":
        _close(want, scratch_reptile(reference.meta_parameters, batch, steps, 0.3), "scratch")
    elif name == "pretrain":
        _close(want, scratch_pretrain(reference.meta_parameters, batch), "scratch")
    for backend, engine in OFFERED[name].items():
        other = learner(name, backend, steps, fam)
        assert other.engine == engine, (name, backend, other.engine)
        for a, b in zip(reference.meta_parameters, other.meta_parameters):
            assert torch.equal(a.detach(), b.detach()), backend  # the same initialisation
        _close(other.meta_gradient(batch, iteration=1), want, (name, backend))


@pytest.mark.parametrize("name", NAMES)
def test_every_other_backend_refuses_with_the_reason(name):
    problem = family().problem
    for backend in sorted(set(BACKENDS) - set(OFFERED[name])):
        with pytest.raises(KeyError) as caught:
            get_learner_class(name, backend, NETWORK, problem)
        why = caught.value.args[0]
        if backend in ALGORITHMS[name]:  # offered on sine: the reason names the task's loss or the backend's limit
            assert "MSE only" in why or "cannot" in why, why
        else:
            assert f"has no backend {backend!r}" in why, why
        with pytest.raises(KeyError):
            get_algorithm(name, backend, HyperParams(), torch.Generator().manual_seed(0), network=NETWORK,
                          problem=problem)


def test_jax_names_the_loss():
    with pytest.raises(KeyError, match="MSE only; this task's loss is 'cross-entropy'"):
        get_learner_class("maml", "jax", NETWORK, family().problem)


def test_sine_keeps_the_accelerated_engines():
    """The accelerated MSE paths are untouched: 1 -> 1 MSE still gets them."""
    sine = get_task("sine").problem if hasattr(get_task("sine"), "problem") else None
    for name in NAMES:
        for problem in (None, sine):
            assert get_learner_class(name, "func", None, problem).engine == "accelerated", name
    assert get_learner_class("maml", "jax", None, None).engine == "jax"


def test_reptile_and_pretrain_train_and_evaluate_on_classification():
    """A few steps of each through the shared evaluation: accuracy, no MSE."""
    from algorithms.evaluation import evaluate

    fam = family(separation=2.0)
    for name in ("reptile", "pretrain"):
        for backend in ("torch", "func"):
            hp = HyperParams(inner_steps=2, lr_base=0.3, meta_batch=4, lr_meta=0.01)
            model = get_algorithm(name, backend, hp, torch.Generator().manual_seed(1), network=NETWORK,
                                  problem=fam.problem)
            for i in range(3):
                loss = model.step(fam.sample(4, torch.Generator().manual_seed(i)), i)["loss"]
                assert torch.isfinite(torch.as_tensor(loss)).all()
            table = evaluate(model.adaptation(), fam.sample(50, torch.Generator().manual_seed(9)), steps=1,
                             problem=fam.problem)
            assert "accuracy" in table.columns and "mse" not in table.columns


def test_a_sweep_skips_what_cannot_honour_the_tasks_loss_with_the_reason():
    sweep = parse_sweep({"task": "gauss-class", "network": NETWORK, "algorithm": ["maml", "reptile"],
                         "backend": ["jax", "func", "torch"]})
    ran = {(c.algorithm, c.backend) for c in sweep.cells}
    assert ran == {("maml", "func"), ("maml", "torch"), ("reptile", "func"), ("reptile", "torch")}
    skipped = {(v["algorithm"], v["backend"]): why for v, why in sweep.skipped}
    assert set(skipped) == {("maml", "jax"), ("reptile", "jax")}
    assert "MSE only; this task's loss is 'cross-entropy'" in skipped["maml", "jax"]
    assert "has no backend 'jax'" in skipped["reptile", "jax"]
    # sine: the same grid runs jax
    sine = parse_sweep({"task": "sine", "algorithm": "maml", "backend": ["jax", "func"]})
    assert {c.backend for c in sine.cells} == {"jax", "func"}


# -- networks with running statistics ----------------------------------------------------------

class WithBatchNorm(nn.Module):
    def __init__(self, input_dim, output_dim, track=True):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(input_dim, 8), nn.BatchNorm1d(8, track_running_stats=track), \
            nn.Linear(8, output_dim)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


@pytest.fixture
def registry():
    saved = dict(NETWORKS)
    yield
    NETWORKS.clear()
    NETWORKS.update(saved)


@pytest.mark.parametrize("problem", [None, "gauss-class"])
def test_a_network_with_running_statistics_is_refused_by_every_backend(registry, problem):
    """Per-task functional adaptation cannot thread BatchNorm's running statistics: the loop updated
    the module's buffers from every task in turn, silently; the vectorised engine failed inside vmap."""
    register_network("bn-test", WithBatchNorm)
    problem = family().problem if problem else None
    for name in NAMES:
        for backend in ALGORITHMS[name]:
            with pytest.raises(KeyError, match=r"'norm\.running_mean'.*running statistics"):
                get_algorithm(name, backend, HyperParams(), torch.Generator().manual_seed(0), network="bn-test",
                              problem=problem)
    sweep = parse_sweep({"task": "sine", "network": "bn-test", "algorithm": "maml", "backend": "torch",
                         "grid": [{}, {"network": "relu-40-40"}]})
    assert [c.network for c in sweep.cells] == ["relu-40-40"]
    assert "running statistics" in sweep.skipped[0][1]


def test_batchnorm_without_running_statistics_runs_and_equals_the_loop(registry):
    """Batch statistics only (track_running_stats=False): nothing to thread, so it runs."""
    register_network("bn-free", lambda i, o: WithBatchNorm(i, o, track=False))
    fam = family()
    batch = batch64(fam)
    hp = HyperParams(inner_steps=2, lr_base=0.3, meta_batch=3)
    made = {b: get_algorithm("maml", b, hp, torch.Generator().manual_seed(2), network="bn-free",
                             problem=fam.problem).double() for b in ("torch", "generic")}
    _close(made["generic"].meta_gradient(batch), made["torch"].meta_gradient(batch), "generic")


def test_func_cells_on_classification_do_not_ensemble():
    """`func` runs classification on the generic engine, which trains one run per learner: grouping its
    cells into an ensemble (as the accelerated engine's) failed every cell of a two-seed sweep."""
    from benchmarks.sweep import group_jobs

    for name in ("maml", "reptile", "pretrain"):
        sweep = parse_sweep({"task": "gauss-class", "network": NETWORK, "algorithm": name, "backend": "func",
                             "seed": [0, 1]})
        assert [len(job) for job in group_jobs(sweep.cells, sweep.settings)] == [1, 1], name
    sine = parse_sweep({"task": "sine", "algorithm": "maml", "backend": "func", "seed": [0, 1]})
    assert [len(job) for job in group_jobs(sine.cells, sine.settings)] == [2]  # sine ensembles as before


def test_func_on_classification_is_bitwise_at_two_threads():
    """The fingerprint keeps the thread count out of `func` records (its classes declare
    `thread_invariant`); what `func` runs for classification must then be bitwise at 2 threads too."""
    fam = family()
    batch = fam.sample(25, torch.Generator().manual_seed(3))
    hp = HyperParams(inner_steps=2, lr_base=0.3, meta_batch=25)
    for name in ("maml", "reptile", "pretrain"):
        assert get_learner_class(name, "func", NETWORK, fam.problem).thread_invariant
        found = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = get_algorithm(name, "func", hp, torch.Generator().manual_seed(1), network=NETWORK,
                                  problem=fam.problem)
            found.append(model.meta_gradient(batch))
        (loss1, grads1), (loss2, grads2) = found
        assert torch.equal(loss1, loss2) and all(torch.equal(a, b) for a, b in zip(grads1, grads2)), name
