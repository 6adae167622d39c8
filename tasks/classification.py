"""Synthetic N-way K-shot classification (`gauss-class`): the suite's first non-regression family.

Per task: N class centres ~ separation · N(0, I_d), each point its class's centre plus
noise · N(0, I_d); labels 0..N−1, stored as floats in the targets [tasks, points, 1] (every family
shares `TaskBatch`'s layout; `tasks.problem` reads them as class indices). K (`k_shot`) and the
query size (`n_query`) count points *per class*, as in the few-shot literature, so a task has
N·K support points. Classes interleave (point i has label i mod N): every class is equally
represented in every prefix, and a task's labels carry no information about its centres, so an
untrained network is at chance (1/N) averaged over tasks. The tutorial network is 10 -> 64 -> 2
ReLU (`network = "relu-64"`, sized from `input_dim`/`output_dim`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from tasks.batch import TaskBatch, sequential_block
from tasks.problem import Problem

MAX_WAYS = 1000
MAX_DIM = 4096


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_scale(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class GaussClassFamily:
    """N-way K-shot Gaussian blobs in d dimensions (see the module docstring)."""

    k_shot: int = 5  # support points per class
    n_query: int = 10  # query points per class
    n_way: int = 2
    dim: int = 10
    separation: float = 1.0  # scale of the class centres
    noise: float = 1.0  # standard deviation of a point around its centre

    def __post_init__(self):
        _check_int("k_shot", self.k_shot, 1, 10**6)
        _check_int("n_query", self.n_query, 1, 10**6)
        _check_int("n_way", self.n_way, 2, MAX_WAYS)
        _check_int("dim", self.dim, 1, MAX_DIM)
        _check_scale("separation", self.separation)
        _check_scale("noise", self.noise)

    @property
    def input_dim(self) -> int:
        return self.dim

    @property
    def output_dim(self) -> int:
        return self.n_way

    @property
    def problem(self) -> Problem:
        return Problem(self.dim, self.n_way, "cross-entropy")

    def _labels(self, n_tasks: int, per_class: int, dtype) -> torch.Tensor:
        labels = torch.arange(self.n_way * per_class) % self.n_way
        return labels.to(dtype)[None, :, None].expand(n_tasks, -1, 1).contiguous()

    def _points(self, centres, labels, generator, dtype) -> torch.Tensor:
        chosen = centres.gather(1, labels.long().expand(-1, -1, self.dim))
        return chosen + self.noise * torch.randn(chosen.shape, generator=generator, dtype=dtype)

    def sample(self, n_tasks: int, generator: torch.Generator, dtype=torch.float32) -> TaskBatch:
        """Draw order: centres, support points, query points (same generator state, same batch)."""
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        centres = self.separation * torch.randn((n_tasks, self.n_way, self.dim), generator=generator, dtype=dtype)
        y_support = self._labels(n_tasks, self.k_shot, dtype)
        y_query = self._labels(n_tasks, self.n_query, dtype)
        x_support = self._points(centres, y_support, generator, dtype)
        x_query = self._points(centres, y_query, generator, dtype)
        return TaskBatch(x_support, y_support, x_query, y_query, {"centres": centres})

    def sample_block(self, n_iterations: int, n_tasks: int, generator: torch.Generator,
                     dtype=torch.float32) -> TaskBatch:
        """The next `n_iterations` meta-batches, stacked (`tasks.batch.sequential_block`), drawn one
        `sample` call at a time: every draw here is Gaussian, and `torch.randn` transforms groups
        of 16 numbers, so one draw for a block would give other tasks (it splits exactly only where
        every draw's size is a multiple of 16; the suite's settings are not: 25 tasks x 2 centres x
        10 dimensions = 500). The training loop still stacks members and moves to the device once
        per block."""
        return sequential_block(self, n_iterations, n_tasks, generator, dtype)

    def function(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The noiseless label of x [..., tasks, points, d]: its nearest centre's class (the Bayes
        classifier for equal isotropic noise), as floats [..., tasks, points, 1]."""
        distances = torch.cdist(x, params["centres"])
        return distances.argmin(dim=-1, keepdim=True).to(x.dtype)

    def with_points(self, k_shot: int, n_query: int) -> "GaussClassFamily":
        return replace(self, k_shot=k_shot, n_query=n_query)
