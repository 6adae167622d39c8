"""Pure functions shared by the vectorised engine and the evaluation: the inner SGD loop.

Parameters enter shared by all tasks and are expanded to one copy per task (a view, no
copy); gradients of the summed task losses with respect to the expanded copies are then
exactly the per-task gradients, so one autograd call adapts every task at once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from algorithms.network import task_losses

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


def sgd_step(params, losses: torch.Tensor, lrs: LearningRates, create_graph: bool) -> list[torch.Tensor]:
    """One SGD step on every task at once. `losses` are per task; frozen params pass through."""
    trainable = [i for i, lr in enumerate(lrs) if lr is not None]
    grads = torch.autograd.grad(losses.sum(), [params[i] for i in trainable], create_graph=create_graph)
    new = list(params)
    for i, g in zip(trainable, grads):
        new[i] = params[i] - lrs[i] * g
    return new


def adapt(params, x, y, lrs: LearningRates, steps: int, create_graph: bool):
    """Yield the per-task parameters after 0, 1, ..., `steps` SGD steps on (x, y)."""
    yield params
    for _ in range(steps):
        params = sgd_step(params, task_losses(params, x, y), lrs, create_graph)
        yield params


def first_gradient_norm(params, x, y, lrs: LearningRates) -> torch.Tensor:
    """Frobenius norm of each task's first adaptation gradient over the adapted params -> [tasks].

    Computed on detached copies: logging it adds nothing to the meta-training graph.
    """
    per_task = expand_per_task([p.detach() for p in params], x.shape[0])
    with torch.enable_grad():
        trainable = [p.requires_grad_() for p, lr in zip(per_task, lrs) if lr is not None]
        grads = torch.autograd.grad(task_losses(per_task, x, y).sum(), trainable)
    return torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))
