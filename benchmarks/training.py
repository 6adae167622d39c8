"""The one meta-training loop for every algorithm: it yields metric dicts.

Logging, evaluation and storage live in the caller; the loop only samples meta-batches
from each member's own generator, steps the learner, and reports at log points.
"""
from __future__ import annotations

import time
from typing import Iterator

import torch

from tasks import TaskBatch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def meta_train(learner, family, generators: list[torch.Generator], iterations: int,
               report_at: set[int], on_iteration=None) -> Iterator[dict]:
    """Train for `iterations`; at each iteration in `report_at` yield
    {"iteration", "loss" (tensor [members]), "train_seconds" (step time so far)}.

    Step time excludes whatever the caller does between yields (evaluation, logging).
    `on_iteration(n)` (progress display) is told after each iteration how many are done.
    """
    device = learner.device
    train_seconds = 0.0
    started = time.perf_counter()
    for it in range(iterations):
        batches = [family.sample(learner.hp.meta_batch, g) for g in generators]
        batch = (TaskBatch.stack(batches) if learner.stacked_batches else batches[0]).to(device)
        metrics = learner.step(batch, it)
        if on_iteration is not None:
            on_iteration(it + 1)
        if it + 1 in report_at:
            _sync(device)
            train_seconds += time.perf_counter() - started
            yield {"iteration": it + 1, "loss": metrics["loss"].detach().reshape(-1).cpu(),
                   "train_seconds": train_seconds}
            started = time.perf_counter()
