"""What a task family asks of a network: `Problem(input_dim, output_dim, loss, metric)`.

One declaration per family (its `.problem`), read by every consumer: the engines train with its
loss, the networks are sized from its dimensions (the family's `input_dim` / `output_dim`
mirror them), the evaluation reports its metric. Decisions:

* `loss` is "mse" (mean over points and outputs of (pred − y)²: the engines keep their own,
  bitwise unchanged MSE code for it), "cross-entropy" (logits [..., N, C] against labels stored
  as floats 0..C−1 in the usual targets [..., N, 1], so `TaskBatch` stays one shape for every
  family) or a callable(pred, target) -> per-point loss [..., N]. A task's loss is the mean of its
  per-point losses, so a meta-gradient is scaled alike for every loss.
* Shapes are checked, never broadcast: [N, 2] logits minus [N, 1] targets silently broadcast
  into a meaningless MSE before (issue 21); `check_shapes` raises `ValueError` naming both.
* `Metric(name, label, higher_is_better, chance)` is what a report shows per step and task;
  `chance` is its value for a guessing predictor (None: no such level, e.g. MSE). "mse" and
  "accuracy" are computed here; another metric brings `fn(pred, target) -> per-point values`.
  A non-MSE loss must name its metric (a cross-entropy task reports accuracy by default).
* A family without `.problem` (an older plug-in) is the suite's regression problem, `REGRESSION`
  (1 input, 1 output, MSE): `problem_of` says so in one place.
* The metric's `name` is its column everywhere a number is stored or shown (evaluation rows
  `accuracy` / `accuracy_ci95`, `summary.csv`); a record carries `metric.declaration()` so that a
  report reads the name, label, direction and chance level without importing the family
  (`metric_from_declaration`; a record without one is MSE, as every record before it).
* Blow-up and divergence: the suite's yardsticks are multiples of an error scale made of MSEs
  (the zero predictor's, the untrained network's outputs' mean square), so they apply to a
  squared-error metric only (`Metric.scaled_blowups`, true for "mse"). For any other metric a
  blow-up is a non-finite value and divergence a non-finite training loss.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

LOSSES = ("mse", "cross-entropy")


def _per_point_squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).mean(dim=-1)


def _per_point_cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−log softmax(pred)[label] per point: logits [..., N, C], labels [..., N, 1] (floats 0..C−1)."""
    return torch.logsumexp(pred, dim=-1) - pred.gather(-1, target.long()).squeeze(-1)


def _per_point_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.argmax(dim=-1) == target.squeeze(-1).long()).to(pred.dtype)


@dataclass(frozen=True)
class Metric:
    """The number a report shows: its column `name`, its axis `label`, which way is better, and
    its value for a guessing predictor (`chance`, None where there is none)."""

    name: str
    label: str
    higher_is_better: bool
    chance: float | None = None
    fn: Callable | None = field(default=None, compare=False)  # per-point values, for a metric not built in

    def __post_init__(self):
        _check_declaration(self.name, self.label, self.higher_is_better, self.chance)
        if self.fn is None and self.name not in _METRIC_FUNCTIONS:
            raise ValueError(f"metric {self.name!r} needs fn(pred, target) -> per-point values "
                             f"(built in: {', '.join(_METRIC_FUNCTIONS)})")

    @property
    def scaled_blowups(self) -> bool:
        """Whether the blow-up and divergence yardsticks (multiples of an MSE error scale) apply."""
        return self.name == "mse"

    def better(self, a, b):
        """Whether value(s) `a` are better than `b` in this metric's direction (elementwise for arrays)."""
        return a > b if self.higher_is_better else a < b

    def declaration(self) -> dict:
        """What a record stores so that a report can read this metric without its code."""
        return {"name": self.name, "label": self.label, "higher_is_better": self.higher_is_better,
                "chance": self.chance}

    def task_values(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The metric per task: the mean over points [..., N] -> [...]."""
        return (self.fn or _METRIC_FUNCTIONS[self.name])(pred, target).mean(dim=-1)


_METRIC_FUNCTIONS = {"mse": _per_point_squared_error, "accuracy": _per_point_accuracy}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
#: column names a metric cannot take: the evaluation rows' and report tables' own columns
RESERVED_NAMES = frozenset({"loss", "iteration", "split", "eval_k_shot", "eval_steps", "n_test_tasks", "n_sets",
                            "set_sd", "seed", "status"})


def _check_declaration(name, label, higher_is_better, chance) -> None:
    """ValueError naming the bad field: a metric's name becomes a column of every table and CSV."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED_NAMES \
            or name.endswith("_ci95"):
        raise ValueError(f"metric name {name!r} must be a lower-case identifier of at most 40 characters "
                         f"(a-z, 0-9, _), not ending in _ci95 and not one of {', '.join(sorted(RESERVED_NAMES))}")
    if not isinstance(label, str) or not 0 < len(label) <= 60 or not label.isprintable():
        raise ValueError(f"metric label {label!r} must be printable text of 1 to 60 characters")
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better must be true or false, got {higher_is_better!r}")
    if name == "mse" and higher_is_better:
        raise ValueError("metric 'mse' is lower-is-better")
    if chance is not None and (isinstance(chance, bool) or not isinstance(chance, (int, float))
                               or not math.isfinite(chance)):
        raise ValueError(f"chance must be a finite number or absent, got {chance!r}")


MSE = Metric("mse", "MSE", higher_is_better=False)


def _not_computed_here(pred, target):
    raise RuntimeError("a metric read from a record describes stored numbers; it computes none")


def metric_from_declaration(declaration) -> Metric:
    """The metric a record declares (`Metric.declaration()`); None -> MSE (records before metrics).
    ValueError naming the bad field: a record is untrusted input."""
    if declaration is None:
        return MSE
    keys = {"name", "label", "higher_is_better", "chance"}
    if not isinstance(declaration, dict) or set(declaration) != keys:
        raise ValueError(f"metric must be a table with keys {', '.join(sorted(keys))}, got {declaration!r:.120}")
    metric = Metric(**declaration, fn=None if declaration["name"] in _METRIC_FUNCTIONS else _not_computed_here)
    if metric.name == "mse" and metric != MSE:
        raise ValueError(f"metric 'mse' must be declared as {MSE.declaration()}, got {declaration!r:.120}")
    return metric


def accuracy(n_classes: int) -> Metric:
    return Metric("accuracy", "accuracy", higher_is_better=True, chance=1.0 / n_classes)


@dataclass(frozen=True)
class Problem:
    """A family's network dimensions, training loss and reported metric (see the module docstring)."""

    input_dim: int = 1
    output_dim: int = 1
    loss: str | Callable = "mse"
    metric: Metric | None = None  # None: MSE for "mse", accuracy for "cross-entropy"

    def __post_init__(self):
        for name in ("input_dim", "output_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not callable(self.loss) and self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)} or a callable(pred, target) "
                             "-> per-point loss")
        if self.loss == "cross-entropy" and self.output_dim < 2:
            raise ValueError(f"a cross-entropy problem needs output_dim >= 2 (one logit per class), "
                             f"got {self.output_dim}")
        if self.metric is None:
            if callable(self.loss):
                raise ValueError("a problem with a loss of its own must name its metric (Metric(...))")
            object.__setattr__(self, "metric", MSE if self.loss == "mse" else accuracy(self.output_dim))

    @property
    def is_mse(self) -> bool:
        """Whether the loss is the engines' own MSE (their bitwise-unchanged code paths)."""
        return isinstance(self.loss, str) and self.loss == "mse"

    @property
    def scalar_mse(self) -> bool:
        """Whether this is the sine families' shape of problem, 1 -> 1 with MSE: what the hand-written
        engines (`func`'s accelerated one, `jax`, Reptile, pre-training) and the fast evaluation cover."""
        return self.is_mse and (self.input_dim, self.output_dim) == (1, 1)

    @property
    def loss_name(self) -> str:
        return self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", repr(self.loss))

    def check_shapes(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Raise ValueError unless the network's output `pred` fits `target` for this loss."""
        if self.loss == "cross-entropy":
            fits = pred.shape[:-1] == target.shape[:-1] and target.shape[-1] == 1 and pred.shape[-1] >= 2
            need = "logits [..., N, C >= 2] and labels [..., N, 1]"
        elif self.is_mse:
            fits, need = pred.shape == target.shape, "equal shapes"
        else:
            fits, need = pred.shape[:-1] == target.shape[:-1], "the same points"
        if not fits:
            raise ValueError(f"loss {self.loss_name!r}: the network's output {tuple(pred.shape)} does not fit the "
                             f"targets {tuple(target.shape)} (needs {need}; input_dim/output_dim of the task's "
                             f"problem: {self.input_dim} -> {self.output_dim})")

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise ValueError unless the task inputs x [..., N, features] have `input_dim` features: a
        network sized for another problem would fail deep inside a matrix product, or not at all."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"the tasks' inputs have {x.shape[-1]} features, but the learner's problem (its network) "
                             f"takes {self.input_dim}: pass the task family's problem (problem=family.problem)")

    def point_losses(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-point loss [..., N], shapes checked."""
        self.check_shapes(pred, target)
        if callable(self.loss):
            return self.loss(pred, target)
        return (_per_point_squared_error if self.is_mse else _per_point_cross_entropy)(pred, target)

    def task_losses(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each task's loss, the mean of its per-point losses: [..., N, out] -> [...]."""
        return self.point_losses(pred, target).mean(dim=-1)


REGRESSION = Problem()  # the sine families': 1 -> 1, MSE, lower is better


def problem_of(family_or_problem) -> Problem:
    """A family's problem (`.problem`; `REGRESSION` where it declares none), a `Problem` as it is,
    None as `REGRESSION`."""
    if family_or_problem is None:
        return REGRESSION
    if isinstance(family_or_problem, Problem):
        return family_or_problem
    problem = getattr(family_or_problem, "problem", REGRESSION)
    if not isinstance(problem, Problem):
        raise TypeError(f"{type(family_or_problem).__name__}.problem must be a tasks.problem.Problem, got {problem!r}")
    return problem


def refuse_unless_mse(problem: Problem | None, who: str) -> None:
    """For a backend written for MSE only: ValueError naming the problem's loss (never a silent MSE)."""
    problem = problem_of(problem)
    if not problem.is_mse:
        raise ValueError(f"{who} trains with MSE only; this task's loss is {problem.loss_name!r} "
                         f"(use backend 'torch' or 'generic')")
    if not problem.scalar_mse:
        raise ValueError(f"{who} builds 1-input, 1-output networks only; this task needs "
                         f"{problem.input_dim} -> {problem.output_dim} (use backend 'torch' or 'generic')")
