"""The binary half of a record: the learned initialisation and every test task's error.

Beside each finished cell's JSON record, `OUT/runs/<cell_id>.npz` holds what the JSON's
means cannot give back:

* the learned initialisation and inner rates (`Adaptation`): a few thousand floats, enough
  to re-evaluate the cell under any other evaluation protocol without retraining
  (`benchmarks.reevaluate`);
* each evaluation task's query metric (the record's `metric`: MSE for the sine families,
  accuracy for classification; "errors" below) after 0..N adaptation steps at the final
  iteration, for every split and eval K: what medians, interquartile means, bootstrap intervals, blow-up
  rates and paired comparisons between algorithms (scored on the same tasks) are computed from.

It is written (atomically) before its JSON record, so a JSON record that names it can rely on it.
Read back (`read`, `load_artifacts`), it is untrusted input like the whole results folder: no
pickles, headers checked before data, only what `to_bytes` writes, and its per-task errors must
say what the record says (steps, tasks, sets, each step's mean within float16 rounding, MEAN_RTOL),
so a damaged store cannot silently change a median, IQM or blow-up rate while the means (from the
JSON) stay right. Any failure is a RecordError naming the file (exit 2).

Storage precision (a decision: the committed results must stay small). Per-task errors are
stored as float16, i.e. 11 significant bits: relative rounding error <= 2^-11 = 4.9e-4 (the
committed stores' step means sit within 3.3e-4 of the full-precision ones), far below any
interval this suite reports. Values float16 cannot hold to that precision (above
65504, or below its normal range 6.1e-5, but non-zero) are kept exactly as float32 beside
it, so blow-ups keep their magnitude. The means in the JSON record are computed from the
full-precision errors; `re-evaluate` recomputes full-precision errors from the stored
initialisation whenever more digits are needed. Parameters are stored exactly (float32).
"""
from __future__ import annotations

import io
import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from algorithms.base import Adaptation
from algorithms.network import DEFAULT_NETWORK, as_spec

SUFFIX = ".npz"
_F16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
_F16_MAX = float(np.finfo(np.float16).max)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Artifacts:
    """What `OUT/runs/<cell_id>.npz` holds (see the module docstring)."""

    params: list[np.ndarray]
    lrs: list  # per parameter: None (not adapted), a float (LR_base) or an array (learned rates)
    errors: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (split, K) -> [steps + 1, tasks]
    n_sets: dict[str, int] = field(default_factory=dict)  # split -> independent sets, set-major in `errors`
    zero_mse: dict[tuple[str, int], float] = field(default_factory=dict)  # (split, K) -> MSE of predicting 0
    extra: list[np.ndarray] = field(default_factory=list)  # a custom rule's learned extra meta-parameters
    #: the untrained network's MSE on zero targets (`benchmarks.job.untrained_mse`), part of the blow-up
    #: yardstick (`statistics.error_scale`); NaN in files written before it was kept
    untrained_mse: float = float("nan")

    def adaptation(self, device: str | torch.device = "cpu", network=DEFAULT_NETWORK, rule=None,
                   hp=None) -> Adaptation:
        """The initialisation as the shared evaluation takes it (float32 tensors on `device`);
        `network`, and for an algorithm with a rule of its own `rule` and `hp`, come from the cell."""
        params = [torch.as_tensor(p, device=device) for p in self.params]
        lrs = [lr if lr is None or isinstance(lr, float) else torch.as_tensor(lr, device=device) for lr in self.lrs]
        if rule is None or rule.fast_update is not None:  # SGD with `lrs` says everything
            return Adaptation(params, lrs, network=as_spec(network))
        return Adaptation(params, lrs, network=as_spec(network), rule=rule, hp=hp,
                          extra=[torch.as_tensor(e, device=device) for e in self.extra])


def path_for(runs_dir: Path, cell_id: str) -> Path:
    return Path(runs_dir) / f"{cell_id}{SUFFIX}"


def from_adaptation(adaptation: Adaptation) -> Artifacts:
    """Artifacts without errors yet, from a learner's `adaptation()` (copied to host memory)."""
    params = [p.detach().cpu().numpy().copy() for p in adaptation.params]
    lrs = [lr if lr is None else float(lr) if not isinstance(lr, torch.Tensor) else lr.detach().cpu().numpy().copy()
           for lr in adaptation.lrs]
    return Artifacts(params, lrs, extra=[e.detach().cpu().numpy().copy() for e in adaptation.extra])


# -- encoding ------------------------------------------------------------------------------

def _encode_errors(values: np.ndarray) -> dict[str, np.ndarray]:
    """float16 where it keeps 11 significant bits; the rest exactly, as (flat index, float32)."""
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):  # overflowing entries are kept exactly below
        half = values.astype(np.float16)
    magnitude = np.abs(values)
    exact = np.isfinite(values) & ((magnitude > _F16_MAX) | ((magnitude < _F16_MIN_NORMAL) & (magnitude > 0)))
    index = np.flatnonzero(exact).astype(np.int64)
    return {"half": half, "index": index, "exact": values.reshape(-1)[index]}


def _decode_errors(half: np.ndarray, index: np.ndarray, exact: np.ndarray) -> np.ndarray:
    values = half.astype(np.float64)
    values.reshape(-1)[index] = exact
    return values


def _key(split: str, k: int) -> str:
    return f"{split}_K{k}"


def to_bytes(artifacts: Artifacts) -> bytes:
    """A compressed .npz: parameters p<i>, rates r<i> (absent: None; 0-dim: a float), errors per (split, K)."""
    arrays: dict[str, np.ndarray] = {}
    for i, p in enumerate(artifacts.params):
        arrays[f"p{i}"] = np.asarray(p, dtype=np.float32)
    for i, lr in enumerate(artifacts.lrs):
        if lr is not None:
            arrays[f"r{i}"] = np.asarray(lr, dtype=np.float64 if isinstance(lr, float) else np.float32)
    for (split, k), values in artifacts.errors.items():
        for part, array in _encode_errors(values).items():
            arrays[f"errors_{part}_{_key(split, k)}"] = array
        arrays[f"zero_mse_{_key(split, k)}"] = np.float64(artifacts.zero_mse.get((split, k), np.nan))
    for split, n in artifacts.n_sets.items():
        arrays[f"n_sets_{split}"] = np.int64(n)
    for i, e in enumerate(artifacts.extra):
        arrays[f"e{i}"] = np.asarray(e, dtype=np.float32)
    arrays["n_params"] = np.int64(len(artifacts.params))
    if np.isfinite(artifacts.untrained_mse):  # absent in every file written before it was kept
        arrays["untrained_mse"] = np.float64(artifacts.untrained_mse)
    if artifacts.extra:  # absent in every file written before custom rules existed
        arrays["n_extra"] = np.int64(len(artifacts.extra))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Artifacts:
    """The artifacts `to_bytes` wrote, structurally checked (ValueError on anything else)."""
    return _parse(io.BytesIO(data))


# -- reading untrusted files ---------------------------------------------------------------
# A results folder may come from anyone: a file is read as data only (no pickles), its members'
# headers are checked before their data is read (a crafted header must not allocate terabytes),
# every member must be one `to_bytes` writes (a member added there must be added to `_MEMBER`),
# and the per-task errors must agree with the JSON record they belong to (`check_against`).

SPLITS = ("validation", "test")  # the evaluation splits (`benchmarks.job.evaluation_sets`)
_MEMBER = re.compile(r"[pre](0|[1-9][0-9]{0,5})|n_params|n_extra|untrained_mse|n_sets_(validation|test)"
                     r"|(errors_half|errors_index|errors_exact|zero_mse)_(validation|test)_K[1-9][0-9]{0,6}")
MAX_BYTES = 1 << 30  # every member of one file together, uncompressed; the suite's largest is ~1 MB
#: How far a stored step's mean may sit from the record's full-precision mean: float16 keeps 11
#: significant bits (each error within 2^-11 of itself, relatively), the float32 mean adds ~1e-7;
#: twice the rounding as margin. A store with errors changed by more than 0.1% on average fails.
MEAN_RTOL = 2.0 ** -10


class StoreError(ValueError):
    """A store file that is not what `to_bytes` writes, or disagrees with its record."""


def _scalar(arrays: dict, name: str, kinds: str):
    value = arrays[name]
    if value.ndim != 0 or value.dtype.kind not in kinds:
        raise StoreError(f"{name} must be a single {'integer' if kinds == 'iu' else 'number'}, "
                         f"got {value.dtype} of shape {value.shape}")
    return value.item()


def _count(arrays: dict, name: str, prefix: str) -> int:
    """How many `prefix<i>` members there are: `name` says so, and exactly those exist."""
    n = _scalar(arrays, name, "iu") if name in arrays else 0
    present = {int(key[1:]) for key in arrays if key[0] == prefix and key[1:].isdigit()}
    if len(present) != n or (present and max(present) != n - 1):  # i.e. present == {0, ..., n - 1}
        raise StoreError(f"{name} = {n}, but the file holds {prefix}<i> for i in {sorted(present)[:10]}")
    return n


def _headers(npz) -> dict[str, tuple[tuple, np.dtype]]:
    """Every member's shape and dtype, from its header alone; numbers only, MAX_BYTES in all."""
    found, total = {}, 0
    for member in npz.zip.namelist():
        name = member.removesuffix(".npy")
        if name == member or not _MEMBER.fullmatch(name):
            raise StoreError(f"unexpected member {member!r} (a store holds p<i>, r<i>, e<i>, errors_*, zero_mse_*, "
                             "n_sets_*, n_params, n_extra, untrained_mse)")
        with npz.zip.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise StoreError(f"{name}: unsupported array format version {version}")
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(handle)
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "fiu":
            raise StoreError(f"{name} holds {dtype} values, not plain numbers")
        total += math.prod(shape) * dtype.itemsize
        if total > MAX_BYTES:
            raise StoreError(f"its arrays declare more than {MAX_BYTES >> 20} MiB")
        found[name] = (shape, dtype)
    return found


def _parse(source, expected: dict | None = None) -> Artifacts:
    """Artifacts from a path or file object, checked member by member (StoreError; what numpy
    raises on a damaged file passes through). `expected`: (split, K) -> the errors' shape, checked
    on the headers, before the data is read."""
    npz = np.load(source, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise StoreError("not an .npz archive (a single array)")
    with npz:
        headers = _headers(npz)
        if expected is not None:
            stored = {name for name in headers if name.startswith("errors_half_")}
            wanted = {f"errors_half_{split}_K{k}" for split, k in expected}
            if stored != wanted:
                raise StoreError(f"its errors are not the record's final evaluations: only in the store "
                                 f"{sorted(stored - wanted) or 'none'}, "
                                 f"only in the record {sorted(wanted - stored) or 'none'}")
            for (split, k), shape in expected.items():
                name = f"errors_half_{split}_K{k}"
                if headers[name][0] != shape:
                    raise StoreError(f"{name} has shape {headers[name][0]}, but the record has {shape[0]} steps "
                                     f"x {shape[1]} tasks at {split} K={k}")
        arrays = {name: npz[name] for name in headers}
    for name, value in arrays.items():
        if name[0] in "pre" and name[1:].isdigit() and value.dtype.kind != "f":
            raise StoreError(f"{name} must hold floats, got {value.dtype}")
    if "n_params" not in arrays:
        raise StoreError("n_params is missing")
    n = _count(arrays, "n_params", "p")
    params = [arrays[f"p{i}"] for i in range(n)]
    lrs = []
    for i in range(n):
        rate = arrays.get(f"r{i}")
        if rate is not None and rate.ndim and rate.shape != params[i].shape:
            raise StoreError(f"r{i} has shape {rate.shape}, its parameter p{i} {params[i].shape}")
        lrs.append(None if rate is None else float(rate) if rate.ndim == 0 else rate)
    if any(int(key[1:]) >= n for key in arrays if key[0] == "r" and key[1:].isdigit()):
        raise StoreError(f"a rate r<i> without its parameter (n_params = {n})")
    extra = [arrays[f"e{i}"] for i in range(_count(arrays, "n_extra", "e"))]
    errors, zero, n_sets = {}, {}, {}
    keys = {name.split("_", 2)[2] for name in arrays if name.startswith("errors_")} | \
        {name[len("zero_mse_"):] for name in arrays if name.startswith("zero_mse_")}
    for key in sorted(keys):
        parts = [f"errors_half_{key}", f"errors_index_{key}", f"errors_exact_{key}", f"zero_mse_{key}"]
        missing = [name for name in parts if name not in arrays]
        if missing:
            raise StoreError(f"{missing[0]} is missing beside {[p for p in parts if p in arrays][0]}")
        half, index, exact = (arrays[name] for name in parts[:3])
        if half.ndim != 2 or index.ndim != 1 or exact.ndim != 1 or index.dtype.kind not in "iu" \
                or len(index) != len(exact):
            raise StoreError(f"errors of {key}: expected [steps, tasks] floats and as many integer indices as exact "
                             f"values, got shapes {half.shape}, {index.shape} ({index.dtype}), {exact.shape}")
        if len(index) and not (0 <= index.min() and index.max() < half.size):
            raise StoreError(f"errors_index_{key} points outside its {half.size} errors")
        values = _decode_errors(half, index, exact)
        if (values < 0).any():  # NaN compares false: a NaN error stays (a task that blew up)
            raise StoreError(f"errors of {key} include negative values (MSE and accuracy are >= 0)")
        split, k = key.rsplit("_K", 1)
        errors[(split, int(k))] = values
        zero[(split, int(k))] = float(_scalar(arrays, f"zero_mse_{key}", "f"))
    for split in SPLITS:
        if f"n_sets_{split}" in arrays:
            n_sets[split] = _scalar(arrays, f"n_sets_{split}", "iu")
            if n_sets[split] < 1 or not any(s == split for s, _ in errors):
                raise StoreError(f"n_sets_{split} = {n_sets[split]} without {split} errors to split into sets")
    untrained = float(_scalar(arrays, "untrained_mse", "f")) if "untrained_mse" in arrays else float("nan")
    return Artifacts(params, lrs, errors, n_sets, zero, extra, untrained)


def final_rows(record: dict) -> dict[tuple[str, int], dict[int, dict]]:
    """(split, K) -> step -> the record's evaluation row at the final iteration (what the store holds)."""
    final = record["cell"]["iterations"]
    rows: dict[tuple[str, int], dict[int, dict]] = {}
    for row in record.get("evaluations") or []:
        if row["iteration"] == final:
            rows.setdefault((row["split"], row["eval_k_shot"]), {})[row["eval_steps"]] = row
    return rows


def _means_agree(values: np.ndarray, recorded: float) -> bool:
    """A step's stored errors against the record's mean of the same errors at full precision."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(values.mean())
        if math.isnan(recorded) or math.isnan(mean):
            return math.isnan(recorded) and math.isnan(mean)
        if math.isinf(recorded):  # the float32 mean overflows where the float64 one may not
            return mean == recorded or float(np.abs(values).sum()) > _F32_MAX
        return abs(mean - recorded) <= MEAN_RTOL * float(np.abs(values).mean())


def check_against(found: Artifacts, record: dict) -> None:
    """The store says what its record says (StoreError): the same (split, K)s, [steps + 1, tasks]
    per (split, K) with the record's steps and task count, its sets, and each step's mean within
    float16 rounding of the record's."""
    from benchmarks.records import record_metric

    column = record_metric(record).name  # the per-task values are the record's metric
    rows = final_rows(record)
    if set(found.errors) != set(rows):
        only_store, only_record = sorted(set(found.errors) - set(rows)), sorted(set(rows) - set(found.errors))
        raise StoreError(f"its (split, K)s differ from the record's final evaluations: only in the store "
                         f"{only_store or 'none'}, only in the record {only_record or 'none'}")
    for (split, k), steps in rows.items():
        values = found.errors[(split, k)]
        tasks = {row["n_test_tasks"] for row in steps.values()}
        if sorted(steps) != list(range(len(steps))) or len(tasks) != 1:
            raise StoreError(f"the record's final {split} rows at K={k} are not steps 0..N of one task count")
        if values.shape != (len(steps), tasks.pop()):
            raise StoreError(f"{split} K={k}: the store holds {values.shape[0]} steps x {values.shape[1]} tasks, "
                             f"the record {len(steps)} steps x {steps[0]['n_test_tasks']} tasks")
        sets = steps[0].get("n_sets")
        if sets is not None and found.n_sets.get(split, sets) != sets:
            raise StoreError(f"{split}: the store holds {found.n_sets[split]} sets, the record {sets}")
        for step, row in steps.items():
            if not _means_agree(values[step], row[column]):
                raise StoreError(f"{split} K={k} step {step}: the stored values average "
                                 f"{float(values[step].mean()):.7g}, the record's mean is {row[column]!r}")


def expected_shapes(record: dict) -> dict[tuple[str, int], tuple[int, int]]:
    return {key: (len(steps), next(iter(steps.values()))["n_test_tasks"]) for key, steps in final_rows(record).items()}


def read(path: Path, record: dict | None = None) -> Artifacts:
    """The store at `path`, checked (and against `record`, when given); RecordError naming the file.

    Read errors of the machine (no permission, an I/O error) pass through as OSError."""
    from benchmarks.records import RecordError

    path = Path(path)
    try:
        if not path.is_file():
            raise StoreError("not a regular file")
        found = _parse(path, expected_shapes(record) if record is not None else None)
        if record is not None:
            check_against(found, record)
        return found
    except OSError as error:
        if error.errno is not None:
            raise
        problem = f"{type(error).__name__}: {error}"
    except StoreError as error:
        problem = str(error)
    except (ValueError, EOFError, KeyError, RuntimeError, NotImplementedError, struct.error, zipfile.BadZipFile,
            zlib.error) as error:  # what numpy and zipfile raise on damaged data
        problem = f"unreadable ({type(error).__name__}: {error})"
    raise RecordError(f"corrupt or inconsistent artifacts file {path}: {problem} (delete it and its record "
                      f"{path.with_suffix('.json').name} to retrain the cell)")


def load_artifacts(runs_dir: Path, record: dict) -> Artifacts | None:
    """The record's artifacts, checked against the record (`read`), or None for a record made
    before they existed. `record` is one `benchmarks.records.read_record` validated: its
    `artifacts` names `<cell_id>.npz` inside `runs_dir`."""
    name = record.get("artifacts")
    if not name:
        return None
    return read(Path(runs_dir) / name, record)


def load_task_errors(out: Path, records: list[dict]) -> dict[str, Artifacts]:
    """cell_id -> Artifacts for every `ok` record that has them (older folders: none)."""
    runs = Path(out) / "runs"
    found = {}
    for record in records:
        if record.get("status") == "ok":
            artifacts = load_artifacts(runs, record)
            if artifacts is not None:
                found[record["cell_id"]] = artifacts
    return found
