"""Time to result: a whole training run through `run`'s own code path, compile included.

Run: `python -m benchmarks.speed.end_to_end --out runs/speed-e2e` (default: Finn's cell, MAML,
S = 1, meta-batch 25, 300 measured iterations per peer, a few minutes plus the compiles), writes
`end_to_end.csv` and `end_to_end.md` there. `--inner-steps 1,5,10` measures every peer at each S
(issue 24's targets): one row per (peer, S), every ratio taken within the same S.

`--rounds N` (N >= 2) repeats the measurement N times, interleaved, the order of the torch and
the JAX peers alternating (torch first in even rounds, JAX's own loops first in odd ones; each
round a fresh Inductor cache, so every round's cold compile is cold), and writes
`end_to_end_rounds.csv` and `.md` instead, one row per (round, peer, S) with the `round` column and
ratios taken within the same round and S, and the target judged on the median ratio: one run's
ratios move with the load between its peers, rounds show by how much.

Why: the per-step tables (`benchmarks.speed.peers`) leave out the one-off costs (a compiled step's
8-35 s of CPU to compile at S <= 10; JAX's jit), which decide what a user waits for. Here each
peer trains once, as `python -m benchmarks run` does (`benchmarks.job.run_job`: task sampling,
the step, logging, the final evaluation), and the run is split into
* startup: the process's imports (torch; JAX) and the sweep's parsing;
* setup: building the learner and the evaluation sets, up to the first iteration;
* first iteration: compile (tracing, Inductor, the C++ compiler; JAX's jit) and one step;
* per iteration: the mean rate from iteration 1 to the last (sampling, step, logging
  every `log_every`), `(t_last - t_1) / (iterations - 1)`;
* evaluation: after the last iteration (the final evaluation on `n_validation_tasks` and
  `n_test_tasks` tasks, fixed per run).
A run of N iterations is projected as startup + setup + first + (N - 1) x rate + evaluation, for N in
`--amortise` (default 1k, 10k, 70k: a bench cell, ten of them, Finn's paper run); ratios divide by
the eager accelerated engine (`func`) and by JAX's own loop (`jax-insampling`) at the same S, where
they ran (issue 24's target: compiled `func` >= 1.2x faster than `jax-insampling` at 70k iterations,
i.e. `x_vs_jax-insampling_70000` <= 0.83; the markdown states it under the table).

Peers (decisions): `func` (eager accelerated engine), `func-compiled-cold` (`compile = true` in a
fresh process with an empty Inductor cache folder, a new folder per S), `func-compiled-warm` (the
same, a second process on the folder the cold one filled: what every later cell, seed and worker of
a sweep gets from the shared cache, `algorithms.base.compile_cache_dir`), `generic` (the generic
torch.func engine, eager), `l2l` (learn2learn through its backend; learn2learn and gym are imported
at startup, where a failing import skips the peer with a note on stderr and no row), `jax` (the JAX
backend through `run_job`, its jit cold: JAX's persistent cache is off; its per-step torch<->JAX
copies and torch-side sampling are in its rate). All of these run `run_job` on one sweep table
(`_cell`), differing only in backend and `compile`. Each peer runs in its own process, one after the
other, pinned to one core with `os.sched_setaffinity` (the same core for all: `--core`, default the
lowest allowed) and one thread (torch; XLA's CPU client sized by `jax_engine.load(threads=1)`), so
the ratios come from one run on one core. The process's CPU time (its own and its children's, i.e.
the C++ compiler) is recorded beside the wall time: on a loaded machine wall exceeds CPU, and
`cpu_wall` says by how much. `final_loss` (the last logged training loss) and `test_mse` (after
`eval_steps` steps) say that every peer learned the same thing.

JAX's own loop (`jax-insampling`, `jax-scan`; `jax_loop`): MAML as a JAX user writes the whole run,
no torch in its loop. Its step (`JaxLoop.step`, one `jax.jit`) splits a PRNG key it carries, samples
the meta-batch inside the jit with `jax.random` from the cell's sine family (`cell_family`: A ~
U[0.1, 5), phase ~ U[0, pi), x ~ U[-5, 5), K support and `n_query` query points, the suite's
distribution but not its torch stream, so losses agree in distribution, not number for number),
takes the second-order meta-gradient (`JaxLoop.meta_gradient`: the same function, callable on a
given batch, which the tests compare with `func`'s) and optax's Adam step. The network, loss and
inner SGD step are `algorithms.jax_engine`'s; the initial weights are `make_network`'s of the seed's
weights stream, as every other peer's. The run: jit on the first call, then a Python loop calling the
jitted step, blocking only where it logs the loss (every `log_every` and the last iteration) and
after iteration 1 (the first-iteration mark); then the evaluation: the adaptation curve 0..`eval_steps`
(K support points, `n_eval_query` query points) on a validation and a test set of the sweep's sizes,
drawn with `jax.random` from fixed keys, as a Python loop over one jitted, vmapped inner step
(`jax_engine.inner_update`), compiled once whatever `eval_steps`, as the torch evaluation steps
eagerly (the curve unrolled into one jit took ~10 s of CPU to compile at 10 steps, a cost no other
peer pays); that compile is in the evaluation time, as a user waits for it. The evaluation is the
same for both JAX loops. `jax-insampling` unrolls the S inner steps in Python at trace time
(`jax_engine.maml_loss`, the tutorials' way: its compile grows with S); `jax-scan` runs them as
`jax.lax.scan` (one traced step, compile time about flat in S: the fair JAX answer to a compiled
engine at S = 10). Startup is importing jax and optax; the harness's own imports (torch, through
`jax_engine`, and the sweep's parsing, which sets the sizes) come before the clock starts, since a
JAX user's script would not make them. `compile_seconds` of these rows is the first iteration minus
the rate (jit has no separate record).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd

PEERS = ("func", "func-compiled-cold", "func-compiled-warm", "generic", "l2l", "jax", "jax-insampling", "jax-scan")
BACKEND = {"func": "func", "func-compiled-cold": "func", "func-compiled-warm": "func", "generic": "generic",
           "l2l": "l2l", "jax": "jax", "jax-insampling": "jax", "jax-scan": "jax"}
JAX_LOOPS = ("jax-insampling", "jax-scan")  # JAX's own training loop (`jax_loop`), not `run_job`
REFERENCE = "func"
REFERENCES = (REFERENCE, "jax-insampling")  # each row's total is divided by theirs at the same S
# issue 24's target: compiled func (compile included) >= 1.2x faster than jax-insampling at Finn's 70k iterations
TARGET_PEER, TARGET_SPEEDUP, TARGET_ITERATIONS = "func-compiled-cold", 1.2, 70_000
AMORTISE = (1_000, 10_000, 70_000)
ROOT = Path(__file__).resolve().parents[2]


def _cell(peer: str, iterations: int, meta_batch: int, inner_steps: int) -> dict:
    """The sweep table of one peer's run: Finn's setting at small evaluation sizes."""
    return {"algorithm": "maml", "backend": BACKEND[peer], "task": "sine", "k_shot": 10,
            "inner_steps": inner_steps, "lr_base": 0.01, "lr_meta": 0.001, "meta_batch": meta_batch,
            "iterations": iterations, "seed": 0, "eval_every": 0, "log_every": 100, "n_test_tasks": 100,
            "n_validation_tasks": 100, "compile": peer.startswith("func-compiled")}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the C++ compiler): user + system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _unavailable(peer: str) -> str | None:
    """Why `peer` cannot run in this process (None: it can). learn2learn is imported here, as part of
    the startup: a broken install (it or gym failing to import) skips the peer like a missing one."""
    if peer == "l2l":
        try:
            from algorithms.loop_backends import import_gym_quietly

            import_gym_quietly()
            import learn2learn  # noqa: F401
        except Exception as error:  # ImportError, or whatever a broken install raises on import
            return f"learn2learn is not importable ({type(error).__name__}: {error})"
    if BACKEND[peer] == "jax":
        from algorithms.jax_engine import missing_packages

        if missing_packages():
            return f"{', '.join(missing_packages())} not installed"
    return None


def child(peer: str, iterations: int, meta_batch: int, inner_steps: int, core: int) -> dict:
    """One peer's run in this process (pinned to `core`, one thread): the split described above."""
    os.sched_setaffinity(0, {core})
    if peer in JAX_LOOPS:
        return jax_loop(peer, iterations, meta_batch, inner_steps)
    wall0, cpu0 = time.perf_counter(), _cpu()
    import torch

    torch.set_num_threads(1)
    skipped = _unavailable(peer)
    if skipped:
        return {"peer": peer, "inner_steps": inner_steps, "skipped": skipped}
    from benchmarks import job
    from benchmarks.config import parse_sweep

    sweep = parse_sweep(_cell(peer, iterations, meta_batch, inner_steps))
    marks: dict = {}
    meta_train = job.meta_train

    def timed_meta_train(*args, **kwargs):  # the same loop; only the moment training starts is noted
        marks["start"], marks["start_cpu"] = time.perf_counter(), _cpu()
        yield from meta_train(*args, **kwargs)

    def on_iteration(n, live=None):
        if live is None and n in (1, iterations):
            marks[n], marks[f"cpu{n}"] = time.perf_counter(), _cpu()

    job.meta_train = timed_meta_train
    started = time.perf_counter()
    try:
        [record] = job.run_job(sweep.cells, sweep.settings, threads=1, on_iteration=on_iteration)
    finally:
        job.meta_train = meta_train
    ended, cpu = time.perf_counter(), _cpu() - cpu0
    if record["status"] != "ok":
        raise RuntimeError(f"{peer}: {record['status']}: {record.get('error')}")
    test_mse = next(e["mse"] for e in record["evaluations"]
                    if e["split"] == "test" and e["eval_steps"] == sweep.settings.eval_steps)
    return {"peer": peer, "inner_steps": inner_steps, "engine": record["engine"], "iterations": iterations,
            "startup_s": started - wall0, "setup_s": marks["start"] - started, "first_iteration_s": marks[1] - marks["start"],
            "first_iteration_cpu_s": marks["cpu1"] - marks["start_cpu"],
            "compile_seconds": record["compile_seconds"],
            "sec_per_iter": (marks[iterations] - marks[1]) / max(iterations - 1, 1),
            "evaluation_s": ended - marks[iterations], "wall_s": ended - wall0, "cpu_s": cpu,
            "cpu_wall": cpu / (ended - wall0), "final_loss": record["curve"][-1]["loss"], "test_mse": test_mse}


# -- JAX's own loop (jax-insampling, jax-scan) -------------------------------------------------------

class JaxLoop:
    """The jitted programs of MAML written in JAX end to end for the sine family `family` (plain
    sine: no noise, no support range; see the module docstring): `sample(key, n_tasks, n_query)`,
    `meta_gradient(params, xs, ys, xq, yq)` (value and gradient at a given batch: what the step
    differentiates, callable by the tests), `step(params, opt_state, key) -> (params, opt_state, key,
    loss)` (sampling inside the jit) and `evaluate(params, key, n_tasks) -> [eval_steps + 1]` mean
    query MSE per adaptation step. `scan`: the training step's inner loop as `jax.lax.scan`, else
    unrolled (the evaluation is the same for both)."""

    def __init__(self, family, inner_steps: int, lr_base: float, lr_meta: float, meta_batch: int,
                 eval_steps: int, n_eval_query: int, scan: bool):
        from algorithms import jax_engine
        from tasks.sine import SineFamily

        if type(family) is not SineFamily or family.noise or family.support_x_range is not None:
            raise ValueError(f"JAX's own loop samples the plain sine family in its jit, got {family!r}")
        jax, jnp, optax = jax_engine.load(), jax_engine.jnp, jax_engine.optax
        self.family, self.optimizer = family, optax.adam(lr_meta)
        loss, inner_update = jax_engine.loss, jax_engine.inner_update

        def uniform(key, shape, low_high):
            return jax.random.uniform(key, shape, minval=low_high[0], maxval=low_high[1])

        def sample(key, n_tasks: int, n_query: int):
            amplitude_key, phase_key, support_key, query_key = jax.random.split(key, 4)
            amplitude = uniform(amplitude_key, (n_tasks, 1, 1), family.amplitude_range)
            phase = uniform(phase_key, (n_tasks, 1, 1), family.phase_range)
            xs = uniform(support_key, (n_tasks, family.k_shot, 1), family.x_range)
            xq = uniform(query_key, (n_tasks, n_query, 1), family.x_range)
            return xs, amplitude * jnp.sin(xs + phase), xq, amplitude * jnp.sin(xq + phase)

        def scanned_task_loss(params, xs, ys, xq, yq):
            params, _ = jax.lax.scan(lambda p, _: (inner_update(p, xs, ys, lr_base), None), params, None,
                                     length=inner_steps)
            return loss(params, xq, yq)

        if scan:
            def meta_loss(params, xs, ys, xq, yq):
                return jnp.mean(jax.vmap(scanned_task_loss, in_axes=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq))
        else:
            meta_loss = partial(jax_engine.batch_maml_loss, lr=lr_base, steps=inner_steps)
        value_and_grad = jax.value_and_grad(meta_loss)

        def step(params, opt_state, key):
            key, batch_key = jax.random.split(key)
            value, grads = value_and_grad(params, *sample(batch_key, meta_batch, family.n_query))
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, key, value

        def evaluation_start(params, key, n_tasks: int):  # the tasks, each task's copy of the weights, step 0
            tasks = sample(key, n_tasks, n_eval_query)
            copies = [jnp.broadcast_to(p, (n_tasks, *p.shape)) for p in params]
            return tasks, copies, jnp.mean(jax.vmap(loss)(copies, tasks[2], tasks[3]))

        def evaluation_step(copies, xs, ys, xq, yq):  # one inner step of every task, then the mean query MSE
            copies = jax.vmap(partial(inner_update, lr=lr_base))(copies, xs, ys)
            return copies, jnp.mean(jax.vmap(loss)(copies, xq, yq))

        self.sample = jax.jit(sample, static_argnums=(1, 2))
        self.meta_gradient = jax.jit(value_and_grad)
        self.step = jax.jit(step)
        self.evaluation_start = jax.jit(evaluation_start, static_argnums=2)
        self.evaluation_step = jax.jit(evaluation_step)
        self.eval_steps = eval_steps

    def evaluate(self, params, key, n_tasks: int):
        """Mean query MSE of `n_tasks` tasks drawn from `key` after 0..eval_steps inner steps: a Python
        loop over one jitted step, so its compile does not grow with eval_steps (see the docstring)."""
        import numpy as np

        tasks, copies, mse = self.evaluation_start(params, key, n_tasks)
        curve = [mse]
        for _ in range(self.eval_steps):
            copies, mse = self.evaluation_step(copies, *tasks)
            curve.append(mse)
        return np.array([float(m) for m in curve])


def jax_loop(peer: str, iterations: int, meta_batch: int, inner_steps: int) -> dict:
    """`jax-insampling` or `jax-scan` in this process (one thread): the same split as `child`'s."""
    import torch

    torch.set_num_threads(1)
    skipped = _unavailable(peer)
    if skipped:
        return {"peer": peer, "inner_steps": inner_steps, "skipped": skipped}
    from algorithms import jax_engine
    from algorithms.network import make_network
    from benchmarks.config import cell_family, parse_sweep

    sweep = parse_sweep(_cell(peer, iterations, meta_batch, inner_steps))  # the sizes; not the user's cost
    [cell], settings = sweep.cells, sweep.settings
    wall0, cpu0 = time.perf_counter(), _cpu()
    jax = jax_engine.load(threads=1)
    started = time.perf_counter()
    device = jax_engine.jax_device("cpu")
    loop = JaxLoop(cell_family(cell, settings), inner_steps, cell.lr_base, cell.lr_meta, meta_batch,
                   settings.eval_steps, settings.eval_query_points(cell.k_shot), scan=peer == "jax-scan")
    weights = make_network(settings.generator(cell.seed, "weights"), init=settings.init).parameters()
    params = [jax_engine.to_jax(p, device) for p in weights]
    opt_state = jax.device_put(loop.optimizer.init(params), device)
    key = jax.device_put(jax.random.key(cell.seed), device)
    marks = {"start": time.perf_counter(), "start_cpu": _cpu()}
    losses = []
    for n in range(1, iterations + 1):
        params, opt_state, key, loss = loop.step(params, opt_state, key)
        if n % settings.log_every == 0 or n == iterations:
            losses.append((n, float(loss)))  # float() waits for the step: the only sync of a JAX loop
        elif n == 1:
            jax.block_until_ready(loss)  # for the first-iteration mark
        if n in (1, iterations):
            marks[n], marks[f"cpu{n}"] = time.perf_counter(), _cpu()
    curves = {split: loop.evaluate(params, jax.random.key(seed), n_tasks)  # fixed keys per split
              for split, seed, n_tasks in (("validation", 1, settings.n_validation_tasks),
                                           ("test", 2, settings.n_test_tasks))}
    ended, cpu = time.perf_counter(), _cpu() - cpu0
    rate = (marks[iterations] - marks[1]) / max(iterations - 1, 1)
    first = marks[1] - marks["start"]
    return {"peer": peer, "inner_steps": inner_steps, "engine": "jax", "iterations": iterations,
            "startup_s": started - wall0, "setup_s": marks["start"] - started, "first_iteration_s": first,
            "first_iteration_cpu_s": marks["cpu1"] - marks["start_cpu"], "compile_seconds": max(first - rate, 0.0),
            "sec_per_iter": rate, "evaluation_s": ended - marks[iterations], "wall_s": ended - wall0, "cpu_s": cpu,
            "cpu_wall": cpu / (ended - wall0), "final_loss": losses[-1][1],
            "test_mse": float(curves["test"][settings.eval_steps])}


# -- the parent: one process per (peer, S), the table --------------------------------------------------

def _spawn(peer: str, inner_steps: int, args, env: dict) -> dict:
    command = [sys.executable, "-m", "benchmarks.speed.end_to_end", "--child", peer, "--iterations",
               str(args.iterations), "--meta-batch", str(args.meta_batch), "--inner-steps", str(inner_steps),
               "--core", str(args.core)]
    done = subprocess.run(command, env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"end_to_end: peer {peer} (S = {inner_steps}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def project(rows: pd.DataFrame, amortise=AMORTISE) -> pd.DataFrame:
    """Projected time to result for N iterations, its per-iteration share, and the ratios to each of
    `REFERENCES` at the same S (`inner_steps`, where the rows have it) and round (`round`, where
    they have it); NaN where that peer did not run."""
    rows = rows.copy()
    fixed = rows["startup_s"] + rows["setup_s"] + rows["first_iteration_s"] - rows["sec_per_iter"] + rows["evaluation_s"]
    same = [rows[k] for k in ("inner_steps", "round") if k in rows] or [pd.Series(0, index=rows.index)]
    for n in amortise:
        total = rows[f"total_s_{n}"] = fixed + n * rows["sec_per_iter"]
        rows[f"ms_per_iter_{n}"] = 1e3 * total / n
        for reference in REFERENCES:
            theirs = total.where(rows["peer"] == reference).groupby(same).transform("first")
            rows[f"x_vs_{reference}_{n}"] = total / theirs
    return rows


def rounds_markdown(rows: pd.DataFrame, amortise=AMORTISE) -> str:
    """Each round's table (`markdown`), then per S the target peer's speed-up over JAX's own loop in
    every round and its median, which the target is judged on."""
    parts = []
    for number, part in rows.groupby("round", sort=True):
        first = "torch" if number % 2 == 0 else "JAX"
        parts.append(f"### Round {number} ({first} peers first)\n\n" + markdown(part.drop(columns="round"), amortise))
    n = TARGET_ITERATIONS
    ratio = f"x_vs_{REFERENCES[1]}_{n}"
    if n in amortise and ratio in rows:
        for steps, part in rows[rows["peer"] == TARGET_PEER].groupby("inner_steps"):
            speedups = (1 / part.sort_values("round")[ratio]).dropna()
            if speedups.empty:
                continue
            median = speedups.median()
            verdict = "met" if median >= TARGET_SPEEDUP else "not met"
            parts.append(f"Target (issue 24), S = {steps}, {n:,} iterations, over {len(speedups)} rounds: {TARGET_PEER}'s "
                         f"speed-up over {REFERENCES[1]} is {', '.join(f'{x:.2f}x' for x in speedups)}; median "
                         f"{median:.2f}x (target >= {TARGET_SPEEDUP}x: {verdict}).\n")
    return "\n".join(parts)


def _times(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:.2f}x"


def markdown(rows: pd.DataFrame, amortise=AMORTISE) -> str:
    """The table (ratios: x func / x jax-insampling at the same S) and, where both ran, issue 24's target."""
    s = rows["inner_steps"] if "inner_steps" in rows else pd.Series("", index=rows.index)
    lines = ["| S | peer | engine | startup + setup s | first iteration s (compile s; CPU s) | ms/iter | evaluation s | "
             "CPU/wall | final loss; test MSE | "
             + " | ".join(f"{n:,} iters: s (x {' / x '.join(REFERENCES)})" for n in amortise) + " |",
             "|" + "---|" * (9 + len(amortise))]
    for r, steps in zip(rows.to_dict("records"), s):
        totals = " | ".join(f"{r[f'total_s_{n}']:.1f} ({' / '.join(_times(r.get(f'x_vs_{ref}_{n}')) for ref in REFERENCES)})"
                            for n in amortise)
        quality = f"{r['final_loss']:.3g}; {r['test_mse']:.3g}" if "test_mse" in r else "–"
        lines.append(f"| {steps} | {r['peer']} | {r['engine']} | {r['startup_s'] + r['setup_s']:.2f} | {r['first_iteration_s']:.2f} "
                     f"({r['compile_seconds']:.2f}; CPU {r['first_iteration_cpu_s']:.2f}) | {1e3 * r['sec_per_iter']:.3f} | "
                     f"{r['evaluation_s']:.2f} | {r['cpu_wall']:.2f} | {quality} | {totals} |")
    n = TARGET_ITERATIONS
    for r, steps in zip(rows.to_dict("records"), s):
        ratio = r.get(f"x_vs_{REFERENCES[1]}_{n}")
        if r["peer"] == TARGET_PEER and n in amortise and not pd.isna(ratio):
            verdict = "met" if 1 / ratio >= TARGET_SPEEDUP else "not met"
            lines.append(f"\nTarget (issue 24), S = {steps}, {n:,} iterations: {TARGET_PEER}'s speed-up over "
                         f"{REFERENCES[1]} is {1 / ratio:.2f}x (target >= {TARGET_SPEEDUP}x: {verdict}).")
    return "\n".join(lines) + "\n"


def _counts(parser, text: str, option: str, example: str, minimum: int = 1) -> tuple[int, ...]:
    """A comma-separated list of integers >= `minimum`, in order, without repeats; else exit 2 naming it."""
    try:
        counts = tuple(dict.fromkeys(int(n) for n in text.split(",")))
    except ValueError:
        counts = ()
    if not counts or min(counts) < minimum:
        parser.error(f"{option} {text!r}: comma-separated integers >= {minimum}, e.g. {example}")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "speed-e2e")
    parser.add_argument("--iterations", type=int, default=300, help="measured iterations per peer (>= 2)")
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--inner-steps", default="1", help="S, or comma-separated values of S (e.g. 1,5,10): "
                        "every peer at each, ratios within the same S")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--amortise", default=",".join(map(str, AMORTISE)))
    parser.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=1, help="repeat N times, interleaved, the order of the torch "
                        "and JAX peers alternating; writes end_to_end_rounds.csv/.md (ratios within a round)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.iterations, args.meta_batch, int(args.inner_steps), args.core)))
        return 0
    named = [p.strip() for p in args.peers.split(",") if p.strip()]
    peers = [p for p in PEERS if p in named]  # cold before warm, whatever the order given
    unknown = sorted(set(named) - set(PEERS))
    if unknown or not peers or args.iterations < 2:
        parser.error(f"--peers {args.peers!r}: unknown {unknown}, choose from {', '.join(PEERS)}" if unknown or not peers
                     else f"--iterations {args.iterations}: need at least 2")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: need at least 1")
    if args.core not in os.sched_getaffinity(0):
        parser.error(f"--core {args.core}: not one of this process's cores {sorted(os.sched_getaffinity(0))}")
    amortise = _counts(parser, args.amortise, "--amortise", "1000,10000,70000")
    inner_steps = _counts(parser, args.inner_steps, "--inner-steps", "1,5,10", minimum=0)
    from benchmarks.config import ConfigError, parse_sweep

    for steps in inner_steps:  # the sweep's own checks (limits, ranges), before any child starts
        try:
            parse_sweep(_cell(REFERENCE, args.iterations, args.meta_batch, steps))
        except ConfigError as error:
            parser.error(f"--iterations {args.iterations}, --meta-batch {args.meta_batch}, --inner-steps "
                         f"{args.inner_steps!r}: {error}")
    rows, skipped = [], {}
    torch_peers, jax_peers = [p for p in peers if p not in JAX_LOOPS], [p for p in peers if p in JAX_LOOPS]
    for steps in inner_steps:
        for number in range(args.rounds):
            order = torch_peers + jax_peers if number % 2 == 0 else jax_peers + torch_peers
            with tempfile.TemporaryDirectory(prefix="e2e-inductor-") as cache:  # per S and round: cold, then warm on it
                for peer in order:
                    if peer in skipped:
                        continue
                    if peer == "func-compiled-warm" and "func-compiled-cold" not in peers:
                        _spawn("func-compiled-cold", steps, args, {"TORCHINDUCTOR_CACHE_DIR": cache})  # fill it, untimed
                    row = _spawn(peer, steps, args, {"TORCHINDUCTOR_CACHE_DIR": cache})
                    if "skipped" in row:
                        skipped[peer] = row["skipped"]
                        print(f"end_to_end: peer {peer} skipped, no row: {row['skipped']}", file=sys.stderr)
                        continue
                    rows.append(row | ({"round": number} if args.rounds > 1 else {}))
                    print(f"{peer} (S = {steps}): {json.dumps(row)}", file=sys.stderr)
    if not rows:
        parser.error(f"--peers {args.peers!r}: none could run here ({'; '.join(f'{p}: {r}' for p, r in skipped.items())})")
    table = project(pd.DataFrame(rows), amortise)
    name, text = (("end_to_end_rounds", rounds_markdown(table, amortise)) if args.rounds > 1
                  else ("end_to_end", markdown(table, amortise)))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / f"{name}.csv", index=False)
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
