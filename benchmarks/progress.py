"""One progress bar for a whole sweep, with an ETA that converges.

Cells finish in jobs (an ensemble of 27 cells is one program), and jobs differ in cost by
two orders of magnitude (a 27-member S = 5 ensemble against a learn2learn run), so neither
"cells done" nor "iterations done" predicts the remaining time. Instead:

* every job has a prior cost in *work units* (`job_cost`: iterations x inner-loop length x
  ensemble size^0.8 x a backend factor, from the speed suite's measured ratios);
* jobs report their iterations from inside (also from worker processes and Ray tasks,
  through a queue), so the bar moves within a job;
* each job's observed seconds per unit corrects the prior for the jobs of its kind (same
  backend and algorithm), and the ETA is the makespan of the remaining work on the
  sweep's workers, scheduled in submission order as the executors do.

The bar shows percent of estimated work; the ETA is our own (tqdm's assumes uniform units).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

#: seconds per member-iteration relative to `func` at S = 1 (speed suite, meta-batch 25)
BACKEND_FACTOR = {"func": 1.0, "jax": 1.0, "l2l": 36.0, "higher": 53.0, "torch": 20.0}
ENSEMBLE_EXPONENT = 0.8  # a 27-member ensemble costs ~27^0.8 = 14 single runs (measured 9-18)


def job_cost(cells) -> float:
    """Prior work units of a job (its cells share algorithm, backend, S, meta-batch, iterations)."""
    cell = cells[0]
    factor = BACKEND_FACTOR.get(cell.backend, 20.0)
    if cell.algorithm == "pretrain":
        factor *= 0.5
    per_iteration = factor * (cell.inner_steps + 1) / 2 * (cell.meta_batch / 25) * len(cells) ** ENSEMBLE_EXPONENT
    return max(per_iteration * cell.iterations, 1e-9)


def longest_first(jobs: list) -> list:
    """Jobs in descending prior cost (stable). On several workers this shortens the sweep (the
    longest-processing-time rule) and lets the ETA observe every expensive kind of job early."""
    return sorted(jobs, key=job_cost, reverse=True)


def job_kind(cells) -> tuple:
    return cells[0].backend, cells[0].algorithm


@dataclass
class _Job:
    cost: float
    kind: tuple
    iterations: int
    done: int = 0
    started: float | None = None
    finished: bool = False
    seconds: float = 0.0  # wall time since start (finished: total)


@dataclass
class SweepProgress:
    """Tracks every job of a sweep; `update(index, iterations)` from inside jobs, `finish(index)` at the end."""

    jobs: list
    workers: int = 1
    clock: callable = time.monotonic
    state: list = field(init=False)

    def __post_init__(self):
        self.state = [_Job(job_cost(cells), job_kind(cells), cells[0].iterations) for cells in self.jobs]
        self.total = sum(j.cost for j in self.state)

    def update(self, index: int, iterations: int) -> None:
        job = self.state[index]
        now = self.clock()
        if job.started is None:
            job.started = now
        job.done = min(iterations, job.iterations)
        job.seconds = now - job.started

    def start(self, index: int) -> None:
        self.update(index, 0)

    def finish(self, index: int) -> None:
        job = self.state[index]
        if job.started is None:
            job.started = self.clock()
        job.seconds = self.clock() - job.started
        job.done, job.finished = job.iterations, True

    def fraction(self) -> float:
        """Share of the estimated work done (units of finished iterations over all units)."""
        if not self.state:
            return 1.0
        return sum(j.cost * j.done / j.iterations for j in self.state) / self.total

    def _seconds_per_unit(self) -> dict:
        """Observed seconds per work unit from jobs far enough along: per job kind, per backend
        (a kind not yet seen takes its backend's rate) and over all jobs ('*')."""
        seen: dict = {}
        for j in self.state:
            if j.done >= max(1, 0.02 * j.iterations) and j.seconds > 0:
                units = j.cost * j.done / j.iterations
                for key in (j.kind, j.kind[0], "*"):
                    seen.setdefault(key, []).append((j.seconds, units))
        return {key: sum(s for s, _ in v) / sum(u for _, u in v) for key, v in seen.items()}

    def eta(self) -> float | None:
        """Seconds until the last job ends: remaining work scheduled on the workers in order."""
        if all(j.finished for j in self.state):
            return 0.0
        rates = self._seconds_per_unit()
        if not rates:
            return None

        def seconds(j, units):
            return units * rates.get(j.kind, rates.get(j.kind[0], rates["*"]))

        running = [seconds(j, j.cost * (1 - j.done / j.iterations)) for j in self.state
                   if j.started is not None and not j.finished]
        pending = [seconds(j, j.cost) for j in self.state if j.started is None]
        free = sorted(running)[: self.workers] + [0.0] * max(0, self.workers - len(running))
        heapq.heapify(free)
        for duration in pending:
            heapq.heappush(free, heapq.heappop(free) + duration)
        return max(free) if free else 0.0


class ProgressBar:
    """The sweep's bar: percent of estimated work, our ETA, cells finished."""

    def __init__(self, jobs: list, workers: int, enabled: bool = True):
        self.progress = SweepProgress(jobs, workers)
        self.cells = sum(len(j) for j in jobs)
        self.cells_done = 0
        self.bar = tqdm(total=100.0, unit="%", disable=not enabled, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}")
        self._shown = 0.0
        self._refresh()

    def update(self, index: int, iterations: int) -> None:
        self.progress.update(index, iterations)
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
        target = 100.0 * self.progress.fraction()
        self.bar.update(max(0.0, target - self._shown))
        self._shown = max(self._shown, target)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Reporter:
    """A job's `on_iteration` callback: tells `sink((job index, iterations))` at most every `interval` s.

    Picklable, so it travels to worker processes and Ray tasks with a queue as its sink
    (`queue.put`); in-process the sink is the bar's own update.
    """

    def __init__(self, sink, index: int, interval: float = 0.5):
        self.sink, self.index, self.interval = sink, index, interval
        self._last = None

    def __getstate__(self):
        return {"sink": self.sink, "index": self.index, "interval": self.interval, "_last": None}

    def __call__(self, iterations: int) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            self.sink((self.index, iterations))
