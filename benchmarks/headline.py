"""The report's first two tables, the ones a reader (or a paper) quotes: a compact headline per
algorithm, and the chosen hyperparameters per (algorithm, S) with a warning where the choice sits
on the edge of the swept grid. Both are blocks (`benchmarks.document`), placed first by
`benchmarks.tables.report_blocks`, so tables.md, the LaTeX files and index.html open with them.

Decisions:
- Nothing is selected anew for the headline: each cell is the configuration the figures show
  (`analysis.best_per_algorithm`: table (a)'s choice, the best over backends and networks for the
  algorithm at that task and trained K), and its numbers are `Analysis.robust`'s (robust.csv).
- The statistic is the IQM (the figures' robust statistic, `benchmarks.figures`) with its
  bootstrap interval, printed by the tables' interval rule (`tables.fmt_estimate`, 3 digits as
  in (a2)), at the trained K only (other evaluated K are in (a2)). Where the metric has scaled
  blow-ups (`Metric.scaled_blowups`: MSE) a cell whose blow-up rate is above 0 says so in
  parentheses, as a point estimate (its interval is in (a2)); a cell without it had none. Other
  metrics (accuracy) get no blow-up mark: a non-finite value already shows in the IQM, and (a)
  and (a2) count them. The caption names the metric (`Metric.label`) and the better direction.
- A cell at more steps than its configuration's trained S ends with the tables' extrapolation
  mark (`tables.mark_extrapolated`); the validation value of the hyperparameter table is the
  tables' mean with its bootstrap interval (`tables.fmt_mean`).
- The hyperparameter table selects per (task, algorithm, backend, K, network, S) with the same
  ranking as (a) (`analysis.best_configs`, one more group key). Its columns come from the cell
  schema, never a hand-kept list: the group keys and the chosen ones (LR_base, LR_meta, B,
  iters today). Algorithm, S and every swept key (two or more values in the folder) are always
  columns; any other key with one value in every row is stated once under the table instead.
- A chosen value is "on grid edge" (`low`/`high`) when it is the smallest/largest of two or more
  values that key took among the group's configurations (all swept ones, finished or not): the
  optimum may lie outside the grid.
"""
from __future__ import annotations

import pandas as pd

from benchmarks.analysis import (GROUP_COLUMNS, SELECT_STEPS, SHOWN_COLUMNS, Analysis, best_configs,
                                 best_per_algorithm, config_columns, matching)
from benchmarks.config import SCHEMA
from benchmarks.document import Block, Heading, Note, Table
from benchmarks.statistics import Estimate
from benchmarks.tables import DASH, _estimate, fmt_estimate, fmt_mean, fmt_rate, mark_extrapolated

STATISTIC = "iqm"  # robust.csv's column of the headline's statistic (the figures' IQM)
STEP_KEY = "inner_steps"  # the hyperparameter table's extra group key: S
EDGE = "on grid edge"
HEADLINE_MARK = "in headline"


def direction(a: Analysis) -> str:
    return "higher is better" if a.metric.higher_is_better else "lower is better"


def _steps_label(steps: int) -> str:
    return f"{steps} step" + ("" if steps == 1 else "s")


def column_label(k_shot: int, steps: int) -> str:
    """A headline column: trained (= evaluated) K and adaptation steps."""
    return f"K={int(k_shot)}, {_steps_label(int(steps))}"


def headline_configs(a: Analysis) -> pd.DataFrame:
    """Per (task, trained K, algorithm): the configuration the headline shows (the figures' choice)."""
    if a.scores.empty:
        return pd.DataFrame()
    parts = [best_per_algorithm(a.scores, task, k, a.metric)
             for task, k in sorted(set(zip(a.scores["task"], a.scores["k_shot"])))]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _cell(a: Analysis, rows: pd.DataFrame) -> str:
    if rows.empty:
        return DASH
    row = rows.iloc[0]
    text = fmt_estimate(_estimate(row, STATISTIC), 3)
    if a.metric.scaled_blowups and row["blowup"] > 0:
        text += f" (blow-up {fmt_rate(Estimate(row['blowup']), interval=False)})"  # its interval: (a2)
    return mark_extrapolated(text, row, row["eval_steps"])


def headline_robust(a: Analysis) -> pd.DataFrame:
    """The rows of `Analysis.robust` (robust.csv) the headline shows: its configurations at their
    trained K."""
    chosen = headline_configs(a)
    if chosen.empty or a.robust.empty:
        return pd.DataFrame()
    own = a.robust[a.robust["eval_k_shot"] == a.robust["k_shot"]]
    return pd.concat([matching(own, config) for _, config in chosen.iterrows()], ignore_index=True)


def headline_table(a: Analysis) -> pd.DataFrame:
    """One row per (task, algorithm) (task column only with two or more tasks); one column per
    trained K x adaptation steps evaluated there, each the IQM [95% CI] of `Analysis.robust`."""
    chosen, own = headline_configs(a), headline_robust(a)
    if own.empty:
        return pd.DataFrame()
    columns = sorted({(int(k), int(s)) for k, s in zip(own["k_shot"], own["eval_steps"])})
    tasks = sorted(chosen["task"].unique())
    rows = []
    for task in tasks:
        for algorithm in sorted(chosen.loc[chosen["task"] == task, "algorithm"].unique()):
            row = ({"task": task} if len(tasks) > 1 else {}) | {"algorithm": algorithm}
            for k, steps in columns:
                config = chosen[(chosen["task"] == task) & (chosen["algorithm"] == algorithm) & (chosen["k_shot"] == k)]
                found = own.iloc[:0] if config.empty else matching(own, config.iloc[0])
                row[column_label(k, steps)] = _cell(a, found[found["eval_steps"] == steps])
            rows.append(row)
    return pd.DataFrame(rows)


def chosen_keys() -> list[str]:
    """The cell keys a configuration is chosen over within an (algorithm, S) group (schema order)."""
    return [k for k in SHOWN_COLUMNS[len(GROUP_COLUMNS):] if k != STEP_KEY]


def swept_keys(scores: pd.DataFrame) -> list[str]:
    """The chosen keys that took two or more values in the folder (always a column)."""
    return [k for k in chosen_keys() if scores[k].nunique(dropna=False) >= 2]


def edge_flags(group: pd.DataFrame, config, keys: list[str]) -> str:
    """`LR_base low, LR_meta high`: each numeric key whose chosen value is the smallest/largest of
    the two or more values it took among the group's configurations ("" if none)."""
    flags = []
    for key in keys:
        if SCHEMA.types.get(key) not in ("int", "float"):
            continue
        values = group[key].dropna().unique()
        if len(values) < 2:
            continue
        if config[key] == values.min():
            flags.append(f"{SCHEMA.labels[key]} low")
        elif config[key] == values.max():
            flags.append(f"{SCHEMA.labels[key]} high")
    return ", ".join(flags)


def hyperparameter_table(a: Analysis) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per (task, algorithm, backend, K, network, S) with a validation score: the chosen
    values of the other keys, the number of configurations compared, the validation score, the grid-edge flag and
    whether the headline shows it; and {label: value} of the columns equal in every row (dropped)."""
    if a.scores.empty:
        return pd.DataFrame(), {}
    groups = GROUP_COLUMNS + [STEP_KEY]
    best = best_configs(a.scores, groups, a.metric)
    if best.empty:
        return pd.DataFrame(), {}
    keys, swept = chosen_keys(), swept_keys(a.scores)
    shown = {tuple(c[k] for k in SHOWN_COLUMNS) for _, c in headline_configs(a).iterrows()}
    rows = []
    for _, config in best.iterrows():
        group = a.scores
        for key in groups:
            group = group[group[key] == config[key]]
        val = fmt_mean(a, config, "validation", config["k_shot"], SELECT_STEPS)
        rows.append({**config_columns(config, groups + keys), "configs": len(group),
                     f"val {a.metric.label}@{SELECT_STEPS}": mark_extrapolated(val, config, SELECT_STEPS),
                     EDGE: edge_flags(group, config, keys),
                     HEADLINE_MARK: "✓" if tuple(config[k] for k in SHOWN_COLUMNS) in shown else ""})
    frame = pd.DataFrame(rows)
    keep = {SCHEMA.labels[k] for k in ["algorithm", STEP_KEY] + swept}  # identity and swept keys: always shown
    constant = [c for c in config_columns(best.iloc[0], groups + keys) if c not in keep and frame[c].nunique() == 1]
    fixed = {c: str(frame[c].iloc[0]) for c in constant}
    return frame.drop(columns=constant), fixed


def headline_blocks(a: Analysis) -> list[Block]:
    """The two sections, each a heading, its table (or a note saying why there is none) and notes."""
    label, better = a.metric.label, direction(a)
    title = f"Headline: test {label} per algorithm (IQM [95% CI], {better})"
    blocks: list[Block] = [Heading(title)]
    table = headline_table(a)
    if table.empty:
        blocks.append(Note("None: " + (f"{a.task_errors.missing()}." if not a.task_errors else
                                       "no chosen configuration has stored per-task test errors.")))
    else:
        own = headline_robust(a)
        sizes = sorted({f"{int(s)} seed{'s' * (s != 1)} × {int(t):,} task{'s' * (t != 1)}"
                        for s, t in zip(own["n_seeds"], own["n_tasks"])})
        blow = (" `(blow-up x%)`: the share of those seed × task values whose adaptation blew up, where any did "
                "(its interval and the definition are in (a2)); a cell without it had none."
                if a.metric.scaled_blowups else "")
        blocks.append(Table("0_headline", table, caption=title, notes=[
            f"Test {label} ({better}), the interquartile mean (IQM: the mean of the middle 50%) over every seed × "
            f"test task value ({'; '.join(sizes)}), with its 95% two-way bootstrap interval as in (a2), at the "
            "trained K after 1, 5 and 10 adaptation steps (where evaluated). Each cell is the algorithm's "
            "configuration chosen by validation as in (a), the best over its backends and networks at that task "
            f"and K (the one the figures show; `{HEADLINE_MARK}` in the next table); other evaluated K are in "
            "(a2)." + blow]))

    title = f"Best hyperparameters per (algorithm, S), chosen by validation {label} ({better})"
    blocks.append(Heading(title))
    frame, fixed = hyperparameter_table(a)
    if frame.empty:
        blocks.append(Note(f"None: no configuration has a validation {label}, so none can be chosen."))
        return blocks
    blocks.append(Table("0_hyperparameters", frame, caption=title, notes=[
        f"One row per (task, algorithm, backend, K, network, S): the configuration with the best seed-pooled "
        f"validation {label} after {SELECT_STEPS} step at the trained K, ranked as in (a) (every seed `ok` first). "
        "`configs`: the configurations swept in that group. "
        f"`{EDGE}`: the chosen value is the smallest (`low`) or largest (`high`) of the two or more values that key "
        "took in the group, so the best value may lie outside the swept grid: extend the sweep in that direction "
        f"before quoting it as the optimum. `{HEADLINE_MARK}`: the configuration the headline table shows. "
        f"`val {label}@{SELECT_STEPS}`: the seed-pooled mean with its interval as in (a)."]))
    if fixed:
        blocks.append(Note("Same in every row: " + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + "."))
    return blocks
