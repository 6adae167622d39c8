"""Paper-style plots drawn from long-format frames.

Every function draws into an `ax` it is given and returns it; none creates, saves or closes
a figure (that is `benchmarks.figures`' job), so a caller can put any of them in any layout.
Frames come from `benchmarks.analysis`; the columns each function needs are in its docstring.

One algorithm keeps one look in every figure: its colour, marker and line style are fixed by
its position in the algorithm registry (`algorithms.ALGORITHMS`), so that MAML is the same
blue everywhere, and two algorithms whose curves coincide (MSL at S = 1 is MAML; Reptile
nearly equals pre-training) still differ in marker and dash.
"""
from __future__ import annotations

import zlib

import matplotlib

matplotlib.use("Agg")  # no display: figures are files

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

from algorithms import ALGORITHMS  # noqa: E402

BAND_ALPHA = 0.2
HEATMAP_CMAP = "viridis_r"  # low MSE light
ALGORITHM_ORDER = tuple(ALGORITHMS)
COLORS = tuple(matplotlib.colormaps["tab10"].colors)
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)), (0, (4, 2, 1, 2)),
              (0, (2, 2)))
BACKEND_HATCHES = {"func": "", "l2l": "//", "higher": "xx", "torch": "..", "jax": "\\\\"}
BACKEND_LINESTYLES = {"func": "-", "l2l": "--", "higher": ":", "torch": "-.", "jax": (0, (5, 1))}
STEP_MARKERS = {1: "o", 5: "s", 10: "D"}


def algorithm_style(algorithm: str) -> dict:
    """Colour, marker and line style of an algorithm: its registry position (an unregistered name
    gets a fixed one from its name's checksum, so it too never changes between figures)."""
    if algorithm in ALGORITHM_ORDER:
        index = ALGORITHM_ORDER.index(algorithm)
    else:
        index = len(ALGORITHM_ORDER) + zlib.crc32(algorithm.encode()) % (len(COLORS) - len(ALGORITHM_ORDER))
    return {"color": COLORS[index % len(COLORS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)]}


def _finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    values = frame[columns].to_numpy(dtype=float)
    return frame[np.isfinite(values).all(axis=1)]


def _identical_to(frame: pd.DataFrame, value: str) -> dict[str, str]:
    """label -> the earlier label whose (algorithm's) curve is exactly the same numbers."""
    seen, same = {}, {}
    for label, group in frame.groupby("label", sort=False):
        key = tuple(map(tuple, group.sort_values("eval_steps")[["eval_steps", value]].to_numpy(dtype=float)))
        if key in seen:
            same[label] = seen[key]
        else:
            seen[key] = label
    return same


def _band(group: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Lower and upper edge of a line's interval: columns `low`/`high`, or `value` ± `mse_ci95`."""
    if {"low", "high"} <= set(group):
        return group["low"].to_numpy(dtype=float), group["high"].to_numpy(dtype=float)
    if "mse_ci95" in group:
        ci = np.nan_to_num(group["mse_ci95"].to_numpy(dtype=float), nan=0.0, posinf=0.0)
        return group[value].to_numpy() - ci, group[value].to_numpy() + ci
    return None


def _draw_interval(ax, steps, values, band, color, top: float | None) -> None:
    """A band where every step has an interval; error bars where only some have (e.g. bootstrapped
    at a few steps); infinite edges are drawn to the axis edge."""
    if band is None:
        return
    low, high = (np.asarray(edge, dtype=float) for edge in band)
    known = ~np.isnan(low) & ~np.isnan(high)
    if not known.any():
        return
    cap = top if top is not None else np.nanmax(np.where(np.isfinite(high), high, np.nan), initial=0.0)
    low, high = np.nan_to_num(low, neginf=0.0), np.nan_to_num(high, posinf=cap)
    if known.all():
        ax.fill_between(steps, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)
    else:
        ax.errorbar(steps[known], values[known], yerr=[np.clip(values[known] - low[known], 0, None),
                                                       np.clip(high[known] - values[known], 0, None)],
                    fmt="none", ecolor=color, elinewidth=1.2, capsize=3)


def plot_adaptation(ax, frame: pd.DataFrame, title: str | None = None, ymax: float | None = None,
                    value: str = "mse", ylabel: str = "meta-test MSE (95% CI)", legend: bool = True,
                    notes: str = "legend"):
    """Meta-test MSE against adaptation steps, one line per `label` in its algorithm's style, with
    its 95% band (Finn et al. 2017, Fig. 2). Columns: label, algorithm, eval_steps, `value`, and
    `mse_ci95` or `low`/`high`.

    The y axis stops at `ymax` (default: 1.5x the largest pre-update value, the no-adaptation
    level), so that one blown-up adaptation does not flatten every other line; points above it
    are drawn as ▲ on the top edge. Notes say from which step a line is off scale (and how
    high), non-finite, or identical to an earlier line (drawn hollow over it): in the line's
    legend label (`notes="legend"`) or in one text block under the panel (`notes="caption"`),
    so that they never overlap."""
    finite = _finite(frame, [value])
    if ymax is None and not finite.empty:
        start = finite[finite["eval_steps"] == finite["eval_steps"].min()]
        ymax = 1.5 * float(start[value].max()) if start[value].max() > 0 else None
    same = _identical_to(frame, value)
    caption = []
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values("eval_steps")
        style = algorithm_style(group["algorithm"].iloc[0])
        remarks = [f"= {same[label].split(' [')[0]}, identical"] if label in same else []
        bad = group[~np.isfinite(group[value].to_numpy(dtype=float))]
        if not bad.empty:
            remarks.append(f"non-finite from step {int(bad['eval_steps'].min())}")
        group = _finite(group, [value])
        steps, values = group["eval_steps"].to_numpy(), group[value].to_numpy(dtype=float)
        if ymax is not None and (values > ymax).any():
            above = values > ymax
            remarks.append(f"▲ off scale from step {int(steps[above][0])}, max {values[above].max():.3g}")
            ax.plot(steps[above], np.full(above.sum(), ymax), marker="^", linestyle="", color=style["color"],
                    clip_on=False)
        text = label
        if remarks and notes == "legend":
            text += f" ({'; '.join(remarks)})"
        elif remarks:
            caption.append(f"{label.split(' [')[0]}: {'; '.join(remarks)}")
        duplicate = label in same  # drawn hollow and larger, so the line underneath shows through
        ax.plot(steps, values, label=text, color=style["color"], linestyle=style["linestyle"], marker=style["marker"],
                markersize=7 if duplicate else 4, markerfacecolor="none" if duplicate else style["color"])
        _draw_interval(ax, steps, values, _band(group, value), style["color"], ymax)
    ax.set_xlabel("adaptation steps (SGD on the support set)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, ymax)
    if title:
        ax.set_title(title)
    if caption:
        ax.annotate("\n".join(caption), xy=(0, 0), xycoords="axes fraction", xytext=(0, -34),
                    textcoords="offset points", va="top", ha="left", fontsize="x-small")
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_blowup(ax, frame: pd.DataFrame, title: str | None = None, legend: bool = True):
    """Blow-up rate (percent of seed × task evaluations) against adaptation steps, one line per
    `label` in its algorithm's style, with the band `low`-`high` where given. Columns: label,
    algorithm, eval_steps, blowup (a fraction), optionally low, high. A note under the panel
    names the lines that never blew up (they lie on 0) and lines identical to an earlier one."""
    same = _identical_to(frame, "blowup")
    never, identical = [], []
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values("eval_steps")
        style = algorithm_style(group["algorithm"].iloc[0])
        name = label.split(" [")[0]
        zero = bool((group["blowup"] == 0).all())
        if zero:
            never.append(name)
        elif label in same:
            identical.append(f"{name} = {same[label].split(' [')[0]}")
        hollow = label in same
        ax.plot(group["eval_steps"], 100 * group["blowup"], label=label, color=style["color"],
                linestyle=style["linestyle"], marker=style["marker"], markersize=7 if hollow else 4,
                markerfacecolor="none" if hollow else style["color"])
        if {"low", "high"} <= set(group):
            _draw_interval(ax, group["eval_steps"].to_numpy(), 100 * group["blowup"].to_numpy(dtype=float),
                           (100 * group["low"].to_numpy(dtype=float), 100 * group["high"].to_numpy(dtype=float)),
                           style["color"], None)
    ax.set_yscale("symlog", linthresh=0.1)  # 0 stays visible, 0.1% and 50% both readable
    ax.set_ylim(bottom=0)
    ax.set_xlabel("adaptation steps (SGD on the support set)")
    ax.set_ylabel("blow-up rate (% of tasks × seeds)")
    notes = ([f"never blew up (on 0): {', '.join(never)}"] if never else []) + (
        [f"identical: {'; '.join(identical)}"] if identical else [])
    if notes:
        ax.annotate("\n".join(notes), xy=(0, 0), xycoords="axes fraction", xytext=(0, -34),
                    textcoords="offset points", va="top", ha="left", fontsize="x-small")
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_paired(ax, frame: pd.DataFrame, value: str, reference_line: float, xlabel: str, title: str | None = None,
                symlog: bool = False):
    """A forest plot: one row per `algorithm`, its estimate `value` with the `value_low`-`value_high`
    interval, one marker per adaptation step (STEP_MARKERS), in the algorithm's colour, and a
    vertical line at `reference_line` (no difference). Columns: algorithm, eval_steps, value,
    value_low, value_high."""
    algorithms = list(dict.fromkeys(frame["algorithm"]))
    steps = sorted(frame["eval_steps"].unique())
    offsets = {s: (i - (len(steps) - 1) / 2) * 0.22 for i, s in enumerate(steps)}
    for row_index, algorithm in enumerate(algorithms):
        color = algorithm_style(algorithm)["color"]
        for _, row in frame[frame["algorithm"] == algorithm].iterrows():
            y = row_index + offsets[row["eval_steps"]]
            low, high, point = row[f"{value}_low"], row[f"{value}_high"], row[value]
            if np.isfinite(low) and np.isfinite(high):
                ax.plot([low, high], [y, y], color=color, linewidth=1.5)
            if np.isfinite(point):
                ax.plot([point], [y], marker=STEP_MARKERS.get(int(row["eval_steps"]), "o"), color=color,
                        linestyle="", markersize=6)
    ax.axvline(reference_line, color="0.4", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(algorithms)), algorithms)
    ax.invert_yaxis()
    if symlog:
        ax.set_xscale("symlog", linthresh=0.01)
    for s in steps:  # legend of the step markers only (colours are the algorithms' own)
        ax.plot([], [], marker=STEP_MARKERS.get(int(s), "o"), linestyle="", color="0.3", label=f"{int(s)} step(s)")
    ax.legend(fontsize="small", loc="best")
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return ax


def plot_training_curves(ax, frame: pd.DataFrame, value: str = "loss", ylabel: str | None = None,
                         title: str | None = None, log: bool = True):
    """`value` against meta-training iteration, one line per `label` in its algorithm's style: the
    mean over seeds, with a band from the lowest to the highest seed. A line identical to an
    earlier one (MSL at S = 1 is MAML) says so in the legend and is drawn with hollow markers over
    it. Columns: label, algorithm, seed, iteration, `value`."""
    seen = {}
    for label, group in frame.groupby("label", sort=False):
        group = _finite(group, [value])
        if group.empty:
            continue
        style = algorithm_style(group["algorithm"].iloc[0])
        curve = group.groupby("iteration")[value].agg(["mean", "min", "max"]).sort_index()
        key = tuple(curve["mean"].round(12)) + tuple(curve.index)
        earlier = seen.setdefault(key, label.split(" [")[0])
        duplicate = earlier != label.split(" [")[0]
        text = f"{label} ({group['seed'].nunique()} seeds)" + (f" (= {earlier}, identical)" if duplicate else "")
        ax.plot(curve.index, curve["mean"], label=text, color=style["color"], linestyle=style["linestyle"],
                marker=style["marker"], markevery=max(1, len(curve) // 10), markersize=7 if duplicate else 4,
                markerfacecolor="none" if duplicate else style["color"])
        if group["seed"].nunique() > 1:
            ax.fill_between(curve.index, curve["min"], curve["max"], color=style["color"], alpha=BAND_ALPHA,
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
    """One fitted task (the record names it; `sine-half` so far): ground truth, the K support
    points, and the model's prediction before adaptation and after each stored number of steps.
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
    Grey cells: no finite value (or not run). `norm` lets panels share one colour scale; every
    cell also prints its value, so a value beyond the scale is still read exactly."""
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


def plot_speed_bars(ax, frame: pd.DataFrame, title: str | None = None, xlabel: str = "s / iteration (log)"):
    """Seconds per meta-training iteration, one horizontal bar per row: colour by `algorithm`,
    hatch by `backend`, labelled `series`. Columns: algorithm, backend, series, sec_per_iter."""
    frame = frame.reset_index(drop=True)
    for i, row in frame.iterrows():
        ax.barh(i, row["sec_per_iter"], color=algorithm_style(row["algorithm"])["color"],
                hatch=BACKEND_HATCHES.get(str(row["backend"]).split(" ")[0], "--"), edgecolor="white", linewidth=0)
        ax.text(row["sec_per_iter"], i, f" {row['sec_per_iter'] * 1e3:.3g} ms", va="center", fontsize="x-small")
    ax.set_yticks(range(len(frame)), frame["series"])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return ax


def plot_speed_vs_steps(ax, frame: pd.DataFrame, title: str | None = None,
                        ylabel: str = "s / iteration (log)"):
    """Seconds per iteration against the number of inner steps S, one line per `label`: colour by
    `algorithm`, line style by `backend`; a dotted line of the same colour is an ensemble's
    per-member time where `sec_per_iter_member` differs. Columns: label, algorithm, backend,
    inner_steps, sec_per_iter, sec_per_iter_member."""
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values("inner_steps")
        style = algorithm_style(group["algorithm"].iloc[0])
        dash = BACKEND_LINESTYLES.get(group["backend"].iloc[0], (0, (2, 2)))
        ax.plot(group["inner_steps"], group["sec_per_iter"], marker=style["marker"], color=style["color"],
                linestyle=dash, label=label)
        if not np.allclose(group["sec_per_iter_member"], group["sec_per_iter"]):
            ax.plot(group["inner_steps"], group["sec_per_iter_member"], marker=style["marker"], linestyle=":",
                    color=style["color"], markerfacecolor="none", label=f"{label}, per member")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps S")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted(frame["inner_steps"].unique()))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # many lines: keep them clear
    return ax
