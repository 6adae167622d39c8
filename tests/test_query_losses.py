"""Evaluation's query pass (`network.query_losses`) against the plain reference (`task_losses`).

It applies each layer's bias and activation and the error in place and keeps no graph; it must
give `task_losses`'s numbers bitwise for every shape evaluation feeds it (per-task expanded
parameters, ensemble dimensions, shared parameters broadcast over tasks, ReLU and Tanh), never
touch its inputs, and leave the stored evaluation numbers of a trained learner unchanged.
"""
from __future__ import annotations

import pytest
import torch

import algorithms.evaluation as evaluation
from algorithms import HyperParams, get_learner_class
from algorithms.functional import expand_per_task
from algorithms.network import make_network, query_losses, task_losses
from tasks import TaskBatch, evaluation_set, get_task

FAMILY = get_task("sine")


def _params(seed: int = 0, sizes=(1, 40, 40, 1)) -> list[torch.Tensor]:
    return [p.detach() for p in make_network(torch.Generator().manual_seed(seed), sizes).parameters()]


def _perturbed(params, n_tasks: int, seed: int = 1) -> list[torch.Tensor]:
    """Per-task parameters that differ task by task (as after an adaptation step)."""
    g = torch.Generator().manual_seed(seed)
    return [p.unsqueeze(0) + 0.1 * torch.randn(n_tasks, *p.shape, generator=g) for p in params]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("layout", ["expanded", "per_task", "ensemble", "shared"])
def test_query_losses_are_task_losses_bitwise(activation, layout):
    batch = FAMILY.with_points(10, 100).sample(30, torch.Generator().manual_seed(4))
    x, y = batch.x_query, batch.y_query
    params = _params()
    if layout == "expanded":  # step 0 of an evaluation: one set viewed per task (stride 0)
        params = expand_per_task(params, x.shape[0])
    elif layout == "per_task":
        params = _perturbed(params, x.shape[0])
    elif layout == "ensemble":  # [members, tasks, ...]
        params = [p.view(3, 10, *p.shape[1:]) for p in _perturbed(params, x.shape[0])]
        x, y = x.view(3, 10, *x.shape[1:]), y.view(3, 10, *y.shape[1:])
    reference = task_losses(params, x, y, activation)
    assert torch.equal(query_losses(params, x, y, activation), reference)


def test_query_losses_broadcast_target_falls_back_out_of_place():
    """A target with more leading dims than the output cannot be subtracted in place."""
    params = _params()
    x = torch.linspace(-5, 5, 20).view(20, 1)  # one point set, no task dim
    y = torch.randn(4, 20, 1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(query_losses(params, x, y), task_losses(params, x, y))


def test_query_losses_keep_no_graph_and_leave_inputs_alone():
    batch = FAMILY.with_points(10, 100).sample(8, torch.Generator().manual_seed(5))
    params = [p.requires_grad_() for p in _perturbed(_params(), 8)]
    before = [t.detach().clone() for t in (*params, batch.x_query, batch.y_query)]
    with torch.enable_grad():
        out = query_losses(params, batch.x_query, batch.y_query)
    assert out.grad_fn is None and not out.requires_grad
    for old, new in zip(before, (*params, batch.x_query, batch.y_query)):
        assert torch.equal(old, new.detach())


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "anil"])
def test_evaluation_numbers_unchanged(monkeypatch, algorithm):
    """The whole adaptation curve of a trained learner, with the query pass swapped back to the
    reference, is bitwise the same: stored evaluations do not move."""
    cls = get_learner_class(algorithm, "func")
    learner = cls(HyperParams(lr_meta=0.01), torch.Generator().manual_seed(0))
    for i in range(3):
        learner.step(TaskBatch.stack([FAMILY.sample(4, torch.Generator().manual_seed(10 + i))]), i)
    adaptation = learner.adaptation()
    batch = evaluation_set(FAMILY, "test", 50, k_shot=10, n_query=100)
    fast = evaluation.adaptation_curve(adaptation, batch, 10)
    monkeypatch.setattr(evaluation, "query_losses", lambda p, x, y: task_losses(p, x, y).detach())
    assert torch.equal(fast, evaluation.adaptation_curve(adaptation, batch, 10))
