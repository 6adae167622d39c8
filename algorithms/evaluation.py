"""The one evaluation every algorithm gets.

On each meta-test task: start from the learned initialisation, take 0..N SGD steps with
the algorithm's inner rates on the support set (all tasks at once), record the query MSE
after each step. No meta-graph is built: the initialisation is detached and each step's
gradient is taken without create_graph.

A task family's `problem` (`tasks.problem`) says which loss adapts a task and which metric is
reported: MSE families keep the code below exactly (their numbers are bitwise those of before);
any other problem adapts with its own loss through the generic engine, and `evaluate` reports per
step both the loss and the metric (`metric_curves`: per step and task), each with a 95% interval,
in columns named after them (`loss`, `loss_ci95`, e.g. `accuracy`, `accuracy_ci95`), never `mse`.
"""
from __future__ import annotations

import pandas as pd
import torch

from algorithms import generic_engine as generic
from algorithms.base import Adaptation
from algorithms.functional import adapt, expand_per_task, first_gradient_norm
from algorithms.network import query_losses
from tasks.problem import MSE, Problem, problem_of

CI_Z = 1.96  # 95% normal interval: 1.96·std/sqrt(n)


def needs_generic(adaptation: Adaptation) -> bool:
    """A rule of its own, or a network without the hand-written fast path (e.g. Tanh)."""
    return adaptation.rule is not None or not adaptation.network.accelerated


def adaptation_curve(adaptation: Adaptation, batch, steps: int = 10, problem: Problem | None = None) -> torch.Tensor:
    """Query loss (MSE unless `problem` says otherwise) per step and task: [steps + 1, tasks].

    The learner says how a task adapts (`Adaptation`): SGD with its rates on the fast path,
    or its own rule through the generic engine, so every algorithm is evaluated as trained.
    """
    problem = problem_of(problem)
    if not problem.scalar_mse:  # the fast path below is the 1 -> 1 MSE network's
        return generic.curve(adaptation, batch, steps, problem)
    if needs_generic(adaptation):
        return generic.curve(adaptation, batch, steps)
    n_tasks = batch.x_support.shape[0]
    lrs = [lr if lr is None or not isinstance(lr, torch.Tensor) else lr.unsqueeze(0) for lr in adaptation.lrs]
    with torch.enable_grad():
        start = [p.requires_grad_() for p in expand_per_task([p.detach() for p in adaptation.params], n_tasks)]
        rows = []
        for params in adapt(start, batch.x_support, batch.y_support, lrs, steps, create_graph=False):
            rows.append(query_losses(params, batch.x_query, batch.y_query))
    return torch.stack(rows)


def summarize(losses: torch.Tensor) -> pd.DataFrame:
    """[steps + 1, tasks] -> one row per step: eval_steps, mse, mse_ci95, n_test_tasks. With one task
    `mse_ci95` is NaN: one task gives no interval (a zero-width one would claim certainty)."""
    n = losses.shape[1]
    std = losses.std(dim=1, unbiased=True) if n > 1 else torch.full((losses.shape[0],), float("nan"))
    return pd.DataFrame({
        "eval_steps": range(losses.shape[0]),
        "mse": losses.mean(dim=1).cpu().double().numpy(),
        "mse_ci95": (CI_Z * std / n ** 0.5).cpu().double().numpy(),
        "n_test_tasks": n,
    })


def metric_curves(adaptation: Adaptation, batch, steps: int, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Query loss and the problem's metric per step and task: two [steps + 1, tasks] tensors."""
    return generic.curves(adaptation, batch, steps, problem_of(problem))


def _mean_ci(values: torch.Tensor) -> tuple:
    n = values.shape[1]
    std = values.std(dim=1, unbiased=True) if n > 1 else torch.full((values.shape[0],), float("nan"))
    return values.mean(dim=1).cpu().double().numpy(), (CI_Z * std / n ** 0.5).cpu().double().numpy()


def summarize_problem(losses: torch.Tensor, metrics: torch.Tensor, problem: Problem) -> pd.DataFrame:
    """[steps + 1, tasks] losses and metrics -> one row per step: eval_steps, loss, loss_ci95, the metric's
    name and its ci95, n_test_tasks (intervals as in `summarize`)."""
    loss, loss_ci = _mean_ci(losses)
    metric, metric_ci = _mean_ci(metrics)
    name = problem.metric.name
    return pd.DataFrame({"eval_steps": range(losses.shape[0]), "loss": loss, "loss_ci95": loss_ci,
                         name: metric, f"{name}_ci95": metric_ci, "n_test_tasks": losses.shape[1]})


def evaluate(adaptation: Adaptation, batch, steps: int = 10, problem: Problem | None = None) -> pd.DataFrame:
    """The evaluation table; MSE problems: the `summarize` columns as always, others: `summarize_problem`."""
    problem = problem_of(problem)
    if problem.scalar_mse and problem.metric == MSE:
        return summarize(adaptation_curve(adaptation, batch, steps))
    return summarize_problem(*metric_curves(adaptation, batch, steps, problem), problem)


def initial_gradient_norm(adaptation: Adaptation, batch, problem: Problem | None = None) -> float:
    """Mean over tasks of the Frobenius norm of the first adaptation gradient (issue: figures)."""
    problem = problem_of(problem)
    if not problem.scalar_mse:  # the fast path below is the 1 -> 1 MSE network's
        return generic.first_gradient_norms(adaptation, batch.x_support, batch.y_support, problem).mean().item()
    if needs_generic(adaptation):
        return generic.first_gradient_norms(adaptation, batch.x_support, batch.y_support).mean().item()
    return first_gradient_norm(adaptation.params, batch.x_support, batch.y_support, adaptation.lrs).mean().item()
