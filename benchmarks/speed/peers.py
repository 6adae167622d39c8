"""The peers side by side: one meta-iteration of MAML or FOMAML, same batch, same weights.

Peers (each a full meta-iteration: meta-gradient and Adam step):
* `func`: the vectorised engine, eager (`learner.step`);
* `func-compiled`: the same engine with `compile=True` (the sweep key `compile`): its
  hand-written meta-gradient (the forward tape and the reverse pass, no autograd) and the
  stacked Adam update as one Inductor program, traced once and called without TorchDynamo
  (`FuncLearner._compiled_step`);
* `generic`, `generic-compiled`: the generic torch.func engine (`algorithms.generic_engine`:
  any rule on any network, no hand-written derivative), eager and with `compile=True`
  (`torch.compile` of its meta-gradient, torch's fused Adam): what a researcher's own rule runs at;
* `jax`: the standard JAX MAML (`algorithms.jax_engine`: jit + vmap + optax), the jitted step
  called on JAX arrays as a JAX user would (the `jax` backend's torch<->JAX copies are not in it;
  `test_meta_iteration` times the backend as the runner calls it);
* `compile`: `torch.compile(fullgraph=True)` of the same MAML written with torch.func
  (grad of a vmapped inner `grad`, Adam written out), the usual way to compile MAML in torch;
* `compile-cudagraphs` (CUDA only): the same with `mode="reduce-overhead"` (CUDA graphs);
* `l2l`, `higher`: the loop libraries through their registered backends (no `higher` FOMAML).

Measurement (decisions):
* Interleaved rounds: each round runs every peer once, in an order rotated by one each round,
  so load that comes and goes hits every peer alike; ratios are per round (paired), then the
  median and quartiles of those ratios are reported.
* Bursts: within a round a peer makes consecutive calls for ~SPEED_BURST_MS (default 5 ms; at
  least one call), timed together and divided by their number, because a training run calls
  its step back to back. Single calls between other peers measure a step on caches the others
  just filled, which no run sees, and make each ratio depend on which peers share the run
  (measured on one call per peer and round: JAX's second-order S = 1, T = 25 step took 0.30 ms
  beside `func` and `func-compiled`, 0.46 ms with the two generic peers added). SPEED_BURST_MS=0
  gives one call per peer and round.
* Warm-up is excluded: the first call (tracing, compilation, lazy state) is timed on its own;
  `compile_s` is that first call minus the median call. Compilation is cold: the speed suite
  points inductor at an empty cache folder (JAX's persistent cache is off by default).
* Stateful peers (`func`, `l2l`, `higher`) get their weights and Adam state restored before each
  call, untimed; pure peers (`jax`, `compile`) are called on the same inputs every time.
* Contention: on the CPU each call's process CPU time is read with its wall time. With one thread
  per process an undisturbed call has CPU/wall ≈ 1; below MIN_CPU_WALL the process waited for a
  core, above MAX_CPU_WALL (one thread) something ran a second thread. A peer whose per-call
  spread (IQR / median) exceeds MAX_SPREAD is flagged too. Flags travel with the numbers; the
  tables mark them (`benchmarks.speed.table`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from algorithms import HyperParams, get_learner_class
from algorithms.network import make_network
from benchmarks.speed.measure import peak_memory_bytes
from tasks import TaskBatch

PEERS = ("func", "func-compiled", "generic", "generic-compiled", "jax", "compile", "compile-cudagraphs", "l2l",
         "higher")
COMPILED = ("func-compiled", "generic-compiled", "compile", "compile-cudagraphs")  # cold compiles: costly
REFERENCE = "func"  # ratios are peer time / func time: > 1 means func is faster
MIN_CPU_WALL, MAX_CPU_WALL = 0.9, 1.1
MAX_SPREAD = float(os.environ.get("SPEED_MAX_SPREAD", "0.25"))
BURST_S = float(os.environ.get("SPEED_BURST_MS", "5")) / 1e3


@dataclass
class Peer:
    name: str
    call: Callable[[], object]  # one meta-iteration, synchronised
    restore: Callable[[], None] | None = None
    memory: Callable[[], float] | None = None  # peak bytes of one call
    first_call_s: float = math.nan
    burst: int = 1  # consecutive calls per round
    times: list = field(default_factory=list)  # per call: each round's burst time / burst
    cpu: list = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the torch.func MAML step that torch.compile compiles ------------------------------------------

def _mlp(params, x):
    h = x
    for i in range(0, len(params) - 2, 2):
        h = torch.relu(F.linear(h, params[i], params[i + 1]))
    return F.linear(h, params[-2], params[-1])


def _mse(params, x, y):
    return ((_mlp(params, x) - y) ** 2).mean()


def torch_func_maml_step(inner_steps: int, lr_base: float, lr_meta: float, first_order: bool,
                         betas=(0.9, 0.999), eps: float = 1e-8):
    """(params, m, v, t, xs, ys, xq, yq) -> (params, m, v, t, loss, grads): MAML with torch.func and Adam."""
    beta1, beta2 = betas

    def task_loss(params, xs, ys, xq, yq):
        for _ in range(inner_steps):
            grads = torch.func.grad(_mse)(params, xs, ys)
            if first_order:
                grads = [g.detach() for g in grads]
            params = [p - lr_base * g for p, g in zip(params, grads)]
        return _mse(params, xq, yq)

    def meta_loss(params, xs, ys, xq, yq):
        return torch.func.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq).mean()

    def step(params, m, v, t, xs, ys, xq, yq):
        grads, loss = torch.func.grad_and_value(meta_loss)(params, xs, ys, xq, yq)
        t = t + 1
        m = [torch.lerp(mi, g, 1 - beta1) for mi, g in zip(m, grads)]
        v = [vi * beta2 + (1 - beta2) * g * g for vi, g in zip(v, grads)]
        step_size = lr_meta / (1 - beta1 ** t)
        bias2_sqrt = (1 - beta2 ** t).sqrt()
        params = [p - step_size * mi / (vi.sqrt() / bias2_sqrt + eps) for p, mi, vi in zip(params, m, v)]
        return params, m, v, t, loss, grads

    return step


# -- building the peers ----------------------------------------------------------------------------

def _restorer(learner):
    """Restore weights (and Adam state, once it exists) to their values now."""
    saved = [p.detach().clone() for p in learner.meta_parameters]
    state = {}

    def restore():
        with torch.no_grad():
            for p, v in zip(learner.meta_parameters, saved):
                p.copy_(v)
            optimizer = getattr(learner, "optimizer", None)
            if optimizer is None:
                return
            tensors = ([optimizer.m, optimizer.v] if hasattr(optimizer, "m") else
                       [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)])
            if not state:
                state["values"] = [t.clone() for t in tensors]
            for t, v in zip(tensors, state["values"]):
                t.copy_(v)

    return restore


def _learner_peer(name, backend, algorithm, hp, seed, batch, device):
    learner = get_learner_class(algorithm, backend)(hp, torch.Generator().manual_seed(seed), device=str(device))
    data = (TaskBatch.stack([batch]) if learner.stacked_batches else batch).to(device)

    def call():
        learner.step(data, 0)
        _sync(device)

    return Peer(name, call, restore=_restorer(learner), memory=lambda: peak_memory_bytes(call, device))


def _jax_peer(algorithm, hp, seed, batch, device):
    from algorithms import jax_engine

    jax = jax_engine.load()
    learner = get_learner_class(algorithm, "jax")(hp, torch.Generator().manual_seed(seed), device=str(device))
    args = (learner.params, learner.opt_state, *learner.jax_batch(batch.to(device)))
    # a fresh jit (not the backend's cached one): the first call pays a cold compile, as a new program would
    step = jax_engine.programs.__wrapped__(hp.inner_steps, algorithm == "fomaml", hp.lr_base, hp.lr_meta)[1]

    def memory():  # XLA's buffer plan of the compiled step (lower().compile() hits the jit's cache)
        analysis = step.lower(*args).compile().memory_analysis()
        return float(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)

    return Peer("jax", lambda: jax.block_until_ready(step(*args)), memory=memory)


def _compile_peer(name, algorithm, hp, seed, batch, device, mode=None):
    torch._dynamo.reset()  # one compiled step per peer; never the recompile limit's silent eager fallback
    step = torch_func_maml_step(hp.inner_steps, hp.lr_base, hp.lr_meta, first_order=algorithm == "fomaml")
    compiled = torch.compile(step, fullgraph=True, mode=mode)
    params = [p.detach().to(device) for p in make_network(torch.Generator().manual_seed(seed)).parameters()]
    args = (params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
            torch.zeros((), device=device), *(t.to(device) for t in (batch.x_support, batch.y_support,
                                                                       batch.x_query, batch.y_query)))

    def call():
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # each call a new step: replay over the last one's outputs
        out = compiled(*args)
        _sync(device)
        return out

    return Peer(name, call, memory=lambda: peak_memory_bytes(call, device))


def _compiled_learner_peer(name, backend, algorithm, hp, seed, batch, device):
    torch._dynamo.reset()
    learner = get_learner_class(algorithm, backend)(hp, torch.Generator().manual_seed(seed), device=str(device),
                                                     compile=True)
    data = (TaskBatch.stack([batch]) if learner.stacked_batches else batch).to(device)

    def call():
        learner.step(data)
        _sync(device)

    return Peer(name, call, restore=_restorer(learner), memory=lambda: peak_memory_bytes(call, device))


def missing(name: str, algorithm: str, device: torch.device) -> str | None:
    """Why peer `name` cannot run here (None: it can)."""
    import importlib.util

    if name in ("l2l", "higher"):
        package = {"l2l": "learn2learn", "higher": "higher"}[name]
        if importlib.util.find_spec(package) is None:
            return f"{package} not installed"
        if name == "higher" and algorithm != "maml":
            return "higher has no first-order MAML backend"
    if name == "jax":
        from algorithms.jax_engine import missing_packages

        if missing_packages():
            return f"{', '.join(missing_packages())} not installed"
    if name == "compile-cudagraphs" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


def build(name: str, algorithm: str, hp: HyperParams, batch: TaskBatch, device, seed: int = 0) -> Peer:
    device = torch.device(device)
    if name == "func":
        return _learner_peer("func", "func", algorithm, hp, seed, batch, device)
    if name in ("func-compiled", "generic-compiled"):
        return _compiled_learner_peer(name, name.split("-")[0], algorithm, hp, seed, batch, device)
    if name in ("generic", "l2l", "higher"):
        return _learner_peer(name, name, algorithm, hp, seed, batch, device)
    if name == "jax":
        return _jax_peer(algorithm, hp, seed, batch, device)
    if name == "compile":
        return _compile_peer(name, algorithm, hp, seed, batch, device)
    if name == "compile-cudagraphs":
        return _compile_peer(name, algorithm, hp, seed, batch, device, mode="reduce-overhead")
    raise ValueError(f"unknown peer {name!r}; known peers: {', '.join(PEERS)}")


# -- interleaved timing ------------------------------------------------------------------------------

def _timed(peer: Peer, calls: int = 1) -> tuple[float, float]:
    """Wall and CPU seconds per call of `calls` consecutive calls, from the restored state."""
    if peer.restore is not None:
        peer.restore()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        peer.call()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def interleave(peers: list[Peer], seconds: float, min_rounds: int = 5, max_rounds: int = 200,
               burst_s: float = BURST_S) -> int:
    """Warm up each peer, then time them in rotated interleaved rounds of bursts (`burst_s` of
    consecutive calls per peer, at least one); returns the number of rounds."""
    for peer in peers:
        started = time.perf_counter()
        peer.call()  # trace, compile, lazy state
        peer.first_call_s = time.perf_counter() - started
        if peer.restore is not None:
            peer.restore()  # first restore after the warm-up: every call starts from Adam's state after it
    for peer in peers:
        peer.burst = max(1, math.ceil(burst_s / max(min(_timed(peer)[0] for _ in range(2)), 1e-9)))
    estimate = sum(min(_timed(peer, peer.burst)[0] for _ in range(2)) * peer.burst for peer in peers)
    rounds = max(min_rounds, min(max_rounds, int(seconds / max(estimate, 1e-9))))
    for r in range(rounds):
        for i in range(len(peers)):
            peer = peers[(r + i) % len(peers)]
            wall, cpu = _timed(peer, peer.burst)
            peer.times.append(wall)
            peer.cpu.append(cpu)
    return rounds


def summarize(peers: list[Peer], device, threads: int, memory: bool = True) -> tuple[list[dict], list[str]]:
    """One row per peer (times in ms; ratios to func, and to func-compiled where it ran, per round) and
    the cell's contention flags."""
    device = torch.device(device)
    reference = next((p for p in peers if p.name == REFERENCE), None)
    compiled = next((p for p in peers if p.name == "func-compiled"), None)
    rows, flags = [], []
    for peer in peers:
        times = np.array(peer.times)
        q25, median, q75 = np.percentile(times, [25, 50, 75])
        cpu_wall = float(np.sum(peer.cpu) / np.sum(times))
        spread = float((q75 - q25) / median)
        row = {"peer": peer.name, "ms_median": median * 1e3, "ms_q25": q25 * 1e3, "ms_q75": q75 * 1e3,
               "ms_min": times.min() * 1e3, "spread": spread, "cpu_wall": cpu_wall, "rounds": len(times),
               "calls_per_round": peer.burst,
               "first_call_s": peer.first_call_s, "compile_s": max(peer.first_call_s - median, 0.0)}
        if reference is not None:
            ratios = times / np.array(reference.times)
            row.update(zip(("ratio_q25", "ratio_vs_func", "ratio_q75"), np.percentile(ratios, [25, 50, 75])))
        if compiled is not None:
            ratios = times / np.array(compiled.times)
            row.update(zip(("compiled_ratio_q25", "ratio_vs_func_compiled", "compiled_ratio_q75"),
                           np.percentile(ratios, [25, 50, 75])))
        if memory and peer.memory is not None:
            if peer.restore is not None:
                peer.restore()
            row["peak_memory_mb"] = peer.memory() / 2 ** 20
        if spread > MAX_SPREAD:
            flags.append(f"{peer.name}: spread (IQR/median) {spread:.2f} > {MAX_SPREAD}")
        if device.type == "cpu" and cpu_wall < MIN_CPU_WALL:
            flags.append(f"{peer.name}: CPU/wall {cpu_wall:.2f} < {MIN_CPU_WALL} (waited for a core)")
        if device.type == "cpu" and threads == 1 and cpu_wall > MAX_CPU_WALL:
            flags.append(f"{peer.name}: CPU/wall {cpu_wall:.2f} > {MAX_CPU_WALL} with one thread (a second thread ran)")
        rows.append(row)
    return rows, flags
