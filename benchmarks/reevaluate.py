"""Re-evaluate finished cells from their stored initialisation, without retraining.

Every `ok` record keeps its learned initialisation (and learned rates) in its artifacts, so
a new statistic, a larger test set or another query protocol costs an evaluation (seconds),
never a retraining. `re-evaluate SRC --out DST --set n_test_sets=10` writes to DST a copy of
every record of SRC with its final evaluation recomputed under the new evaluation settings;
training-side settings cannot change (they would describe another training run).
Intermediate evaluations (`eval_every`) are not kept: only the final weights are stored.
Diverged and failed records are copied unchanged.

SRC is untrusted input: its records and stores are validated on read (`benchmarks.records`,
`benchmarks.artifacts`), each record's cell and settings (with the overrides) within the sweep
limits, each store against the shapes the cell's learner holds (`check_fits`), all before DST is
created. Resumable like `run`: rerunning the same command into DST keeps what an interrupted run
finished and re-evaluates the rest (`finished_before`; a DST holding anything else is refused);
an unfinished DST carries PARTIAL_MARKER, which `report` states in its header.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from algorithms import RULES, get_algorithm
from algorithms.network import sized
from benchmarks import artifacts as store
from benchmarks.config import Cell, ConfigError, Settings, cell_family, cell_from_dict, ensemble_key, parse_override
from benchmarks.fingerprint import NOT_RECORDED, differences, fingerprint
from benchmarks.job import evaluation_sets, evaluate_sets, zero_predictor_mse
from benchmarks.records import (PARTIAL_MARKER, RecordError, fsync_dir, identity, load_records, read_partial_marker,
                                record_metric, record_settings, runs_dir, scan_records, write_atomic, write_record)
from benchmarks.signals import Interrupted, deferred
from tasks.problem import problem_of

#: the settings a re-evaluation may change: they describe the evaluation, not the training
EVALUATION_KEYS = ("eval_steps", "eval_k_shot", "n_test_tasks", "n_test_sets", "n_validation_tasks", "n_eval_query",
                   "device")


def settings_from_record(record: dict, limits: dict | None = None) -> Settings:
    """The record's settings, validated like a sweep's (`records.record_settings`, ConfigError)."""
    return record_settings(record.get("settings", {}), limits)


def evaluation_overrides(texts: list[str]) -> dict:
    """`--set` values for the evaluation keys, validated as a sweep would validate them."""
    from benchmarks.config import parse_sweep

    raw = {}
    for text in texts:
        key, value = parse_override(text)
        if key not in EVALUATION_KEYS:
            raise ConfigError(f"re-evaluate cannot change {key!r} (it changes training, so retrain); "
                              f"evaluation keys: {', '.join(EVALUATION_KEYS)}")
        raw[key] = value
    if not raw:
        return {}
    checked = parse_sweep({"algorithm": "maml", "backend": "func", **raw}).settings  # validation only
    return {key: getattr(checked, key) for key in raw}


def reevaluate_record(src_runs: Path, record: dict, overrides: dict, limits: dict | None = None) -> dict:
    """A copy of an `ok` record with its final evaluation recomputed under `overrides`."""
    found = store.load_artifacts(src_runs, record)
    if found is None:
        raise ConfigError(f"record {record['cell_id']} has no stored initialisation (made before artifacts "
                          "existed): it can only be retrained")
    cell = cell_from_dict(record["cell"], limits)
    settings = replace(settings_from_record(record, limits), **overrides)
    device = torch.device(settings.device)
    family = cell_family(cell, settings)
    sets = evaluation_sets(family, settings, sorted(set(settings.eval_k_shot) | {cell.k_shot}), device)
    problem = problem_of(family)
    if problem.metric != record_metric(record):
        raise ConfigError(f"record {record['cell_id']} reports {record_metric(record).name}, but task "
                          f"{cell.task!r} here reports {problem.metric.name}: not the task it was trained on")
    adaptation = found.adaptation(device, network=sized(cell.network, family), rule=RULES.get(cell.algorithm),
                                  hp=cell.hyperparams(settings.msl_anneal_iters or None))
    rows, errors = evaluate_sets(adaptation, sets, settings.eval_steps, cell.iterations, problem)
    new = copy.deepcopy(record)
    new.pop("artifacts", None)
    new["metric"] = problem.metric.declaration()
    found.errors, found.zero_mse = errors, zero_predictor_mse(sets, problem)
    found.n_sets = {split: len(batches) for (split, _), batches in sets.items()}
    new.update(settings=asdict(settings), fingerprint=_fingerprint(record, cell, settings), evaluations=rows,
               _artifacts=found,
               reevaluated={"from": str(src_runs.parent), "changed": {k: _plain(v) for k, v in overrides.items()}})
    return new


def _fingerprint(record: dict, cell: Cell, settings: Settings) -> dict:
    """This evaluation's fingerprint; its `hardware` names the training machine too when it differs
    (the weights were trained there, the new numbers computed here)."""
    stored = record.get("fingerprint") or {}
    new = fingerprint(cell, settings, threads=stored.get("threads"))  # training's threads: it made the weights
    trained = stored.get("hardware", NOT_RECORDED)
    if trained != new["hardware"]:
        new["hardware"] = f"trained on {trained}; evaluated on {new['hardware']}"
    return new


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_code(records: list[dict]) -> None:
    """Refuse (PluginError, exit 2) unless what is registered here under each finished record's
    algorithm and task is the code that made it (its fingerprint's `code.*`, built in when absent):
    never re-evaluate with another rule. A results folder is data: the plug-ins its records name
    are never imported, the user passes them with --plugin. A record of a plug-in made before
    sources were recorded accepts the plug-in it names, matched by file (or module) name."""
    from benchmarks.config import ADDED_CELL_KEYS
    from benchmarks.fingerprint import CODE_KEYS, NOT_RECORDED, recorded_source
    from benchmarks.plugins import BUILTIN_SOURCE, PluginError

    def named(record) -> list[str]:  # only read, never imported
        settings = record.get("settings")
        listed = settings.get("plugins") if isinstance(settings, dict) else None
        return [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []

    problems = []
    for record in (r for r in records if r["status"] == "ok"):
        fingerprint = record.get("fingerprint")
        values = {**record["cell"], **(fingerprint if isinstance(fingerprint, dict) else {})}
        names = set(named(record)) | {Path(p).name for p in named(record)}  # a module, or a file by its name
        for key, (part, _, source_of) in CODE_KEYS.items():
            name = record["cell"].get(part, ADDED_CELL_KEYS.get(part))  # a record before `network`: Finn's
            needed = recorded_source({**ADDED_CELL_KEYS, **values}, key)
            here = source_of(name) if isinstance(name, str) else None
            if here == needed or (needed == NOT_RECORDED and here not in (None, BUILTIN_SOURCE)
                                  and here.split(" sha256:")[0] in names):
                continue
            made = "code not recorded" if needed == NOT_RECORDED else needed
            problems.append(f"record {record['cell_id']} was made by {part} {name!r} ({made}), but here {name!r} is "
                            + ("not registered" if here is None else f"registered by {here}"))
    if problems:
        listed = sorted({p for r in records for p in named(r)})
        raise PluginError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                          + f"; its records name the plug-ins {listed or 'none'}: pass the ones that made them with "
                          "--plugin (re-evaluate never imports code a results folder names)")


def _json(value) -> str:
    """One spelling for comparing what JSON holds (tuples are lists; NaN equals NaN)."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _record_file(runs: Path, record: dict) -> Path:
    return runs / f"{record['cell_id']}.json"


_SHAPES: dict = {}  # ensemble key -> what a fresh learner's store holds (its shapes do not depend on seed or rates)


def check_fits(found: store.Artifacts, cell: Cell, settings: Settings, path: Path) -> None:
    """The stored initialisation has the shapes the cell's learner adapts (RecordError naming the
    file): what a freshly built learner of the cell holds, parameter by parameter, rate by rate."""
    key = ensemble_key(cell)
    if key not in _SHAPES:
        learner = get_algorithm(cell.algorithm, cell.backend, cell.hyperparams(settings.msl_anneal_iters or None),
                                torch.Generator().manual_seed(0), network=cell.network)
        fresh = store.from_adaptation(learner.adaptation())
        _SHAPES[key] = _shapes(fresh)
    params, rates, extra = _SHAPES[key]
    stored = _shapes(found)
    for name, want, have in zip(("p", "r", "e"), (params, rates, extra), stored):
        if want != have:
            i = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            raise RecordError(f"corrupt or inconsistent artifacts file {path}: {name}{i} is "
                              f"{have[i] if i < len(have) else 'missing'}, but {cell.algorithm} on {cell.backend} "
                              f"with network {cell.network} holds {want[i] if i < len(want) else 'nothing there'} "
                              f"({len(want)} in all)")


def _shapes(found: store.Artifacts) -> tuple[list, list, list]:
    return [p.shape for p in found.params], [_kind(lr) for lr in found.lrs], [e.shape for e in found.extra]


def _kind(rate) -> str | tuple:
    """A rate as `check_fits` compares it: absent, one float, or an array's shape."""
    return "none" if rate is None else "float" if isinstance(rate, float) else tuple(rate.shape)


def check_inputs(src: Path, records: list[dict], overrides: dict, limits: dict | None = None) -> None:
    """Everything a re-evaluation will read, checked before anything is written (RecordError
    naming the file): each record's cell as a sweep checks it, its settings with the overrides
    within the limits, its store against the record and against the cell's network."""
    runs = runs_dir(src)
    for record in records:
        if record["status"] != "ok":
            continue
        try:
            cell = cell_from_dict(record["cell"], limits)
            settings = replace(settings_from_record(record, limits), **overrides)
            record_settings(json.loads(_json(asdict(settings))), limits)  # the overrides within the limits too
        except ConfigError as error:
            raise RecordError(f"invalid run record {_record_file(runs, record)}: {error}") from None
        found = store.load_artifacts(runs, record)
        check_fits(found, cell, settings, store.path_for(runs, record["cell_id"]))


def finished_before(src: Path, dst: Path, records: list[dict], overrides: dict, limits: dict | None = None) -> set[str]:
    """The cell ids DST already holds from an earlier run of this same re-evaluation (resumed, not
    redone). Anything else in DST is refused (ConfigError naming the file): a record that is not
    one of SRC's, one re-evaluated under other settings or on another fingerprint (another torch,
    another machine: its numbers would not be this run's), or a store that does not match."""
    by_identity = {identity(r): r for r in records}
    changed = _json({k: _plain(v) for k, v in overrides.items()})
    done = set()
    for path, have in scan_records(dst, limits).values():
        source = by_identity.get(identity(have))
        problem = None
        if source is None:
            problem = f"is not a record of {src}"
        elif source["status"] != "ok":
            same = _json(have) == _json(source)
            problem = None if same else f"differs from its source {_record_file(runs_dir(src), source)}"
        else:
            # `metric`: a re-evaluation writes it; a source made before records named it is MSE
            ignored = {"settings", "fingerprint", "evaluations", "artifacts", "reevaluated", "metric"}
            cell = cell_from_dict(source["cell"], limits)
            settings = replace(settings_from_record(source, limits), **overrides)
            made = have.get("reevaluated") if isinstance(have.get("reevaluated"), dict) else {}
            if _json({k: v for k, v in have.items() if k not in ignored}) != \
                    _json({k: v for k, v in source.items() if k not in ignored}) \
                    or record_metric(have) != record_metric(source):
                problem = f"is not a re-evaluation of {_record_file(runs_dir(src), source)} (its training differs)"
            elif _json(made.get("changed")) != changed or _json(have.get("settings")) != _json(asdict(settings)):
                problem = (f"was re-evaluated with {_json(made.get('changed'))}, this command asks {changed}")
            else:
                lines = differences(have.get("fingerprint") or {}, _fingerprint(source, cell, settings), cell)
                if lines:
                    problem = f"was re-evaluated under another fingerprint ({'; '.join(lines[:3])})"
                elif have.get("artifacts"):
                    store.load_artifacts(path.parent, have)
        if problem:
            raise ConfigError(f"{path} {problem}; re-evaluate into a new folder, or into the folder of an "
                              f"interrupted run of this same command to finish it")
        done.add(have["cell_id"])
    return done


def reevaluate(src: Path, dst: Path, overrides: dict, progress=print, prepare=None,
               limits: dict | None = None) -> list[dict]:
    """Re-evaluate every record of SRC into DST; `prepare(dst)` runs once every input is checked.

    Resumable like `run`: records DST already holds from an interrupted run of the same command
    are kept (`finished_before`), the rest are re-evaluated, each written whole (its store, then its
    JSON, signals deferred). While DST is incomplete it holds PARTIAL_MARKER (the source's record
    count, the overrides), which `report` shows ("partial re-evaluation: N of M records"); it goes
    when the last record is written. An `Interrupted` carries `finished` and `total` (records).
    Returns the records written now.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ConfigError("re-evaluate writes a new folder: --out must differ from the source folder")
    records = load_records(src, limits)
    check_code(records)  # before anything is read further or written
    missing = [r["cell_id"] for r in records if r["status"] == "ok" and not r.get("artifacts")]
    if missing:
        raise ConfigError(f"{len(missing)} record(s) in {src} have no stored initialisation (e.g. {missing[0]}); "
                          "they were made before artifacts existed and can only be retrained")
    partial = read_partial_marker(src)
    if partial is not None:
        raise ConfigError(f"{src} is a partial re-evaluation ({len(records)} of {partial['records']} records, "
                          f"{src / PARTIAL_MARKER}): finish it first by rerunning the command that made it")
    check_inputs(src, records, overrides, limits)
    done = finished_before(src, dst, records, overrides, limits)
    if prepare is not None:
        prepare(dst)
    todo = [r for r in records if r["cell_id"] not in done]
    written, finished = [], len(records) - len(todo)
    try:
        if todo:
            write_atomic(dst / PARTIAL_MARKER, json.dumps({
                "records": len(records), "from": str(src),
                "changed": {k: _plain(v) for k, v in overrides.items()}}))
        for record in todo:
            new = reevaluate_record(src / "runs", record, overrides, limits) if record["status"] == "ok" else record
            with deferred():  # the store and its JSON as one unit
                write_record(dst, new)
            written.append(new)
            finished += 1
            progress(f"[{finished}/{len(records)}] {record['cell_id']}: {record['status']}")
    except Interrupted as interrupt:
        interrupt.finished, interrupt.total = finished, len(records)
        raise
    if (dst / PARTIAL_MARKER).exists() or (dst / PARTIAL_MARKER).is_symlink():
        (dst / PARTIAL_MARKER).unlink()
        fsync_dir(dst)
    if done:
        progress(f"{len(done)} of {len(records)} records were re-evaluated before (kept)")
    return written
