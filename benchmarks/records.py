"""Run records: one JSON file per finished cell under DIR/runs/, written atomically.

A record is written to a temporary file in the same folder, flushed to disk, then renamed
over its final name, so a sweep killed at any moment (even SIGKILL) leaves either a whole
record or none; a rerun skips cells whose record exists.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from benchmarks import artifacts

FINISHED = ("ok", "diverged")


class RecordError(ValueError):
    """A run record that cannot be read."""


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def record_path(out: Path, cell_id: str) -> Path:
    return runs_dir(out) / f"{cell_id}.json"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Temporary file in the same folder, fsync, rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other readers
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(out: Path, record: dict) -> Path:
    """The record's artifacts (`record["_artifacts"]`, if any) first, then its JSON naming them."""
    path = record_path(out, record["cell_id"])
    record = dict(record)
    found = record.pop("_artifacts", None)
    if found is not None:
        binary = artifacts.path_for(path.parent, record["cell_id"])
        write_atomic(binary, artifacts.to_bytes(found))
        record["artifacts"] = binary.name
    write_atomic(path, json.dumps(record, separators=(",", ":"), allow_nan=True))  # compact: results stay small
    return path


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordError(f"corrupt run record {path}: {error}") from None
    missing = {"cell", "cell_id", "status"} - set(record) if isinstance(record, dict) else {"everything"}
    if missing:
        raise RecordError(f"corrupt run record {path}: missing {', '.join(sorted(missing))}")
    return record


def is_finished(out: Path, cell_id: str) -> bool:
    path = record_path(out, cell_id)
    if not path.exists():
        return False
    try:
        return read_record(path)["status"] in FINISHED
    except RecordError:
        return False


def load_records(out: Path) -> list[dict]:
    """Every record under DIR/runs/, sorted by cell id; a corrupt one raises RecordError."""
    folder = runs_dir(out)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        raise RecordError(f"no run records in {folder} (run a sweep into {out} first)")
    return [read_record(p) for p in paths]
