"""pytest-benchmark JSON -> speed.csv (one row per benchmark) and speed.md (readable tables).

Usage: python -m benchmarks.speed.table results/bench/speed.json results/bench [--yardstick maml:l2l]

Ratios are taken within the one JSON file, i.e. within one run on one machine: each
meta-iteration is compared with the yardstick (`--yardstick ALGORITHM:BACKEND`, default
learn2learn's MAML, `maml:l2l`; column `x_vs_<backend>_<algorithm>`, by default
`x_vs_l2l_maml`) at the same S and meta-batch, and with the same algorithm's own loop backend
(the first of LOOP_BACKENDS it has in the registry: l2l, else higher, else torch); Finn's
end-to-end run with the yardstick's backend (`x_vs_<backend>`); the ensemble with its 27
members stepped one by one. A yardstick that is not in the JSON leaves its columns empty and
says so (stderr and speed.md).
Times are medians over rounds (the minimum is in the CSV): on a shared machine the median is
the fairer typical value, the minimum the least disturbed one.

The peers (`test_peers`: func, JAX, torch.compile, learn2learn, higher on one batch, in
interleaved rounds) get their own tables and peers.csv (one row per cell and peer).

Contention: a benchmark whose process CPU time over wall time is below MIN_CPU_WALL (CPU runs:
it waited for a core), or whose spread (IQR / median) exceeds MAX_SPREAD, is flagged; speed.md
then opens with a warning naming every flagged measurement, and `--strict` refuses to write
anything (exit 2). Timings from a shared, busy machine are not results.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from algorithms import ALGORITHMS
from benchmarks.atomic import report_writes, write_atomic
from benchmarks.speed.peers import MAX_SPREAD, MIN_CPU_WALL


class Yardstick(NamedTuple):
    """The (algorithm, backend) every meta-iteration is compared with (`--yardstick ALGORITHM:BACKEND`)."""
    algorithm: str
    backend: str

    @property
    def column(self) -> str:
        return f"x_vs_{self.backend}_{self.algorithm}"

    @property
    def end_to_end_column(self) -> str:
        return f"x_vs_{self.backend}"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.backend}"


DEFAULT_YARDSTICK = Yardstick("maml", "l2l")  # learn2learn's MAML, the library the paper-era code used
LOOP_BACKENDS = ("l2l", "higher", "torch")  # the libraries' own per-task loops, in order of preference
LABELS = {"l2l": "learn2learn", "maml": "second-order MAML", "fomaml": "first-order MAML"}


def parse_yardstick(text: str) -> Yardstick:
    """`ALGORITHM:BACKEND`, both in the algorithm registry (ValueError naming the valid choices)."""
    choices = ", ".join(f"{a}:{b}" for a, backends in ALGORITHMS.items() for b in backends)
    algorithm, colon, backend = str(text).partition(":")
    if not colon or algorithm not in ALGORITHMS or backend not in ALGORITHMS[algorithm]:
        raise ValueError(f"--yardstick must be ALGORITHM:BACKEND from the algorithm registry, got {text!r}; "
                         f"valid: {choices}")
    return Yardstick(algorithm, backend)


def fmt_time_ratio(ratio) -> str:
    """A time ratio (this time / the yardstick's) in words, the one wording of every speed table
    (speed.md and the report's (b)): 0.5 -> `×2.0 faster`, 2.0 -> `×2.0 slower`, the factor
    (the larger of the ratio and its inverse) to 2 significant digits, positional (`×27`, `×140`);
    a factor that prints as 1.0 (within about 5%) -> `equal (×1.0)`. No ratio (NaN, none, or a
    zero, negative or infinite one: a yardstick or time not measured) -> `–`. A speed-up
    (yardstick / this) is worded as `fmt_time_ratio(1 / speedup)`. The CSVs keep the numbers."""
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        return "–"
    if not (math.isfinite(ratio) and ratio > 0):
        return "–"
    factor = max(ratio, 1 / ratio)
    text = np.format_float_positional(factor, precision=2, unique=False, fractional=False, trim="k").rstrip(".")
    if text == "1.0":
        return "equal (×1.0)"
    return f"×{text} {'faster' if ratio < 1 else 'slower'}"


def fmt_speedup(speedup) -> str:
    """A speed-up (yardstick time / this time, the x_vs_* columns: above 1 is faster) in words."""
    try:
        return fmt_time_ratio(1 / float(speedup))
    except (TypeError, ValueError, ZeroDivisionError):
        return "–"


def own_loop_backend(algorithm: str) -> str | None:
    """The algorithm's reference loop backend: the first of LOOP_BACKENDS it has (None if none)."""
    return next((b for b in LOOP_BACKENDS if b in ALGORITHMS.get(algorithm, {})), None)
MACHINE_KEYS = ["torch", "learn2learn", "higher", "jax", "python", "threads", "cpu_count", "cpu", "machine", "device", "gpu",
                "malloc_tuned"]


def load(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """One row per benchmark: its extra_info plus ms_median, ms_min, ms_iqr, rounds."""
    data = json.loads(Path(path).read_text())
    rows = []
    for bench in data["benchmarks"]:
        info, stats = dict(bench.get("extra_info", {})), bench["stats"]
        if info.get("kind") == "peers":  # its timings are in extra_info (peers_frame), not in stats
            continue
        rows.append({"name": bench["name"], **{k: v for k, v in info.items() if k not in MACHINE_KEYS},
                     "ms_median": stats["median"] * 1e3, "ms_min": stats["min"] * 1e3, "ms_iqr": stats["iqr"] * 1e3,
                     "rounds": stats["rounds"]})
    machine = next((dict((k, b["extra_info"][k]) for k in MACHINE_KEYS if k in b.get("extra_info", {}))
                    for b in data["benchmarks"]), {})
    machine["datetime"] = data.get("datetime", "")
    columns = ["name", "kind", "ms_median", "ms_min", "ms_iqr", "rounds"]
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)), machine


def peers_frame(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per (cell, peer) of `test_peers`, and each cell's contention flags and skipped peers."""
    data = json.loads(Path(path).read_text())
    rows, notes = [], []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != "peers":
            continue
        cell = {k: info[k] for k in ("order", "algorithm", "inner_steps", "meta_batch")}
        where = f"{cell['order']} order S={cell['inner_steps']} meta-batch={cell['meta_batch']}"
        flags = info.get("contention", [])
        rows += [{**cell, **row, "contended": bool(flags)} for row in info.get("peers", [])]
        notes += [f"peers, {where}: {flag}" for flag in flags]
    return pd.DataFrame(rows), notes


def contention(frame: pd.DataFrame, device: str = "cpu") -> list[str]:
    """The pytest-benchmark measurements that look disturbed (see the module docstring)."""
    notes = []
    if frame.empty:
        return notes
    for row in frame.itertuples():
        spread = row.ms_iqr / row.ms_median if row.ms_median else 0.0
        if spread > MAX_SPREAD:
            notes.append(f"{row.name}: spread (IQR/median) {spread:.2f} > {MAX_SPREAD}")
        cpu_wall = getattr(row, "cpu_wall", float("nan"))
        if device.startswith("cpu") and cpu_wall == cpu_wall and cpu_wall < MIN_CPU_WALL:
            notes.append(f"{row.name}: CPU/wall {cpu_wall:.2f} < {MIN_CPU_WALL}")
    return notes


PEER_ORDER = ["func", "func-compiled", "generic", "generic-compiled", "jax", "compile", "compile-cudagraphs", "l2l",
              "higher"]


def _peer_pivot(peers: pd.DataFrame, value) -> pd.DataFrame:
    """Rows (order, S, meta-batch), one column per peer; `value` a column name or a row -> str function."""
    frame = peers.copy()
    frame["value"] = frame[value] if isinstance(value, str) else frame.apply(value, axis=1)
    table = frame.pivot_table(index=["order", "inner_steps", "meta_batch"], columns="peer", values="value",
                              aggfunc="first", dropna=False)
    table = table[[p for p in PEER_ORDER if p in table.columns]]
    contended = frame.groupby(["order", "inner_steps", "meta_batch"])["contended"].any()
    table["contended"] = contended.reindex(table.index).map({True: "yes", False: ""})
    return table.sort_index(ascending=[False, True, True]).reset_index()


def _ratio(row) -> str:
    if row["peer"] == "func" or row.get("ratio_vs_func") != row.get("ratio_vs_func"):
        return ""
    return f"{row['ratio_vs_func']:.2f} [{row['ratio_q25']:.2f}, {row['ratio_q75']:.2f}]"


def targets(peers: pd.DataFrame, peer: str = "jax", target: float = 1.2) -> pd.DataFrame:
    """func's speed-up over `peer` (median of per-round ratios [quartiles]) per cell, eager and
    compiled (where measured), against the target."""
    cells = peers[peers.peer == peer]
    if cells.empty:
        return cells
    out = cells[["order", "inner_steps", "meta_batch"]].copy()
    variants = [("func", "ratio_vs_func", "ratio_q25", "ratio_q75"),
                ("func-compiled", "ratio_vs_func_compiled", "compiled_ratio_q25", "compiled_ratio_q75")]
    for name, median, q25, q75 in variants:
        if median not in cells.columns:
            continue
        out[f"{name} x"] = [f"{m:.2f} [{a:.2f}, {b:.2f}]" if m == m else "" for m, a, b in
                            zip(cells[median], cells[q25], cells[q75])]
        out[f"{name} met"] = [("yes" if m >= target else "no") if m == m else "" for m in cells[median]]
    out["target"] = target
    out["contended"] = cells["contended"].map({True: "yes", False: ""})
    return out.sort_values(["order", "inner_steps", "meta_batch"], ascending=[False, True, True]).reset_index(drop=True)


def meta_iteration_table(frame: pd.DataFrame, yardstick: Yardstick = DEFAULT_YARDSTICK) -> pd.DataFrame:
    cells = frame[frame["kind"] == "meta_iteration"].copy()
    if cells.empty:
        return cells
    key = ["inner_steps", "meta_batch"]
    reference = cells[(cells.algorithm == yardstick.algorithm) & (cells.backend == yardstick.backend)]
    reference = reference.set_index(key)["ms_median"]
    cells[yardstick.column] = [reference.get((s, b), float("nan")) / ms
                               for s, b, ms in zip(cells.inner_steps, cells.meta_batch, cells.ms_median)]
    own = {(r.algorithm, r.inner_steps, r.meta_batch): r.ms_median for r in cells.itertuples()
           if r.backend == own_loop_backend(r.algorithm)}
    cells["x_vs_own_loop_backend"] = [own.get((a, s, b), float("nan")) / ms for a, s, b, ms in
                                      zip(cells.algorithm, cells.inner_steps, cells.meta_batch, cells.ms_median)]
    columns = ["algorithm", "backend", "inner_steps", "meta_batch", "ms_median", "ms_min", "ms_iqr", "rounds",
               "peak_memory_mb", yardstick.column, "x_vs_own_loop_backend"]
    return cells[columns].sort_values(["inner_steps", "meta_batch", "algorithm", "backend"]).reset_index(drop=True)


def ensemble_table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame[frame["kind"] == "ensemble"]
    if cells.empty:
        return pd.DataFrame()
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


def end_to_end_table(frame: pd.DataFrame, yardstick: Yardstick = DEFAULT_YARDSTICK) -> pd.DataFrame:
    """Finn's MAML end to end on each backend, against the same run on the yardstick's backend."""
    cells = frame[frame["kind"] == "end_to_end"].copy()
    if cells.empty:
        return cells
    cells["projected_70k_minutes"] = cells["ms_median"] * 70_000 / 60e3
    reference = cells.loc[cells.backend == yardstick.backend, "ms_median"]
    column = yardstick.end_to_end_column
    cells[column] = (reference.iloc[0] / cells["ms_median"]) if len(reference) else float("nan")
    return cells[["backend", "ms_median", "ms_min", "rounds", "projected_70k_minutes", column]]


def yardstick_notes(frame: pd.DataFrame, yardstick: Yardstick) -> list[str]:
    """Where the yardstick was not measured, so that its ratios are empty."""
    if frame.empty or "kind" not in frame.columns:
        return []
    cells = frame[frame["kind"] == "meta_iteration"]
    if cells.empty or ((cells.algorithm == yardstick.algorithm) & (cells.backend == yardstick.backend)).any():
        return []
    return [f"yardstick {yardstick} has no meta-iteration measurement in this file: `{yardstick.column}` is empty "
            f"(measured: {', '.join(sorted(set(cells.algorithm + ':' + cells.backend)))})"]


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


def _worded(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """`frame` with its speed-up `columns` (yardstick / this: above 1 is faster) in words
    (`fmt_speedup`) for speed.md; the frames and CSVs keep the numbers."""
    present = [c for c in columns if c in frame.columns]
    return frame.assign(**{c: frame[c].map(fmt_speedup) for c in present}) if present and not frame.empty else frame


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency)."""
    if frame.empty:
        return "(not run)"
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


class Contended(RuntimeError):
    """Raised by `write(strict=True)` when a measurement looks disturbed (nothing is written)."""


def write(json_path: str | Path, out: str | Path, strict: bool = False,
          yardstick: Yardstick = DEFAULT_YARDSTICK) -> list[Path]:
    frame, machine = load(json_path)
    peers, peer_notes = peers_frame(json_path)
    notes = contention(frame, str(machine.get("device", "cpu"))) + peer_notes
    if strict and notes:
        raise Contended(f"{len(notes)} measurements look disturbed (contention); nothing written:\n  "
                        + "\n  ".join(notes))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, peers_path = out / "speed.csv", out / "speed.md", out / "peers.csv"
    write_atomic(csv_path, frame.to_csv(index=False))  # whole or absent; a link there is replaced, not followed
    if not peers.empty:
        write_atomic(peers_path, peers.to_csv(index=False))
    iterations = meta_iteration_table(frame, yardstick)
    missing = yardstick_notes(frame, yardstick)
    yb, ya = yardstick.backend, yardstick.algorithm
    warning = ([f"> **CONTENDED: not for publication.** {len(notes)} measurements look disturbed (process CPU/wall "
                f"below {MIN_CPU_WALL} on the CPU, or spread IQR/median above {MAX_SPREAD}); rerun on a quiet "
                "machine:", ">"] + [f"> - {n}" for n in notes] + [""]) if notes else []
    sections = [
        "# Speed: seconds per meta-iteration on a fixed batch",
        "",
        *warning,
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        *_peer_sections(peers),
        f"Times in ms (median over rounds; min and IQR in speed.csv). `{yardstick.column}`: "
        f"{LABELS.get(yb, yb)} {ya.upper() if ya == 'maml' else ya}'s median "
        "at the same S and meta-batch against this one, in words: `×2.0 faster` takes half its time, `×2.0 slower` "
        "twice, `equal` within about 5% (`x_vs_own_loop_backend`, `speedup` and the end-to-end `x_vs_` column "
        "likewise; the numbers are speed.csv's `ms_median`). Peak memory: torch allocations during one step.",
        "",
        *[f"> Note: {n}" for n in missing], *([""] if missing else []),
        "## Every (algorithm, backend)",
        "",
        _markdown(_worded(iterations, [yardstick.column, "x_vs_own_loop_backend"])),
        "",
        f"## func vs {LABELS.get(yb, yb)}, {LABELS.get(ya, ya)}",
        "",
        _markdown(_worded(iterations[(iterations.algorithm == ya) & iterations.backend.isin(["func", yb])]
                  .pivot_table(index=["inner_steps", "meta_batch"], columns="backend", values="ms_median")
                  .assign(speedup=lambda t: t[yb] / t["func"] if {"func", yb} <= set(t.columns) and yb != "func"
                          else float("nan")).reset_index(), ["speedup"])) if not iterations.empty else "(not run)",
        "",
        "## Ensemble: 27 runs (3 LR_base x 3 LR_meta x 3 seeds) in one program vs one by one",
        "",
        _markdown(_worded(ensemble_table(frame), ["speedup", "speedup_min"])),
        "",
        "## Finn's MAML end to end (task sampling included), projected to 70,000 iterations",
        "",
        _markdown(_worded(end_to_end_table(frame, yardstick), [yardstick.end_to_end_column])),
        "",
        "## Second-order MAML at S = 100: gradient checkpointing",
        "",
        _markdown(checkpoint_table(frame)),
        "",
    ]
    write_atomic(md_path, "\n".join(sections))
    for note in notes:
        print(f"contention: {note}", file=sys.stderr)
    for note in missing:
        print(f"note: {note}", file=sys.stderr)
    return [csv_path, md_path] + ([peers_path] if not peers.empty else [])


def _peer_sections(peers: pd.DataFrame) -> list[str]:
    if peers.empty:
        return []
    memory = "peak_memory_mb" in peers.columns
    return [
        "## Peers side by side: one meta-iteration, same batch and initial weights, interleaved rounds",
        "",
        "ms per meta-iteration (median over rounds; quartiles, minimum, CPU/wall in peers.csv). `jax`: the "
        "jitted step (jit + vmap + optax) on JAX arrays; `compile`: torch.compile of a torch.func MAML step; "
        "first order: FOMAML. `contended`: a flag in that cell (see the warning above).",
        "",
        _markdown(_peer_pivot(peers, "ms_median")),
        "",
        "### func's speed-up over each peer: peer time / func time, per round (median [quartiles]; above 1 func "
        "is faster: 2.00 = func takes half the peer's time)",
        "",
        _markdown(_peer_pivot(peers, _ratio)),
        "",
        "### Target: func >= 1.2x faster than JAX at every (S, meta-batch, order): JAX time / func time per round",
        "",
        _markdown(targets(peers)),
        "",
        "### Compile time (s: first call minus the median call; cold caches)",
        "",
        _markdown(_peer_pivot(peers[peers.peer.isin(["func-compiled", "generic-compiled", "jax", "compile",
                                                     "compile-cudagraphs"])], "compile_s")),
        "",
        *(["### Peak memory of one meta-iteration (MB; torch: allocations during the call; JAX: XLA's "
           "buffer plan, temporaries + outputs)", "", _markdown(_peer_pivot(peers, "peak_memory_mb")), ""]
          if memory else []),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("out", nargs="?", default=None, help="output folder (default: the JSON's folder)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse to write tables (exit 2) when any measurement looks disturbed")
    parser.add_argument("--yardstick", default=str(DEFAULT_YARDSTICK), metavar="ALGORITHM:BACKEND",
                        help=f"what every meta-iteration is compared with (default {DEFAULT_YARDSTICK}: "
                             "column x_vs_l2l_maml); any registered algorithm:backend")
    args = parser.parse_args(argv)
    try:
        yardstick = parse_yardstick(args.yardstick)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not Path(args.json).is_file():
        print(f"error: no such file: {args.json}", file=sys.stderr)
        return 2
    return report_writes(lambda: write(args.json, args.out or Path(args.json).parent, strict=args.strict,
                                       yardstick=yardstick), (Contended,))


if __name__ == "__main__":
    raise SystemExit(main())
