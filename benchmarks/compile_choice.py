"""`compile = "auto"`: whether a sweep's cells train compiled, decided per group of cells by a
declared cost model.

Why a model and not a measurement at run time: a cell's numbers must be a function of its
configuration (compiled floats differ from eager ones by rounding), so the choice may read the
configuration only, never the machine's load, a warm cache or a clock. It reads: the cells'
iterations, S, meta-batch, first or second order, the learner class (`compiles`, `ensembles`),
the device, and how many cells would train as one eager ensemble (cells that differ only in
seed, LR_base and LR_meta, `plan`). It compares the projected CPU time of the two
ways to train that group of n cells:

- eager: one ensemble of n members, n x iterations x the per-member eager step time in an
  ensemble of that size;
- compiled: n single runs, one cold compile (the first program) plus n - 1 warm ones (the same
  program shape from the persistent Inductor cache, `algorithms.base.use_compile_cache`: learning
  rates and seeds are inputs of the programs, not part of their key), plus n x iterations x the
  compiled step time;

and takes the smaller (a tie stays eager). The compile costs are charged per group, cold first,
even where another group or an earlier sweep warmed the cache: the choice must not depend on
what ran before.

The step times (`COSTS`) are CPU milliseconds per meta-iteration through the training loop (task
sampling included), measured by `python -m benchmarks.compile_choice --measure` (MACHINE says
where), at meta-batch 25 and 100 and S in {1, 5, 10} for the accelerated engine's MAML (second
order) and FOMAML (first order). Between and beyond the measured points a time is affine in S
and in the meta-batch (two measured meta-batches give a fixed and a per-task part), clamped to
the measured ends below (S = 0 reads as S = 1). An ensemble amortises the per-op dispatch, not the
arithmetic: a member of an n-member ensemble takes the lone run's time less (1 - 1/n) x `dispatch_ms`
(measured from 27-member ensembles at meta-batch 25 and taken to be independent of the meta-batch,
since the op count is). Decisions the issue left open: the generic engine (which compiles but
does not ensemble) is charged the accelerated engine's times (its compiled/eager ratio measured
similar, docs/speed.md); a device without measured constants (CUDA today) stays eager; the
times are one-thread times (a sweep's `--threads` is not an input).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

#: Where `COSTS` were measured, and how.
MACHINE = ("2-core AMD EPYC (AVX-512), torch 2.14.1, one thread pinned to core 0 (`taskset -c 0`), shared with other "
           "jobs (load average ~4 on 2 cores) while core 1 ran a training run; CPU time (compiles: this process and "
           "its compiler children, TORCHINDUCTOR_COMPILE_THREADS=1); 2026-12-03; "
           "`taskset -c 0 .venv/bin/python -m benchmarks.compile_choice --measure`")
MEASURED_BATCHES = (25, 100)


@dataclass(frozen=True)
class Cost:
    """One (order, S) row of the cost model: CPU ms per meta-iteration of one run (one member) at
    meta-batch 25 and 100, eager and compiled; `dispatch_ms`, what ensembling saves per member at
    most (eager, meta-batch 25); compile seconds, cold (empty cache) and warm (a fresh process
    reading the cache the cold one filled)."""

    eager_ms: tuple[float, float]
    compiled_ms: tuple[float, float]
    dispatch_ms: float
    cold_s: float
    warm_s: float


#: (order, S) -> Cost, measured on MACHINE (see the module doc); device type -> table.
COSTS: dict[str, dict[tuple[str, int], Cost]] = {"cpu": {
    ("second", 1):
        Cost(eager_ms=(1.677, 3.0427), compiled_ms=(0.8279, 1.2405), dispatch_ms=1.1241, cold_s=19.53, warm_s=5.16),
    ("second", 5):
        Cost(eager_ms=(5.5123, 11.9759), compiled_ms=(1.6776, 6.3192), dispatch_ms=2.7074, cold_s=24.21, warm_s=4.78),
    ("second", 10):
        Cost(eager_ms=(11.6972, 24.9166), compiled_ms=(3.0518, 13.1661), dispatch_ms=5.4301, cold_s=42.03, warm_s=5.72),
    ("first", 1):
        Cost(eager_ms=(1.2541, 2.5062), compiled_ms=(0.3312, 1.1366), dispatch_ms=0.8161, cold_s=15.37, warm_s=4.98),
    ("first", 5):
        Cost(eager_ms=(3.2728, 5.9569), compiled_ms=(0.7563, 2.9519), dispatch_ms=2.0591, cold_s=19.44, warm_s=5.65),
    ("first", 10):
        Cost(eager_ms=(4.593, 8.9786), compiled_ms=(1.4495, 4.2058), dispatch_ms=2.2084, cold_s=26.07, warm_s=5.06),
}}


@dataclass(frozen=True)
class CompileChoice:
    """What a cell trains with and why: `setting` the sweep's value (true, false or "auto"),
    `compiled` the resolved one, `reason` in words, `projected_s` the two ways' projected CPU
    seconds for the cell's group ("auto" only). Stored in each record as `compile_choice`."""

    setting: bool | str
    compiled: bool
    reason: str
    projected_s: dict | None = None

    def applied(self, settings):
        """`settings` with `compile` resolved: what a job runs with, what its records' settings and
        fingerprints say (true or false; a sweep's true/false stay as given, even where a learner
        cannot compile, so fingerprints of records from before "auto" keep their value)."""
        if isinstance(settings.compile, bool):
            return settings
        return dataclasses.replace(settings, compile=self.compiled)

    def record(self) -> dict:
        return dataclasses.asdict(self)


def _affine(x: float, points: list[tuple[float, float]]) -> float:
    """Piecewise-linear through `points` (sorted by x), extended along the last segment above and
    held at the first point below."""
    if x <= points[0][0] or len(points) == 1:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1 or (x1, y1) == points[-1]:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError("unreachable")


def step_ms(table: dict, order: str, steps: int, meta_batch: int) -> dict[str, float]:
    """Projected per-member CPU ms per iteration at (order, S, meta-batch): "eager", "compiled",
    "dispatch", and the compile seconds "cold" and "warm" (affine in S between measured rows)."""
    rows = sorted((s, cost) for (o, s), cost in table.items() if o == order)
    if not rows:
        raise KeyError(f"no {order}-order row in the compile cost model")

    def at(value) -> float:
        return _affine(max(steps, 1), [(s, value(cost)) for s, cost in rows])

    def batched(pair) -> float:  # affine in the meta-batch through the two measured ones
        (b0, b1), (t0, t1) = MEASURED_BATCHES, pair
        return max(t0 + (t1 - t0) * (meta_batch - b0) / (b1 - b0), 1e-6)

    return {"eager": at(lambda c: batched(c.eager_ms)), "compiled": at(lambda c: batched(c.compiled_ms)),
            "dispatch": at(lambda c: c.dispatch_ms), "cold": at(lambda c: c.cold_s), "warm": at(lambda c: c.warm_s)}


def projected_seconds(table: dict, order: str, steps: int, meta_batch: int, iterations: int,
                      members: int) -> dict[str, float]:
    """CPU seconds to train `members` cells of `iterations` each: as one eager ensemble, and as
    compiled single runs (one cold compile, the rest warm). A sweep splits an ensemble above
    `sweep.MAX_ENSEMBLE` (128) members into chunks; what that changes (under 1/128 of the dispatch
    time per member) is left out."""
    t = step_ms(table, order, steps, meta_batch)
    # a member saves at most its whole lone step's dispatch (never below the lone step / n)
    member_ms = max(t["eager"] - (1 - 1 / members) * t["dispatch"], t["eager"] / members)
    eager = members * iterations * member_ms / 1e3
    compiled = t["cold"] + (members - 1) * t["warm"] + members * iterations * t["compiled"] / 1e3
    return {"eager": eager, "compiled": compiled}


def learner_order(learner) -> str:
    """"first" or "second": whether the learner's inner gradients are constants (FOMAML, Reptile)."""
    rule = getattr(learner, "rule", None)
    first = getattr(learner, "first_order", None)
    return "first" if (getattr(rule, "first_order", False) or first is True) else "second"


def choose(cell, settings, members: int = 1) -> CompileChoice:
    """How `cell` trains under `settings.compile`, `members` the cells of its eager group (itself
    and those that would train with it as one eager ensemble; 1 where they would not)."""
    from algorithms import get_learner_class
    import torch

    from benchmarks.config import cell_family

    setting = settings.compile
    if setting is False:
        return CompileChoice(False, False, "compile = false")
    learner = get_learner_class(cell.algorithm, cell.backend, cell.network, cell_family(cell, settings))
    if not learner.compiles:
        return CompileChoice(setting, False, f"the {learner.engine} engine's {cell.algorithm} ({learner.__name__}) "
                                             f"has no compiled path")
    if setting is True:
        return CompileChoice(True, True, "compile = true")
    device = torch.device(settings.device).type
    if device not in COSTS:
        return CompileChoice(setting, False, f"no compile cost model measured for device {device!r}: eager")
    order = learner_order(learner)
    members = members if getattr(learner, "ensembles", False) and settings.ensemble else 1
    projected = projected_seconds(COSTS[device], order, cell.inner_steps, cell.meta_batch, cell.iterations, members)
    compiled = projected["compiled"] < projected["eager"]
    group = f"{members} cells" if members > 1 else "1 cell"
    eager_way = "one eager ensemble" if members > 1 else "eager"
    reason = (f"{group} x {cell.iterations:,} iterations, S = {cell.inner_steps}, meta-batch {cell.meta_batch}, "
              f"{order} order on {device}: projected {projected['eager']:.3g} s {eager_way} vs "
              f"{projected['compiled']:.3g} s compiled (compiles included)")
    return CompileChoice(setting, compiled, reason, {way: round(s, 3) for way, s in projected.items()})


def eager_key(cell, settings):
    """Cells that would train as one eager ensemble share this key (the accelerated `func` engine,
    with `ensemble = true`: all but seed, LR_base and LR_meta); a cell that would not shares it
    only with the cells that differ from it in its learner's test-time keys (they share its
    training: `config.training_key`)."""
    from algorithms import get_learner_class

    from benchmarks.config import cell_family, ensemble_key, training_key

    # the class that will run (func: generic for a problem the accelerated engine does not train)
    learner = get_learner_class(cell.algorithm, cell.backend, cell.network, cell_family(cell, settings))
    return ensemble_key(cell) if settings.ensemble and learner.ensembles else training_key(cell, learner.test_time_keys)


def plan(cells, settings) -> dict:
    """Each cell's `CompileChoice` under `settings.compile`: "auto" decided per group of cells that
    would ensemble eagerly (`eager_key`). Pass every cell of the sweep, not only those still to
    train: the group, and so the choice, is the sweep's, the same on every resume. A sweep file
    edited to add cells to a group (more seeds) may flip its choice: the folder's records then
    differ in `compile` and the sweep refuses to resume into them, as for any other setting
    (pin `compile` to the recorded value to continue)."""
    groups: dict = {}
    for cell in cells:
        groups.setdefault(eager_key(cell, settings), []).append(cell)
    return {cell: choice for group in groups.values() for choice in [choose(group[0], settings, len(group))]
            for cell in group}


def settings_per_cell(cells, settings):
    """cell -> `settings` with `compile` resolved as the sweep's jobs resolve it (planned over
    `cells`: give the whole sweep's); true or false: `settings` itself. What fingerprints compare."""
    if isinstance(settings.compile, bool):
        return lambda cell: settings
    choices = plan(cells, settings)
    return lambda cell: choices[cell].applied(settings)


def job_compile_choice(cells, settings) -> CompileChoice:
    """The choice for a job built by hand (`job.run_job` called directly, not through a sweep's
    `plan_compile`): its cells are the group. Cells given as one job train as one ensemble, so
    "auto" keeps such a job eager whatever it projects."""
    choice = choose(cells[0], settings, len(cells))
    if len(cells) > 1 and choice.compiled and settings.compile == "auto":
        return dataclasses.replace(choice, compiled=False, reason=f"{choice.reason}; given as one ensemble job: eager")
    return choice


def break_even_iterations(table: dict, order: str, steps: int, meta_batch: int, members: int) -> int | None:
    """The fewest iterations per cell at which `members` cells train compiled (the model's flip);
    None where never (the eager ensemble's step is no slower than the compiled one)."""
    t = step_ms(table, order, steps, meta_batch)
    if max(t["eager"] - (1 - 1 / members) * t["dispatch"], t["eager"] / members) <= t["compiled"]:
        return None
    low, high = 1, 1
    while not _compiles(table, order, steps, meta_batch, high, members):
        low, high = high, high * 2
    while low < high:  # the projection is monotone in the iterations: bisect
        middle = (low + high) // 2
        low, high = (middle + 1, high) if not _compiles(table, order, steps, meta_batch, middle, members) \
            else (low, middle)
    return low


def _compiles(table, order, steps, meta_batch, iterations, members) -> bool:
    projected = projected_seconds(table, order, steps, meta_batch, iterations, members)
    return projected["compiled"] < projected["eager"]


def _count(iterations: int | None) -> str:
    return "never" if iterations is None else f"{iterations:,}"


def table_markdown(device: str = "cpu") -> str:
    """The cost model's constants and the break-even iterations they imply, as docs/speed.md
    quotes them (a test keeps the two equal)."""
    lines = ["| order, S | eager ms/iter (B = 25 / 100) | compiled ms/iter (B = 25 / 100) | ensemble saves ms/iter "
             "per member (at most) | compile s cold / warm | compiled from (iterations, B = 25): 1 cell / 27 cells |",
             "|---|---|---|---|---|---|"]
    for (order, steps), c in COSTS[device].items():
        lone, many = (break_even_iterations(COSTS[device], order, steps, 25, n) for n in (1, 27))
        lines.append(f"| {order}, S = {steps} | {c.eager_ms[0]:.3g} / {c.eager_ms[1]:.3g} | {c.compiled_ms[0]:.3g} / "
                     f"{c.compiled_ms[1]:.3g} | {c.dispatch_ms:.3g} | {c.cold_s:.3g} / {c.warm_s:.3g} | "
                     f"{_count(lone)} / {_count(many)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- measuring the table

def _training_ms(algorithm: str, steps: int, meta_batch: int, members: int, compiled: bool,
                 iterations: int) -> dict:
    """CPU ms per iteration per member through `meta_train` after the first iteration (the fastest
    of three segments), and the first iteration's CPU seconds (with compiler children: a compiled
    run's compile and one step)."""
    import resource
    import time

    import torch

    from algorithms import HyperParams, get_algorithm
    from benchmarks.speed.measure import tune_malloc
    from benchmarks.training import meta_train
    from tasks import get_task

    torch.set_num_threads(1)
    tune_malloc()
    family = get_task("sine", k_shot=10, n_query=10)
    hps = [HyperParams(inner_steps=steps, meta_batch=meta_batch, lr_base=0.01 * (1 + m % 3), iterations=iterations)
           for m in range(members)]
    weights = [torch.Generator().manual_seed(m + 1) for m in range(members)]
    learner = get_algorithm(algorithm, "func", hps if members > 1 else hps[0], weights if members > 1 else weights[0],
                            compile=compiled)

    def cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    segments = 3  # the step time is the fastest of three equal segments: the least disturbed by other load
    length = max(1, (iterations - 1) // segments)
    marks = []
    start = cpu()
    for _ in meta_train(learner, family, [torch.Generator().manual_seed(m) for m in range(members)],
                        1 + segments * length, {1 + i * length for i in range(segments + 1)}):
        marks.append(cpu())
    fastest = min(b - a for a, b in zip(marks, marks[1:]))
    return {"first_s": marks[0] - start, "ms": fastest * 1e3 / length / members,
            "compile_seconds": learner.compile_seconds}


def _measure_in_fresh_process(cache: str, *args) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_COMPILE_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "benchmarks.compile_choice", "--one", json.dumps(args)], env=env,
                          cwd=root, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(steps_list=(1, 5, 10), ensemble: int = 27) -> dict:
    """The `COSTS` rows of this machine (prints them as the table's source)."""
    rows = {}
    for order, algorithm in (("second", "maml"), ("first", "fomaml")):
        for steps in steps_list:
            iterations = max(20, 400 // steps)
            with tempfile.TemporaryDirectory() as cache:
                cold = _measure_in_fresh_process(cache, algorithm, steps, 25, 1, True, iterations)
                warm = _measure_in_fresh_process(cache, algorithm, steps, 25, 1, True, 3)
                compiled100 = _measure_in_fresh_process(cache, algorithm, steps, 100, 1, True, iterations // 2)
            eager = [_training_ms(algorithm, steps, b, 1, False, iterations // (b // 25))["ms"] for b in (25, 100)]
            together = _training_ms(algorithm, steps, 25, ensemble, False, max(10, iterations // 10))["ms"]
            # cold/warm: the first iteration's CPU less one compiled step
            rows[(order, steps)] = Cost(
                eager_ms=tuple(round(e, 4) for e in eager),
                compiled_ms=(round(cold["ms"], 4), round(compiled100["ms"], 4)),
                dispatch_ms=round((eager[0] - together) / (1 - 1 / ensemble), 4),
                cold_s=round(cold["first_s"] - cold["ms"] / 1e3, 2), warm_s=round(warm["first_s"] - warm["ms"] / 1e3, 2))
            print(f"    {(order, steps)!r}: {rows[(order, steps)]!r},", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="measure the cost model's constants on this machine")
    parser.add_argument("--table", action="store_true", help="print the committed constants as docs/speed.md quotes them")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one compiled measurement, in a fresh process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_training_ms(*json.loads(args.one))))
        return 0
    if args.measure:
        measure()
        return 0
    if args.table:
        print(table_markdown())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
