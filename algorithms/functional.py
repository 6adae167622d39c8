"""Pure functions shared by the vectorised engine and the evaluation: the inner SGD loop.

Parameters enter shared by all tasks and are expanded to one copy per task (a view, no
copy); each task's gradient is the MLP's backward pass written out by hand
(`algorithms.network.mlp_gradients`), so one call adapts every task at once and, with
`create_graph`, stays differentiable for a second-order meta-gradient.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from algorithms.network import mlp_gradients

# A learning rate per parameter: None freezes it (ANIL's body); a float or a tensor
# broadcastable to the (expanded) parameter scales its gradient (Meta-SGD, ensembles).
LearningRates = Sequence["float | torch.Tensor | None"]


def expand_per_task(params: list[torch.Tensor], n_tasks: int, lead: int = 0) -> list[torch.Tensor]:
    """Insert a task dimension after `lead` leading (ensemble) dimensions."""
    out = []
    for p in params:
        shape = list(p.shape)
        out.append(p.unsqueeze(lead).expand(*shape[:lead], n_tasks, *shape[lead:]))
    return out


def expand_lr(lr, lead: int):
    """Per-member learning rates [M] or per-parameter rates get a task dimension to broadcast."""
    if lr is None or not isinstance(lr, torch.Tensor):
        return lr
    return lr.unsqueeze(lead) if lead else lr


def sgd_update(param: torch.Tensor, grad: torch.Tensor, lr) -> torch.Tensor:
    """param − lr·grad in one op (lr a float or a broadcastable tensor)."""
    if isinstance(lr, torch.Tensor):
        return torch.addcmul(param, lr, grad, value=-1)
    return torch.add(param, grad, alpha=-lr)


def per_task_gradients(params, x: torch.Tensor, y: torch.Tensor, lrs: LearningRates,
                       create_graph: bool) -> list[torch.Tensor | None]:
    """Each task's gradient, shaped like `params` (leading dims = x's [..., N, in] leading dims).

    Without `create_graph` the gradients are constants (computed under no_grad).
    """
    lead = x.shape[:-2]
    batch = math.prod(lead)
    flat = [p.reshape(batch, *p.shape[len(lead):]) for p in params]
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        grads = mlp_gradients(flat, x.reshape(batch, *x.shape[-2:]), y.reshape(batch, *y.shape[-2:]),
                              [lr is not None for lr in lrs])
    return [None if g is None else g.view(p.shape) for p, g in zip(params, grads)]


def sgd_step(params, x: torch.Tensor, y: torch.Tensor, lrs: LearningRates, create_graph: bool) -> list[torch.Tensor]:
    """One SGD step on every task at once; frozen params (lr None) pass through."""
    grads = per_task_gradients(params, x, y, lrs, create_graph)
    return [p if g is None else sgd_update(p, g, lr) for p, g, lr in zip(params, grads, lrs)]


def adapt(params, x, y, lrs: LearningRates, steps: int, create_graph: bool):
    """Yield the per-task parameters after 0, 1, ..., `steps` SGD steps on (x, y).

    `params` carry x's leading dims (e.g. from `expand_per_task`): x [..., N, in].
    """
    yield params
    for _ in range(steps):
        params = sgd_step(params, x, y, lrs, create_graph)
        yield params


def first_gradient_norm(params, x, y, lrs: LearningRates) -> torch.Tensor:
    """Frobenius norm of each task's first adaptation gradient over the adapted params -> [tasks].

    Computed without a graph: logging it adds nothing to the meta-training graph.
    """
    shared = [p.detach().unsqueeze(0) for p in params]  # one parameter set for all tasks
    with torch.no_grad():
        grads = mlp_gradients(shared, x, y, [lr is not None for lr in lrs])
        return torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads if g is not None))
