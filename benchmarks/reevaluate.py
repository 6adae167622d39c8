"""Re-evaluate finished cells from their stored initialisation, without retraining.

Every `ok` record keeps its learned initialisation (and learned rates) in its artifacts, so
a new statistic, a larger test set or another query protocol costs an evaluation (seconds),
never a retraining. `re-evaluate SRC --out DST --set n_test_sets=10` writes to DST a copy of
every record of SRC with its final evaluation recomputed under the new evaluation settings;
training-side settings cannot change (they would describe another training run).
Intermediate evaluations (`eval_every`) are not kept: only the final weights are stored.
Diverged and failed records are copied unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from algorithms import RULES
from benchmarks import artifacts as store
from benchmarks.config import Cell, ConfigError, Settings, parse_override
from benchmarks.fingerprint import NOT_RECORDED, fingerprint
from benchmarks.job import _family, evaluation_sets, evaluate_sets, zero_predictor_mse
from benchmarks.records import load_records, write_record

#: the settings a re-evaluation may change: they describe the evaluation, not the training
EVALUATION_KEYS = ("eval_steps", "eval_k_shot", "n_test_tasks", "n_test_sets", "n_validation_tasks", "device")


def settings_from_record(record: dict) -> Settings:
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in record["settings"].items() if k in known}
    values["eval_k_shot"] = tuple(values.get("eval_k_shot", ()))
    return Settings(**values)


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


def reevaluate_record(src_runs: Path, record: dict, overrides: dict) -> dict:
    """A copy of an `ok` record with its final evaluation recomputed under `overrides`."""
    found = store.load_artifacts(src_runs, record)
    if found is None:
        raise ConfigError(f"record {record['cell_id']} has no stored initialisation (made before artifacts "
                          "existed): it can only be retrained")
    cell = Cell(**record["cell"])
    settings = replace(settings_from_record(record), **overrides)
    device = torch.device(settings.device)
    family = _family(cell, settings)
    sets = evaluation_sets(family, settings, sorted(set(settings.eval_k_shot) | {cell.k_shot}), device)
    adaptation = found.adaptation(device, network=cell.network, rule=RULES.get(cell.algorithm),
                                  hp=cell.hyperparams(settings.msl_anneal_iters or None))
    rows, errors = evaluate_sets(adaptation, sets, settings.eval_steps, cell.iterations)
    new = copy.deepcopy(record)
    new.pop("artifacts", None)
    found.errors, found.zero_mse = errors, zero_predictor_mse(sets)
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


def reevaluate(src: Path, dst: Path, overrides: dict, progress=print, prepare=None) -> list[dict]:
    """Re-evaluate every record of SRC into DST; `prepare(dst)` runs once every input is checked."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ConfigError("re-evaluate writes a new folder: --out must differ from the source folder")
    records = load_records(src)
    missing = [r["cell_id"] for r in records if r["status"] == "ok" and not r.get("artifacts")]
    if missing:
        raise ConfigError(f"{len(missing)} record(s) in {src} have no stored initialisation (e.g. {missing[0]}); "
                          "they were made before artifacts existed and can only be retrained")
    if prepare is not None:
        prepare(dst)
    written = []
    for i, record in enumerate(records, 1):
        new = reevaluate_record(src / "runs", record, overrides) if record["status"] == "ok" else record
        write_record(dst, new)
        written.append(new)
        progress(f"[{i}/{len(records)}] {record['cell_id']}: {record['status']}")
    return written
