"""Paper-style plots drawn from long-format frames (STYLE.md, 6).

Every function draws into an `ax` it is given and returns it; none creates, saves or closes
a figure (that is `benchmarks.report`'s job), so a caller can put any of them in any layout.
Frames come from `benchmarks.report`; the columns each function needs are in its docstring.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: figures are files

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

BAND_ALPHA = 0.2
HEATMAP_CMAP = "viridis_r"  # low MSE light


def _finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    values = frame[columns].to_numpy(dtype=float)
    return frame[np.isfinite(values).all(axis=1)]


def plot_adaptation(ax, frame: pd.DataFrame, title: str | None = None, ymax: float | None = None):
    """Meta-test MSE against adaptation steps, one line per `label`, with its 95% CI band
    (Finn et al. 2017, Fig. 2). Columns: label, eval_steps, mse, mse_ci95.

    The y axis stops at `ymax` (default: 1.5x the largest pre-update MSE, the no-adaptation
    level), so that one blown-up adaptation does not flatten every other line; points above it
    are drawn as ▲ on the top edge, the first of each line with its value. Non-finite points are
    left out of the line."""
    finite = _finite(frame, ["mse"])
    if ymax is None and not finite.empty:
        start = finite[finite["eval_steps"] == finite["eval_steps"].min()]
        ymax = 1.5 * float(start["mse"].max()) if start["mse"].max() > 0 else None
    for label, group in frame.groupby("label", sort=False):
        group = _finite(group.sort_values("eval_steps"), ["mse"])
        if group.empty:
            continue
        steps, mse = group["eval_steps"].to_numpy(), group["mse"].to_numpy()
        ci = np.nan_to_num(group["mse_ci95"].to_numpy(dtype=float), nan=0.0, posinf=0.0)
        (line,) = ax.plot(steps, mse, marker="o", markersize=3, label=label)
        ax.fill_between(steps, mse - ci, mse + ci, color=line.get_color(), alpha=BAND_ALPHA, linewidth=0)
        if ymax is not None:
            above = mse > ymax
            if above.any():  # markers for all, the value for the first only: labels on one edge overlap
                ax.plot(steps[above], np.full(above.sum(), ymax), marker="^", linestyle="", color=line.get_color(),
                        clip_on=False)
                ax.annotate(f"{mse[above][0]:.3g}", (steps[above][0], ymax), textcoords="offset points",
                            xytext=(0, -12), ha="center", fontsize="x-small", color=line.get_color())
    ax.set_xlabel("adaptation steps (SGD on the support set)")
    ax.set_ylabel("meta-test MSE (95% CI)")
    ax.set_ylim(0, ymax)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_training_curves(ax, frame: pd.DataFrame, value: str = "loss", ylabel: str | None = None,
                         title: str | None = None, log: bool = True):
    """`value` against meta-training iteration, one line per `label`: the mean over seeds,
    with a band from the lowest to the highest seed. Columns: label, seed, iteration, `value`."""
    for label, group in frame.groupby("label", sort=False):
        group = _finite(group, [value])
        if group.empty:
            continue
        stats = group.groupby("iteration")[value].agg(["mean", "min", "max"]).sort_index()
        (line,) = ax.plot(stats.index, stats["mean"], label=f"{label} ({group['seed'].nunique()} seeds)")
        if group["seed"].nunique() > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=BAND_ALPHA,
                            linewidth=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("meta-training iteration")
    ax.set_ylabel(ylabel or value)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_qualitative(ax, qualitative: dict, title: str | None = None):
    """One fitted `sine-half` task: ground truth, the K support points (all on x in [0, 5]),
    and the model's prediction before adaptation and after each stored number of steps.
    `qualitative` is a run record's `qualitative` entry (x, truth, support_x, support_y, pred)."""
    ax.plot(qualitative["x"], qualitative["truth"], color="black", linewidth=2, label="ground truth")
    styles = {"0": ("pre-update", ":"), "1": ("1 grad step", "--"), "10": ("10 grad steps", "-")}
    for step, pred in sorted(qualitative["pred"].items(), key=lambda item: int(item[0])):
        label, style = styles.get(step, (f"{step} grad steps", "-."))
        ax.plot(qualitative["x"], pred, linestyle=style, label=label)
    ax.scatter(qualitative["support_x"], qualitative["support_y"], marker="^", color="purple", zorder=3,
               label=f"{len(qualitative['support_x'])} support points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_lr_heatmap(ax, frame: pd.DataFrame, norm: Normalize | None = None, title: str | None = None,
                    colorbar: bool = True):
    """Final test MSE over LR_base (x) x LR_meta (y). Columns: lr_base, lr_meta, mse, and
    optionally `note`, written into a cell whose MSE is not finite (e.g. "diverged").
    Grey cells: no finite value (or not run). `norm` lets panels share one colour scale."""
    grid = frame.pivot_table(index="lr_meta", columns="lr_base", values="mse", aggfunc="mean", dropna=False)
    grid = grid.sort_index(ascending=False).sort_index(axis=1)
    grid = grid.where(np.isfinite(grid.to_numpy(dtype=float)))
    if norm is None:
        finite = grid.to_numpy(dtype=float)
        finite = finite[np.isfinite(finite) & (finite > 0)]
        norm = LogNorm(finite.min(), finite.max()) if finite.size else None
    # imshow, not seaborn.heatmap: that redraws the whole figure per panel to place its tick labels
    values = grid.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), norm=norm, cmap=HEATMAP_CMAP, aspect="auto")
    ax.set_facecolor("0.85")
    ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index])
    notes = ({(row.lr_meta, row.lr_base): row.note for row in frame.itertuples() if not np.isfinite(float(row.mse))}
             if "note" in frame else {})
    for i, lr_meta in enumerate(grid.index):
        for j, lr_base in enumerate(grid.columns):
            value = values[i, j]
            if np.isfinite(value):
                dark = norm is not None and norm(value) > 0.5  # viridis_r: high values are dark
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize="small",
                        color="white" if dark else "black")
            elif (lr_meta, lr_base) in notes:
                ax.text(j, i, notes[(lr_meta, lr_base)], ha="center", va="center", fontsize="small")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="test MSE")
    ax.set_xlabel("LR_base (inner step size)")
    ax.set_ylabel("LR_meta (outer step size)")
    if title:
        ax.set_title(title)
    return ax


def plot_speed_bars(ax, frame: pd.DataFrame, title: str | None = None):
    """Seconds per meta-training iteration, bars grouped by algorithm, one bar per `series`
    (a backend, or an ensemble's per-member time). Columns: algorithm, series, sec_per_iter."""
    sns.barplot(data=frame, x="algorithm", y="sec_per_iter", hue="series", ax=ax, errorbar=None)
    ax.set_yscale("log")
    ax.set_xlabel("algorithm")
    ax.set_ylabel("s / iteration (median over cells, log)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_speed_vs_steps(ax, frame: pd.DataFrame, title: str | None = None):
    """Seconds per iteration against the number of inner steps S, one line per `label`;
    a dashed line of the same colour is an ensemble's per-member time where `sec_per_iter_member`
    differs. Columns: label, inner_steps, sec_per_iter, sec_per_iter_member."""
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values("inner_steps")
        (line,) = ax.plot(group["inner_steps"], group["sec_per_iter"], marker="o", label=label)
        if not np.allclose(group["sec_per_iter_member"], group["sec_per_iter"]):
            ax.plot(group["inner_steps"], group["sec_per_iter_member"], marker="o", linestyle="--",
                    color=line.get_color(), label=f"{label}, per member")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps S")
    ax.set_ylabel("s / iteration (median over cells, log)")
    ax.set_xticks(sorted(frame["inner_steps"].unique()))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # many lines: keep them clear
    return ax
