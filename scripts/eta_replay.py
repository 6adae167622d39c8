"""Record a sweep's progress events once, then replay them through the ETA as often as you like.

    python scripts/eta_replay.py record EVENTS -- run --config benchmarks/configs/bench.toml --out runs/x
    python scripts/eta_replay.py replay EVENTS [EVENTS ...]

`record` runs `benchmarks` with the given arguments and pickles every event the sweep's progress
bar receives (its jobs and settings, each report with its arrival time, each finished job).
`replay` feeds them to `benchmarks.progress.SweepProgress` on a fake clock and scores every ETA
from 10% of the work on (until one minute before the end) against the time that was truly left,
so a change to the estimator is judged on real sweeps in a second instead of a sweep's minutes.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def record(path: Path, argv: list[str]) -> int:
    from benchmarks import progress
    from benchmarks.cli import main

    events = []
    init, update, job_done = progress.ProgressBar.__init__, progress.ProgressBar.update, progress.ProgressBar.job_done

    def recording_init(self, jobs, workers, enabled=True, settings=None):
        events.append(("init", time.monotonic(), jobs, workers, settings))
        init(self, jobs, workers, enabled, settings)

    def recording_update(self, index, iterations, live=None, seconds=None):
        events.append(("update", time.monotonic(), index, iterations, live, seconds))
        update(self, index, iterations, live, seconds)

    def recording_done(self, index, n_cells):
        events.append(("done", time.monotonic(), index, n_cells))
        job_done(self, index, n_cells)

    progress.ProgressBar.__init__ = recording_init
    progress.ProgressBar.update = recording_update
    progress.ProgressBar.job_done = recording_done
    try:
        return main(argv)
    finally:
        path.write_bytes(pickle.dumps(events))


def replay(path: Path, start: float = 0.10) -> list[tuple[float, float, float, float]]:
    """(fraction shown, seconds elapsed, ETA, truly left) for every scored update."""
    from benchmarks.progress import SweepProgress

    events = pickle.loads(path.read_bytes())
    _, began, jobs, workers, settings = events[0]
    now = [began]
    progress = SweepProgress(jobs, workers, clock=lambda: now[0], settings=settings)
    end = max(e[1] for e in events if e[0] == "done")
    rows, shown = [], 0.0
    for kind, moment, index, *rest in (e for e in events[1:] if e[0] in ("update", "done")):
        now[0] = moment
        if kind == "update":
            progress.update(index, *rest)
        else:
            progress.finish(index)
        shown = max(shown, progress.fraction())  # the bar never moves back
        eta = progress.eta()
        if eta is not None and shown >= start and end - moment >= 60:
            rows.append((shown, moment - began, eta, end - moment))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser("record", help="run `benchmarks ARGS...`, logging its progress events")
    recording.add_argument("events", type=Path)
    recording.add_argument("args", nargs=argparse.REMAINDER)
    replaying = commands.add_parser("replay", help="score the ETA on recorded sweeps")
    replaying.add_argument("events", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "record":
        return record(args.events, [a for a in args.args if a != "--"])
    for path in args.events:
        rows = replay(path)
        errors = [(eta - left) / left for _, _, eta, left in rows]
        within = sum(abs(e) <= 0.3 for e in errors) / len(errors)
        print(f"{path}: {len(rows)} ETA updates; within ±30%: {within:.1%}, median |error| "
              f"{statistics.median(abs(e) for e in errors):.1%}, worst short {min(errors):+.1%}, "
              f"worst long {max(errors):+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
