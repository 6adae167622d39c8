"""Issue 21, engine side: a task family declares its problem (`tasks.problem`), and few-shot
classification (`gauss-class`, cross-entropy, accuracy) runs through the engines."""
from __future__ import annotations

import pytest
import torch

from algorithms import HyperParams, get_algorithm
from algorithms.evaluation import evaluate, initial_gradient_norm, metric_curves
from algorithms.generic_engine import TaskProgram
from algorithms.network import make_network
from algorithms.rules import InnerRule
from benchmarks.config import ConfigError, parse_sweep
from tasks import get_task
from tasks.problem import REGRESSION, Problem, problem_of

NETWORK = "relu-64"  # the tutorial's 10 -> 64 -> 2
CE_BACKENDS = ["torch", "generic", "func", "l2l", "higher"]  # maml's backends that train with the task's loss


def family(**params):
    return get_task("gauss-class", **params)


def batch64(fam, tasks=3, seed=0):
    return fam.sample(tasks, torch.Generator().manual_seed(seed)).map(lambda t: t.double())


def learner(backend, steps, fam, name="maml", **options):
    hp = HyperParams(inner_steps=steps, lr_base=0.3, meta_batch=3)
    return get_algorithm(name, backend, hp, torch.Generator().manual_seed(7), network=NETWORK,
                         problem=fam.problem, **options).double()


def scratch_ce_maml(params, batch, steps, lr):
    """Second-order MAML with cross-entropy, written from nothing but autograd (no suite code)."""
    params = [p.detach().clone().requires_grad_() for p in params]

    def net(ps, x):
        w1, b1, w2, b2 = ps
        return torch.relu(x @ w1.T + b1) @ w2.T + b2

    def ce(logits, labels):
        onehot = torch.nn.functional.one_hot(labels[:, 0].long(), logits.shape[-1]).to(logits.dtype)
        return -(torch.log_softmax(logits, dim=-1) * onehot).sum(-1).mean()

    total = 0.0
    for t in range(len(batch)):
        fast = params
        for _ in range(steps):
            grads = torch.autograd.grad(ce(net(fast, batch.x_support[t]), batch.y_support[t]), fast, create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        total = total + ce(net(fast, batch.x_query[t]), batch.y_query[t]) / len(batch)
    return total.detach(), list(torch.autograd.grad(total, params))


@pytest.mark.parametrize("steps", [1, 5])
def test_meta_gradients_of_every_backend_equal_the_loop_and_a_scratch_maml(steps):
    fam = family()
    batch = batch64(fam)
    reference = learner("torch", steps, fam)
    ref_loss, ref_grads = reference.meta_gradient(batch)
    loss, grads = scratch_ce_maml(reference.meta_parameters, batch, steps, 0.3)
    assert torch.allclose(ref_loss, loss, rtol=1e-12, atol=0)
    for a, b in zip(ref_grads, grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)
    for backend in CE_BACKENDS[1:]:
        other = learner(backend, steps, fam)
        for a, b in zip(reference.meta_parameters, other.meta_parameters):
            assert torch.equal(a.detach(), b.detach()), backend  # the same initialisation
        other_loss, other_grads = other.meta_gradient(batch)
        assert torch.allclose(other_loss, ref_loss, rtol=1e-12, atol=0), backend
        assert len(other_grads) == len(ref_grads), backend
        for a, b in zip(other_grads, ref_grads):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13), backend


def test_func_falls_back_to_the_generic_engine_and_says_so():
    assert learner("func", 1, family()).engine == "generic"
    assert learner("func", 1, get_task("sine")).engine == "accelerated"  # MSE keeps the fast engine


@pytest.mark.slow  # one torch.compile (~10-30 s on a CPU thread)
def test_compiled_generic_engine_trains_with_cross_entropy():
    fam = family()
    batch = batch64(fam)
    eager_loss, eager = learner("generic", 2, fam).meta_gradient(batch)
    compiled_learner = learner("generic", 2, fam, compile=True)
    assert compiled_learner.engine == "generic+compile"
    loss, grads = compiled_learner.meta_gradient(batch)
    assert torch.allclose(loss, eager_loss, rtol=1e-10)
    for a, b in zip(grads, eager):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n_way", [2, 5])
def test_an_untrained_network_is_at_chance(n_way):
    fam = family(n_way=n_way)
    adaptation = get_algorithm("maml", "generic", HyperParams(lr_base=0.1), torch.Generator().manual_seed(3),
                               network=NETWORK, problem=fam.problem).adaptation()
    batch = fam.sample(2000, torch.Generator().manual_seed(1))
    table = evaluate(adaptation, batch, steps=0, problem=fam.problem)
    assert list(table.columns) == ["eval_steps", "loss", "loss_ci95", "accuracy", "accuracy_ci95", "n_test_tasks"]
    assert fam.problem.metric.chance == 1 / n_way
    assert abs(table["accuracy"][0] - 1 / n_way) < 3 * table["accuracy_ci95"][0] / 1.96 + 1e-3, table


def test_evaluation_reports_accuracy_per_step_and_task_and_adapting_helps():
    fam = family(separation=2.0)
    adaptation = get_algorithm("maml", "torch", HyperParams(lr_base=0.5), torch.Generator().manual_seed(3),
                               network=NETWORK, problem=fam.problem).adaptation()
    batch = fam.sample(200, torch.Generator().manual_seed(2))
    losses, accuracy = metric_curves(adaptation, batch, 5, fam.problem)
    assert losses.shape == accuracy.shape == (6, 200)
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
    assert accuracy[5].mean() > accuracy[0].mean() + 0.2 and losses[5].mean() < losses[0].mean()
    assert initial_gradient_norm(adaptation, batch, fam.problem) > 0


def test_a_shape_mismatch_raises_instead_of_broadcasting():
    """Before issue 21 a 2-output network's [N, 2] minus the [N, 1] targets broadcast into an MSE."""
    fam = family()
    batch = fam.sample(2, torch.Generator().manual_seed(0))
    net = make_network(torch.Generator().manual_seed(0), sizes=(10, 64, 2))
    program = TaskProgram(net, InnerRule(), HyperParams(), [True] * 4)  # no problem: MSE
    params = list(net.parameters())
    with pytest.raises(ValueError, match=r"output \(10, 2\) does not fit the targets \(10, 1\)"):
        program.loss(params, batch.x_support[0], batch.y_support[0])
    two_outputs = Problem(10, 2, "mse")  # a regression declared with the wrong output size
    for backend in ("torch", "generic"):
        model = get_algorithm("maml", backend, HyperParams(meta_batch=2), torch.Generator().manual_seed(0),
                              network=NETWORK, problem=two_outputs)
        with pytest.raises(ValueError, match="does not fit the targets"):
            model.meta_gradient(batch)
    with pytest.raises(ValueError, match="does not fit"):
        fam.problem.task_losses(torch.zeros(4, 10, 2), torch.zeros(4, 9, 1))


@pytest.mark.parametrize("name, backend", [("maml", "jax"), ("fomaml", "jax")])  # the rest: test_classification_backends
def test_every_other_backend_refuses_with_a_reason(name, backend):
    fam = family()
    with pytest.raises(KeyError, match="MSE only; this task's loss is 'cross-entropy'"):
        get_algorithm(name, backend, HyperParams(), torch.Generator().manual_seed(0), network=NETWORK,
                      problem=fam.problem)


def test_a_sweep_reports_one_metric():
    parse_sweep({"task": "gauss-class", "algorithm": "maml", "backend": "generic"})
    parse_sweep({"task": "sine", "algorithm": "maml", "backend": "generic"})  # MSE families as before
    with pytest.raises(ConfigError, match="must report one metric.*'gauss-class' reports accuracy \\(higher is "
                                          "better\\).*'sine' reports mse"):
        parse_sweep({"task": ["gauss-class", "sine"], "algorithm": "maml", "backend": "generic"})


def test_problem_declarations():
    assert problem_of(get_task("sine")) is REGRESSION and REGRESSION.metric.name == "mse"
    assert not REGRESSION.metric.higher_is_better
    for name in ("sine", "sine-half", "sine-freq"):
        fam = get_task(name)
        assert (fam.input_dim, fam.output_dim) == (1, 1)
    fam = family(n_way=3, dim=4)
    assert (fam.input_dim, fam.output_dim) == (4, 3) == (fam.problem.input_dim, fam.problem.output_dim)
    assert fam.problem.metric.higher_is_better and fam.problem.metric.chance == 1 / 3
    assert problem_of(object()) is REGRESSION  # an older plug-in family: 1 -> 1 MSE
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        Problem(1, 2, "hinge")
    with pytest.raises(ValueError, match="must name its metric"):
        Problem(1, 1, lambda p, t: (p - t).abs().mean(-1))
    with pytest.raises(ValueError, match="output_dim >= 2"):
        Problem(3, 1, "cross-entropy")
    with pytest.raises(ValueError, match="n_way must be an integer in"):
        family(n_way=1)
    with pytest.raises(ValueError, match="noise must be a finite number > 0"):
        family(noise=float("nan"))


@pytest.mark.parametrize("name", ["fomaml", "msl", "metasgd", "anil"])
def test_every_rule_trains_with_cross_entropy_alike_on_every_backend_offered(name):
    """The other built-in rules: each backend that offers them gives the loop's meta-gradient."""
    from algorithms import list_algorithms

    fam = family(n_way=3)
    batch = batch64(fam, seed=4)
    ref_loss, ref_grads = learner("torch", 2, fam, name).meta_gradient(batch, iteration=1)
    for backend in set(list_algorithms()[name]) & set(CE_BACKENDS[1:]):
        loss, grads = learner(backend, 2, fam, name).meta_gradient(batch, iteration=1)
        assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=0), backend
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13), (backend, name)


def test_a_loss_of_ones_own_trains_alike_on_the_loop_and_the_generic_engine():
    from tasks.problem import Metric

    def absolute(pred, target):
        return (pred - target).abs().mean(-1)

    fam = get_task("sine")
    problem = Problem(1, 1, absolute, Metric("mae", "mean absolute error", higher_is_better=False, fn=absolute))
    batch = fam.sample(3, torch.Generator().manual_seed(0)).map(lambda t: t.double())
    hp = HyperParams(inner_steps=2, lr_base=0.1, meta_batch=3)
    made = {b: get_algorithm("maml", b, hp, torch.Generator().manual_seed(1), problem=problem).double()
            for b in ("torch", "generic", "func")}
    assert made["func"].engine == "generic"
    (ref_loss, ref), *others = [m.meta_gradient(batch) for m in made.values()]
    mse_loss, _ = get_algorithm("maml", "torch", hp, torch.Generator().manual_seed(1)).double().meta_gradient(batch)
    assert not torch.allclose(ref_loss, mse_loss)  # the declared loss, not MSE
    for loss, grads in others:
        assert torch.allclose(loss, ref_loss, rtol=1e-12)
        for a, b in zip(grads, ref):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)
    table = evaluate(made["torch"].adaptation(), batch, steps=1, problem=problem)
    assert {"loss", "mae"} <= set(table.columns) and "mse" not in table.columns


def test_learn2learn_anil_takes_support_and_query_of_different_sizes():
    """Its shared body ran on torch.stack([support, query]), which failed unless K == the query size."""
    batch = get_task("sine", k_shot=5, n_query=10).sample(2, torch.Generator().manual_seed(0)).map(lambda t: t.double())
    hp = HyperParams(inner_steps=1, meta_batch=2)
    grads = [get_algorithm("anil", b, hp, torch.Generator().manual_seed(1)).double().meta_gradient(batch)[1]
             for b in ("l2l", "torch")]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)


def test_inputs_of_another_size_than_the_problem_says_are_named():
    batch = family().sample(2, torch.Generator().manual_seed(0))  # 10 features
    for backend in ("torch", "generic", "l2l"):
        model = get_algorithm("maml", backend, HyperParams(meta_batch=2), torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="inputs have 10 features, but the learner's problem .* takes 1"):
            model.meta_gradient(batch)
