"""The binary half of a record: the learned initialisation and every test task's error.

Beside each finished cell's JSON record, `OUT/runs/<cell_id>.npz` holds what the JSON's
means cannot give back:

* the learned initialisation and inner rates (`Adaptation`): a few thousand floats, enough
  to re-evaluate the cell under any other evaluation protocol without retraining
  (`benchmarks.reevaluate`);
* each evaluation task's query MSE after 0..N adaptation steps at the final iteration, for
  every split and eval K: what medians, interquartile means, bootstrap intervals, blow-up
  rates and paired comparisons between algorithms (scored on the same tasks) are computed from.

It is written (atomically) before its JSON record, so a JSON record that names it can rely on it.

Storage precision (a decision: the committed results must stay small). Per-task errors are
stored as float16, i.e. 11 significant bits: relative rounding error <= 2^-12 = 2.4e-4, far
below any interval this suite reports. Values float16 cannot hold to that precision (above
65504, or below its normal range 6.1e-5, but non-zero) are kept exactly as float32 beside
it, so blow-ups keep their magnitude. The means in the JSON record are computed from the
full-precision errors; `re-evaluate` recomputes full-precision errors from the stored
initialisation whenever more digits are needed. Parameters are stored exactly (float32).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from algorithms.base import Adaptation
from algorithms.network import DEFAULT_NETWORK, as_spec

SUFFIX = ".npz"
_F16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Artifacts:
    """What `OUT/runs/<cell_id>.npz` holds (see the module docstring)."""

    params: list[np.ndarray]
    lrs: list  # per parameter: None (not adapted), a float (LR_base) or an array (learned rates)
    errors: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (split, K) -> [steps + 1, tasks]
    n_sets: dict[str, int] = field(default_factory=dict)  # split -> independent sets, set-major in `errors`
    zero_mse: dict[tuple[str, int], float] = field(default_factory=dict)  # (split, K) -> MSE of predicting 0
    extra: list[np.ndarray] = field(default_factory=list)  # a custom rule's learned extra meta-parameters

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
    if artifacts.extra:  # absent in every file written before custom rules existed
        arrays["n_extra"] = np.int64(len(artifacts.extra))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Artifacts:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        n = int(npz["n_params"])
        params = [npz[f"p{i}"] for i in range(n)]
        lrs = [None if f"r{i}" not in npz else float(npz[f"r{i}"]) if npz[f"r{i}"].ndim == 0 else npz[f"r{i}"]
               for i in range(n)]
        errors, zero, n_sets = {}, {}, {}
        for name in npz.files:
            if name.startswith("errors_half_"):
                key = name[len("errors_half_"):]
                split, k = key.rsplit("_K", 1)
                errors[(split, int(k))] = _decode_errors(npz[name], npz[f"errors_index_{key}"],
                                                         npz[f"errors_exact_{key}"])
                zero[(split, int(k))] = float(npz[f"zero_mse_{key}"])
            elif name.startswith("n_sets_"):
                n_sets[name[len("n_sets_"):]] = int(npz[name])
        extra = [npz[f"e{i}"] for i in range(int(npz["n_extra"]) if "n_extra" in npz.files else 0)]
    return Artifacts(params, lrs, errors, n_sets, zero, extra)


def load_artifacts(runs_dir: Path, record: dict) -> Artifacts | None:
    """The record's artifacts, or None for a record made before they existed (or not `ok`)."""
    name = record.get("artifacts")
    if not name:
        return None
    return from_bytes((Path(runs_dir) / name).read_bytes())


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
