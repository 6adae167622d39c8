"""The one meta-training loop for every algorithm: it yields metric dicts.

Logging, evaluation and storage live in the caller; the loop only samples meta-batches
from each member's own generator, steps the learner, and reports at log points.

Host work off the hot path (issue 24): a compiled step at Finn's setting takes ~0.3 ms, and the
~20 small torch ops of sampling, stacking and moving one meta-batch per iteration cost about as
much. So the loop asks a family with `sample_block` for many iterations' meta-batches at once
(bitwise the tasks of per-iteration sampling: the family's contract, tested), stacks the members
and moves the block to the device once, and steps on per-iteration views; a family without it
(a plug-in's) is sampled per iteration as before. The progress callback is told about every
`PROGRESS_SECONDS`, not every iteration.
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import torch

from tasks import TaskBatch
from tasks.batch import DATA

#: the most iterations pre-sampled in one block (with `BLOCK_BYTES`, the memory bound): enough to
#: make the per-block ops (one uniform draw, the range maps, one stack per member, one device
#: copy) negligible per iteration, few enough that a block stays a few MB
BLOCK_ITERATIONS = 500
#: the most bytes of one block, all members together (Finn's 25 tasks x 20 points: ~4.2 kB per
#: member and iteration, so a single run takes blocks of 500, a 27-member ensemble ~70)
BLOCK_BYTES = 8 * 2 ** 20
#: the first block's iterations: its size per iteration sets the later blocks' (a short run's
#: first iterations, and the compile in its first step, do not wait for a large block)
FIRST_BLOCK = 8
#: each iteration's tensors start on a multiple of this many elements (64 bytes in float32)
#: within its block: a compiled (Inductor) step copies inputs that are not 16-byte aligned
ALIGN = 16
#: the progress callback is told at most about this often (it was told every iteration: a
#: `progress.Reporter` call every ~0.3 ms at Finn's compiled step), and always at iteration 1,
#: at report points and at the last iteration
PROGRESS_SECONDS = 0.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def meta_train(learner, family, generators: list[torch.Generator], iterations: int,
               report_at: set[int], on_iteration=None) -> Iterator[dict]:
    """Train for `iterations`; at each iteration in `report_at` yield
    {"iteration", "loss" (tensor [members]), "train_seconds" (step time so far)}.

    Step time excludes whatever the caller does between yields (evaluation, logging); it
    includes sampling (in blocks: the iteration that starts a block pays for it).
    `on_iteration(n)` (progress display) is told how many iterations are done at iteration 1,
    at every report point, at the last iteration, and in between about every `PROGRESS_SECONDS`
    (every iteration when one takes longer).
    """
    device = learner.device
    train_seconds = 0.0
    started = time.perf_counter()
    batches = task_stream(family, generators, learner.hp.meta_batch, iterations, learner.stacked_batches, device)
    next_progress, progress_at = 1, (0, started)
    for it, batch in enumerate(batches):
        metrics = learner.step(batch, it)
        done = it + 1
        if on_iteration is not None and (done >= next_progress or done in report_at or done == iterations):
            on_iteration(done)
            now = time.perf_counter()
            seconds_each = (now - progress_at[1]) / (done - progress_at[0])
            next_progress = done + max(1, int(PROGRESS_SECONDS / seconds_each) if seconds_each > 0 else 1)
            progress_at = (done, now)
        if done in report_at:
            _sync(device)
            train_seconds += time.perf_counter() - started
            yield {"iteration": done, "loss": metrics["loss"].detach().reshape(-1).cpu(),
                   "train_seconds": train_seconds}
            started = time.perf_counter()


def task_stream(family, generators: list[torch.Generator], meta_batch: int, iterations: int, stacked: bool,
                device: torch.device) -> Iterator[TaskBatch]:
    """Each iteration's meta-batch on `device`: the members' batches stacked ([members, tasks, ...])
    when `stacked`, else the first generator's alone, as `family.sample` gives them one iteration
    after another.

    A family with `sample_block` is drawn in blocks whose size is sized to the remaining
    iterations, so each generator ends where per-iteration sampling leaves it; a caller that
    stops early (`benchmarks.job`: every member diverged) leaves a generator drawn ahead, which
    nothing reads after training (each job's task generators are its own, `Settings.generator`).
    """
    sample_block = getattr(family, "sample_block", None)
    if not callable(sample_block):
        for _ in range(iterations):
            batches = [family.sample(meta_batch, g) for g in generators]
            yield (TaskBatch.stack(batches) if stacked else batches[0]).to(device)
        return
    members = generators if stacked else generators[:1]
    done, size = 0, FIRST_BLOCK
    while done < iterations:
        n = min(size, iterations - done)
        blocks = [sample_block(n, meta_batch, g) for g in members]
        if any(len(block) != n for block in blocks):  # a plug-in's mistake, named here
            raise ValueError(f"{type(family).__name__}.sample_block({n}, {meta_batch}, generator) returned "
                             f"{[len(block) for block in blocks]} iterations, not {n}")
        views, nbytes = _iteration_views(blocks, stacked, device)
        del blocks  # only the aligned copy stays alive while the block is stepped through
        done += n
        size = max(1, min(BLOCK_ITERATIONS, BLOCK_BYTES * n // max(1, nbytes)))
        yield from views


def _iteration_views(blocks: list[TaskBatch], stacked: bool, device) -> tuple[list[TaskBatch], int]:
    """The members' blocks ([iterations, ...] each) as one batch per iteration: views of one
    aligned buffer per tensor, copied to `device` once; and the buffers' bytes."""
    nbytes = 0

    def rows(parts: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        nonlocal nbytes
        first = parts[0]
        shape = (first.shape[0], len(parts), *first.shape[1:]) if stacked else first.shape
        row = math.prod(shape[1:])
        buffer = first.new_empty((shape[0], -(-row // ALIGN) * ALIGN))
        nbytes += buffer.nbytes
        target = buffer[:, :row].view(shape)
        for m, part in enumerate(parts):
            (target[:, m] if stacked else target).copy_(part)
        return buffer.to(device)[:, :row].view(shape).unbind(0)

    data = [rows([getattr(b, name) for b in blocks]) for name in DATA]
    params = {key: rows([b.params[key] for b in blocks]) for key in blocks[0].params}
    return [TaskBatch(*(tensors[i] for tensors in data), params={key: p[i] for key, p in params.items()})
            for i in range(len(blocks[0]))], nbytes
