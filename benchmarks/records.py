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

A results folder is untrusted input (it may come from anyone): every command reads it through
`read_record`, which executes nothing (JSON only, plug-ins it names are not imported), checks its
cell and settings exactly as a sweep's, within the size limits in force, and makes sure no name
in it reaches outside runs/: the cell id is the plain file name its own cell spells and the
artifacts are `<cell_id>.npz` beside it. The store's content is checked against the record where
it is read (`benchmarks.artifacts.read`). Any failure is a RecordError naming the file (exit 2).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from algorithms import ALGORITHMS
from algorithms.network import DEFAULT_NETWORK
from benchmarks import artifacts
from benchmarks.config import LIMITS, Cell, ConfigError, Settings, _settings, cell_from_dict
from benchmarks.plugins import NAME as plugin_names
from tasks import TASKS, get_task
from tasks.problem import MSE, Metric, metric_from_declaration
from benchmarks.atomic import (TMP_SUFFIX, UnsafePath, fsync_dir, refuse_links, write_atomic,  # noqa: F401 (the writers' home)
                               write_files_atomically)

#: cell keys added after records were first written, at the value that reproduces older records
#: (a record written before `network` existed trained Finn's ReLU 40-40 network): declared with
#: each key in `benchmarks.config.Cell` (its `added` value), re-exported here
from benchmarks.config import ADDED_CELL_KEYS, ADDED_SETTINGS  # noqa: E402

FINISHED = ("ok", "diverged")
STATUSES = FINISHED + ("failed",)
#: A cell id is a file name: `<id>.json`, `<id>.npz` and a writer's `.<id>.json.<random>.tmp` fit
#: the usual 255-byte limit of a file name.
MAX_ID_BYTES = 200
MAX_RECORD_BYTES = 256 << 20  # the suite's largest record is ~70 KB; /dev/zero must not be read forever


class RecordError(ValueError):
    """A run record that cannot be read or cannot be trusted; the message names the file(s)."""


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def name_problem(name) -> str | None:
    """Why `name` is not a plain file name to keep inside runs/ (None when it is one)."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name.startswith("."):
        return "starts with a dot"
    if ".." in name:
        return "contains '..'"
    if not name.isprintable():
        return "contains control characters"
    return None


def record_path(out: Path, cell_id: str) -> Path:
    """DIR/runs/<cell_id>.json; RecordError unless the id is a plain file name (`name_problem`)."""
    problem = name_problem(cell_id)
    if problem:
        raise RecordError(f"cell id {cell_id!r:.80} {problem}: a cell id must be a plain file name inside "
                          f"{runs_dir(out)}")
    return runs_dir(out) / f"{cell_id}.json"


def sweep_stale(out: Path, min_age_s: float = 600.0) -> list[Path]:
    """Remove what killed writers left behind: hidden `*.tmp` files and report staging folders.

    In `out/runs` everything goes (call this while holding the folder's lock: no other sweep
    writes there); in `out` and `out/figures` only what is older than `min_age_s`, since a
    `report` (which takes no lock, so that it can run beside a long sweep) may be writing there.
    A folder that is a symbolic link is not entered (what is behind it is not ours).
    """
    removed = []
    now = time.time()
    for folder in (runs_dir(out), Path(out), Path(out) / "figures"):
        if not folder.is_dir() or (folder != Path(out) and folder.is_symlink()):
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
    refuse_links(out, [runs_dir(out).name])  # records stay inside OUT (benchmarks.atomic)
    path = record_path(out, record["cell_id"])
    record = dict(record)
    found = record.pop("_artifacts", None)
    if found is not None:
        binary = artifacts.path_for(path.parent, record["cell_id"])
        write_atomic(binary, artifacts.to_bytes(found))
        record["artifacts"] = binary.name
    write_atomic(path, json.dumps(record, separators=(",", ":"), allow_nan=True))  # compact: results stay small
    return path


def _read_json(path: Path, what: str, limit: int):
    """A JSON file read as untrusted data: a regular file (not a FIFO or device: those would block
    or never end), at most `limit` bytes, any nesting depth refused cleanly."""
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "missing" if not path.exists() else "not a regular file"
        raise RecordError(f"corrupt {what} {path}: {kind} where a JSON file should be")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RecordError(f"corrupt {what} {path}: larger than {limit >> 20} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise RecordError(f"corrupt {what} {path}: {type(error).__name__}: {str(error)[:200]}") from None


def record_cell(values, limits: dict | None = None) -> Cell:
    """The record's cell, validated like a sweep's (`config.cell_from_dict`; ConfigError).

    Decision: an algorithm or task that is not registered in this process (a plug-in's, when the
    plug-in is not passed) is not an error for a reader: `report` and `regress` need only its name,
    which must then be a valid registry name (`plugins.NAME`: a plain file-name part), and every
    other value is validated as usual. Commands that run the cell (`re-evaluate`) refuse it
    (`reevaluate.check_code`), never importing what the folder names.
    """
    try:
        return cell_from_dict(values, limits)
    except ConfigError:
        if not isinstance(values, dict):
            raise
        unregistered = {key: values[key] for key, registry in (("algorithm", ALGORITHMS), ("task", TASKS))
                        if isinstance(values.get(key), str) and values[key] not in registry
                        and plugin_names.fullmatch(values[key])}
        if not unregistered:
            raise
    cell = cell_from_dict({**values, **{key: _STAND_INS[key] for key in unregistered}}, limits)
    return dataclasses.replace(cell, **unregistered)


_STAND_INS = {"algorithm": "maml", "task": "sine"}  # built-ins that take every backend and network


def record_settings(values, limits: dict | None = None) -> Settings:
    """The record's settings, validated like a sweep's (ConfigError): types, values, `limits`,
    unknown keys; none of its plug-ins is imported. A key the record lacks because it was written
    before the key existed is read at the value that reproduces it (`config.ADDED_SETTINGS`: no
    `seed_streams` is "offset", the streams of before), not at a new sweep's default."""
    if not isinstance(values, dict):
        raise ConfigError(f"settings must be a table, got a {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        raise ConfigError(f"unknown settings key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(sorted(known))}")
    return _settings({**ADDED_SETTINGS, **values}, {**LIMITS, **(limits or {})})


def stored_cell(record: dict) -> Cell:
    """The cell a record names, read leniently: its known keys, unchecked (unknown keys dropped, an
    absent key at its default: `network` is Finn's, the network of before the key).

    Why two readings: `record_cell` and `record_settings` check untrusted input as `read_record`
    reads it (ConfigError); these two rebuild the values of a record already read (or planned: no
    settings) to recompute from them (its fingerprint, its test tasks), and must not refuse a
    record written before a key existed. A value of the wrong type is the caller's TypeError or
    ValueError (the fingerprint makes it a RecordError naming the record)."""
    names = {f.name for f in dataclasses.fields(Cell)}
    return Cell(**{k: v for k, v in record["cell"].items() if k in names})


def stored_settings(record: dict) -> Settings:
    """The settings a record was made under, read leniently (see `stored_cell`): its known keys;
    none stored (an old or planned record, or null) is the defaults; a key the record lacks is at
    the value that reproduces the records before it (`config.ADDED_SETTINGS`), not at a new
    sweep's default; `eval_k_shot`'s JSON list is the settings' tuple."""
    stored = record.get("settings") or {}
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in stored.items() if k in known}
    if isinstance(values.get("eval_k_shot"), list):
        values["eval_k_shot"] = tuple(values["eval_k_shot"])
    return dataclasses.replace(Settings(), **{**ADDED_SETTINGS, **values})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


#: evaluation row fields a reader relies on -> whether a value is acceptable (n_sets, set_sd: optional),
#: beside the record's metric and its interval (`metric_columns`)
ROW_FIELDS = {"iteration": lambda v: _integer(v, 0), "split": lambda v: v in artifacts.SPLITS,
              "eval_k_shot": lambda v: _integer(v, 1), "eval_steps": lambda v: _integer(v, 0),
              "n_test_tasks": lambda v: _integer(v, 1)}
OPTIONAL_ROW_FIELDS = {"n_sets": lambda v: _integer(v, 1), "set_sd": _number}
#: per-record fields the report reads -> acceptable values (None always is: older records lack some)
RUN_FIELDS = {"sec_per_iter": _number, "sec_per_iter_member": _number, "compile_seconds": _number,
              "peak_memory_mb": _number, "ensemble_size": lambda v: _integer(v, 1),
              "engine": lambda v: isinstance(v, str),
              "device": lambda v: isinstance(v, str), "error": lambda v: isinstance(v, str)}


def _numbers(value) -> bool:
    return isinstance(value, list) and all(_number(v) for v in value)


def record_metric(record: dict) -> Metric:
    """The metric a record's numbers are in (`tasks.problem.metric_from_declaration`: MSE for a
    record without one); RecordError-worthy ValueError for a bad declaration."""
    return metric_from_declaration(record.get("metric"))


def folder_metric(records: list[dict]) -> Metric:
    """The one metric of a folder's records (MSE for none): its tables compare on it, so records in
    two metrics (or one name with two directions) are refused, naming both (RecordError)."""
    found = {}
    for record in records:
        found.setdefault(record_metric(record), record.get("cell_id"))
    if len(found) > 1:
        listed = "; ".join(f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better, e.g. record {cell})"
                           for m, cell in found.items())
        raise RecordError(f"the records report different metrics: {listed}; a report compares on one metric "
                          f"(report them from separate folders)")
    return next(iter(found), MSE)


def metric_columns(metric: Metric) -> tuple[str, str]:
    """The evaluation rows' (and summary's) columns of a metric: its value and its 95% interval."""
    return metric.name, f"{metric.name}_ci95"


def _field_problem(record: dict) -> str | None:
    """What is wrong with the fields the report and the store check read (None: nothing)."""
    try:
        metric = record_metric(record)
    except (ValueError, TypeError) as error:
        return f"metric: {error}"
    row_fields = {**ROW_FIELDS, **dict.fromkeys(metric_columns(metric), _number)}
    for key, ok in RUN_FIELDS.items():
        if record.get(key) is not None and not ok(record[key]):
            return f"{key} = {record[key]!r:.80} is not a valid value"
    rows = record.get("evaluations", [])
    if not isinstance(rows, list):
        return f"evaluations must be a list of rows, got a {type(rows).__name__}"
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"evaluation row {i} is not a table"
        for key, ok in row_fields.items():
            if key not in row or not ok(row[key]):
                return f"evaluation row {i}: {key} = {row.get(key, '(missing)')!r:.80} is not a valid value"
        for key, ok in OPTIONAL_ROW_FIELDS.items():
            if key in row and not ok(row[key]):
                return f"evaluation row {i}: {key} = {row[key]!r:.80} is not a valid value"
    curve = record.get("curve", [])
    if not isinstance(curve, list) or not all(isinstance(p, dict) and all(v is None or _number(v) for v in p.values())
                                              for p in curve):
        return "curve must be a list of tables of numbers"
    qualitative = record.get("qualitative")
    if qualitative is not None:
        lists = ("x", "truth", "support_x", "support_y")
        if not isinstance(qualitative, dict) or not isinstance(qualitative.get("task", ""), str) \
                or not all(_numbers(qualitative[k]) for k in lists if k in qualitative) \
                or not isinstance(qualitative.get("pred", {}), dict) \
                or not all(k.isdigit() and _numbers(v) for k, v in qualitative.get("pred", {}).items()):
            return "qualitative must be a table of number lists (x, truth, support_x, support_y, pred by step)"
    return None


def read_record(path: Path, limits: dict | None = None) -> dict:
    """One record, checked as untrusted input (RecordError naming the file, nothing executed).

    Checked: the JSON itself (a regular file of at most MAX_RECORD_BYTES); its status; its cell
    (`record_cell`) and settings (`record_settings`), with sizes within `limits` (default
    `config.LIMITS`, raised by the command's own `--limit`), and the task parameters against the
    task; its cell id is a plain file name (`name_problem`) and exactly the id its validated cell
    spells, so no id reaches outside runs/; its artifacts, if any, are `<cell_id>.npz` beside it;
    the fields a reader relies on (`ROW_FIELDS`, `RUN_FIELDS`, curve, qualitative). The cell comes
    back in its one spelling. The store's content is checked where it is read
    (`benchmarks.artifacts.load_artifacts`).
    """
    path = Path(path)
    record = _read_json(path, "run record", MAX_RECORD_BYTES)
    missing = {"cell", "cell_id", "status"} - set(record) if isinstance(record, dict) else {"everything"}
    if missing:
        raise RecordError(f"corrupt run record {path}: missing {', '.join(sorted(missing))}")
    if not isinstance(record["cell"], dict) or record["status"] not in STATUSES:
        raise RecordError(f"corrupt run record {path}: status must be one of {', '.join(STATUSES)} "
                          f"and cell a table, got status {record['status']!r:.80}")
    problem = name_problem(record["cell_id"])
    if problem:
        raise RecordError(f"untrusted run record {path}: its cell_id {record['cell_id']!r:.80} {problem} "
                          f"(a cell id is a plain file name inside runs/)")
    try:
        cell = record_cell(record["cell"], limits)
        settings = record_settings(record.get("settings", {}), limits)
        if cell.task in TASKS:  # a sweep checks its task parameters before training; a record's likewise
            try:
                get_task(cell.task, k_shot=cell.k_shot, n_query=settings.query_points(cell.k_shot),
                         **settings.task_params)
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigError(f"task {cell.task!r} with task_params {settings.task_params}: {error}") from None
    except ConfigError as error:
        raise RecordError(f"invalid run record {path}: {error}") from None
    if cell.cell_id != record["cell_id"]:
        raise RecordError(f"inconsistent run record {path}: its cell_id {record['cell_id']!r} is not the id its "
                          f"cell spells, {cell.cell_id!r} (edited or written by another tool: delete it)")
    record["cell"] = dataclasses.asdict(cell)
    problem = _field_problem(record)
    if problem:
        raise RecordError(f"corrupt run record {path}: {problem}")
    if record["status"] == "ok" and not record.get("evaluations"):
        raise RecordError(f"inconsistent run record {path}: status 'ok' but no evaluations "
                          f"(delete it to retrain the cell)")
    name = record.get("artifacts")
    if name is not None:
        expected = artifacts.path_for(path.parent, record["cell_id"])
        if name != expected.name:
            raise RecordError(f"untrusted run record {path}: its artifacts {name!r:.80} must be its own store "
                              f"{expected.name!r} beside it")
        if record["status"] == "ok" and not expected.is_file():  # only an `ok` record's store is read
            raise RecordError(f"inconsistent run record {path}: its artifacts file {expected} is missing "
                              f"(delete the record to retrain the cell)")
    return record


#: In DST while a `re-evaluate` into it has not finished (see `benchmarks.reevaluate.reevaluate`):
#: {"records": how many records the source has, "from": the source, "changed": the overrides}.
PARTIAL_MARKER = "reevaluation-partial.json"


def read_partial_marker(out: Path) -> dict | None:
    """OUT's partial re-evaluation marker, validated (RecordError naming it), or None if absent."""
    path = Path(out) / PARTIAL_MARKER
    if not (path.exists() or path.is_symlink()):
        return None
    marker = _read_json(path, "partial re-evaluation marker", 1 << 16)
    if not isinstance(marker, dict) or not _integer(marker.get("records"), 1) \
            or not isinstance(marker.get("from", ""), str) or not isinstance(marker.get("changed", {}), dict):
        raise RecordError(f"corrupt partial re-evaluation marker {path}: expected {{\"records\": N >= 1, \"from\": "
                          f"folder, \"changed\": {{...}}}}, got {json.dumps(marker)[:100]}")
    return marker


def identity(record: dict) -> str:
    """What makes two records the same cell: the cell's values, exactly (not the file name)."""
    return json.dumps(record["cell"], sort_keys=True)


def scan_records(out: Path, limits: dict | None = None) -> dict[str, tuple[Path, dict]]:
    """Every record under DIR/runs/ by identity, with its file; duplicates resolved (see module doc).

    An empty or missing folder gives {}. `limits`: see `read_record`.
    """
    folder = runs_dir(out)
    if folder.exists() and not folder.is_dir():
        raise RecordError(f"{folder} is not a folder (records live in DIR/runs/)")
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_record(path, limits)
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


def load_records(out: Path, limits: dict | None = None) -> list[dict]:
    """Every record under DIR/runs/ (each cell once), sorted by cell id; raises RecordError on a
    corrupt, inconsistent or conflicting record, or when there is none. `limits`: see `read_record`."""
    folder = runs_dir(out)
    found = scan_records(out, limits)
    if not found:
        raise RecordError(f"no run records in {folder} (run a sweep into {out} first)")
    return sorted((record for _, record in found.values()), key=lambda r: r["cell_id"])


def is_finished(out: Path, cell_id: str, limits: dict | None = None) -> bool:
    path = record_path(out, cell_id)
    if not path.exists():
        return False
    try:
        return read_record(path, limits)["status"] in FINISHED
    except RecordError:
        return False
