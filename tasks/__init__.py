"""Task registry: `list_tasks()`, `get_task(name, **params)`, and the fixed evaluation sets.

A task family is any object with `k_shot`, `sample(n_tasks, generator)` and `with_points(k, q)`.
"""
from __future__ import annotations

from functools import partial

import torch

from tasks.sine import SineFamily, TaskBatch

TASKS = {
    "sine": SineFamily,
    # Support points only on the right half of the axis; queried everywhere (Finn Fig. 3 style).
    "sine-half": partial(SineFamily, support_x_range=(0.0, 5.0)),
}

# Evaluation sets are drawn from seeds no training run uses: training seeds must be below
# MAX_TRAIN_SEED, and the validation/test streams live above it.
MAX_TRAIN_SEED = 1_000_000
VALIDATION_SEED = 1_000_003
TEST_SEED = 2_000_003
N_TEST_TASKS = 600  # as in the original MAML code
N_EVAL_QUERY = 100


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str, **params):
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    try:
        return TASKS[name](**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for task {name!r}: {error}") from None


def evaluation_set(family, split: str = "test", n_tasks: int = N_TEST_TASKS, k_shot: int | None = None,
                   n_query: int = N_EVAL_QUERY, seed_offset: int = 0) -> TaskBatch:
    """The fixed meta-validation or meta-test set: deterministic, disjoint in seed from training.

    `k_shot` defaults to the family's own K (evaluate at a different K by passing it).
    """
    seeds = {"test": TEST_SEED, "validation": VALIDATION_SEED}
    if split not in seeds:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(seeds)}")
    generator = torch.Generator().manual_seed(seeds[split] + seed_offset)
    return family.with_points(k_shot or family.k_shot, n_query).sample(n_tasks, generator)


__all__ = ["TASKS", "TaskBatch", "SineFamily", "list_tasks", "get_task", "evaluation_set", "MAX_TRAIN_SEED"]
