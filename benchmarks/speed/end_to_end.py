"""Time to result: a whole training run through `run`'s own code path, compile included.

Run: `python -m benchmarks.speed.end_to_end --out runs/speed-e2e` (default: Finn's cell, MAML,
S = 1, meta-batch 25, 300 measured iterations per peer, about a minute plus the compiles), writes
`end_to_end.csv` and `end_to_end.md` there.

Why: the per-step tables (`benchmarks.speed.peers`) leave out the one-off costs (a compiled step's
8-35 s of CPU to compile at S <= 10; JAX's jit), which decide what a user waits for. Here each
peer trains once, as `python -m benchmarks run` does (`benchmarks.job.run_job`: task sampling,
the step, logging, the final evaluation), and the run is split into
* startup: the process's imports (torch; JAX) and the sweep's parsing;
* setup: building the learner and the evaluation sets, up to the first iteration;
* first iteration: compile (tracing, Inductor, the C++ compiler; JAX's jit) and one step;
* per iteration: the mean rate from iteration 1 to the last (sampling, step, logging
  every `log_every`), `(t_last - t_1) / (iterations - 1)`;
* evaluation: after the last iteration (the final evaluation on `n_test_tasks` tasks, fixed per run).
A run of N iterations is projected as startup + setup + first + (N - 1) x rate + evaluation, for N in
`--amortise` (default 1k, 10k, 70k: a bench cell, ten of them, Finn's paper run); ratios divide by
the eager accelerated engine (`func`) of the same invocation.

Peers (decisions): `func` (eager accelerated engine), `func-compiled-cold` (`compile = true` in a
fresh process with an empty Inductor cache folder), `func-compiled-warm` (the same, a second
process on the folder the cold one filled: what every later cell, seed and worker of a sweep
gets from the shared cache, `algorithms.base.compile_cache_dir`), `jax` (the JAX backend, its
jit cold: JAX's persistent cache is off). Each peer runs in its own process, one after the other,
pinned to one core with `os.sched_setaffinity` (the same core for all: `--core`, default the
lowest allowed) and one thread, so the ratios come from one run on one core. The process's CPU
time (its own and its children's, i.e. the C++ compiler) is recorded beside the wall time: on a
loaded machine wall exceeds CPU, and `cpu_wall` says by how much.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

PEERS = ("func", "func-compiled-cold", "func-compiled-warm", "jax")
REFERENCE = "func"
AMORTISE = (1_000, 10_000, 70_000)
ROOT = Path(__file__).resolve().parents[2]


def _cell(peer: str, iterations: int, meta_batch: int, inner_steps: int) -> dict:
    """The sweep table of one peer's run: Finn's setting at small evaluation sizes."""
    return {"algorithm": "maml", "backend": "jax" if peer == "jax" else "func", "task": "sine", "k_shot": 10,
            "inner_steps": inner_steps, "lr_base": 0.01, "lr_meta": 0.001, "meta_batch": meta_batch,
            "iterations": iterations, "seed": 0, "eval_every": 0, "log_every": 100, "n_test_tasks": 100,
            "n_validation_tasks": 100, "compile": peer.startswith("func-compiled")}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the C++ compiler): user + system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def child(peer: str, iterations: int, meta_batch: int, inner_steps: int, core: int) -> dict:
    """One peer's run in this process (pinned to `core`, one thread): the split described above."""
    os.sched_setaffinity(0, {core})
    wall0, cpu0 = time.perf_counter(), _cpu()
    import torch

    torch.set_num_threads(1)
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
    return {"peer": peer, "engine": record["engine"], "iterations": iterations,
            "startup_s": started - wall0, "setup_s": marks["start"] - started, "first_iteration_s": marks[1] - marks["start"],
            "first_iteration_cpu_s": marks["cpu1"] - marks["start_cpu"],
            "compile_seconds": record["compile_seconds"],
            "sec_per_iter": (marks[iterations] - marks[1]) / max(iterations - 1, 1),
            "evaluation_s": ended - marks[iterations], "wall_s": ended - wall0, "cpu_s": cpu,
            "cpu_wall": cpu / (ended - wall0)}


def _spawn(peer: str, args, env: dict) -> dict:
    command = [sys.executable, "-m", "benchmarks.speed.end_to_end", "--child", peer, "--iterations",
               str(args.iterations), "--meta-batch", str(args.meta_batch), "--inner-steps", str(args.inner_steps),
               "--core", str(args.core)]
    done = subprocess.run(command, env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"end_to_end: peer {peer} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def project(rows: pd.DataFrame, amortise=AMORTISE) -> pd.DataFrame:
    """Projected time to result for N iterations, its per-iteration share, and the ratio to `func`."""
    rows = rows.copy()
    fixed = rows["startup_s"] + rows["setup_s"] + rows["first_iteration_s"] - rows["sec_per_iter"] + rows["evaluation_s"]
    for n in amortise:
        rows[f"total_s_{n}"] = fixed + n * rows["sec_per_iter"]
        rows[f"ms_per_iter_{n}"] = 1e3 * rows[f"total_s_{n}"] / n
        reference = rows.loc[rows["peer"] == REFERENCE, f"total_s_{n}"]
        rows[f"x_vs_{REFERENCE}_{n}"] = rows[f"total_s_{n}"] / reference.iloc[0] if len(reference) else float("nan")
    return rows


def markdown(rows: pd.DataFrame, amortise=AMORTISE) -> str:
    lines = ["| peer | engine | startup + setup s | first iteration s (compile s; CPU s) | ms/iter | evaluation s | CPU/wall | "
             + " | ".join(f"{n:,} iters: s (x func)" for n in amortise) + " |",
             "|" + "---|" * (7 + len(amortise))]
    for r in rows.to_dict("records"):
        totals = " | ".join(f"{r[f'total_s_{n}']:.1f} ({r[f'x_vs_{REFERENCE}_{n}']:.2f}x)" for n in amortise)
        lines.append(f"| {r['peer']} | {r['engine']} | {r['startup_s'] + r['setup_s']:.2f} | {r['first_iteration_s']:.2f} "
                     f"({r['compile_seconds']:.2f}; CPU {r['first_iteration_cpu_s']:.2f}) | {1e3 * r['sec_per_iter']:.3f} | {r['evaluation_s']:.2f} | "
                     f"{r['cpu_wall']:.2f} | {totals} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "speed-e2e")
    parser.add_argument("--iterations", type=int, default=300, help="measured iterations per peer (>= 2)")
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--amortise", default=",".join(map(str, AMORTISE)))
    parser.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.iterations, args.meta_batch, args.inner_steps, args.core)))
        return 0
    named = [p.strip() for p in args.peers.split(",") if p.strip()]
    peers = [p for p in PEERS if p in named]  # cold before warm, whatever the order given
    unknown = sorted(set(named) - set(PEERS))
    if unknown or not peers or args.iterations < 2:
        parser.error(f"--peers {args.peers!r}: unknown {unknown}, choose from {', '.join(PEERS)}" if unknown or not peers
                     else f"--iterations {args.iterations}: need at least 2")
    if args.core not in os.sched_getaffinity(0):
        parser.error(f"--core {args.core}: not one of this process's cores {sorted(os.sched_getaffinity(0))}")
    try:
        amortise = tuple(int(n) for n in args.amortise.split(","))
    except ValueError:
        parser.error(f"--amortise {args.amortise!r}: comma-separated iteration counts, e.g. 1000,10000,70000")
    rows = []
    with tempfile.TemporaryDirectory(prefix="e2e-inductor-") as cache:  # cold, then warm on the same folder
        for peer in peers:
            if peer == "func-compiled-warm" and "func-compiled-cold" not in peers:
                _spawn("func-compiled-cold", args, {"TORCHINDUCTOR_CACHE_DIR": cache})  # fill it, untimed
            rows.append(_spawn(peer, args, {"TORCHINDUCTOR_CACHE_DIR": cache}))
            print(f"{peer}: {json.dumps(rows[-1])}", file=sys.stderr)
    table = project(pd.DataFrame(rows), amortise)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "end_to_end.csv", index=False)
    (args.out / "end_to_end.md").write_text(markdown(table, amortise))
    print(markdown(table, amortise))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
