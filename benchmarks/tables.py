"""The report's tables: frames from `benchmarks.analysis` -> formatted frames -> the report's
blocks (`report_blocks`, `benchmarks.document`), rendered to Markdown (`tables.md`), LaTeX and HTML.

Every mean is printed with its interval and n; where per-task errors are stored, beside it
the blow-up rate, and the median and IQM with bootstrap intervals (`benchmarks.statistics`).
One interval method: wherever per-task errors are stored, a mean's interval is the same two-way
bootstrap as the median's, IQM's and blow-up rate's (`fmt_mean`, `value [low, high]`); the
t-formula (`value ± h`, `analysis.ci_note`) only where they are not. Blow-up rates are at step s
(`blow-up@s`) and, in (a2), by step s (`blow-up@≤s`, cumulative); (a2) also shows the threshold's
sensitivity (3x, 10x, 100x). A number at more adaptation steps than the configuration's trained S
carries EXTRAPOLATION_MARK (note under the title, once).
A number that could not be computed is "–", never a silent blank.

The folder's metric (`Analysis.metric`) is read, never assumed: its label heads the value columns
("val MSE@1", "test accuracy@1") and names it in the notes, "best" and "better" follow its
direction, and the introduction states the direction and the chance level of a metric other than
MSE ("higher is better; chance = 0.5"). For MSE every word is as it always was (the committed
reports regenerate byte for byte). Decision: the blow-up columns stay for every metric, since a
non-finite value is a blow-up in any metric; for a metric without MSE yardsticks
(`Metric.scaled_blowups`) they count non-finite values only, and the notes say so.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import statistics
from benchmarks.document import (Block, Figure, Heading, Note, Table, markdown_table,  # noqa: F401 (paper.py)
                                 render_markdown, with_captions)
from benchmarks.analysis import (CONFIG_COLUMNS, GROUP_COLUMNS, PAIRED_REFERENCES, SELECT_STEPS, SHOWN_COLUMNS,
                                 SPEED_COLUMNS, SPEED_REFERENCE, TABLE_STEPS, VARIANCE_PRECISIONS, Analysis, ci_note,
                                 config_columns, extrapolated, matching, per_task_word, pooled_columns,
                                 precision_column, ranked, sensitivity_column)
from benchmarks.records import metric_columns
from tasks.problem import MSE, Metric

DASH = "–"
NA = "n/a"  # an interval that does not exist (one test task, a non-finite spread), never a zero-width one
#: after a number at more adaptation steps than the configuration was meta-trained for (`analysis.extrapolated`)
EXTRAPOLATION_MARK = "†"
EXTRAPOLATION_NOTE = (f"{EXTRAPOLATION_MARK} beyond the trained inner steps: the configuration was meta-trained with S "
                      "inner steps and is scored after more, so the number is extrapolation (a rule learned for S "
                      "steps applied s > S times, e.g. Meta-SGD's learned rates, trained for one step, applied ten "
                      "times), not the method's behaviour at a trained horizon.")
NA_NOTE = (f"`{NA}`: no interval. A 95% interval needs at least {statistics.MIN_TASKS} test tasks and a finite "
           "spread (from a single task any interval would claim a certainty the data cannot give); a mean "
           "difference whose resamples hold blow-ups on both sides (inf − inf) has none either.")


# ----------------------------------------------------------------------------- number formats

def _fmt_ci(ci) -> str:
    """A t interval's half-width; `n/a` where it is undefined (NaN: n < 2; inf: the spread overflowed)."""
    return f"{ci:.2g}" if ci is not None and not pd.isna(ci) and math.isfinite(ci) else NA


def fmt_mse(mse, ci, n_tasks=None, n_seeds=None) -> str:
    """`mean ± CI (n=tasks×seeds)`; non-finite values stay visible as inf/nan; None: not evaluated;
    an undefined interval: `± n/a`."""
    if mse is None:
        return DASH
    text = f"{mse:.4g}" if not math.isfinite(mse) else f"{mse:.4g} ± {_fmt_ci(ci)}"
    if n_tasks is not None and not pd.isna(n_tasks):
        seeds = f"×{int(n_seeds)}" if n_seeds is not None and not pd.isna(n_seeds) else ""
        text += f" (n={int(n_tasks)}{seeds})"
    return text


def fmt_pooled(row, with_n: bool = False, metric: Metric = MSE) -> str:
    """A seed-pooled value of `metric` (a row of `analysis.pool_seeds`); with a non-finite seed the
    mean of the finite ones follows as `[f/S seeds finite: mean ± CI]`."""
    if row is None or pd.isna(row["n_seeds"]):
        return DASH
    value, ci, _, _, _, finite, finite_ci = pooled_columns(metric)
    text = fmt_mse(row[value], row[ci], row["n_tasks"] if with_n else None, row["n_seeds"] if with_n else None)
    n_finite, n_seeds = int(row["n_finite"]), int(row["n_seeds"])
    if 0 < n_finite < n_seeds:
        text += f" [{n_finite}/{n_seeds} seeds finite: {row[finite]:.4g} ± {_fmt_ci(row[finite_ci])}]"
    return text


def _values(metric: Metric) -> str:
    """Several values of the metric, in words: "MSEs" as always, else "accuracy values"."""
    return "MSEs" if metric.name == "mse" else f"{metric.label} values"


def direction_text(metric: Metric) -> str:
    """The direction and chance level a reader needs beside a metric other than MSE ("" for MSE,
    whose wording the reports always had): "higher is better; chance = 0.5"."""
    if metric.name == "mse":
        return ""
    chance = "" if metric.chance is None else f"; chance = {metric.chance:.3g}"
    return f"{'higher' if metric.higher_is_better else 'lower'} is better{chance}"


DISTINCT_DIGITS = 2


def _fmt_g(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def fmt_interval(value: float, low: float, high: float, digits: int = 4, number=_fmt_g) -> tuple[str, str, str]:
    """The texts of an estimate and its interval bounds, each printed by `number(x, significant
    digits)`: the one interval rule of every table. The bounds get the estimate's `digits` (never
    fewer), and all three get more while the printed numbers misorder (a printed interval that
    excludes its own printed estimate: 0.493 [0.462, 0.522] at 1 digit read "0.49 [0.5, 0.5]") or
    distinct bounds print alike (at most `DISTINCT_DIGITS` more for that: a width of 1e-15 is a tie):
    an interval narrower than the estimate's last digit is the precision the numbers need. Digits,
    not a fixed decimal place, so that the bounds of a tiny or huge value keep its relative
    precision. A NaN bound is `n/a`; a NaN estimate prints as `nan` (kept visible)."""
    def ordered(a, b, text_a, text_b) -> bool:  # the printed order never contradicts the true one
        return math.isnan(a) or math.isnan(b) or not a <= b or float(text_a) <= float(text_b)

    def bound(x, more):
        return NA if math.isnan(x) else number(x, digits + more)

    for more in range(0, 17):
        shown, lo, hi = number(value, digits + more), bound(low, more), bound(high, more)
        if ordered(low, value, lo, shown) and ordered(value, high, shown, hi) and (
                more >= DISTINCT_DIGITS or not low < high or float(lo) < float(hi)):
            break
    return shown, lo, hi


def fmt_estimate(estimate, digits: int = 4, interval: bool = True) -> str:
    """`value [low, high]` (a `statistics.Estimate`, bounds by `fmt_interval`); NaN bounds: `value
    [n/a]` (the interval is undefined, e.g. one task), or the value alone with `interval=False`
    (a point estimate)."""
    if estimate is None:
        return DASH
    if math.isnan(estimate.low) and math.isnan(estimate.high):
        return f"{estimate.value:.{digits}g}" + (f" [{NA}]" if interval else "")
    text, low, high = fmt_interval(estimate.value, estimate.low, estimate.high, digits)
    return f"{text} [{low}, {high}]"


def fmt_percent(percent: float, digits: int = 2) -> str:
    """A percentage with `digits` significant digits, positional (34, 0.17, 0.0056, 100; never
    1e+02): a value below 100 gets the digits that keep it below 100 (99.6, 99.95), and one above
    0 never reads 0."""
    if not math.isfinite(percent):
        return str(percent)
    for more in range(digits, 18):
        text = np.format_float_positional(percent, precision=more, unique=False, fractional=False, trim="-")
        if float(text) != 100 or percent == 100:
            break
    return text


def fmt_rate(estimate, interval: bool = True) -> str:
    """A blow-up rate in percent, with its interval if bootstrapped (by `fmt_interval`); exactly
    none: `0`; NaN bounds: `[n/a]` (undefined), or nothing with `interval=False` (a point estimate)."""
    if estimate is None:
        return DASH
    undefined = f" [{NA}]" if interval and math.isnan(estimate.high) else ""
    if estimate.value == 0 and not estimate.high > 0:
        return "0" + undefined
    if math.isnan(estimate.high):
        return f"{fmt_percent(100 * estimate.value)}%" + undefined
    text, low, high = fmt_interval(100 * estimate.value, 100 * estimate.low, 100 * estimate.high, 2, fmt_percent)
    return f"{text}% [{low}, {high}]"


def _fmt_seconds(value) -> str:
    return DASH if value is None or pd.isna(value) else f"{value * 1e3:.3g} ms"


def _lookup(pooled: pd.DataFrame, config, split: str, eval_k: int, steps: int):
    rows = matching(pooled, config)
    rows = rows[(rows["split"] == split) & (rows["eval_k_shot"] == eval_k) & (rows["eval_steps"] == steps)]
    return None if rows.empty else rows.iloc[0]


def mark_extrapolated(text: str, config, steps) -> str:
    """`text` with EXTRAPOLATION_MARK where `steps` lie beyond the configuration's trained S (a number
    only: "–" stays bare)."""
    return text + EXTRAPOLATION_MARK if text != DASH and extrapolated(config, steps) else text


def fmt_mean(a: Analysis, config, split: str, eval_k: int, steps: int, with_n: bool = False) -> str:
    """The seed-pooled mean (`fmt_pooled`'s row of `analysis.pool_seeds`) with the one interval of the
    tables: `mean [low, high]`, the two-way bootstrap of the per-task store (as for medians, IQMs and
    blow-up rates), the point the records' float64 mean; the finite seeds' mean alike. Without a
    per-task store (older records) the t-formula's `mean ± h` instead, which `ci_note` labels.
    Not marked for extrapolation (`mark_extrapolated`: the caller's)."""
    row = _lookup(a.pooled, config, split, eval_k, steps)
    found = None if row is None else a.task_errors.summary(config, split, eval_k, steps)
    if found is None:
        return fmt_pooled(row, with_n, a.metric)
    value, _, _, _, _, finite, finite_ci = pooled_columns(a.metric)
    mean = float(row[value])
    text = fmt_estimate(statistics.Estimate(mean, found["mean"].low, found["mean"].high), 4) \
        if math.isfinite(mean) else f"{mean:.4g}"
    if with_n:
        text += f" (n={int(row['n_tasks'])}×{int(row['n_seeds'])})"
    n_finite, n_seeds = int(row["n_finite"]), int(row["n_seeds"])
    if 0 < n_finite < n_seeds:
        seeds = a.task_errors.finite_mean(config, split, eval_k, steps)
        if seeds is not None and seeds[1] == n_finite:
            shown = fmt_estimate(statistics.Estimate(float(row[finite]), seeds[0].low, seeds[0].high), 4)
        else:  # the store's finite seeds are not the records' (a value float16 and float32 cannot hold)
            shown = f"{row[finite]:.4g} ± {_fmt_ci(row[finite_ci])}"
        text += f" [{n_finite}/{n_seeds} seeds finite: {shown}]"
    return text


def _blowup(a: Analysis, config, split: str, eval_k: int, steps: int) -> str:
    found = a.task_errors.summary(config, split, eval_k, steps, bootstrap=False)
    return DASH if found is None else fmt_rate(statistics.Estimate(found["blowup"].value), interval=False)


# ----------------------------------------------------------------------------- (a) accuracy

def best_table(a: Analysis) -> pd.DataFrame:
    """Table (a): the chosen configuration per (task, algorithm, backend, K), its test value (MSE,
    accuracy) after 1, 5, 10 steps at the trained K with the blow-up rate beside each, then one row
    per other evaluated K."""
    label = a.metric.label
    rows = []
    evaluated = a.pooled[a.pooled["split"] == "test"]
    for _, config in a.best.iterrows():
        eval_ks = sorted(matching(evaluated, config)["eval_k_shot"].unique(), key=lambda k: (k != config["k_shot"], k))
        for eval_k in eval_ks or [config["k_shot"]]:
            test = _lookup(a.pooled, config, "test", eval_k, TABLE_STEPS[0])
            val = _lookup(a.pooled, config, "validation", eval_k, SELECT_STEPS)
            row = {
                **config_columns(config, GROUP_COLUMNS),
                "eval K": int(eval_k) if eval_k == config["k_shot"] else f"**{int(eval_k)}**",
                **config_columns(config, SHOWN_COLUMNS[len(GROUP_COLUMNS):]),
                "cells ok": f"{int(config['n_ok'])}/{int(config['n_cells'])}",
                f"val {label}@{SELECT_STEPS}": mark_extrapolated(
                    fmt_mean(a, config, "validation", eval_k, SELECT_STEPS), config, SELECT_STEPS),
                f"val blow-up@{SELECT_STEPS}": mark_extrapolated(
                    _blowup(a, config, "validation", eval_k, SELECT_STEPS), config, SELECT_STEPS),
                "val n": DASH if val is None else int(val["n_tasks"]),
            }
            for steps in TABLE_STEPS:
                row[f"test {label}@{steps}"] = mark_extrapolated(fmt_mean(a, config, "test", eval_k, steps), config,
                                                                 steps)
                row[f"blow-up@{steps}"] = mark_extrapolated(_blowup(a, config, "test", eval_k, steps), config, steps)
            row["test n"] = DASH if test is None else int(test["n_tasks"])
            row["seeds"] = DASH if test is None else int(test["n_seeds"])
            rows.append(row)
    return pd.DataFrame(rows)


#: table (a2)'s column of the cumulative blow-up rate (`blowup_cumulative`) by step s; `blow-up@s`: at step s
CUMULATIVE = "blow-up@≤{}"


def _robust_rows(robust: pd.DataFrame):
    """(the identifying columns of a configuration and test eval K, its rows of `robust`) for (a2) and its
    threshold sensitivity."""
    for _, group in robust.groupby(SHOWN_COLUMNS + ["eval_k_shot"], sort=False):
        first = group.iloc[0]
        row = {"algorithm": first["algorithm"], "backend": first["backend"], "K": int(first["k_shot"]),
               "eval K": int(first["eval_k_shot"]) if first["eval_k_shot"] == first["k_shot"]
               else f"**{int(first['eval_k_shot'])}**",
               "S": int(first["inner_steps"])}
        row.update({k: v for k, v in config_columns(first, GROUP_COLUMNS).items() if k not in row})  # task, network
        row["seeds×tasks"] = f"{int(first['n_seeds'])}×{int(first['n_tasks'])}"
        yield row, group


def robust_table(robust: pd.DataFrame) -> pd.DataFrame:
    """Table (a2): per chosen configuration and test eval K, median and IQM with bootstrap intervals
    and the blow-up rate at and by (cumulative) step 1, 5, 10; numbers beyond the trained S marked."""
    rows = []
    for row, group in _robust_rows(robust):
        for _, step in group.iterrows():
            s = int(step["eval_steps"])
            row[f"median@{s}"] = mark_extrapolated(fmt_estimate(_estimate(step, "median"), 3), step, s)
            row[f"IQM@{s}"] = mark_extrapolated(fmt_estimate(_estimate(step, "iqm"), 3), step, s)
            row[f"blow-up@{s}"] = mark_extrapolated(fmt_rate(_estimate(step, "blowup")), step, s)
            if "blowup_cumulative" in step:
                row[CUMULATIVE.format(s)] = mark_extrapolated(fmt_rate(_estimate(step, "blowup_cumulative")), step, s)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_seeds(value) -> str:
    return "∞" if not np.isfinite(value) else f"{int(value)}"


def variance_table(variance: pd.DataFrame) -> pd.DataFrame:
    """Table (a4): per chosen configuration, test eval K and step, the standard deviations of the
    seed, task and seed × task terms (`statistics.VarianceComponents`), the seeds' share of the
    mean's variance in this design, the 95% half-width it implies and the seeds a ±10% / ±5% claim
    needs over as many tasks."""
    rows = []
    for row, group in _robust_rows(variance):
        for _, step in group.iterrows():
            s = int(step["eval_steps"])
            design = {"seeds": step["var_seed"] / step["n_seeds"], "rest": step["var_task"] / step["n_tasks"]
                      + step["var_interaction"] / (step["n_seeds"] * step["n_tasks"])}
            total = design["seeds"] + design["rest"]
            rows.append({**row, "steps": mark_extrapolated(str(s), step, s), "mean": f"{step['mean']:.3g}",
                         "sd seed": f"{np.sqrt(step['var_seed']):.3g}", "sd task": f"{np.sqrt(step['var_task']):.3g}",
                         "sd seed×task": f"{np.sqrt(step['var_interaction']):.3g}",
                         "seed share %": fmt_percent(100 * design["seeds"] / total) if total > 0 else DASH,
                         "±95%": f"{step['halfwidth']:.2g}",
                         **{f"seeds for ±{p * 100:g}%": _fmt_seeds(step[precision_column(p)])
                            for p in VARIANCE_PRECISIONS}})
    return pd.DataFrame(rows)


def sensitivity_table(robust: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Table (a2)'s threshold sensitivity: per chosen configuration and test eval K, the blow-up rate at
    step 1, 5, 10 with the threshold at each of `statistics.SENSITIVITY_FACTORS` x the error scale
    (robust.csv's `blowup_3x`, `blowup`, `blowup_100x`), with bootstrap intervals; and the rows left out
    because no task blew up at any factor (the least, 3x, counts the most), named for the note. Empty
    for a metric without scaled blow-ups (its `robust.csv` columns are NaN)."""
    rows, quiet = [], []
    if robust.empty or sensitivity_column(statistics.SENSITIVITY_FACTORS[0]) not in robust:
        return pd.DataFrame(), quiet
    names = {f: "blowup" if f == statistics.BLOWUP_FACTOR else sensitivity_column(f)
             for f in statistics.SENSITIVITY_FACTORS}
    for row, group in _robust_rows(robust):
        if group[list(names.values())].isna().all().all():
            continue
        if not (group[list(names.values())] > 0).any().any():
            quiet.append(f"{row['algorithm']} [{row['backend']}] K={row['K']}→{str(row['eval K']).strip('*')}")
            continue
        for _, step in group.iterrows():
            s = int(step["eval_steps"])
            for factor, name in names.items():
                row[f"{factor:g}×@{s}"] = mark_extrapolated(fmt_rate(_estimate(step, name)), step, s)
        rows.append(row)
    return pd.DataFrame(rows), quiet


def _estimate(row, name: str) -> statistics.Estimate:
    return statistics.Estimate(row[name], row[f"{name}_low"], row[f"{name}_high"])


def all_configs_table(a: Analysis) -> pd.DataFrame:
    chosen = {tuple(row[c] for c in CONFIG_COLUMNS) for _, row in a.best.iterrows()}
    rows = []
    for _, row in ranked(a.scores, a.metric).sort_values(GROUP_COLUMNS, kind="stable").iterrows():
        entry = {
            **config_columns(row, SHOWN_COLUMNS),
            "cells ok": f"{int(row['n_ok'])}/{int(row['n_cells'])}"}
        for name, split in (("val", "validation"), ("test", "test")):
            entry[f"{name} {a.metric.label}@{SELECT_STEPS}"] = mark_extrapolated(
                fmt_mean(a, row, split, row["k_shot"], SELECT_STEPS, with_n=True), row, SELECT_STEPS)
            entry[f"{name} blow-up@{SELECT_STEPS}"] = mark_extrapolated(
                _blowup(a, row, split, row["k_shot"], SELECT_STEPS), row, SELECT_STEPS)
        entry["chosen"] = "✓" if tuple(row[c] for c in CONFIG_COLUMNS) in chosen else ""
        rows.append(entry)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- paired comparisons

def paired_table(paired: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per (trained K, eval K, algorithm) against `reference`: per step the mean and median
    paired difference (negative: the algorithm is better) and P(algorithm better), with intervals."""
    rows = []
    part = paired[paired["reference"] == reference]
    for _, group in part.groupby(["task", "k_shot", "eval_k_shot", "algorithm"], sort=False):
        first = group.iloc[0]
        row = {"task": first["task"], "K": int(first["k_shot"]), "eval K": int(first["eval_k_shot"]),
               "algorithm": first["algorithm"], "tasks": int(first["n_tasks"]),
               "seeds": f"{int(first['n_seeds'])} vs {int(first['n_seeds_reference'])}"}
        for _, step in group.iterrows():
            s = int(step["eval_steps"])
            # beyond the trained S of either side (records before these columns: nothing known, nothing marked)
            trained = {"inner_steps": min(step.get("inner_steps", s), step.get("reference_inner_steps", s))}
            row[f"Δmean@{s}"] = mark_extrapolated(fmt_estimate(_estimate(step, "mean_difference"), 3), trained, s)
            row[f"Δmedian@{s}"] = mark_extrapolated(fmt_estimate(_estimate(step, "median_difference"), 3), trained, s)
            row[f"P(better)@{s}"] = mark_extrapolated(fmt_estimate(_estimate(step, "p_improvement"), 2), trained, s)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_note(metric: Metric = MSE) -> str:
    """What the paired tables' Δ and P(better) mean, in the metric's units and direction."""
    sign, side = ("positive", "higher") if metric.higher_is_better else ("negative", "lower")
    return (
        "Each algorithm's best configuration (any backend, chosen by validation as in (a)) against the reference's, "
        f"on the same test tasks (identical for every algorithm and seed). Δ: the algorithm's test {metric.label} "
        "minus the reference's, per task, each averaged over its seeds; the mean and median over tasks are shown "
        f"({sign}: the algorithm is better; a blow-up on one side makes Δmean non-finite). P(better): the "
        "probability of improvement, the share of tasks (and seed pairs) on which the algorithm's "
        f"{metric.label} is {side}, ties counting ½ "
        "(0.5: no difference). A difference is real at 95% when its interval excludes 0 (P: excludes 0.5). "
        "Intervals: the same two-way bootstrap as in (a2), the tasks drawn once for both algorithms.")


PAIRED_NOTE = paired_note(MSE)


# ----------------------------------------------------------------------------- (b) speed, (c) problems

def speed_table(speed: pd.DataFrame) -> pd.DataFrame:
    from benchmarks.speed.table import fmt_time_ratio  # the speed tables' one wording of a ratio

    def ratio(value):
        return DASH if pd.isna(value) else fmt_time_ratio(value)

    def ensemble(row):
        low, high = row["ensemble_min"], row["ensemble_max"]
        return DASH if pd.isna(low) else (f"{int(low)}" if low == high else f"{int(low)}–{int(high)}")

    return pd.DataFrame([{
        **config_columns(row, SPEED_COLUMNS), "cells": int(row["n_cells"]),
        "ensemble": ensemble(row), "s/iter (program)": _fmt_seconds(row["sec_per_iter"]),
        "s/iter (per member)": _fmt_seconds(row["sec_per_iter_member"]),
        "compile": DASH if not row["compile_seconds"] else f"{row['compile_seconds']:.3g} s",
        "training (program)": f"{row['train_seconds']:.3g} s",
        "program vs l2l MAML": ratio(row["ratio"]), "per member vs l2l MAML": ratio(row["ratio_member"]),
    } for _, row in speed.iterrows()])


def problems_table(cells: pd.DataFrame) -> pd.DataFrame:
    bad = cells[cells["status"] != "ok"].sort_values("cell_id")
    return pd.DataFrame([{"cell": row["cell_id"], "status": row["status"],
                          "reason": str(row["error"] or "(no reason recorded)").strip().splitlines()[-1][:300]}
                         for _, row in bad.iterrows()], columns=["cell", "status", "reason"])


def nonfinite_table(final: pd.DataFrame, metric: Metric = MSE) -> pd.DataFrame:
    """`ok` cells whose final evaluation has a non-finite value (e.g. 10 steps of a learned rate)."""
    column = f"non-finite {metric.label} at the final iteration"
    if final.empty:
        return pd.DataFrame(columns=["cell", column])
    bad = final[~np.isfinite(final[metric_columns(metric)[0]].astype(float))]
    rows = []
    for cell_id, group in bad.groupby("cell_id"):
        parts = [f"{split} K={int(k)} from step {int(g['eval_steps'].min())}"
                 for (split, k), g in group.groupby(["split", "eval_k_shot"])]
        rows.append({"cell": cell_id, column: "; ".join(parts)})
    return pd.DataFrame(rows, columns=["cell", column])


# ----------------------------------------------------------------------------- the whole file

def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def scope_text(a: Analysis) -> str:
    return f"task {a.scope['task']}, trained at K={a.scope['k_shot']}"


def _hardware_line(records: list[dict]) -> str:
    """Which machine computed the numbers: floats depend on the processor (`benchmarks.hardware`)."""
    counts = Counter((r.get("fingerprint") or {}).get("hardware", "not recorded (made before the hardware was)")
                     for r in records)
    listed = "; ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in counts.most_common())
    return f" Computed on: {listed}." if listed else ""


def report_blocks(a: Analysis, out: Path, figures: dict[str, str], skipped: dict[str, str],
                  paper_table: tuple[pd.DataFrame, str] | None = None, partial: str | None = None) -> list[Block]:
    """The report as blocks (`benchmarks.document`): sections (a) accuracy, (a2) robust statistics,
    (b) speed, (c) problems, (d) the paper comparison (a formatted frame and its note, if given), (e)
    paired comparisons, and the figure list. `partial`: the line an unfinished re-evaluation
    carries, under the title, where nobody reads past it."""
    status = a.cells["status"].value_counts()
    label, direction = a.metric.label, direction_text(a.metric)
    intro = Note(f"Regenerated from {len(a.records)} run records in `runs/` without training "
                 f"({', '.join(f'{n} {s}' for s, n in status.items())}). "
                 f"Every {label} is " + ("`mean [95% CI] (n=tasks×seeds)`, the interval the two-way bootstrap of "
                                         "the per-task store as for every median, IQM and blow-up rate (`mean ± 95% "
                                         "CI`, the t-formula, only where no per-task store exists; note under (a))"
                                         if a.task_errors else "`mean ± 95% CI (n=tasks×seeds)`, the t-formula's "
                                         "interval (no per-task store; note under (a))")
                 + (f" ({direction})" if direction else "") +
                 f"; where the table has n columns, the {label} cells leave n "
                 "out. " + (f"Per-task {per_task_word(a.metric)} are stored: blow-up rates, medians, IQMs and paired "
                            "comparisons below."
                            if a.task_errors else
                            f"{_sentence(a.task_errors.missing())}, so blow-up rates, medians, IQMs and "
                            "paired comparisons are shown as –.") + _hardware_line(a.records))
    blocks: list[Block] = [Heading(f"Report: {Path(out).name}", 1)]
    if partial:
        blocks.append(Note(f"**{partial}**"))
    blocks.append(intro)
    from benchmarks.headline import headline_blocks  # it imports this module's formatters
    blocks.extend(headline_blocks(a))  # the headline and the chosen hyperparameters come first

    blocks.append(Heading("(a) Best configuration per (algorithm, backend, K)"))
    if a.best.empty:
        blocks.append(Note(f"No `ok` cell has a validation {label} at its trained K, so no configuration can be "
                           "chosen."))
    else:
        blown = ("whose adaptation is blown up **at** step s (a task can drop back below the threshold later; "
                 "definition, and the cumulative rate, under (a2))" if a.metric.scaled_blowups else
                 f"whose {label} is non-finite **at** step s (for {label} only a non-finite value is a blow-up; "
                 "definition, and the cumulative rate, under (a2))")
        best = best_table(a)
        blocks.append(Table("a_best", best, notes=[
            f"Chosen per (task, algorithm, backend, K) by the {'highest' if a.metric.higher_is_better else 'lowest'} "
            f"mean **validation** {label} after {SELECT_STEPS} "
            "adaptation step at the trained K and the final iteration, averaged over seeds; configurations whose "
            "every seed finished `ok` rank before those with a diverged or failed seed, and a non-finite "
            f"validation {label} ranks last. Test {label} after 1, 5 and 10 steps is reported for the chosen "
            "configuration only. Rows with a **bold** eval K are the same models evaluated at another K (their "
            "validation column is at that K too). `val n`/`test n`: tasks per seed; `seeds`: seeds pooled. "
            f"`blow-up@s`: the share of test tasks × seeds {blown}.", ci_note(a.metric)]))
    has_val = a.scores.groupby(GROUP_COLUMNS)["val_n_seeds"].apply(lambda v: v.notna().any()) \
        if not a.scores.empty else {}
    missing = [" ".join(str(v) for v in key) for key, ok in dict(has_val).items() if not ok]
    if missing:
        blocks.append(Note(f"No validation {label} (every cell diverged or failed), nothing chosen for: "
                           f"{', '.join(missing)}."))

    blocks.append(Heading("(a2) Robust statistics of the chosen configurations (test)"))
    if a.robust.empty:
        blocks.append(Note(f"None: {a.task_errors.missing()}." if not a.task_errors else
                           f"None: no chosen configuration has stored per-task test {per_task_word(a.metric)}."))
    else:
        robust = robust_table(a.robust)
        blocks.append(Table("a2_robust", robust, notes=[
            f"The models of (a), scored task by task: median and interquartile mean (IQM) of the test {label} over "
            "every seed × task, with 95% bootstrap intervals, and the blow-up rate. Read the mean when no task "
            "blew up; once some did, the mean measures how large the rare blow-ups are, and the median and IQM "
            "the typical task. `blow-up@s`: the share of seed × task values blown up **at** step s (a task can "
            f"drop back below the threshold at a later step); `{CUMULATIVE.format('s')}`: the share blown up at "
            "**any** step 0..s (cumulative: a task counts from its first blow-up on; never below `blow-up@s`, "
            "equal at step 0). " + statistics.method_note(a.metric)]))
        sensitivity, quiet = sensitivity_table(a.robust)
        if a.metric.scaled_blowups and (not sensitivity.empty or quiet):
            blocks.append(Heading("Blow-up threshold sensitivity (test)", 3))
            factors = ", ".join(f"{f:g}×" for f in statistics.SENSITIVITY_FACTORS)
            note = (f"The blow-up rate of (a2) (at step s) with the threshold at {factors} the error scale (the "
                    f"tables use {statistics.BLOWUP_FACTOR:g}×), 95% bootstrap intervals as in (a2): a conclusion "
                    "about blow-ups that holds in every column does not depend on the factor. "
                    + (f"No task × seed blew up at any of these factors (so none at {statistics.BLOWUP_FACTOR:g}×) "
                       f"for: {', '.join(quiet)}." if quiet else ""))
            blocks.append(Table("a2b_threshold_sensitivity", sensitivity, caption="Blow-up threshold sensitivity",
                                notes=[note]) if not sensitivity.empty else Note(note))
    if not a.variance.empty:
        blocks.append(Heading("(a4) Variance components: the seeds and tasks a claim needs (test)"))
        blocks.append(Table("a4_variance", variance_table(a.variance), notes=[
            f"Where the spread of the test {label} of (a)'s models comes from, seed × task value by value "
            "(two-way crossed random effects, ANOVA estimates, `variance.csv`): `sd seed`, a model's offset "
            "shared by all its tasks (what more seeds average out); `sd task`, a task's difficulty, shared by every "
            "seed, since all are scored on the same test tasks (what more tasks average out); `sd seed×task`, the "
            "rest. `seed share %`: the seeds' part of the variance of this table's mean in this design (seeds × "
            "tasks). `±95%`: the half-width of that mean's 95% interval implied by the components (normal "
            "approximation; the bootstrap intervals of (a) and (a2) agree with it to first order). `seeds for "
            "±10%`/`±5%`: the fewest seeds whose mean over as many tasks has a 95% half-width within 10%/5% of "
            "the mean (∞: the task term alone is wider; more tasks are needed). Rows where a value is "
            "non-finite (a blow-up) are left out. The seed term rests on seeds − 1 degrees of freedom: with 3 "
            "seeds it can be off by a factor of several, so plan from a folder with many seeds." + (f" Differences between two configurations are usually "
                                                       "measured on shared tasks, where the task term cancels "
                                                       "(section (e))." if not a.paired.empty else "")]))
    if not a.scores.empty:
        blocks.append(Heading("All configurations (in selection order within each group)", 3))
        blocks.append(Table("a3_all_configurations", all_configs_table(a),
                            caption="All configurations (in selection order within each group)"))

    blocks.append(Heading("(b) Speed"))
    if a.speed.empty:
        blocks.append(Note("No cell recorded its seconds per iteration."))
    else:
        blocks.append(Table("b_speed", speed_table(a.speed), notes=[
            "**Measured under contention**: these are the quality sweep's own timings, taken while other workers "
            "trained beside each job, so they rank backends only roughly" +
            ("; the clean numbers are the speed suite's (`speed.md`, figures 5a/5b). " if not a.speed_suite.empty
             else " (run `make speed` for clean ones). ") +
            "Median over cells of the wall seconds per meta-training iteration. `compile`: a compiled engine's "
            "one-off compile (the first call of each compiled program), not in s/iter; `training`: the program's "
            "projected training time, compile + s/iter x iterations. `program`: the program that ran "
            "(on the `func` backend an ensemble of `ensemble` cells trained at once); `per member`: program time / "
            f"ensemble size. `vs l2l MAML`: the time against learn2learn MAML's (`{SPEED_REFERENCE[0]}`/"
            f"`{SPEED_REFERENCE[1]}`) on the same device, S and meta-batch (– where it was not run): `×2.0 faster` "
            "takes half its time, `×2.0 slower` twice, `equal` within about 5%."]))

    blocks.append(Heading("(c) Diverged and failed cells"))
    problems = problems_table(a.cells)
    blocks.append(Table("c_problems", problems) if not problems.empty else
                  Note("None: every cell finished `ok`."))
    nonfinite = nonfinite_table(a.final, a.metric)
    if not nonfinite.empty:
        blocks.append(Note(f"`ok` cells (finite training loss) with non-finite evaluation {_values(a.metric)}, kept "
                           "visible:"))
        blocks.append(Table("c_nonfinite", nonfinite, caption=f"Cells with non-finite evaluation {_values(a.metric)}"))

    if paper_table is not None:
        heading = "(d) Finn et al. 2017, Table 2 (also `paper_comparison.csv`)"
        blocks.append(Heading(heading))
        blocks.append(Table("d_paper", paper_table[0], notes=[paper_table[1]]))

    blocks.append(Heading("(e) Paired comparisons on the shared test tasks (also `paired.csv`)"))
    if a.paired.empty:
        blocks.append(Note("None: " + (f"{a.task_errors.missing()}." if not a.task_errors else
                                       f"no reference algorithm ({', '.join(PAIRED_REFERENCES)}) with a chosen "
                                       "configuration beside another algorithm.")))
    else:
        shown = [(reference, paired_table(a.paired, reference)) for reference in PAIRED_REFERENCES]
        shown = [(reference, table) for reference, table in shown if not table.empty]
        for i, (reference, table) in enumerate(shown):
            blocks.append(Heading(f"Against {reference}", 3))
            blocks.append(Table(f"e_paired_{reference}", table, caption=f"Paired comparisons against {reference}",
                                notes=[paired_note(a.metric)] if i == len(shown) - 1 else []))

    blocks.append(Heading("Figures (`figures/`, PNG and SVG)"))
    if a.scope:
        text = ("Figures 1, 2, 3, 6, 7 and 8 show the best configuration per algorithm (any backend, chosen as in "
                f"(a)) at the most common task and K among selectable cells: {scope_text(a)}; figure 4 the same "
                "task and K.")
        others = a.scores[(a.scores["task"] != a.scope["task"]) | (a.scores["k_shot"] != a.scope["k_shot"])]
        if not others.empty:
            rest = sorted({f"{t} K={int(k)}" for t, k in zip(others["task"], others["k_shot"])})
            text += f" Not in those figures (see the tables): {', '.join(rest)}."
        blocks.append(Note(text))
    blocks.extend(Figure(name, description, skipped.get(name)) for name, description in figures.items())
    if any(isinstance(b, Table) and b.frame.astype(str).apply(
            lambda column: column.str.contains(rf"± {NA}|\[{NA}\]", regex=True)).to_numpy().any() for b in blocks):
        intro.text += " " + NA_NOTE  # the introduction, under the title
    if any(isinstance(b, Table) and b.frame.astype(str).apply(
            lambda column: column.str.contains(EXTRAPOLATION_MARK, regex=False)).to_numpy().any() for b in blocks):
        intro.text += " " + EXTRAPOLATION_NOTE  # once, for every table that marks a number
    return with_captions(blocks)


def tables_markdown(a: Analysis, out: Path, figures: dict[str, str], skipped: dict[str, str],
                    paper_table: tuple[pd.DataFrame, str] | None = None, partial: str | None = None) -> str:
    """tables.md (`report_blocks` rendered to Markdown)."""
    return render_markdown(report_blocks(a, out, figures, skipped, paper_table, partial))
