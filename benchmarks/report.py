"""Reports regenerated from DIR/runs/ alone, without training: summary.csv, curves.csv,
tables.md and DIR/figures/*.{png,svg}.

Long-format rows -> pandas -> tables here, plots in `benchmarks.plots` (STYLE.md, 6). Every
output is computed (figures rendered to bytes) before the first file is written, so a
report that fails part-way leaves the previous report as it was.

Selection is by validation, never by test: a "best configuration" is the one with the
lowest mean meta-validation MSE after one adaptation step at the final iteration, at the
K it was trained for; its test numbers are then reported (STYLE.md, 7: with CI and n).
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.records import load_records, write_atomic

log = logging.getLogger(__name__)

CELL_COLUMNS = ["algorithm", "backend", "task", "k_shot", "inner_steps", "lr_base", "lr_meta", "meta_batch",
                "iterations", "seed"]
RUN_COLUMNS = ["status", "sec_per_iter", "sec_per_iter_member", "ensemble_size", "peak_memory_mb", "device"]
EVAL_COLUMNS = ["iteration", "split", "eval_k_shot", "eval_steps", "mse", "mse_ci95", "n_test_tasks"]
#: a configuration is a cell without its seed: seeds are pooled
CONFIG_COLUMNS = [c for c in CELL_COLUMNS if c != "seed"]
GROUP_COLUMNS = ["task", "algorithm", "backend", "k_shot"]  # table (a): one best configuration each
SELECT_STEPS = 1  # adaptation steps of the validation MSE that chooses a configuration
TABLE_STEPS = (1, 5, 10)
REFERENCE = ("maml", "l2l")  # the speed table's yardstick: learn2learn MAML
FORMATS = ("png", "svg")
FIGURES = {
    "fig1_adaptation_steps": "meta-test MSE vs adaptation steps, best configuration per algorithm, "
                             "one panel per eval K",
    "fig2_gradient_norm": "initial-gradient Frobenius norm over meta-training, best configuration per algorithm",
    "fig3_qualitative_sine_half": "fits on one sine-half task: MAML vs pre-training, before and after 1 and 10 steps",
    "fig4_lr_heatmaps": "final test MSE (1 step) over LR_base x LR_meta, one panel per (S, algorithm)",
    "fig5a_speed_by_backend": "s/iter per (algorithm, backend) at one (S, meta-batch)",
    "fig5b_speed_vs_inner_steps": "s/iter against inner steps S per (algorithm, backend)",
    "fig6_learning_curves": "meta-training loss vs iteration, best configuration per algorithm",
}
CI_NOTE = (
    "Pooling seeds: the MSE is the mean over seeds of each seed's mean over the same n test (or validation) "
    "tasks. Its 95% CI is sqrt(mean_s(ci_s^2) + (t_{0.975,S-1} * sd_s / sqrt(S))^2), where ci_s = "
    "1.96 * sd_tasks / sqrt(n) is seed s's own per-task interval and sd_s the spread of the S per-seed means. "
    "The first term is the task-sampling uncertainty; it is not divided by S because every seed is scored on "
    "the same tasks, so the seeds' task errors are not independent. The second is the training-seed spread "
    "(Student t, S-1 degrees of freedom). Both terms count the seed x task interaction, so the interval is "
    "conservative; with one seed it is the per-task interval alone and says nothing about seed-to-seed variation.")


# ----------------------------------------------------------------------------- frames

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


def cell_frame(records: list[dict]) -> pd.DataFrame:
    """One row per record (cell): its settings, status, error and speed."""
    rows = [{"cell_id": r["cell_id"], **{k: r["cell"][k] for k in CELL_COLUMNS}, "error": r.get("error"),
             **{k: r.get(k) for k in RUN_COLUMNS}} for r in records]
    frame = pd.DataFrame(rows, columns=["cell_id"] + CELL_COLUMNS + ["error"] + RUN_COLUMNS)
    for column in ("sec_per_iter", "sec_per_iter_member", "ensemble_size"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def final_evaluations(records: list[dict]) -> pd.DataFrame:
    """Evaluations of `ok` cells at each cell's last evaluated iteration."""
    rows = [{"cell_id": r["cell_id"], **{k: r["cell"][k] for k in CELL_COLUMNS}, **{k: e.get(k) for k in EVAL_COLUMNS}}
            for r in records if r["status"] == "ok" for e in r.get("evaluations") or []]
    frame = pd.DataFrame(rows, columns=["cell_id"] + CELL_COLUMNS + EVAL_COLUMNS)
    if frame.empty:
        return frame
    frame["mse"] = pd.to_numeric(frame["mse"], errors="coerce")
    frame["mse_ci95"] = pd.to_numeric(frame["mse_ci95"], errors="coerce")
    return frame[frame["iteration"] == frame.groupby("cell_id")["iteration"].transform("max")]


def pool_seeds(final: pd.DataFrame, keys: list[str] = CONFIG_COLUMNS) -> pd.DataFrame:
    """Per (keys, split, eval K, steps): MSE pooled over seeds with its CI (see CI_NOTE)."""
    by = keys + ["split", "eval_k_shot", "eval_steps"]
    columns = by + ["mse", "mse_ci95", "n_tasks", "n_seeds"]
    if final.empty:
        return pd.DataFrame(columns=columns)
    frame = final.assign(ci2=final["mse_ci95"] ** 2)
    with np.errstate(invalid="ignore"):
        grouped = frame.groupby(by, sort=False).agg(mse=("mse", "mean"), sd=("mse", "std"), ci2=("ci2", "mean"),
                                                    n_tasks=("n_test_tasks", "min"), n_seeds=("seed", "nunique"))
        grouped = grouped.reset_index()
        dof = np.maximum(grouped["n_seeds"].to_numpy() - 1, 1)
        between = stats.t.ppf(0.975, dof) * grouped["sd"].fillna(0.0) / np.sqrt(grouped["n_seeds"])
        grouped["mse_ci95"] = np.sqrt(grouped["ci2"] + between ** 2)
    return grouped[columns]


def config_scores(cells: pd.DataFrame, pooled: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: cells (ok / all) and the pooled validation and test MSE after
    SELECT_STEPS steps at the trained K, final iteration."""
    counts = cells.assign(ok=cells["status"] == "ok").groupby(CONFIG_COLUMNS, sort=False).agg(
        n_cells=("cell_id", "size"), n_ok=("ok", "sum")).reset_index()
    own = pooled[(pooled["eval_k_shot"] == pooled["k_shot"]) & (pooled["eval_steps"] == SELECT_STEPS)]
    for split, prefix in (("validation", "val"), ("test", "test")):
        part = own[own["split"] == split][CONFIG_COLUMNS + ["mse", "mse_ci95", "n_tasks", "n_seeds"]]
        part = part.rename(columns={c: f"{prefix}_{c}" for c in ["mse", "mse_ci95", "n_tasks", "n_seeds"]})
        counts = counts.merge(part, on=CONFIG_COLUMNS, how="left")
    return counts


def _ranked(scores: pd.DataFrame) -> pd.DataFrame:
    """Configurations in selection order: every seed finished `ok` first, then lowest validation MSE."""
    key = scores.assign(_partial=scores["n_ok"] < scores["n_cells"],
                        _val=scores["val_mse"].where(np.isfinite(scores["val_mse"].astype(float)), np.inf))
    return key.sort_values(["_partial", "_val"], kind="stable").drop(columns=["_partial", "_val"])


def best_configs(scores: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The selected configuration per group `by`; groups with no validation MSE are dropped."""
    candidates = scores[scores["val_mse"].notna()]
    if candidates.empty:
        return candidates
    return _ranked(candidates).groupby(by, sort=False).head(1).sort_values(by).reset_index(drop=True)


def _matching(frame: pd.DataFrame, config) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for column in CONFIG_COLUMNS:
        mask &= (frame[column] == config[column]).to_numpy()
    return frame[mask]


def _mode(series: pd.Series, prefer=None):
    """The most common value; ties go to `prefer` if tied, else to the largest (K=10 over K=5)."""
    counts = series.value_counts()
    top = list(counts[counts == counts.max()].index)
    return prefer if prefer in top else max(top)


# ----------------------------------------------------------------------------- tables

def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, not a dependency here)."""
    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).replace(
            "|", "\\|").replace("\n", " ")
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def fmt_mse(mse, ci, n_tasks=None, n_seeds=None) -> str:
    """`mean ± CI (n=tasks×seeds)`; non-finite values stay visible as inf/nan; None: not evaluated."""
    if mse is None:
        return "–"
    text = f"{mse:.4g}" if not math.isfinite(mse) else f"{mse:.4g} ± {ci:.2g}"
    if n_tasks is not None and not pd.isna(n_tasks):
        seeds = f"×{int(n_seeds)}" if n_seeds is not None and not pd.isna(n_seeds) else ""
        text += f" (n={int(n_tasks)}{seeds})"
    return text


def _fmt_seconds(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value * 1e3:.3g} ms"


def _lookup(pooled: pd.DataFrame, config, split: str, eval_k: int, steps: int):
    rows = _matching(pooled, config)
    rows = rows[(rows["split"] == split) & (rows["eval_k_shot"] == eval_k) & (rows["eval_steps"] == steps)]
    return None if rows.empty else rows.iloc[0]


def _mse_cell(pooled, config, split, eval_k, steps, with_n=False) -> str:
    row = _lookup(pooled, config, split, eval_k, steps)
    if row is None:
        return "–"
    return fmt_mse(row["mse"], row["mse_ci95"], row["n_tasks"] if with_n else None, row["n_seeds"] if with_n else None)


def best_table(best: pd.DataFrame, pooled: pd.DataFrame) -> pd.DataFrame:
    """Table (a): the chosen configuration per (task, algorithm, backend, K), its test MSE after
    1, 5, 10 steps at the trained K, then one row per other evaluated K."""
    rows = []
    evaluated = pooled[pooled["split"] == "test"]
    for _, config in best.iterrows():
        eval_ks = sorted(_matching(evaluated, config)["eval_k_shot"].unique(), key=lambda k: (k != config["k_shot"], k))
        for eval_k in eval_ks or [config["k_shot"]]:
            test = _lookup(pooled, config, "test", eval_k, TABLE_STEPS[0])
            val = _lookup(pooled, config, "validation", eval_k, SELECT_STEPS)
            rows.append({
                "task": config["task"], "algorithm": config["algorithm"], "backend": config["backend"],
                "K": int(config["k_shot"]),
                "eval K": int(eval_k) if eval_k == config["k_shot"] else f"**{int(eval_k)}**",
                "S": int(config["inner_steps"]), "LR_base": f"{config['lr_base']:g}",
                "LR_meta": f"{config['lr_meta']:g}",
                "B": int(config["meta_batch"]), "iters": int(config["iterations"]),
                "cells ok": f"{int(config['n_ok'])}/{int(config['n_cells'])}",
                f"val MSE@{SELECT_STEPS}": "–" if val is None else fmt_mse(val["mse"], val["mse_ci95"]),
                "val n": "–" if val is None else int(val["n_tasks"]),
                **{f"test MSE@{s}": _mse_cell(pooled, config, "test", eval_k, s) for s in TABLE_STEPS},
                "test n": "–" if test is None else int(test["n_tasks"]),
                "seeds": "–" if test is None else int(test["n_seeds"]),
            })
    return pd.DataFrame(rows)


def all_configs_table(scores: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    chosen = {tuple(row[c] for c in CONFIG_COLUMNS) for _, row in best.iterrows()}
    rows = []
    for _, row in _ranked(scores).sort_values(GROUP_COLUMNS, kind="stable").iterrows():
        rows.append({
            "task": row["task"], "algorithm": row["algorithm"], "backend": row["backend"], "K": int(row["k_shot"]),
            "S": int(row["inner_steps"]), "LR_base": f"{row['lr_base']:g}", "LR_meta": f"{row['lr_meta']:g}",
            "B": int(row["meta_batch"]), "iters": int(row["iterations"]),
            "cells ok": f"{int(row['n_ok'])}/{int(row['n_cells'])}",
            **{f"{name} MSE@{SELECT_STEPS}": fmt_mse(
                row[f"{prefix}_mse"] if pd.notna(row[f"{prefix}_n_seeds"]) else None,  # NaN n: not evaluated
                row[f"{prefix}_mse_ci95"], row[f"{prefix}_n_tasks"], row[f"{prefix}_n_seeds"])
               for name, prefix in (("val", "val"), ("test", "test"))},
            "chosen": "✓" if tuple(row[c] for c in CONFIG_COLUMNS) in chosen else "",
        })
    return pd.DataFrame(rows)


def speed_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """Median s/iter over cells per (device, algorithm, backend, S, meta-batch), and the ratio to
    learn2learn MAML on the same device, S and meta-batch (NaN where it was not run)."""
    timed = cells[np.isfinite(cells["sec_per_iter"].astype(float))]
    keys = ["device", "algorithm", "backend", "inner_steps", "meta_batch"]
    columns = keys + ["sec_per_iter", "sec_per_iter_member", "ensemble_min", "ensemble_max", "n_cells",
                      "ratio", "ratio_member"]
    if timed.empty:
        return pd.DataFrame(columns=columns)
    frame = timed.groupby(keys).agg(sec_per_iter=("sec_per_iter", "median"),
                                    sec_per_iter_member=("sec_per_iter_member", "median"),
                                    ensemble_min=("ensemble_size", "min"), ensemble_max=("ensemble_size", "max"),
                                    n_cells=("cell_id", "size")).reset_index()
    frame["sec_per_iter_member"] = frame["sec_per_iter_member"].fillna(frame["sec_per_iter"])
    reference = frame[(frame["algorithm"] == REFERENCE[0]) & (frame["backend"] == REFERENCE[1])]
    reference = reference[["device", "inner_steps", "meta_batch", "sec_per_iter"]].rename(
        columns={"sec_per_iter": "_ref"})
    frame = frame.merge(reference, on=["device", "inner_steps", "meta_batch"], how="left")
    frame["ratio"] = frame["sec_per_iter"] / frame["_ref"]
    frame["ratio_member"] = frame["sec_per_iter_member"] / frame["_ref"]
    return frame[columns]


def speed_table(speed: pd.DataFrame) -> pd.DataFrame:
    def ratio(value):
        return "–" if pd.isna(value) else f"{value:.3g}×"

    def ensemble(row):
        low, high = row["ensemble_min"], row["ensemble_max"]
        return "–" if pd.isna(low) else (f"{int(low)}" if low == high else f"{int(low)}–{int(high)}")

    return pd.DataFrame([{
        "device": row["device"], "algorithm": row["algorithm"], "backend": row["backend"],
        "S": int(row["inner_steps"]), "B": int(row["meta_batch"]), "cells": int(row["n_cells"]),
        "ensemble": ensemble(row), "s/iter (program)": _fmt_seconds(row["sec_per_iter"]),
        "s/iter (per member)": _fmt_seconds(row["sec_per_iter_member"]),
        "program / l2l MAML": ratio(row["ratio"]), "per member / l2l MAML": ratio(row["ratio_member"]),
    } for _, row in speed.iterrows()])


def problems_table(cells: pd.DataFrame) -> pd.DataFrame:
    bad = cells[cells["status"] != "ok"].sort_values("cell_id")
    return pd.DataFrame([{"cell": row["cell_id"], "status": row["status"],
                          "reason": str(row["error"] or "(no reason recorded)").strip().splitlines()[-1][:300]}
                         for _, row in bad.iterrows()], columns=["cell", "status", "reason"])


def nonfinite_table(final: pd.DataFrame) -> pd.DataFrame:
    """`ok` cells whose final evaluation has a non-finite MSE (e.g. 10 steps of a learned rate)."""
    if final.empty:
        return pd.DataFrame(columns=["cell", "non-finite MSE at the final iteration"])
    bad = final[~np.isfinite(final["mse"].astype(float))]
    rows = []
    for cell_id, group in bad.groupby("cell_id"):
        parts = [f"{split} K={int(k)} from step {int(g['eval_steps'].min())}"
                 for (split, k), g in group.groupby(["split", "eval_k_shot"])]
        rows.append({"cell": cell_id, "non-finite MSE at the final iteration": "; ".join(parts)})
    return pd.DataFrame(rows, columns=["cell", "non-finite MSE at the final iteration"])


# ----------------------------------------------------------------------------- figures

@dataclass
class Analysis:
    """Everything the tables and figures are drawn from."""

    records: list[dict]
    cells: pd.DataFrame
    curves: pd.DataFrame
    final: pd.DataFrame
    pooled: pd.DataFrame
    scores: pd.DataFrame
    best: pd.DataFrame  # table (a)
    speed: pd.DataFrame
    scope: dict = field(default_factory=dict)  # the (task, K) the per-algorithm figures show
    figure_best: pd.DataFrame = None  # best configuration per algorithm within scope
    paper: pd.DataFrame = field(default_factory=pd.DataFrame)  # section (d), `benchmarks.paper`


def analyse(records: list[dict]) -> Analysis:
    cells = cell_frame(records)
    final = final_evaluations(records)
    pooled = pool_seeds(final)
    scores = config_scores(cells, pooled)
    best = best_configs(scores, GROUP_COLUMNS)
    analysis = Analysis(records, cells, curve_frame(records), final, pooled, scores, best, speed_frame(cells))
    from benchmarks.paper import comparison  # imports this module

    analysis.paper = comparison(final)
    selectable = scores[scores["val_mse"].notna()]
    if selectable.empty:
        analysis.figure_best = selectable
        return analysis
    task = _mode(selectable["task"], prefer="sine")  # Finn et al.'s task wins a tie
    k_shot = _mode(selectable[selectable["task"] == task]["k_shot"], prefer=10)  # and Finn's K = 10
    analysis.scope = {"task": task, "k_shot": int(k_shot)}
    in_scope = scores[(scores["task"] == task) & (scores["k_shot"] == k_shot)]
    figure_best = best_configs(in_scope, ["algorithm"])
    figure_best["label"] = [
        f"{r['algorithm']} [{r['backend']}, S={r['inner_steps']}, α={r['lr_base']:g}, β={r['lr_meta']:g}]"
        for _, r in figure_best.iterrows()]
    analysis.figure_best = figure_best
    return analysis


class Skip(Exception):
    """A figure that cannot be drawn from these records; the message says why."""


def _scope_text(a: Analysis) -> str:
    return f"task {a.scope['task']}, trained at K={a.scope['k_shot']}"


def _need_best(a: Analysis) -> None:
    if a.figure_best is None or a.figure_best.empty:
        raise Skip("no `ok` cell with a validation MSE to choose a best configuration by")


def _fig_adaptation(a: Analysis, plots, plt):
    _need_best(a)
    rows = []
    for _, config in a.figure_best.iterrows():
        test = _matching(a.pooled, config)
        rows.append(test[test["split"] == "test"].assign(label=config["label"]))
    frame = pd.concat(rows)
    if frame.empty:
        raise Skip("the best configurations have no test evaluations")
    eval_ks = sorted(frame["eval_k_shot"].unique())
    fig, axes = plt.subplots(1, len(eval_ks), figsize=(5.5 * len(eval_ks), 4.2), squeeze=False)
    for ax, k in zip(axes[0], eval_ks):
        plots.plot_adaptation(ax, frame[frame["eval_k_shot"] == k], title=f"{int(k)}-shot meta-test")
        if ax.get_legend():
            ax.get_legend().remove()
    axes[0, -1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # one legend, clear of the data
    fig.suptitle(f"Meta-test MSE vs adaptation steps ({_scope_text(a)}; best configuration per algorithm "
                 f"by validation MSE@{SELECT_STEPS})", fontsize="medium")
    return fig


def _curves_of_best(a: Analysis, value: str) -> pd.DataFrame:
    _need_best(a)
    parts = [_matching(a.curves, config).assign(label=config["label"]) for _, config in a.figure_best.iterrows()]
    frame = pd.concat(parts)
    frame = frame[np.isfinite(frame[value].astype(float))] if not frame.empty else frame
    if frame.empty:
        raise Skip(f"the best configurations logged no finite {value} values")
    return frame


def _fig_grad_norm(a: Analysis, plots, plt):
    frame = _curves_of_best(a, "grad_norm")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plots.plot_training_curves(ax, frame, "grad_norm", ylabel=r"$\|\nabla_\theta \mathcal{L}_{support}\|_F$",
                               title="Initial-gradient Frobenius norm on a fixed probe batch\n"
                                     f"mean over seeds, band min–max; {_scope_text(a)}")
    ax.title.set_fontsize("medium")
    return fig


def _fig_learning_curves(a: Analysis, plots, plt):
    frame = _curves_of_best(a, "loss")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plots.plot_training_curves(ax, frame, "loss", ylabel="meta-training loss",
                               title="Meta-training loss (each algorithm's own objective)\n"
                                     f"mean over seeds, band min–max; {_scope_text(a)}")
    ax.title.set_fontsize("medium")
    return fig


def _qualitative_of(a: Analysis, algorithm: str):
    rows = a.figure_best[a.figure_best["algorithm"] == algorithm]
    if rows.empty:
        raise Skip(f"no `{algorithm}` configuration with a validation MSE at {_scope_text(a)}")
    config = rows.iloc[0]
    cells = _matching(a.cells, config).sort_values("seed")
    by_id = {r["cell_id"]: r for r in a.records}
    for _, cell in cells.iterrows():
        record = by_id[cell["cell_id"]]
        if record["status"] == "ok" and record.get("qualitative"):
            return config, int(cell["seed"]), record["qualitative"]
    raise Skip(f"the best `{algorithm}` configuration stored no qualitative fit")


def _fig_qualitative(a: Analysis, plots, plt):
    _need_best(a)
    panels = [_qualitative_of(a, algorithm) for algorithm in ("maml", "pretrain")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (config, seed, qualitative), name in zip(axes, panels, ("MAML", "pre-training")):
        plots.plot_qualitative(ax, qualitative, title=f"{name}: {config['label']}, seed {seed}")
    fig.suptitle(f"Sine-half task (support only on x ∈ [0, 5]); models from {_scope_text(a)}", fontsize="medium")
    return fig


def _heatmap_panels(a: Analysis) -> dict[tuple, pd.DataFrame]:
    if not a.scope:
        raise Skip("no `ok` cell with a validation MSE")
    scores = a.scores[(a.scores["task"] == a.scope["task"]) & (a.scores["k_shot"] == a.scope["k_shot"])]
    panels, shapes = {}, []
    for (steps, algorithm), group in scores.groupby(["inner_steps", "algorithm"]):
        n_base, n_meta = group["lr_base"].nunique(), group["lr_meta"].nunique()
        shapes.append(f"S={steps} {algorithm}: {n_base}×{n_meta}")
        if n_base < 2 or n_meta < 2:
            continue
        # one value per LR pair: the configuration (backend, B, iterations) chosen by validation
        chosen = _ranked(group).groupby(["lr_base", "lr_meta"], sort=False).head(1)
        note = np.where(chosen["n_ok"] == 0, "div./failed", "non-finite")
        panels[(int(steps), algorithm)] = pd.DataFrame({"lr_base": chosen["lr_base"], "lr_meta": chosen["lr_meta"],
                                                        "mse": chosen["test_mse"], "note": note})
    if not panels:
        raise Skip("needs ≥2 values of both LR_base and LR_meta for some (S, algorithm) at "
                   f"{_scope_text(a)}; LR_base×LR_meta values found: {', '.join(shapes)}")
    return panels


def _fig_heatmaps(a: Analysis, plots, plt):
    from matplotlib.colors import LogNorm

    panels = _heatmap_panels(a)
    values = pd.concat([frame["mse"] for frame in panels.values()]).astype(float).to_numpy()
    values = values[np.isfinite(values) & (values > 0)]
    norm = LogNorm(values.min(), values.max()) if values.size else None
    rows = sorted({steps for steps, _ in panels})
    columns = sorted({algorithm for _, algorithm in panels})
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.8 * len(columns), 3.2 * len(rows)), squeeze=False,
                             layout="constrained")
    for i, steps in enumerate(rows):
        for j, algorithm in enumerate(columns):
            if (steps, algorithm) in panels:
                plots.plot_lr_heatmap(axes[i, j], panels[(steps, algorithm)], norm=norm,
                                      title=f"{algorithm}, S={steps}", colorbar=norm is None)
            else:
                axes[i, j].set_visible(False)
    if norm is not None:  # one scale for every panel
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(norm=norm, cmap=plots.HEATMAP_CMAP), ax=axes, label="test MSE", shrink=0.8)
    fig.suptitle(f"Final test MSE after {SELECT_STEPS} step, mean over seeds ({_scope_text(a)}; grey: not run "
                 "or no finite value)", fontsize="medium")
    return fig


def _speed_reference(a: Analysis):
    if a.speed.empty:
        raise Skip("no cell recorded its seconds per iteration")
    device = _mode(a.speed.loc[a.speed.index.repeat(a.speed["n_cells"]), "device"])
    on_device = a.speed[a.speed["device"] == device]
    pairs = on_device.groupby(["inner_steps", "meta_batch"]).size().reset_index(name="n")
    pairs = pairs.sort_values(["n", "inner_steps", "meta_batch"], ascending=[False, True, False])
    return device, on_device, int(pairs.iloc[0]["inner_steps"]), int(pairs.iloc[0]["meta_batch"])


def _fig_speed_bars(a: Analysis, plots, plt):
    device, on_device, steps, batch = _speed_reference(a)
    frame = on_device[(on_device["inner_steps"] == steps) & (on_device["meta_batch"] == batch)]
    rows = []
    for _, row in frame.iterrows():
        ensemble = row["ensemble_max"] > 1
        rows.append({"algorithm": row["algorithm"], "sec_per_iter": row["sec_per_iter"],
                     "series": f"{row['backend']} (ensemble program)" if ensemble else row["backend"]})
        if ensemble:
            rows.append({"algorithm": row["algorithm"], "sec_per_iter": row["sec_per_iter_member"],
                         "series": f"{row['backend']} (per member)"})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * frame["algorithm"].nunique() + 3), 4.2))
    plots.plot_speed_bars(ax, pd.DataFrame(rows),
                          title=f"Meta-training speed on {device}, S={steps}, meta-batch {batch}")
    return fig


def _fig_speed_steps(a: Analysis, plots, plt):
    device, on_device, _, batch = _speed_reference(a)
    frame = on_device[on_device["meta_batch"] == batch]
    counts = frame.groupby(["algorithm", "backend"])["inner_steps"].nunique()
    if counts.max() < 2:
        raise Skip(f"needs ≥2 values of S for one (algorithm, backend) on {device} at meta-batch {batch}; "
                   f"S values found: {sorted(int(s) for s in frame['inner_steps'].unique())}")
    keep = counts[counts >= 2].index
    frame = frame.set_index(["algorithm", "backend"]).loc[keep].reset_index()
    frame = frame.assign(label=frame["algorithm"] + " [" + frame["backend"] + "]")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plots.plot_speed_vs_steps(ax, frame, title=f"Cost of inner steps on {device}, meta-batch {batch}")
    return fig


FIGURE_MAKERS = {
    "fig1_adaptation_steps": _fig_adaptation,
    "fig2_gradient_norm": _fig_grad_norm,
    "fig3_qualitative_sine_half": _fig_qualitative,
    "fig4_lr_heatmaps": _fig_heatmaps,
    "fig5a_speed_by_backend": _fig_speed_bars,
    "fig5b_speed_vs_inner_steps": _fig_speed_steps,
    "fig6_learning_curves": _fig_learning_curves,
}


def render_figures(a: Analysis) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """Draw every figure into memory: ({name: {format: bytes}}, {skipped name: reason})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import plots

    rendered, skipped = {}, {}
    with matplotlib.rc_context({"svg.hashsalt": "metabench", "figure.max_open_warning": 0}):
        for name, make in FIGURE_MAKERS.items():
            try:
                fig = make(a, plots, plt)
            except Skip as reason:
                skipped[name] = str(reason)
                log.warning("figure %s skipped: %s", name, reason)
                continue
            try:
                if not fig.get_layout_engine():
                    fig.tight_layout()  # panels; bbox_inches="tight" below keeps long titles whole
                rendered[name] = {}
                for fmt in FORMATS:
                    buffer = io.BytesIO()
                    fig.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight",
                                metadata={"Date": None} if fmt == "svg" else None)
                    rendered[name][fmt] = buffer.getvalue()
            finally:
                plt.close(fig)
    return rendered, skipped


# ----------------------------------------------------------------------------- writing

def tables_markdown(a: Analysis, out: Path, skipped: dict[str, str]) -> str:
    status = a.cells["status"].value_counts()
    sections = [f"# Report: {Path(out).name}",
                f"Regenerated from {len(a.records)} run records in `runs/` without training "
                f"({', '.join(f'{n} {s}' for s, n in status.items())}). "
                "Every MSE is `mean ± 95% CI (n=tasks×seeds)`; "
                "where the table has n columns, the MSE cells leave n out."]

    sections.append("## (a) Best configuration per (algorithm, backend, K)")
    if a.best.empty:
        sections.append("No `ok` cell has a validation MSE at its trained K, so no configuration can be chosen.")
    else:
        sections.append(markdown_table(best_table(a.best, a.pooled)))
        sections.append(
            f"Chosen per (task, algorithm, backend, K) by the lowest mean **validation** MSE after {SELECT_STEPS} "
            "adaptation step at the trained K and the final iteration, averaged over seeds; configurations whose "
            "every seed finished `ok` rank before those with a diverged or failed seed. Test MSE after 1, 5 and 10 "
            "steps is reported for the chosen configuration only. Rows with a **bold** eval K are the same models "
            "evaluated at another K (their validation column is at that K too). `val n`/`test n`: tasks per seed; "
            "`seeds`: seeds pooled.")
        sections.append(CI_NOTE)
    has_val = a.scores.groupby(GROUP_COLUMNS)["val_mse"].apply(lambda v: v.notna().any()) if not a.scores.empty else {}
    missing = [" ".join(str(v) for v in key) for key, ok in dict(has_val).items() if not ok]
    if missing:
        sections.append(f"No validation MSE (every cell diverged or failed), nothing chosen for: {', '.join(missing)}.")
    if not a.scores.empty:
        sections.append("### All configurations (in selection order within each group)")
        sections.append(markdown_table(all_configs_table(a.scores, a.best)))

    sections.append("## (b) Speed")
    if a.speed.empty:
        sections.append("No cell recorded its seconds per iteration.")
    else:
        sections.append(markdown_table(speed_table(a.speed)))
        sections.append(
            "Median over cells of the wall seconds per meta-training iteration. `program`: the program that ran "
            "(on the `func` backend an ensemble of `ensemble` cells trained at once); `per member`: program time / "
            "ensemble size. Ratios divide by learn2learn MAML (`maml`/`l2l`) on the same device, S and meta-batch "
            "(– where it was not run); below 1 is faster.")

    sections.append("## (c) Diverged and failed cells")
    problems = problems_table(a.cells)
    sections.append(markdown_table(problems) if not problems.empty else "None: every cell finished `ok`.")
    nonfinite = nonfinite_table(a.final)
    if not nonfinite.empty:
        sections.append("`ok` cells (finite training loss) with non-finite evaluation MSEs, kept visible:")
        sections.append(markdown_table(nonfinite))

    if not a.paper.empty:
        from benchmarks.paper import comparison_markdown

        sections.append("## (d) Finn et al. 2017, Table 2 (also `paper_comparison.csv`)")
        sections.append(comparison_markdown(a.paper))

    sections.append("## Figures (`figures/`, PNG and SVG)")
    if a.scope:
        text = ("Figures 1, 2, 3 and 6 show the best configuration per algorithm (any backend, chosen as in (a)) "
                f"at the most common task and K among selectable cells: {_scope_text(a)}; figure 4 the same "
                "task and K.")
        others = a.scores[(a.scores["task"] != a.scope["task"]) | (a.scores["k_shot"] != a.scope["k_shot"])]
        if not others.empty:
            rest = sorted({f"{t} K={int(k)}" for t, k in zip(others["task"], others["k_shot"])})
            text += f" Not in those figures (see the tables): {', '.join(rest)}."
        sections.append(text)
    sections.append("\n".join(f"- `{name}`: **skipped**: {skipped[name]}" if name in skipped else
                               f"- `{name}`: {description}" for name, description in FIGURES.items()))
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"


@dataclass
class Report:
    tables: Path
    figures: list[Path]
    skipped: dict[str, str]


def write_summary(out: Path, records: list[dict] | None = None) -> pd.DataFrame:
    records = load_records(out) if records is None else records
    frame = summary_frame(records)
    write_atomic(Path(out) / "summary.csv", frame.to_csv(index=False))
    return frame


def write_report(out: Path) -> Report:
    """Everything a reader opens, from the stored runs: CSV, Markdown tables, figures.

    Raises RecordError (before writing anything) when DIR/runs/ is empty or a record is corrupt.
    """
    out = Path(out)
    records = load_records(out)
    analysis = analyse(records)
    summary = summary_frame(records).to_csv(index=False)
    curves = analysis.curves.to_csv(index=False)
    rendered, skipped = render_figures(analysis)
    tables = tables_markdown(analysis, out, skipped)

    figures_dir = out / "figures"
    written = []
    for name, formats in rendered.items():
        for fmt, data in formats.items():
            path = figures_dir / f"{name}.{fmt}"
            write_atomic(path, data)
            written.append(path)
    for name in skipped:  # a figure from an earlier report would no longer match these records
        for fmt in FORMATS:
            (figures_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    write_atomic(out / "summary.csv", summary)
    write_atomic(out / "curves.csv", curves)
    write_atomic(out / "tables.md", tables)
    if not analysis.paper.empty:
        write_atomic(out / "paper_comparison.csv", analysis.paper.to_csv(index=False))
    else:  # from an earlier report of other records
        (out / "paper_comparison.csv").unlink(missing_ok=True)
    return Report(out / "tables.md", written, skipped)
