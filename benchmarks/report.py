"""Reports regenerated from DIR/runs/ alone, without training: summary.csv, tables.md, figures.

Long-format rows -> pandas -> tables here, plots in `benchmarks.plots` (STYLE.md, 6).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.records import load_records, write_atomic

CELL_COLUMNS = ["algorithm", "backend", "task", "k_shot", "inner_steps", "lr_base", "lr_meta", "meta_batch",
                "iterations", "seed"]
RUN_COLUMNS = ["status", "sec_per_iter", "sec_per_iter_member", "ensemble_size", "peak_memory_mb", "device"]
EVAL_COLUMNS = ["iteration", "split", "eval_k_shot", "eval_steps", "mse", "mse_ci95", "n_test_tasks"]


def summary_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (cell, evaluation iteration, split, eval K, adaptation step).

    Cells without evaluations (diverged, failed) keep one row with empty metrics so they
    stay visible in the table.
    """
    rows = []
    for record in records:
        base = {**{k: record["cell"][k] for k in CELL_COLUMNS}, **{k: record.get(k) for k in RUN_COLUMNS}}
        evaluations = record.get("evaluations") or [{}]
        rows.extend({**base, **{k: e.get(k) for k in EVAL_COLUMNS}} for e in evaluations)
    return pd.DataFrame(rows, columns=CELL_COLUMNS + EVAL_COLUMNS + RUN_COLUMNS)


def curve_frame(records: list[dict]) -> pd.DataFrame:
    """Meta-training curves: one row per (cell, logged iteration): loss and initial gradient norm."""
    rows = [{**{k: r["cell"][k] for k in CELL_COLUMNS}, **point} for r in records for point in r.get("curve", [])]
    return pd.DataFrame(rows, columns=CELL_COLUMNS + ["iteration", "loss", "grad_norm"])


def write_summary(out: Path, records: list[dict] | None = None) -> pd.DataFrame:
    records = load_records(out) if records is None else records
    frame = summary_frame(records)
    write_atomic(Path(out) / "summary.csv", frame.to_csv(index=False))
    return frame


def write_report(out: Path) -> None:
    """Everything a reader opens, from the stored runs: CSV, Markdown tables, figures."""
    records = load_records(out)
    write_summary(out, records)
    write_atomic(Path(out) / "curves.csv", curve_frame(records).to_csv(index=False))
