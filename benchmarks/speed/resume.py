"""An interrupted speed suite keeps what finished and resumes (used by `benchmarks/speed/conftest.py`).

pytest-benchmark writes its JSON only when the whole session ends, so each finished benchmark is
also appended to a partial file as it ends (`test_speed._save_partial`): `SPEED_PARTIAL` if set,
else the `--benchmark-json` path with the suffix `.partial.jsonl` (`make speed`: `OUT/speed.partial.jsonl`).
A later run with the same settings skips every benchmark the partial file holds and writes them
into its JSON beside the new ones, so the tables see the whole suite. A record counts only if it was
measured under the same settings (`settings()`: the SPEED_* knobs, the CPU, torch): numbers from
another machine or configuration are measured again, never mixed in. SIGINT and SIGTERM end the
run with one line saying what is kept and the exact command that resumes it (exit 130 / 143).
After a run that completes (exit 0) the default partial file is removed, so the next run measures
afresh; an explicit `SPEED_PARTIAL` is left to whoever set it (`gpu_run.sh` merges and removes its own).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from benchmarks.speed.measure import _cpu_model

#: environment knobs that change what a benchmark measures (see `test_speed`'s docstring)
KNOBS = ("SPEED_THREADS", "SPEED_DEVICE", "SPEED_SECONDS", "SPEED_COMPILE", "SPEED_PEERS", "SPEED_BURST_MS",
         "SPEED_TUNE_MALLOC", "SPEED_MAX_SPREAD")


def settings() -> dict:
    """What a finished record must share with this run to be kept instead of measured again."""
    return {**{k: os.environ.get(k) for k in KNOBS}, "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__}


def partial_path(json_path) -> Path | None:
    explicit = os.environ.get("SPEED_PARTIAL")
    if explicit:
        return Path(explicit)
    return Path(json_path).with_suffix(".partial.jsonl") if json_path else None


def finished(path: Path | None, current: dict | None = None) -> tuple[dict[str, dict], int]:
    """name -> record of the benchmarks `path` holds that were measured under `current` settings,
    and how many lines were not (other settings, or a line cut off by a kill)."""
    current = settings() if current is None else current
    kept, other = {}, 0
    if path is None or not path.is_file():
        return kept, other
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            other += 1
            continue
        if isinstance(record, dict) and record.get("settings") == current and "name" in record:
            kept[record["name"]] = record
        else:
            other += 1
    return kept, other


def resume_command(config, path: Path, explicit: bool = True) -> str:
    """The command that resumes this run: `make speed OUT=...` under make, else this pytest command
    (with SPEED_PARTIAL only if it was set: the default one follows from --benchmark-json)."""
    if os.environ.get("MAKELEVEL"):
        flags = os.environ.get("MAKEFLAGS", "")
        variables = flags.split(" -- ", 1)[1].split() if " -- " in flags else []
        if not any(v.startswith("OUT=") for v in variables):
            variables.insert(0, f"OUT={path.parent}")
        return " ".join(["make", "speed", *variables])
    knobs = [f"{k}={shlex.quote(os.environ[k])}" for k in (("SPEED_PARTIAL",) if explicit else ()) + KNOBS
             if os.environ.get(k)]
    args = [shlex.quote(str(a)) for a in config.invocation_params.args]
    return " ".join([*knobs, shlex.quote(sys.executable), "-m", "pytest", *args])


class Resume:
    """The state of one pytest session of the speed suite (stored on its config)."""

    def __init__(self, config):
        self.config = config
        self.json = config.getoption("benchmark_json", None)
        self.path = partial_path(self.json)
        self.explicit = bool(os.environ.get("SPEED_PARTIAL"))
        if self.path is not None:
            os.environ["SPEED_PARTIAL"] = str(self.path)  # where `_save_partial` appends
        self.done, self.other = finished(self.path)
        self.skipped: dict[str, dict] = {}
        self.signum: int | None = None
        self.interrupted = False
        self._previous = {}

    # --- signals: SIGTERM ends the session like Ctrl-C does (pytest handles only KeyboardInterrupt)
    def install(self) -> None:
        def handler(signum, frame):
            self.signum = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, handler)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def skip_finished(self, items: list) -> list:
        """Deselect the selected benchmarks that already finished under these settings."""
        keep, skip = [], []
        for item in items:
            (skip if item.name in self.done else keep).append(item)
        if skip:
            self.skipped = {item.name: self.done[item.name] for item in skip}
            self.config.hook.pytest_deselected(items=skip)
            items[:] = keep
            print(f"resuming: {len(skip)} finished benchmark(s) from {self.path} are not measured again",
                  file=sys.stderr)
        if self.other:
            print(f"resuming: {self.other} line(s) of {self.path} were measured under other settings (or cut off): "
                  "measured again", file=sys.stderr)
        return items

    def add_finished(self, output_json: dict) -> None:
        """The skipped benchmarks join this run's JSON, so it holds the whole selection."""
        output_json["benchmarks"].extend(self.skipped.values())

    def drop_unmeasured(self) -> None:
        """A signal can land inside a benchmark before its first round: pytest-benchmark would then
        fail while writing its JSON (the statistics of no data) and the run would exit 1, not
        130/143. Such a benchmark measured nothing, so it is dropped, as pytest-benchmark's own
        tables drop it (a falsy benchmark)."""
        benchmarks = getattr(getattr(self.config, "_benchmarksession", None), "benchmarks", None)
        if benchmarks is not None:
            benchmarks[:] = [bench for bench in benchmarks if bench]

    def finish(self, session) -> None:
        self.interrupted = self.signum is not None or session.exitstatus == pytest.ExitCode.INTERRUPTED
        if self.interrupted:
            session.exitstatus = 128 + int(self.signum or signal.SIGINT)
            return
        benchmarks = getattr(getattr(self.config, "_benchmarksession", None), "benchmarks", None)
        if self.skipped and not benchmarks and self.json:
            # everything selected had finished: pytest-benchmark writes nothing, so write the JSON here
            data = {"datetime": datetime.now(timezone.utc).isoformat(), "benchmarks": list(self.skipped.values())}
            Path(self.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
        if self.skipped and session.exitstatus == 5:  # every selected benchmark was skipped as finished
            session.exitstatus = 0
        if session.exitstatus == 0 and not self.explicit and self.path is not None:
            self.path.unlink(missing_ok=True)

    def report(self) -> None:
        """After an interruption: one line, what is kept and how to resume."""
        if not self.interrupted:
            return
        name = signal.Signals(self.signum).name if self.signum else "interrupt"
        if self.path is None:
            print(f"{name}: stopped; nothing is kept (pass --benchmark-json=FILE or set SPEED_PARTIAL=FILE.jsonl "
                  "to keep each finished benchmark and resume)", file=sys.stderr)
            return
        kept, _ = finished(self.path)
        print(f"{name}: stopped; the {len(kept)} finished benchmark(s) are kept in {self.path}; resume with: "
              f"{resume_command(self.config, self.path, self.explicit)}", file=sys.stderr)
