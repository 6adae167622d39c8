"""Generic torch.func engine (eager and compiled) vs the hand-written engine and learn2learn, MAML and
FOMAML, S in {1, 5}, T = 25, interleaved rounds, one thread: the README table.
Run: PYTHONPATH=. python benchmarks/speed/generic_vs_accelerated.py [algorithm ...]
`... generic_vs_accelerated.py new-paths`: issue 21's new paths (classification, CAVIA, inner
momentum/Adam, Reptile and pre-training on classification) relative to built-in MAML (`new_paths`)."""
import sys, time, torch, statistics
torch.set_num_threads(1)
from algorithms import get_algorithm, HyperParams
from tasks import get_task, TaskBatch
fam = get_task("sine")
for algorithm, S in [(a, S) for a in ([] if sys.argv[1:2] == ["new-paths"] else sys.argv[1:] or ["maml", "fomaml"])
                     for S in (1, 5)]:
    hp = HyperParams(inner_steps=S, lr_base=0.01, meta_batch=25, iterations=100)
    learners = {b: get_algorithm(algorithm, b, hp, torch.Generator().manual_seed(1)) for b in ("func", "generic", "l2l")}
    learners["generic+compile"] = get_algorithm(algorithm, "generic", hp, torch.Generator().manual_seed(1), compile=True)
    batch = fam.sample(25, torch.Generator().manual_seed(0))
    t0 = time.perf_counter(); learners["generic+compile"].meta_gradient(batch); compile_s = time.perf_counter() - t0
    times = {b: [] for b in learners}
    for r in range(7):
        for b, l in learners.items():
            data = TaskBatch.stack([batch]) if l.stacked_batches else batch
            n = 3 if b == "l2l" else 20
            t0 = time.perf_counter(); c0 = time.process_time()
            for i in range(n): l.meta_gradient(data)
            w = time.perf_counter() - t0
            times[b].append((w / n * 1e3, (time.process_time() - c0) / w))
    med = {b: statistics.median(t for t, _ in v) for b, v in times.items()}
    cpu = {b: statistics.median(c for _, c in v) for b, v in times.items()}
    print(f"{algorithm} S={S} T=25 ms/meta-gradient (median of 7 interleaved rounds):", {b: round(m, 2) for b, m in med.items()},
          "cpu/wall", {b: round(c, 2) for b, c in cpu.items()}, f"compile {compile_s:.1f}s",
          f"| generic/func {med['generic']/med['func']:.2f}x, compiled/func {med['generic+compile']/med['func']:.2f}x,"
          f" l2l/generic {med['l2l']/med['generic']:.1f}x, l2l/compiled {med['l2l']/med['generic+compile']:.1f}x", flush=True)


def new_paths(steps=(1, 5), rounds=7, calls=10):
    """Issue 21's new paths against built-in MAML on the accelerated engine (sine, T = 25): ms per
    meta-gradient, median of interleaved rounds, and the ratio to that MAML. Classification is
    `gauss-class` (2-way, 5 shots and 10 queries per class, 10 -> 64 -> 2); each learner's first
    call (self-check, elementwise check) is made before timing.
    Run: PYTHONPATH=. taskset -c 0 python benchmarks/speed/generic_vs_accelerated.py new-paths"""
    from benchmarks.plugins import load_plugins

    load_plugins(["examples/plugin_cavia/cavia.py", "examples/plugin_inner_optim/inner_optim.py"])
    sine, cls = get_task("sine"), get_task("gauss-class")
    batches = {id(f): f.sample(25, torch.Generator().manual_seed(0)) for f in (sine, cls)}
    paths = [("maml", "func", sine), ("maml", "generic", cls), ("cavia", "func", sine),
             ("maml-momentum", "func", sine), ("maml-adam", "func", sine), ("reptile", "func", cls),
             ("pretrain", "func", cls), ("reptile", "torch", cls), ("pretrain", "torch", cls)]
    for S in steps:
        hp = HyperParams(inner_steps=S, lr_base=0.01, meta_batch=25, iterations=100)
        runs = []
        for name, backend, fam in paths:
            options = {"problem": fam.problem, "network": "relu-64"} if fam is cls else {}
            learner = get_algorithm(name, backend, hp, torch.Generator().manual_seed(1), **options)
            batch = batches[id(fam)]
            data = TaskBatch.stack([batch]) if learner.stacked_batches else batch
            learner.meta_gradient(data)
            label = f"{name} {'sine' if fam is sine else 'class'} {backend}->{learner.engine}"
            runs.append((label, learner, data, []))
        for _ in range(rounds):
            for _, learner, data, times in runs:
                t0 = time.perf_counter()
                for _ in range(calls):
                    learner.meta_gradient(data)
                times.append((time.perf_counter() - t0) / calls * 1e3)
        base = statistics.median(runs[0][3])
        print(f"S={S} T=25, ms per meta-gradient (median of {rounds} interleaved rounds) and ratio to "
              f"built-in MAML on the accelerated engine (sine):", flush=True)
        for label, _, _, times in runs:
            med = statistics.median(times)
            print(f"  {label:40s} {med:8.3f} ms  {med / base:6.2f}x", flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["new-paths"]:
    new_paths()
