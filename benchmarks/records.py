"""Run records: one JSON file per finished cell under DIR/runs/, written atomically.

A record is written to a temporary file in the same folder, flushed to disk, renamed over its
final name, and the folder is flushed too, so a sweep killed at any moment (even SIGKILL, even a
power cut) leaves either a whole record or none; a rerun skips cells whose record exists. A
record may name a companion binary file (`"artifacts": "<cell_id>.npz"`, written before the
JSON); it belongs to the record.

Reading is strict, because a record that is silently dropped or counted twice changes a pooled
number: a corrupt record, an `ok` record without evaluations or without its artifacts file, and
two files holding the same cell with different content are errors naming the files. Two files
holding the very same record (a copy) count once.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping

from algorithms.network import DEFAULT_NETWORK
from benchmarks import artifacts

#: cell keys added after records were first written, at the value that reproduces older records
#: (a record written before `network` existed trained Finn's ReLU 40-40 network)
ADDED_CELL_KEYS = {"network": DEFAULT_NETWORK.name}

FINISHED = ("ok", "diverged")
STATUSES = FINISHED + ("failed",)
TMP_SUFFIX = ".tmp"


class RecordError(ValueError):
    """A run record that cannot be read or cannot be trusted; the message names the file(s)."""


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def record_path(out: Path, cell_id: str) -> Path:
    return runs_dir(out) / f"{cell_id}.json"


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the rename lives in the folder, not in the file)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Temporary file in the same folder, fsync, rename, fsync the folder: a reader sees the old
    file or the new one, and after return the new one survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other readers
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full disk reports no file name: name the one being written
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_files_atomically(out: Path, files: Mapping[str, str | bytes | None]) -> list[Path]:
    """Replace a set of files under `out` as one unit: all of them or (on an error) none.

    `files` maps a relative path to its new content, or to None for a file that must go (an
    earlier report's figure that no longer applies). Everything is first written into a hidden
    staging folder inside `out` (same file system: renames are atomic), every destination is
    checked (a folder where a file must go fails here, before anything is replaced), the old
    files are moved aside, the new ones moved in; on any error the old ones are moved back. What
    a reader can see is the old set or the new one, except during the renames themselves
    (microseconds); a SIGKILL there leaves the staging folder, which `sweep_stale` removes.
    Returns the written paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"write_files_atomically: {name!r} must be a relative path inside {out}")
    for name in files:  # a destination that is a folder (or a file where a folder must be) fails now
        target = out / name
        if target.is_dir() and not target.is_symlink():
            raise IsADirectoryError(21, "is a folder, cannot be replaced by a file", str(target))
        for parent in target.relative_to(out).parents:
            if parent != Path(".") and (out / parent).exists() and not (out / parent).is_dir():
                raise NotADirectoryError(20, "is a file, a folder is needed here", str(out / parent))
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".report-", suffix=TMP_SUFFIX))
    backup = staging / ".old"
    moved: list[tuple[Path, Path | None]] = []  # (destination, its backup or None if it did not exist)
    try:
        for name, data in files.items():
            if data is None:
                continue
            path = staging / "new" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb" if isinstance(data, bytes) else "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(path, 0o644)
        for name, data in files.items():
            target = out / name
            saved = None
            if target.exists() or target.is_symlink():
                saved = backup / name
                saved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, saved)
            moved.append((target, saved))
            if data is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / "new" / name, target)
        for folder in {(out / name).parent for name in files}:
            if folder.is_dir():
                fsync_dir(folder)
    except BaseException:
        for target, saved in reversed(moved):  # put the old set back
            target.unlink(missing_ok=True)
            if saved is not None:
                os.replace(saved, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name, data in files.items() if data is not None]


def sweep_stale(out: Path, min_age_s: float = 600.0) -> list[Path]:
    """Remove what killed writers left behind: hidden `*.tmp` files and report staging folders.

    In `out/runs` everything goes (call this while holding the folder's lock: no other sweep
    writes there); in `out` and `out/figures` only what is older than `min_age_s`, since a
    `report` (which takes no lock, so that it can run beside a long sweep) may be writing there.
    """
    removed = []
    now = time.time()
    for folder in (runs_dir(out), Path(out), Path(out) / "figures"):
        if not folder.is_dir():
            continue
        for path in folder.glob(f".*{TMP_SUFFIX}"):
            if folder != runs_dir(out) and now - path.lstat().st_mtime < min_age_s:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """One record, checked for what a reader relies on (raises RecordError naming the file)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordError(f"corrupt run record {path}: {error}") from None
    except IsADirectoryError:
        raise RecordError(f"corrupt run record {path}: a folder where a record file should be") from None
    missing = {"cell", "cell_id", "status"} - set(record) if isinstance(record, dict) else {"everything"}
    if missing:
        raise RecordError(f"corrupt run record {path}: missing {', '.join(sorted(missing))}")
    if not isinstance(record["cell"], dict) or record["status"] not in STATUSES:
        raise RecordError(f"corrupt run record {path}: status must be one of {', '.join(STATUSES)} "
                          f"and cell a table, got status {record['status']!r}")
    record["cell"] = {**ADDED_CELL_KEYS, **record["cell"]}
    if record["status"] == "ok":
        if not record.get("evaluations"):
            raise RecordError(f"inconsistent run record {path}: status 'ok' but no evaluations "
                              f"(delete it to retrain the cell)")
        artifacts = record.get("artifacts")
        if artifacts and not (path.parent / artifacts).is_file():
            raise RecordError(f"inconsistent run record {path}: status 'ok' but its artifacts file "
                              f"{path.parent / artifacts} is missing (delete the record to retrain the cell)")
    return record


def identity(record: dict) -> str:
    """What makes two records the same cell: the cell's values, exactly (not the file name)."""
    return json.dumps(record["cell"], sort_keys=True)


def scan_records(out: Path) -> dict[str, tuple[Path, dict]]:
    """Every record under DIR/runs/ by identity, with its file; duplicates resolved (see module doc).

    An empty or missing folder gives {}.
    """
    folder = runs_dir(out)
    if folder.exists() and not folder.is_dir():
        raise RecordError(f"{folder} is not a folder (records live in DIR/runs/)")
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_record(path)
        key = identity(record)
        if key not in found:
            found[key] = (path, record)
            continue
        other_path, other = found[key]
        if other != record:
            raise RecordError(f"conflicting records of cell {record['cell_id']}: {other_path} and {path} differ "
                              f"(keep the one you trust, delete the other)")
        if path.name == f"{record['cell_id']}.json":  # an exact copy: count it once, under its own name
            found[key] = (path, record)
    return found


def load_records(out: Path) -> list[dict]:
    """Every record under DIR/runs/ (each cell once), sorted by cell id; raises RecordError on a
    corrupt, inconsistent or conflicting record, or when there is none."""
    folder = runs_dir(out)
    found = scan_records(out)
    if not found:
        raise RecordError(f"no run records in {folder} (run a sweep into {out} first)")
    return sorted((record for _, record in found.values()), key=lambda r: r["cell_id"])


def is_finished(out: Path, cell_id: str) -> bool:
    path = record_path(out, cell_id)
    if not path.exists():
        return False
    try:
        return read_record(path)["status"] in FINISHED
    except RecordError:
        return False
