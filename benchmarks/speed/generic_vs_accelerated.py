"""Generic torch.func engine (eager and compiled) vs the hand-written engine and learn2learn, MAML and
FOMAML, S in {1, 5}, T = 25, interleaved rounds, one thread: the README table.
Run: PYTHONPATH=. python benchmarks/speed/generic_vs_accelerated.py [algorithm ...]"""
import sys, time, torch, statistics
torch.set_num_threads(1)
from algorithms import get_algorithm, HyperParams
from tasks import get_task, TaskBatch
fam = get_task("sine")
for algorithm, S in [(a, S) for a in (sys.argv[1:] or ["maml", "fomaml"]) for S in (1, 5)]:
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
