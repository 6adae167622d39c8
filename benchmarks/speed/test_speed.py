"""Seconds per meta-iteration of every (algorithm, backend), on a fixed batch.

Run: `pytest benchmarks/speed --benchmark-json=results/bench/speed.json` (about 4 min on
2 CPU cores), then `python -m benchmarks.speed.table` for the CSV/Markdown tables.

- `test_meta_iteration`: one outer step (meta-gradient + Adam) for every registered
  (algorithm, backend) at S in {1, 5, 10} and meta-batch in {25, 100}; extra_info holds the
  cell, the machine and the peak memory of one step.
- `test_ensemble`: 27 runs (3 LR_base x 3 LR_meta x 3 seeds) as one func ensemble vs the
  same 27 func learners stepped one after another.
- `test_finn_end_to_end`: Finn's setting including task sampling, as `meta_train` runs it,
  projected to 70,000 iterations.
- `test_checkpoint_inner`: second-order MAML at S = 100 with and without checkpointing.
- `test_peers`: MAML and FOMAML at S in {1, 5, 10}, meta-batch in {25, 100}: func (eager, and its
  whole step compiled), the generic engine (eager and compiled), JAX (jit), torch.compile of a
  torch.func step (CUDA graphs too on a GPU), learn2learn and higher on the same batch and
  weights, timed in interleaved rounds of back-to-back bursts (SPEED_BURST_MS, default 5 ms of
  calls per peer and round; 0: one call; `benchmarks.speed.peers`).

Each benchmark sizes its rounds from a call after the warm-up so that slow cells (learn2learn at
S = 10, meta-batch 100: ~1 s/iter) take a few rounds and fast ones many; SPEED_SECONDS
(default 1.0) is the time aimed at per benchmark (per peer in `test_peers`). Threads:
SPEED_THREADS (default 1: one thread per process, as the sweeps run; JAX's CPU pool is sized
to match). Device: SPEED_DEVICE (default cpu). SPEED_COMPILE picks the cells where the
compiled peers run (`func-compiled`, `generic-compiled`, `compile`: a cold compile takes ~3-60 s each on one
CPU thread): `finn`
(default: S = 1, meta-batch 25, both orders), `all`, or `none`. SPEED_PEERS (comma-separated)
narrows the peers. Every benchmark records its process CPU time over wall time (`cpu_wall`),
the contention check of `benchmarks.speed.table`. SPEED_PARTIAL=FILE.jsonl appends each
finished benchmark's record to FILE as it ends (default: the --benchmark-json path with the suffix
`.partial.jsonl`; pytest-benchmark writes its JSON only when the whole session ends: a run cut off
by a time limit or Ctrl-C keeps what it measured, and a rerun skips it, `benchmarks.speed.resume`). SPEED_TUNE_MALLOC=0 leaves glibc's malloc as it is
(default: `tune_malloc`, which keeps freed memory in the process; ensembles are ~1.5x
faster with it, single runs unchanged); extra_info records which.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import time

import pytest
import torch

from algorithms import HyperParams, get_learner_class, list_algorithms
from benchmarks.speed import peers, resume
from benchmarks.speed.measure import machine_info, peak_memory_bytes, tune_malloc
from tasks import TaskBatch, get_task

THREADS = int(os.environ.get("SPEED_THREADS", "1"))
DEVICE = os.environ.get("SPEED_DEVICE", "cpu")
SECONDS = float(os.environ.get("SPEED_SECONDS", "1.0"))
MALLOC_TUNED = os.environ.get("SPEED_TUNE_MALLOC", "1") != "0" and tune_malloc()
MIN_ROUNDS, MAX_ROUNDS = 3, 300
INNER_STEPS = [1, 5, 10]
META_BATCHES = [25, 100]
PAIRS = [(a, b) for a, backends in list_algorithms().items() for b in backends]
FAMILY = get_task("sine")  # Finn et al.: K = 10 support and 10 query points per task
COMPILE_CELLS = os.environ.get("SPEED_COMPILE", "finn")
PEER_NAMES = [p.strip() for p in os.environ.get("SPEED_PEERS", ",".join(peers.PEERS)).split(",") if p.strip()]
# Cold compilation, every run: the compile times reported are what a first run pays.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="speed-inductor-"))


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _sync():
    if torch.device(DEVICE).type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _batch(learner, meta_batch: int, seed: int = 0):
    batch = FAMILY.sample(meta_batch, torch.Generator().manual_seed(seed))
    return (TaskBatch.stack([batch]) if learner.stacked_batches else batch).to(DEVICE)


def _learner(algorithm, backend, inner_steps, meta_batch, seed=0, **hp):
    hp = HyperParams(inner_steps=inner_steps, meta_batch=meta_batch, **hp)
    return get_learner_class(algorithm, backend)(hp, torch.Generator().manual_seed(seed), device=DEVICE)


def _skip_if_missing(backend: str, algorithm: str = "maml"):
    """A library that is not installed (e.g. learn2learn on a GPU machine) skips its cells, saying so."""
    if backend in ("l2l", "higher", "jax"):
        reason = peers.missing(backend, "maml" if backend == "higher" else algorithm, torch.device(DEVICE))
        if reason:
            pytest.skip(reason)


def _save_partial(benchmark, name: str) -> None:
    """Append this benchmark's record (pytest-benchmark's JSON layout) to SPEED_PARTIAL, if set, with
    the settings it was measured under (`benchmarks.speed.resume`: a rerun skips it only if they match)."""
    path = os.environ.get("SPEED_PARTIAL")
    if not path:
        return
    stats = benchmark.stats.stats
    record = {"name": name, "stats": {"median": stats.median, "min": stats.min, "iqr": stats.iqr, "rounds": stats.rounds},
              "extra_info": dict(benchmark.extra_info), "settings": resume.settings()}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _run(benchmark, fn, *, memory: bool = True, learners=(), **info):
    """Time `fn` with rounds sized from a warm-up call; record the cell, machine and memory.

    The meta-parameters of `learners` are restored before every round (untimed): stepping
    hundreds of times on one fixed batch would otherwise drive e.g. Meta-SGD's learned rates
    to a divergent inner loop (at S = 10 after ~60 steps, on every backend alike).
    """
    saved = [[p.detach().clone() for p in learner.meta_parameters] for learner in learners]

    def restore():
        with torch.no_grad():
            for learner, values in zip(learners, saved):
                for p, v in zip(learner.meta_parameters, values):
                    p.copy_(v)

    clocks = {"wall": 0.0, "cpu": 0.0}

    def call():
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync()
        clocks["wall"] += time.perf_counter() - wall
        clocks["cpu"] += time.process_time() - cpu

    call()  # warm-up: compiles (JAX's jit), lazy optimiser state, allocator caches
    restore()
    started = time.perf_counter()
    call()  # sizes the rounds: a first call that compiles would leave a jitted step 3 rounds
    per_call = time.perf_counter() - started
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(SECONDS / max(per_call, 1e-6))))
    clocks.update(wall=0.0, cpu=0.0)
    benchmark.pedantic(call, setup=restore, rounds=rounds, iterations=1, warmup_rounds=1 if per_call < 0.2 else 0)
    restore()
    benchmark.extra_info.update(info)
    benchmark.extra_info.update(machine_info(DEVICE), malloc_tuned=MALLOC_TUNED, cpu_wall=clocks["cpu"] / clocks["wall"])
    if memory:
        benchmark.extra_info["peak_memory_mb"] = peak_memory_bytes(call, DEVICE) / 2 ** 20
    _save_partial(benchmark, os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("::")[-1])


@pytest.mark.parametrize("meta_batch", META_BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("inner_steps", INNER_STEPS, ids=lambda s: f"S{s}")
@pytest.mark.parametrize("algorithm,backend", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_meta_iteration(benchmark, algorithm, backend, inner_steps, meta_batch):
    benchmark.group = f"S={inner_steps} meta-batch={meta_batch}"
    _skip_if_missing(backend, algorithm)
    learner = _learner(algorithm, backend, inner_steps, meta_batch)
    batch = _batch(learner, meta_batch)
    # JAX allocates outside torch: the profiler would see only the copies (its memory is in test_peers)
    _run(benchmark, lambda: learner.step(batch, 0), memory=backend != "jax", learners=[learner], kind="meta_iteration",
         algorithm=algorithm, backend=backend, inner_steps=inner_steps, meta_batch=meta_batch, members=1)
    assert all(torch.isfinite(p).all() for p in learner.meta_parameters)


ENSEMBLE = list(itertools.product([0.003, 0.01, 0.03], [3e-4, 1e-3, 3e-3], [0, 1, 2]))  # LR_base, LR_meta, seed


@pytest.mark.parametrize("mode", ["ensemble", "one-by-one"])
@pytest.mark.parametrize("inner_steps", [1, 5], ids=lambda s: f"S{s}")
def test_ensemble(benchmark, mode, inner_steps):
    """One iteration of 27 MAML runs (Finn's meta-batch 25): one program vs 27 learners in turn."""
    benchmark.group = f"ensemble of 27, S={inner_steps}"
    hps = [HyperParams(inner_steps=inner_steps, lr_base=lb, lr_meta=lm, meta_batch=25) for lb, lm, _ in ENSEMBLE]
    gens = [torch.Generator().manual_seed(seed * 9 + i) for i, (_, _, seed) in enumerate(ENSEMBLE)]
    batches = [FAMILY.sample(25, torch.Generator().manual_seed(100 + i)) for i in range(len(ENSEMBLE))]
    cls = get_learner_class("maml", "func")
    if mode == "ensemble":
        learner, batch = cls(hps, gens, device=DEVICE), TaskBatch.stack(batches).to(DEVICE)
        fn, learners = (lambda: learner.step(batch, 0)), [learner]
    else:
        learners = [cls(hp, g, device=DEVICE) for hp, g in zip(hps, gens)]
        stacked = [TaskBatch.stack([b]).to(DEVICE) for b in batches]
        fn = lambda: [l.step(b, 0) for l, b in zip(learners, stacked)]  # noqa: E731
    _run(benchmark, fn, learners=learners, kind="ensemble", mode=mode, algorithm="maml", backend="func",
         inner_steps=inner_steps, meta_batch=25, members=len(ENSEMBLE))


@pytest.mark.parametrize("backend", ["func", "l2l"])
def test_finn_end_to_end(benchmark, backend):
    """Finn's MAML (S = 1, 25 tasks, K = 10) as `meta_train` runs it: sample, stack, move, step."""
    benchmark.group = "Finn end-to-end (with task sampling)"
    _skip_if_missing(backend)
    learner = _learner("maml", backend, 1, 25)
    generator = torch.Generator().manual_seed(0)

    def iteration():
        batch = FAMILY.sample(25, generator)
        learner.step((TaskBatch.stack([batch]) if learner.stacked_batches else batch).to(DEVICE), 0)

    _run(benchmark, iteration, memory=False, kind="end_to_end", algorithm="maml", backend=backend, inner_steps=1,
         meta_batch=25, members=1)
    benchmark.extra_info["projected_70k_minutes"] = benchmark.stats.stats.median * 70_000 / 60


@pytest.mark.parametrize("checkpoint_inner", [False, True], ids=["plain", "checkpointed"])
def test_checkpoint_inner(benchmark, checkpoint_inner):
    """Second-order MAML with S = 100: time and peak memory, with and without checkpointing."""
    benchmark.group = "S=100 checkpointing"
    hp = HyperParams(inner_steps=100, meta_batch=25)
    learner = get_learner_class("maml", "func")(hp, torch.Generator().manual_seed(0), device=DEVICE,
                                                 checkpoint_inner=checkpoint_inner)
    batch = _batch(learner, 25)
    _run(benchmark, lambda: learner.step(batch, 0), learners=[learner], kind="checkpoint", algorithm="maml",
         backend="func", inner_steps=100, meta_batch=25, members=1, checkpoint_inner=checkpoint_inner,
         segment=learner.segment or None)


def _compile_here(inner_steps: int, meta_batch: int) -> bool:
    if COMPILE_CELLS not in ("finn", "all", "none"):
        raise ValueError(f"SPEED_COMPILE must be finn, all or none, got {COMPILE_CELLS!r}")
    return COMPILE_CELLS == "all" or (COMPILE_CELLS == "finn" and (inner_steps, meta_batch) == (1, 25))


@pytest.mark.parametrize("meta_batch", META_BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("inner_steps", INNER_STEPS, ids=lambda s: f"S{s}")
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"], ids=["second-order", "first-order"])
def test_peers(benchmark, algorithm, inner_steps, meta_batch):
    """func against its peers on one batch and one set of initial weights, interleaved rounds."""
    benchmark.group = f"peers {algorithm} S={inner_steps} meta-batch={meta_batch}"
    unknown = sorted(set(PEER_NAMES) - set(peers.PEERS))
    assert not unknown, f"unknown peers {unknown} in SPEED_PEERS; known peers: {', '.join(peers.PEERS)}"
    hp = HyperParams(inner_steps=inner_steps, meta_batch=meta_batch)
    batch = FAMILY.sample(meta_batch, torch.Generator().manual_seed(0))
    skipped = {}
    for name in PEER_NAMES:
        reason = peers.missing(name, algorithm, torch.device(DEVICE))
        if reason is None and name in peers.COMPILED and not _compile_here(inner_steps, meta_batch):
            reason = f"SPEED_COMPILE={COMPILE_CELLS}"
        if reason is not None:
            skipped[name] = reason
    built = [peers.build(name, algorithm, hp, batch, DEVICE) for name in PEER_NAMES if name not in skipped]
    result = {}

    def compare():
        peers.interleave(built, SECONDS * len(built), MIN_ROUNDS, MAX_ROUNDS)
        result["rows"], result["flags"] = peers.summarize(built, DEVICE, THREADS)

    benchmark.pedantic(compare, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="peers", algorithm=algorithm, order="first" if algorithm == "fomaml" else "second",
                                inner_steps=inner_steps, meta_batch=meta_batch, peers=result["rows"],
                                contention=result["flags"], skipped=skipped)
    benchmark.extra_info.update(machine_info(DEVICE), malloc_tuned=MALLOC_TUNED)
    _save_partial(benchmark, os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("::")[-1])
    assert all(r["ms_median"] > 0 for r in result["rows"])
