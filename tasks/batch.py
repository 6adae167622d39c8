"""`TaskBatch`: a meta-batch of regression tasks, for any task family.

The data tensors are the same for every family; what differs (a sine's amplitude and phase,
another family's own parameters) lives in `params`, so algorithms and the evaluation code
never depend on one family's fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

DATA = ("x_support", "y_support", "x_query", "y_query")


@dataclass(frozen=True)
class TaskBatch:
    """Tasks along the leading dimension: every data tensor is [tasks, points, 1] (or
    [members, tasks, points, 1] after `stack`, [iterations, tasks, points, 1] from a family's
    `sample_block`); every `params` entry is [tasks] or [tasks, ...]
    (its family's per-task parameters, e.g. amplitude and phase; read by `family.function`)."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x_support.shape[0]

    def map(self, fn) -> "TaskBatch":
        """The same batch with `fn` applied to every tensor, data and parameters alike."""
        return TaskBatch(*(fn(getattr(self, name)) for name in DATA),
                         params={key: fn(value) for key, value in self.params.items()})

    def to(self, device: str | torch.device) -> "TaskBatch":
        return self.map(lambda t: t.to(device))

    def select(self, index) -> "TaskBatch":
        """Tasks `index` (an int, slice or index tensor) as a batch of their own."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.map(lambda t: t[index])

    @staticmethod
    def stack(batches: list["TaskBatch"]) -> "TaskBatch":
        """Stack batches along a new leading dimension (one batch per ensemble member)."""
        keys = [sorted(b.params) for b in batches]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"cannot stack batches with different parameters: {keys}")
        return TaskBatch(*(torch.stack([getattr(b, name) for b in batches]) for name in DATA),
                         params={key: torch.stack([b.params[key] for b in batches]) for key in batches[0].params})


def check_block(n_iterations: int, n_tasks: int) -> None:
    """The sizes a `sample_block` is asked for (one message for every family)."""
    for name, value in (("n_iterations", n_iterations), ("n_tasks", n_tasks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def sequential_block(family, n_iterations: int, n_tasks: int, generator: torch.Generator,
                     dtype=torch.float32) -> TaskBatch:
    """`n_iterations` successive `family.sample(n_tasks, generator, dtype)` stacked along a new
    leading dimension: what every `sample_block` must equal bit for bit, and the block of a family
    (or an option) whose draws cannot be made in one vectorised call without changing them."""
    check_block(n_iterations, n_tasks)
    return TaskBatch.stack([family.sample(n_tasks, generator, dtype) for _ in range(n_iterations)])
