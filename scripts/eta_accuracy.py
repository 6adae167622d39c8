"""How true was the sweep's ETA? Reads a captured `benchmarks run` progress stream (stderr, with
tqdm's carriage returns) and compares every ETA shown from 10% progress on with the time that
was really left. Usage: python scripts/eta_accuracy.py LOG [--from PERCENT]

Prints the worst and median relative error of the remaining time, |ETA - left| / left, over
the updates from PERCENT% (default 10) until one minute before the end (where `left` is a few
seconds, a relative error says nothing), and of the projected total (elapsed + ETA) vs the truth.
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

LINE = re.compile(r"sweep \((\d+)/(\d+) cells\)\s+(\d+)%\|.*?\| ([\d:]+) elapsed, ETA ([\d:-]+)")


def seconds(clock: str) -> int:
    parts = [int(p) for p in clock.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--from", dest="start", type=float, default=10.0)
    args = parser.parse_args()
    updates = []
    for chunk in re.split(r"[\r\n]", Path(args.log).read_text(errors="replace")):
        match = LINE.search(chunk)
        if match and match.group(5) != "--":
            updates.append((int(match.group(3)), seconds(match.group(4)), seconds(match.group(5))))
    if not updates:
        raise SystemExit("no progress lines with an ETA in the log")
    end = max(elapsed for _, elapsed, _ in updates if True)
    rows = [(p, e, eta) for p, e, eta in updates if p >= args.start and end - e >= 60]
    remaining = [abs(eta - (end - e)) / (end - e) for p, e, eta in rows]
    total = [abs(e + eta - end) / end for p, e, eta in rows]
    print(f"sweep took {end // 60}:{end % 60:02d}; {len(rows)} ETA updates from {args.start:g}% to 1 min before the end")
    print(f"remaining-time error: median {statistics.median(remaining):.1%}, worst {max(remaining):.1%}")
    print(f"projected-total error: median {statistics.median(total):.1%}, worst {max(total):.1%}")
    for p in (10, 25, 50, 75, 90):
        near = next(((q, e, eta) for q, e, eta in rows if q >= p), None)
        if near:
            q, e, eta = near
            print(f"  at {q:3d}% ({e // 60}:{e % 60:02d} elapsed): ETA {eta // 60}:{eta % 60:02d}, "
                  f"truly left {(end - e) // 60}:{(end - e) % 60:02d}")


if __name__ == "__main__":
    main()
