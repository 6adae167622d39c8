"""pytest-benchmark JSON -> speed.csv (one row per benchmark) and speed.md (readable tables).

Usage: python -m benchmarks.speed.table results/bench/speed.json results/bench

Ratios are taken within the one JSON file, i.e. within one run on one machine: each
meta-iteration is compared with learn2learn's MAML at the same S and meta-batch (and with the
same algorithm's reference loop backend); the ensemble with its 27 members stepped one by one.
Times are medians over rounds (the minimum is in the CSV): on a shared machine the median is
the fairer typical value, the minimum the least disturbed one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

REFERENCE = "l2l"  # the loop library every ratio is taken against
REFERENCE_BY_ALGORITHM = {"reptile": "torch", "pretrain": "torch"}  # no learn2learn version of these
MACHINE_KEYS = ["torch", "learn2learn", "higher", "python", "threads", "cpu_count", "cpu", "machine", "device", "gpu",
                "malloc_tuned"]


def load(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """One row per benchmark: its extra_info plus ms_median, ms_min, ms_iqr, rounds."""
    data = json.loads(Path(path).read_text())
    rows = []
    for bench in data["benchmarks"]:
        info, stats = dict(bench.get("extra_info", {})), bench["stats"]
        rows.append({"name": bench["name"], **{k: v for k, v in info.items() if k not in MACHINE_KEYS},
                     "ms_median": stats["median"] * 1e3, "ms_min": stats["min"] * 1e3, "ms_iqr": stats["iqr"] * 1e3,
                     "rounds": stats["rounds"]})
    machine = next((dict((k, b["extra_info"][k]) for k in MACHINE_KEYS if k in b.get("extra_info", {}))
                    for b in data["benchmarks"]), {})
    machine["datetime"] = data.get("datetime", "")
    return pd.DataFrame(rows), machine


def meta_iteration_table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame[frame["kind"] == "meta_iteration"].copy()
    if cells.empty:
        return cells
    key = ["inner_steps", "meta_batch"]
    l2l_maml = cells[(cells.algorithm == "maml") & (cells.backend == REFERENCE)].set_index(key)["ms_median"]
    cells["x_vs_l2l_maml"] = [l2l_maml.get((s, b), float("nan")) / ms
                              for s, b, ms in zip(cells.inner_steps, cells.meta_batch, cells.ms_median)]
    reference = {(r.algorithm, r.inner_steps, r.meta_batch): r.ms_median for r in cells.itertuples()
                 if r.backend == REFERENCE_BY_ALGORITHM.get(r.algorithm, REFERENCE)}
    cells["x_vs_own_loop_backend"] = [reference.get((a, s, b), float("nan")) / ms for a, s, b, ms in
                                      zip(cells.algorithm, cells.inner_steps, cells.meta_batch, cells.ms_median)]
    columns = ["algorithm", "backend", "inner_steps", "meta_batch", "ms_median", "ms_min", "ms_iqr", "rounds",
               "peak_memory_mb", "x_vs_l2l_maml", "x_vs_own_loop_backend"]
    return cells[columns].sort_values(["inner_steps", "meta_batch", "algorithm", "backend"]).reset_index(drop=True)


def ensemble_table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame[frame["kind"] == "ensemble"]
    rows = []
    for steps, group in cells.groupby("inner_steps"):
        by_mode = group.set_index("mode")
        if not {"ensemble", "one-by-one"} <= set(by_mode.index):
            continue
        together, alone = by_mode.loc["ensemble"], by_mode.loc["one-by-one"]
        rows.append({"inner_steps": steps, "members": int(together["members"]),
                     "ensemble_ms_per_iter": together["ms_median"], "one_by_one_ms_per_iter": alone["ms_median"],
                     "ensemble_ms_per_member": together["ms_median"] / together["members"],
                     "speedup": alone["ms_median"] / together["ms_median"],
                     "speedup_min": alone["ms_min"] / together["ms_min"],
                     "ensemble_peak_memory_mb": together.get("peak_memory_mb", float("nan"))})
    return pd.DataFrame(rows)


def end_to_end_table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame[frame["kind"] == "end_to_end"].copy()
    if cells.empty:
        return cells
    cells["projected_70k_minutes"] = cells["ms_median"] * 70_000 / 60e3
    l2l = cells.loc[cells.backend == REFERENCE, "ms_median"]
    cells["x_vs_l2l"] = (l2l.iloc[0] / cells["ms_median"]) if len(l2l) else float("nan")
    return cells[["backend", "ms_median", "ms_min", "rounds", "projected_70k_minutes", "x_vs_l2l"]]


def checkpoint_table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame[frame["kind"] == "checkpoint"]
    if cells.empty:
        return cells
    return cells[["inner_steps", "meta_batch", "checkpoint_inner", "segment", "ms_median", "ms_min", "rounds",
                  "peak_memory_mb"]].reset_index(drop=True)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency)."""
    if frame.empty:
        return "(not run)"
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write(json_path: str | Path, out: str | Path) -> tuple[Path, Path]:
    frame, machine = load(json_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "speed.csv", out / "speed.md"
    frame.to_csv(csv_path, index=False)
    iterations = meta_iteration_table(frame)
    sections = [
        "# Speed: seconds per meta-iteration on a fixed batch",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        "Times in ms (median over rounds; min and IQR in speed.csv). `x_vs_l2l_maml`: learn2learn MAML's median "
        "at the same S and meta-batch divided by this one (higher is faster). Peak memory: torch allocations "
        "during one step.",
        "",
        "## Every (algorithm, backend)",
        "",
        _markdown(iterations),
        "",
        "## func vs learn2learn, second-order MAML",
        "",
        _markdown(iterations[(iterations.algorithm == "maml") & iterations.backend.isin(["func", REFERENCE])]
                  .pivot_table(index=["inner_steps", "meta_batch"], columns="backend", values="ms_median")
                  .assign(speedup=lambda t: t[REFERENCE] / t["func"] if {"func", REFERENCE} <= set(t.columns)
                          else float("nan")).reset_index()) if not iterations.empty else "(not run)",
        "",
        "## Ensemble: 27 runs (3 LR_base x 3 LR_meta x 3 seeds) in one program vs one by one",
        "",
        _markdown(ensemble_table(frame)),
        "",
        "## Finn's MAML end to end (task sampling included), projected to 70,000 iterations",
        "",
        _markdown(end_to_end_table(frame)),
        "",
        "## Second-order MAML at S = 100: gradient checkpointing",
        "",
        _markdown(checkpoint_table(frame)),
        "",
    ]
    md_path.write_text("\n".join(sections))
    return csv_path, md_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("out", nargs="?", default=None, help="output folder (default: the JSON's folder)")
    args = parser.parse_args(argv)
    for path in write(args.json, args.out or Path(args.json).parent):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
