"""One progress bar for a whole sweep, with an ETA that converges.

Cells finish in jobs (an ensemble of 27 cells is one program), and jobs differ in cost by
two orders of magnitude (a 27-member S = 5 ensemble against a learn2learn run), so neither
"cells done" nor "iterations done" predicts the remaining time. Instead:

* every job has a prior cost (`job_cost`: a model of milliseconds per iteration by backend,
  S, ensemble size and meta-batch, fitted to the speed suite's measurements);
* jobs report their iterations from inside (also from worker processes and Ray tasks,
  through a queue), so the bar moves within a job;
* a job's prior is split into its training (spread over its iterations) and each of its
  evaluations (at its evaluation iterations: done only once training has moved past one, or the
  job has finished), since jobs report training iterations and fall silent while they evaluate:
  counting the evaluation as if it moved with the iterations made a job look finished when its
  final evaluation had just begun, and the ETA short late in a sweep;
* a job's evaluations cost in proportion to its members still training (a diverged member is
  not evaluated: a 27-member S = 5 Meta-SGD job with 20 diverged evaluated in 6 s where one with
  none took 38 s), so a job tells how many are live before each evaluation and the evaluations
  it has still to run shrink with them (read as the same per-member rate as the rest; without
  it the early, mostly diverged ensembles taught the ETA an evaluation rate a third of the
  truth, and the ETA was 30-34% short in mid-sweep);
* a job's reports carry its own clock (seconds since its first report, measured where it runs):
  the parent receives a worker's reports in bursts (it wakes once a second), and timed on
  arrival a new job's first ~80 iterations looked free; its rate, taken from them, put the ETA
  40% short for a moment in a measured sweep;
* the machine's speed drifts (other load comes and goes): the running jobs' recent pace
  (training seconds per unit with an exponential memory of `DRIFT_TAU_S`) against their pace so
  far scales all remaining work, so the ETA follows a slowdown within about half a minute
  instead of as slowly as whole-job averages move (replayed on a recorded sweep into which a
  test run started at 1:30: 85% -> 92% of updates within ±30%, the rest before the load began);
* each job's observed seconds per unit corrects the prior: for the jobs of its kind (same
  backend, algorithm and S), else of its backend and S, else of its backend, else for all; the ETA is the makespan of
  the remaining work on the sweep's workers, scheduled in submission order as the executors do.

The bar shows percent of estimated work; the ETA is our own (tqdm's assumes uniform units).
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

#: milliseconds per iteration of one run at S inner steps, 25 tasks, on one CPU thread:
#: a loop backend costs BACKEND_MS x (S + 0.7) per run (learn2learn measured 15.6 / 52.0 ms at
#: S = 1 / 5 in an idle `make bench`, 2026-11-23; higher and torch scaled from their speed-suite
#: ratios to it); the vectorised engines pay a dispatch part once per program plus a compute part
#: per member that grows faster than S (per-task weight copies).
BACKEND_MS = {"l2l": 9.15, "higher": 13.5, "torch": 6.9}
DISPATCH_MS, MEMBER_MS = 0.30, 0.105
#: per algorithm on the vectorised engines: (relative cost, growth of the member part with S + 0.7),
#: fitted to the 27-member ensembles of an idle `make bench` (2026-11-23, two workers on two cores,
#: AMD EPYC; ms/iteration at S = 1 / 5: maml 11.6 / 66.5, msl 13.6 / 56.4, metasgd 13.0 / 73.2,
#: fomaml 7.4 / 24.5, reptile 5.1 / 16.5, anil 6.0 / 8.2, pretrain 4.4; MSL takes MAML's, whose
#: maths it shares at S = 1; jobs running side by side move these by ~15%). Second-order costs
#: grow ~S^1.45, first-order ~S^1, ANIL's head-only loop hardly at all; the cheap S = 1 jobs carry
#: a fixed per-iteration part (sampling, Adam) that an earlier fit, made under load, put 1.5x too
#: low, and the ETA of the S = 1 jobs that run last was then 30-40% short. Unknown algorithms: MAML's.
ALGORITHM_COST = {"maml": (1.74, 1.47), "msl": (1.74, 1.47), "metasgd": (1.96, 1.45), "fomaml": (1.40, 0.99),
                  "reptile": (0.97, 0.97), "anil": (1.77, 0.02)}
PRETRAIN_FACTOR = 1.39  # one forward/backward over support + query points, no inner loop
#: relative cost of an algorithm's step on the loop backends (first-order and head-only inner loops are cheaper)
ALGORITHM_FACTOR = {"fomaml": 0.5, "anil": 0.4, "reptile": 0.35}


#: evaluation: milliseconds per (member, task, adaptation step), with a job's other non-training
#: time (worker start, writing records and per-task errors): from the same idle `make bench`, whose
#: two workers spent ~420 s of 1,170 busy seconds outside training (13 func jobs of 27 members, two
#: evaluations of 600 test + 600 validation tasks x 11 steps each). At bench.toml's settings a cheap
#: job spends more time evaluating than training, so a prior without it put the ETA 40% short.
EVAL_MS = 0.042
#: memory (seconds) of the recent pace that detects the machine's speed drifting
DRIFT_TAU_S = 60.0


def evaluation_costs(cells, settings) -> dict[int, float]:
    """Prior cost (ms) of each of a job's evaluations, by the iteration it runs at:
    members x tasks x (eval_steps + 1) each."""
    cell = cells[0]
    ks = set(settings.eval_k_shot) | {cell.k_shot}
    tasks = len(ks) * (settings.n_test_tasks * settings.n_test_sets + settings.n_validation_tasks)
    each = EVAL_MS * len(cells) * tasks * (settings.eval_steps + 1)
    return {iteration: each for iteration in sorted(settings.evaluation_iterations(cell.iterations))}


def evaluation_cost(cells, settings) -> float:
    """Prior cost of all of a job's evaluations (ms)."""
    return sum(evaluation_costs(cells, settings).values())


def job_cost(cells, settings=None) -> float:
    """Prior cost of a job in milliseconds on a reference CPU thread (its cells share algorithm,
    backend, S, meta-batch and iterations): training, plus evaluation when the sweep's
    `settings` are given; only ratios between jobs matter."""
    evaluation = 0.0 if settings is None else evaluation_cost(cells, settings)
    return max(training_cost(cells) + evaluation, 1e-9)


def training_cost(cells) -> float:
    """Prior cost of a job's training iterations (ms)."""
    cell = cells[0]
    tasks = cell.meta_batch / 25
    if cell.backend in BACKEND_MS:
        steps = 0.0 if cell.algorithm == "pretrain" else cell.inner_steps  # no inner loop in training
        factor = ALGORITHM_FACTOR.get(cell.algorithm, 1.0)
        per_iteration = factor * BACKEND_MS[cell.backend] * (steps + 0.7) * tasks * len(cells)
    elif cell.algorithm == "pretrain":  # func, jax, generic: one program for the ensemble
        per_iteration = PRETRAIN_FACTOR * (DISPATCH_MS + MEMBER_MS * len(cells) * tasks)
    else:
        factor, exponent = ALGORITHM_COST.get(cell.algorithm, ALGORITHM_COST["maml"])
        steps = cell.inner_steps + 0.7
        per_iteration = factor * (DISPATCH_MS * steps + MEMBER_MS * len(cells) * tasks * steps ** exponent)
    return per_iteration * cell.iterations


def longest_first(jobs: list, settings=None) -> list:
    """Jobs in descending prior cost (stable). On several workers this shortens the sweep (the
    longest-processing-time rule) and lets the ETA observe every expensive kind of job early."""
    return sorted(jobs, key=lambda cells: job_cost(cells, settings), reverse=True)


def job_kind(cells) -> tuple:
    return cells[0].backend, cells[0].algorithm, cells[0].inner_steps


@dataclass
class _Job:
    training: float  # prior cost of the training iterations
    evaluations: dict  # iteration -> prior cost of the evaluation run there
    kind: tuple
    iterations: int
    members: int = 1  # members still training (all, until the job says otherwise)
    done: int = 0
    started: float | None = None
    last: float | None = None  # clock of the last report's arrival (the silent job's countdown)
    seconds: float | None = None  # the job's own clock at its last report (where it runs)
    finished: bool = False
    train_seconds: float = 0.0  # observed: wall time between reports while training
    train_units: float = 0.0  # prior cost of the iterations trained in that time
    eval_seconds: float = 0.0  # observed: silent gaps that spanned an evaluation
    eval_units: float = 0.0  # prior cost of the evaluations those gaps spanned
    recent_seconds: float = 0.0  # training seconds and units with an exponential memory (DRIFT_TAU_S)
    recent_units: float = 0.0
    recent_at: float | None = None  # clock of the last training observation

    @property
    def cost(self) -> float:
        return max(self.training + sum(self.evaluations.values()), 1e-9)

    def set_live(self, live: int) -> None:
        """Scale the evaluations still to run (at the current iteration or later) to `live` members."""
        if self.members > 0 and live != self.members:
            for iteration in self.evaluations:
                if iteration >= self.done:
                    self.evaluations[iteration] *= live / self.members
        self.members = live

    def evaluations_left(self, done: int | None = None) -> float:
        """Prior cost of the evaluations not yet passed (one at `done` itself is still to run)."""
        done = self.done if done is None else done
        return 0.0 if self.finished else sum(c for iteration, c in self.evaluations.items() if iteration >= done)

    @property
    def units_done(self) -> float:
        """Prior cost of the work done: iterations so far, and the evaluations training has moved
        past (or all, once finished). An evaluation in progress counts nothing until it ends."""
        if self.finished:
            return self.cost
        return self.training * self.done / self.iterations + sum(self.evaluations.values()) - self.evaluations_left()


@dataclass
class SweepProgress:
    """Tracks every job of a sweep; `update(index, iterations)` from inside jobs, `finish(index)` at the end."""

    jobs: list
    workers: int = 1
    clock: callable = time.monotonic
    settings: object = None  # the sweep's Settings: evaluation enters the prior costs
    state: list = field(init=False)

    def __post_init__(self):
        self.state = [_Job(training_cost(cells), evaluation_costs(cells, self.settings) if self.settings else {},
                           job_kind(cells), cells[0].iterations, len(cells)) for cells in self.jobs]

    @property
    def total(self) -> float:
        """Prior cost of the whole sweep (it shrinks as members diverge)."""
        return sum(j.cost for j in self.state)

    def _observe(self, job: _Job, now: float, done: int, seconds: float | None = None) -> None:
        """Book the time since the job's last report (on the job's own clock when both reports
        carry it, else on arrival): to an evaluation if one ran in between (the job is silent
        while it evaluates; the iterations trained in the same gap are taken off at the job's
        own training pace), else to training."""
        if job.started is None:
            job.started, job.last, job.seconds = now, now, seconds
        gap = seconds - job.seconds if seconds is not None and job.seconds is not None else now - job.last
        if seconds is not None:
            job.seconds = seconds
        trained = job.training * (min(done, job.iterations) - job.done) / job.iterations
        spanned = job.evaluations_left(job.done) - job.evaluations_left(done) if done > job.done else 0.0
        if spanned:
            training_part = min(gap, trained * job.train_seconds / job.train_units) if job.train_units else 0.0
            job.eval_seconds += gap - training_part
            job.eval_units += spanned
            gap = training_part
        if trained > 0:  # (a gap without new iterations or an evaluation teaches no rate)
            job.train_seconds += gap
            job.train_units += trained
            memory = math.exp(-(now - job.recent_at) / DRIFT_TAU_S) if job.recent_at is not None else 0.0
            job.recent_seconds = job.recent_seconds * memory + gap
            job.recent_units = job.recent_units * memory + trained
            job.recent_at = now
        job.done, job.last = done, now

    def update(self, index: int, iterations: int, live: int | None = None, seconds: float | None = None) -> None:
        """Job `index` has trained `iterations`; `live`: how many of its members have not diverged
        (told before each evaluation, which skips the diverged ones); `seconds`: the job's own
        clock (seconds since its first report)."""
        job = self.state[index]
        if job.finished:  # a report that arrived after the job's records (executor queues race)
            return
        self._observe(job, self.clock(), min(iterations, job.iterations), seconds)
        if live is not None:
            job.set_live(live)

    def start(self, index: int) -> None:
        self.update(index, 0)

    def finish(self, index: int) -> None:
        job = self.state[index]
        if job.started is None:  # its records came before any report: nothing to learn a rate from
            job.started = job.last = self.clock()
        else:
            self._observe(job, self.clock(), job.iterations + 1)  # past the final evaluation
        job.done, job.finished = job.iterations, True

    def fraction(self) -> float:
        """Share of the estimated work done (prior units of iterations and evaluations done)."""
        if not self.state:
            return 1.0
        return sum(j.units_done for j in self.state) / self.total

    def _rates(self) -> tuple[dict, dict]:
        """Observed seconds per prior unit. Training: from jobs far enough along, per job kind, per
        (backend, S), per backend (a kind not yet seen takes the nearest) and over all jobs
        ('*'). Evaluation: per backend and over all jobs; before any evaluation has ended, the
        training rate over all jobs (the machine's speed relative to the prior)."""
        train: dict = {}
        evaluation: dict = {}
        for j in self.state:
            if j.done >= max(1, 0.02 * j.iterations) and j.train_seconds > 0 and j.train_units > 0:
                for key in (j.kind, (j.kind[0], j.kind[2]), j.kind[0], "*"):
                    train.setdefault(key, []).append((j.train_seconds, j.train_units))
            if j.eval_units > 0:
                for key in (j.kind[0], "*"):
                    evaluation.setdefault(key, []).append((j.eval_seconds, j.eval_units))

        def rate(pairs):
            return sum(s for s, _ in pairs) / sum(u for _, u in pairs)

        return {k: rate(v) for k, v in train.items()}, {k: rate(v) for k, v in evaluation.items()}

    def drift(self, now: float) -> float:
        """How much slower (> 1) or faster the running jobs train lately than so far: their
        recent seconds over what their units would have taken at their own average pace."""
        recent = expected = 0.0
        for j in self.state:
            if j.finished or j.recent_at is None or j.train_units <= 0 or now - j.recent_at > DRIFT_TAU_S:
                continue  # silent for long (evaluating): its pace says nothing about now
            memory = math.exp(-(now - j.recent_at) / DRIFT_TAU_S)
            recent += j.recent_seconds * memory
            expected += j.recent_units * memory * j.train_seconds / j.train_units
        return recent / expected if recent > 0 and expected > 0 else 1.0

    def eta(self) -> float | None:
        """Seconds until the last job ends: remaining work scheduled on the workers in order."""
        if all(j.finished for j in self.state):
            return 0.0
        train, evaluation = self._rates()
        if not train:
            return None
        now = self.clock()
        drift = self.drift(now)

        def seconds(j, training, evaluations):
            per_train = next((train[k] for k in (j.kind, (j.kind[0], j.kind[2]), j.kind[0]) if k in train), train["*"])
            per_eval = evaluation.get(j.kind[0], evaluation.get("*", train["*"]))
            return (training * per_train + evaluations * per_eval) * drift

        # a running job's remaining work, less the time since its last report (it may be
        # evaluating, silently); never below nothing
        running = [max(0.0, seconds(j, j.training * (1 - j.done / j.iterations), j.evaluations_left())
                       - (now - j.last)) for j in self.state if j.started is not None and not j.finished]
        pending = [seconds(j, j.training, sum(j.evaluations.values())) for j in self.state if j.started is None]
        # More jobs can look running than there are workers for a moment (a worker reports its
        # next job before the last one's records are in): all of that work is still to do, so
        # the extra ones queue like pending jobs (never dropped, which made the ETA dip).
        running.sort(reverse=True)
        pending = running[self.workers:] + pending
        free = running[: self.workers] + [0.0] * max(0, self.workers - len(running))
        heapq.heapify(free)
        for duration in pending:
            heapq.heappush(free, heapq.heappop(free) + duration)
        return max(free) if free else 0.0


class ProgressBar:
    """The sweep's bar: percent of estimated work, our ETA, cells finished."""

    def __init__(self, jobs: list, workers: int, enabled: bool = True, settings=None):
        self.progress = SweepProgress(jobs, workers, settings=settings)
        self.cells = sum(len(j) for j in jobs)
        self.cells_done = 0
        self.bar = tqdm(total=100.0, unit="%", disable=not enabled, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}")
        self._shown = 0.0
        self._refresh()

    def update(self, index: int, iterations: int, live: int | None = None, seconds: float | None = None) -> None:
        self.progress.update(index, iterations, live, seconds)
        self._refresh()

    def job_done(self, index: int, n_cells: int) -> None:
        self.progress.finish(index)
        self.cells_done += n_cells
        self._refresh()

    def write(self, line: str) -> None:
        self.bar.write(line)

    def _refresh(self) -> None:
        eta = self.progress.eta()
        remaining = "ETA --" if eta is None else f"ETA {_clock(eta)}"
        self.bar.set_description_str(f"sweep ({self.cells_done}/{self.cells} cells)", refresh=False)
        self.bar.set_postfix_str(remaining, refresh=False)
        # set, not added: increments summed in floats can pass 100 (tqdm then warns)
        self._shown = min(100.0, max(self._shown, 100.0 * self.progress.fraction()))
        self.bar.n = self._shown
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Reporter:
    """A job's `on_iteration` callback: tells `sink((job index, iterations, live members or None,
    seconds since the first report))` at most every `interval` s, and at once whenever the job
    says how many members are live. The seconds are taken where the job runs: the parent gets a
    worker's reports in bursts.

    Picklable, so it travels to worker processes and Ray tasks with a queue as its sink
    (`queue.put`); in-process the sink is the bar's own update.
    """

    def __init__(self, sink, index: int, interval: float = 0.5):
        self.sink, self.index, self.interval = sink, index, interval
        self._last = self._first = None

    def __getstate__(self):
        return {"sink": self.sink, "index": self.index, "interval": self.interval, "_last": None, "_first": None}

    def __call__(self, iterations: int, live: int | None = None) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = now
        if live is not None or self._last is None or now - self._last >= self.interval:
            self._last = now
            self.sink((self.index, iterations, live, now - self._first))
