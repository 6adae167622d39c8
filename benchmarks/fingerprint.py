"""A record's fingerprint: everything its numbers depend on, so that none is reused or pooled
under other settings.

The fingerprint is a flat table stored in every record (`record["fingerprint"]`):
- the cell (algorithm, backend, task, K, S, LR_base, LR_meta, meta-batch, iterations, seed);
- every shared setting that changes training, evaluation or what is stored (`eval_every`,
  `eval_steps`, the evaluated K, `n_test_tasks`, `n_validation_tasks`, `n_query`, `log_every`
  (it decides which curve points are stored), `msl_anneal_iters`, and any setting added later);
- the task's resolved parameters (`task.noise`, `task.x_range`, ...: `task_params = {}` and
  `{noise = 0.0}` are the same tasks, and a changed task default is a change);
- the hardware (`benchmarks.hardware`: the processor's vendor, family, model and vector
  capability; the GPU for a CUDA run): another processor gives other floats, so a folder is never
  resumed on other hardware (a Ray sweep, whose workers may differ, records each worker's hardware
  but does not compare it on resume: decision, documented in docs/reliability.md);
- the device type, the torch version, the version of the library a backend runs on
  (`lib.learn2learn`, `lib.higher`, `lib.jax`, `lib.jaxlib`), and `NUMERICS_VERSION` (the
  version of this suite's numerical code, bumped by whoever changes a number on purpose).
- the code that registered the cell's algorithm and task, when it is not the suite's own
  (`code.algorithm`, `code.task`, `code.network`: `"lslr.py sha256:<16 hex digits>"`, the plug-in's module or file
  name and the hash of its source, `benchmarks.plugins`): what produced a number is part of its
  identity. A plug-in that re-registers `maml` (`replace=True`) makes other `maml` numbers, so its
  records are never resumed or pooled as the built-in's; an edited plug-in makes another
  configuration. Only what the cell names enters: an unrelated plug-in loaded alongside changes
  nothing. The suite's own algorithms and tasks add no key, so the fingerprints of built-in cells
  are those of before; a record without the key is taken as built in for a built-in name and as
  "(not recorded)" for any other (a plug-in's record made before sources were recorded: a sweep
  does not resume into it, `re-evaluate` accepts the plug-in the record names by file name).

Left out, on purpose (recorded in the record's `environment`, not compared):
- `ensemble`: an ensemble member computes bitwise what the run alone computes (tested);
- the device index (`cuda:1` vs `cuda:0`): only its type;
- `plugins`, the list of plug-ins a sweep loaded: loading another plug-in does not change a cell's
  numbers (the code of the ones that registered what the cell names is in, above);
- `tensorboard`: it only copies numbers already computed into event files (tested: the same
  records with it on and off), so a folder resumes with it switched either way;
- `msl_anneal_iters` for algorithms other than `msl`, `pretrain_points` for other than `pretrain`
  (`ONLY_FOR`): nothing else reads them;
- torch threads where they change no number (learners with `thread_invariant`: the `func`,
  `generic` and `jax` engines running the suite's own rules and MLPs, bitwise the same at 1 and 2
  threads, tested; a plug-in rule or network keeps its threads in); for the per-task
  loops (learn2learn, higher, torch), which move by up to 7e-4 relative between 1 and 2
  threads, `threads` is in the fingerprint, so a resume with other `--threads` refuses there;
- the Python version.

Records made before `hardware` was recorded compare as "(not recorded)": a sweep refuses to
resume into them (their machine is unknown); reports and regression checks still read them.

A setting added after a record was written is compared at its default (a new setting's default
reproduces the behaviour from before it existed), or where its default does not, at its `added`
value (`config.ADDED_SETTINGS`): `seed_streams` is a key like any other setting, so a record's
streams are part of its fingerprint and `NUMERICS_VERSION` stays (no number changed: "offset"
computes what every record before the key computed, and "independent" records never match them);
a fingerprint without it was made with "offset", the streams of before. A committed folder
resumes under its sweep file, which pins "offset", and regress compares it with the candidate.
The fidelity settings (`init`, `n_eval_query`, `pretrain_points`) are keys the same way, each
absent from older fingerprints and read at its default, the behaviour of before; `n_query` enters
as the number of query points trained with (`"k"` resolved to the cell's K), so `"k"` at K = 10
is the fingerprint of `n_query = 10`.

Records written before fingerprints existed get one rebuilt from their stored cell, settings and
torch version, with no numerics version: they are never reused by a sweep of this version (the
numbers may have changed since).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

import algorithms
import tasks
from algorithms import NUMERICS_VERSION
from algorithms.network import BUILTIN_NETWORKS
from benchmarks.config import ADDED_SETTINGS, POOLED_KEYS, Cell, ConfigError, Settings
from benchmarks.hardware import hardware
from benchmarks.plugins import BUILTIN_SOURCE
from benchmarks.records import RecordError, identity, stored_cell, stored_settings
from tasks import get_task

NOT_RECORDED = "(not recorded)"
#: keys that may differ between records pooled into one number (seeds run on two machines or
#: thread counts) and between the sides of a regression check: far below the seed-to-seed
#: spread, within tolerance
EXECUTION_KEYS = ("hardware", "threads")
EXCLUDED_SETTINGS = ("ensemble", "device", "plugins", "tensorboard")  # device enters as its type
#: settings only some algorithms read (others' fingerprints leave them out): MSL's annealing, and the
#: settings declared `only_for` some algorithms (`pretrain_points`: pre-training's)
ONLY_FOR = {"msl_anneal_iters": ("msl",),
            **{f.name: f.metadata["only_for"] for f in fields(Settings) if "only_for" in f.metadata}}
LIBRARIES = {"l2l": ("learn2learn",), "higher": ("higher",), "jax": ("jax", "jaxlib")}  # backend -> packages
#: fingerprint key -> the cell key whose code it names, that registry's built-in names, its lookup
CODE_KEYS = {"code.algorithm": ("algorithm", algorithms.BUILTIN, algorithms.source_of),
             "code.task": ("task", tasks.BUILTIN, tasks.source_of),
             "code.network": ("network", BUILTIN_NETWORKS, algorithms.network_source_of)}
NOT_REGISTERED = "(not registered here)"


class FingerprintError(ConfigError):
    """Records made under other settings where the same numbers are expected; names the settings."""


def _jsonable(value):
    return json.loads(json.dumps(value))


def _task_params(cell: Cell, settings: Settings) -> dict:
    try:
        family = get_task(cell.task, k_shot=cell.k_shot, n_query=settings.query_points(cell.k_shot),
                          **settings.task_params)
    except (KeyError, ValueError, TypeError):
        return {f"task.{k}": v for k, v in settings.task_params.items()}
    if not dataclasses.is_dataclass(family):
        return {f"task.{k}": v for k, v in settings.task_params.items()}
    return {f"task.{k}": v for k, v in asdict(family).items() if k not in ("k_shot", "n_query")}


def _code(cell: Cell) -> dict:
    """The code keys of `cell`: those whose name is registered by other code than the suite's."""
    values = {}
    for key, (part, _, source_of) in CODE_KEYS.items():
        source = source_of(getattr(cell, part))
        if source != BUILTIN_SOURCE:
            values[key] = NOT_REGISTERED if source is None else source
    return values


def recorded_source(values: dict, key: str) -> str:
    """The code a fingerprint says made its cell's algorithm (`key` "code.algorithm") or task; absent:
    built in for a built-in name, else not recorded (a record from before sources were recorded)."""
    if key in values:
        return values[key]
    part, builtin, _ = CODE_KEYS[key]
    return BUILTIN_SOURCE if values.get(part) in builtin else NOT_RECORDED


@functools.cache
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _thread_invariant(cell: Cell) -> bool:
    """Whether the cell's numbers are tested to be the same at any thread count: its learner says
    so, for the suite's own rules and MLPs only. A plug-in rule or network runs ops of its own on
    those engines (a reduction over threads, e.g. LSLR's rates moved at 2 threads), so its
    threads stay in the fingerprint."""
    from algorithms import BUILTIN, get_learner_class
    from algorithms.network import NetworkSpec, as_spec

    if cell.algorithm not in BUILTIN:
        return False
    try:
        if not isinstance(as_spec(cell.network), NetworkSpec):
            return False
        return get_learner_class(cell.algorithm, cell.backend, cell.network).thread_invariant
    except KeyError:  # a network whose plug-in is not loaded here: assume the threads matter
        return False


def fingerprint(cell: Cell, settings: Settings, torch_version: str | None = None,
                numerics_version=NUMERICS_VERSION, threads: int | None = None) -> dict:
    """The flat, JSON-ready table of everything `cell`'s numbers depend on (see the module doc);
    `threads`: the torch threads its job runs with (default: this process's)."""
    values = {"numerics_version": numerics_version, "torch": torch_version or torch.__version__,
              "device": torch.device(settings.device).type, **asdict(cell)}
    if numerics_version != NOT_RECORDED:
        values["hardware"] = hardware(settings.device)
        if not _thread_invariant(cell):
            values["threads"] = threads or torch.get_num_threads()
    for f in fields(Settings):
        if f.name in EXCLUDED_SETTINGS or f.name == "task_params":
            continue
        if f.name in ONLY_FOR and cell.algorithm not in ONLY_FOR[f.name]:
            continue
        values[f.name] = getattr(settings, f.name)
    if "eval_k_shot" in values:  # the K actually evaluated: () and (K,) are the same evaluation
        values["eval_k_shot"] = sorted(set(settings.eval_k_shot) | {cell.k_shot})
    values["n_query"] = settings.query_points(cell.k_shot)  # the number trained with: "k" at K = 10 is 10
    values.update(_task_params(cell, settings))
    if numerics_version != NOT_RECORDED:  # a record from before fingerprints did not record them
        values.update({f"lib.{package}": _version(package) for package in LIBRARIES.get(cell.backend, ())})
        values.update(_code(cell))
    return _jsonable(values)


def _check_agrees_with_settings(record: dict) -> None:
    """A stored fingerprint must say what the record's own cell and settings say: a record edited
    by hand (or written by a buggy tool) in one place only is not trusted in either."""
    stored = record["fingerprint"]
    if not isinstance(record.get("settings"), dict):  # e.g. a planned record: nothing to disagree with
        return
    try:
        rebuilt = fingerprint(stored_cell(record), stored_settings(record),
                              numerics_version=stored.get("numerics_version", NOT_RECORDED))
    except (TypeError, ValueError, RuntimeError) as error:
        raise RecordError(f"run record {record.get('cell_id')}: cannot read its cell and settings: {error}") from None
    written = set(record["cell"]) | set(record.get("settings") or {}) | {"eval_k_shot", "device"}
    lines = [f"{key}: fingerprint {stored[key]!r}, {'cell' if key in record['cell'] else 'settings'} {rebuilt[key]!r}"
             for key in sorted(written & set(stored) & set(rebuilt)) if stored[key] != rebuilt[key]]
    if lines:
        raise RecordError(f"inconsistent run record {record.get('cell_id')}: its fingerprint disagrees with its own "
                          f"cell and settings ({'; '.join(lines)}); it was edited or written by another tool, "
                          f"delete it to retrain the cell")


def record_fingerprint(record: dict) -> dict:
    """The stored fingerprint, or for a record written before fingerprints one rebuilt from it."""
    if isinstance(record.get("fingerprint"), dict):
        _check_agrees_with_settings(record)
        return record["fingerprint"]
    try:
        return fingerprint(stored_cell(record), stored_settings(record),
                           torch_version=(record.get("environment") or {}).get("torch") or NOT_RECORDED,
                           numerics_version=NOT_RECORDED)
    except (TypeError, ValueError, RuntimeError) as error:
        raise RecordError(f"run record {record.get('cell_id')}: cannot read its cell and settings: {error}") from None


def differences(old: dict, new: dict, cell: Cell | None = None) -> list[str]:
    """`key: old -> new` for every key whose value differs; a key absent on one side is taken at
    the value that reproduces records from before it (`ADDED_SETTINGS`), else at its default (for
    `cell`), else shown as not recorded. An absent code key is read by `recorded_source` on its own
    side (never from this process's registrations)."""
    default = {**(fingerprint(cell, Settings()) if cell is not None else {}), **ADDED_SETTINGS}
    for key in EXECUTION_KEYS:  # never assumed: a record that does not name its machine is from an unknown one
        default.pop(key, None)
    lines = []
    for key in list(new) + [k for k in old if k not in new]:
        if key in CODE_KEYS:
            before, after = recorded_source(old, key), recorded_source(new, key)
        else:
            before = old.get(key, default.get(key, NOT_RECORDED))
            after = new.get(key, default.get(key, NOT_RECORDED))
        if before != after:
            lines.append(f"{key}: {before!r} -> {after!r}".replace(repr(NOT_RECORDED), NOT_RECORDED))
    return lines


def check_resumable(existing: dict[str, tuple[Path, dict]], cells: list[Cell], settings: Settings, out,
                    same_hardware: bool = True, threads: int | None = None) -> None:
    """Refuse (FingerprintError) when a finished record of one of `cells` was made under another
    fingerprint: its numbers are not this configuration's, and reusing them would be silent.

    `existing` is `records.scan_records(out)`. Failed records are retrained anyway and do not count.
    `same_hardware=False` (Ray: the workers, not this process, compute) leaves `hardware` uncompared;
    `threads`: the torch threads the sweep's jobs will run with. `compile = "auto"` is resolved
    over `cells` (`compile_choice.plan`): give all the sweep's cells, as its jobs are planned.
    """
    from benchmarks.compile_choice import settings_per_cell

    resolved = settings_per_cell(cells, settings)  # compile = "auto" as the sweep's jobs resolve it
    changed: dict[str, list[str]] = {}  # difference -> cell ids
    examples: list[Path] = []
    for cell in cells:
        found = existing.get(identity({"cell": asdict(cell)}))
        if found is None or found[1]["status"] not in ("ok", "diverged"):
            continue
        path, record = found
        old, new = record_fingerprint(record), fingerprint(cell, resolved(cell), threads=threads)
        if not same_hardware:
            old, new = ({k: v for k, v in fp.items() if k != "hardware"} for fp in (old, new))
        lines = differences(old, new, cell)
        for line in lines:
            changed.setdefault(line, []).append(cell.cell_id)
        if lines:
            examples.append(path)
    if changed:
        listed = "\n".join(f"  {line}  ({len(ids)} cell{'s' if len(ids) > 1 else ''})" for line, ids in changed.items())
        raise FingerprintError(
            f"{out} already holds records of {len(examples)} of these cells made under other settings "
            f"(e.g. {examples[0]}):\n{listed}\n"
            f"their numbers are not this configuration's: run into another --out, or delete those records "
            f"to retrain them there")


def check_poolable(records: list[dict], pooled_over: tuple[str, ...] = tuple(POOLED_KEYS)) -> None:
    """Raise RecordError when records that would be pooled into one number (same cell except
    `pooled_over`; `()` for copies of one cell) were made under different fingerprints.

    The message names the records and the differing settings. The report calls this before
    pooling seeds; `regress` calls it on each side. Failed records carry no numbers and are ignored.
    """
    groups: dict[str, list[dict]] = {}
    for record in records:
        if record.get("status") == "failed":
            continue
        key = json.dumps({k: v for k, v in record["cell"].items() if k not in pooled_over}, sort_keys=True)
        groups.setdefault(key, []).append(record)
    problems = []
    for group in groups.values():
        first = group[0]
        ignored = set(pooled_over) | set(EXECUTION_KEYS)
        base = {k: v for k, v in record_fingerprint(first).items() if k not in ignored}
        for other in group[1:]:
            theirs = {k: v for k, v in record_fingerprint(other).items() if k not in ignored}
            lines = differences(base, theirs)
            if lines:
                problems.append(f"  {first['cell_id']} and {other['cell_id']}: {'; '.join(lines)}")
    if problems:
        over = f" over {', '.join(pooled_over)}" if pooled_over else ""
        raise RecordError(f"cannot pool{over} records made under different settings:\n" + "\n".join(problems[:10])
                          + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""))
