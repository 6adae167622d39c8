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
    [members, tasks, points, 1] after `stack`); every `params` entry is [tasks] or [tasks, ...]
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
