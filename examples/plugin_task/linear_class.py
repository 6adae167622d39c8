"""Two task families of one's own, as a metabench plug-in: each declares its problem.

* `linear-class`: few-shot binary classification by a random linear boundary in d dimensions
  (per task w ~ N(0, I), b ~ N(0, 1); a point x ~ N(0, I) has label 1 where w·x + b > 0), trained
  with cross-entropy and reported in accuracy (chance 1/2). K (`k_shot`) and `n_query` count
  points per task (the built-in `gauss-class` counts them per class).
* `sine-mae`: the suite's sine tasks trained and reported with the mean absolute error instead of
  MSE: a loss of one's own (a function) and a metric of one's own (`Metric(..., fn=...)`).

A family's `problem` (`tasks.problem.Problem(input_dim, output_dim, loss, metric)`) is all the
suite reads: the network is sized from it, every engine trains with its loss (or refuses, naming
it), the evaluation, records, tables and figures show its metric and follow its direction.
Loaded with `--plugin examples/plugin_task/linear_class.py` or `plugins = [...]` in a sweep file
(`linear_class.toml`). Decision: labels are stored as floats 0/1 in the targets [tasks, points, 1],
as every family's (`tasks.problem`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tasks import register_task
from tasks.batch import TaskBatch
from tasks.problem import Metric, Problem, accuracy
from tasks.sine import SineFamily


@dataclass(frozen=True)
class LinearClassFamily:
    k_shot: int = 10  # support points per task
    n_query: int = 20  # query points per task
    dim: int = 10

    def __post_init__(self):
        for name in ("k_shot", "n_query", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def problem(self) -> Problem:
        return Problem(self.dim, 2, "cross-entropy", accuracy(2))

    input_dim = property(lambda self: self.dim)
    output_dim = property(lambda self: 2)

    def function(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """The label of x [tasks, points, d]: 1 where w·x + b > 0, as floats [tasks, points, 1]."""
        return ((x @ params["w"].unsqueeze(-1)) + params["b"][:, None, None] > 0).to(x.dtype)

    def sample(self, n_tasks: int, generator: torch.Generator, dtype=torch.float32) -> TaskBatch:
        """Draw order: boundaries, support points, query points."""
        params = {"w": torch.randn((n_tasks, self.dim), generator=generator, dtype=dtype),
                  "b": torch.randn((n_tasks,), generator=generator, dtype=dtype)}
        xs = torch.randn((n_tasks, self.k_shot, self.dim), generator=generator, dtype=dtype)
        xq = torch.randn((n_tasks, self.n_query, self.dim), generator=generator, dtype=dtype)
        return TaskBatch(xs, self.function(xs, params), xq, self.function(xq, params), params)

    def with_points(self, k_shot: int, n_query: int) -> "LinearClassFamily":
        return replace(self, k_shot=k_shot, n_query=n_query)


def absolute_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-point loss [..., N] from predictions and targets [..., N, 1]."""
    return (pred - target).abs().mean(-1)


MAE = Metric("mae", "mean absolute error", higher_is_better=False, fn=absolute_error)


@dataclass(frozen=True)
class SineMAEFamily(SineFamily):
    problem = Problem(1, 1, absolute_error, MAE)  # a class attribute, as `SineFamily`'s


register_task("linear-class", LinearClassFamily)
register_task("sine-mae", SineMAEFamily)
