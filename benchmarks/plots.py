"""Paper-style plots drawn from long-format frames.

Every function draws into an `ax` it is given and returns it; none creates, saves or closes
a figure (that is `benchmarks.figures`' job), so a caller can put any of them in any layout.
Frames come from `benchmarks.analysis`; the columns each function needs are in its docstring.

One algorithm keeps one look in every figure: its colour, marker and line style are fixed by
its position in the algorithm registry (`algorithms.ALGORITHMS`), so that MAML is the same
blue everywhere, and two algorithms whose curves coincide (MSL at S = 1 is MAML; Reptile
nearly equals pre-training) still differ in marker and dash. The colours are Okabe & Ito's
colour-blind-safe palette (2008), yellow last: it is weak on white.

Axes never let one value flatten the rest (decisions, stated once here):
- values that span decades get a log axis, or a symlog axis where they cross zero, whose switch
  from linear to log is drawn (a shaded band, `mark_symlog`);
- a point or interval end beyond an axis' robust end is drawn on the edge as an arrow with its
  value (`mark_overflow`), never by stretching the axis to it;
- a bounded metric (accuracy in [0, 1]) gets a linear axis, and its guessing level a dashed line
  labelled "chance" (`mark_chance`); which metric, and which way is better, is the caller's
  (`benchmarks.figures` reads the folder's `Metric`).
"""
from __future__ import annotations

import textwrap

import zlib

import matplotlib

matplotlib.use("Agg")  # no display: figures are files

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize, SymLogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from algorithms import ALGORITHMS  # noqa: E402

BAND_ALPHA = 0.2
HEATMAP_CMAP = "viridis_r"  # low error light (viridis is colour-blind safe and prints in grey)
HEATMAP_CMAP_HIGHER = "viridis"  # a higher-is-better metric (accuracy): high light, so better is light in both
STABILITY_CMAP = "magma_r"  # blow-up rate: 0 white, high dark
ALGORITHM_ORDER = tuple(ALGORITHMS)
#: Okabe-Ito: blue, orange, bluish green, vermillion, reddish purple, sky blue, black, yellow; then grey
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442", "#999999")
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "<")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)), (0, (4, 2, 1, 2)),
              (0, (2, 2)))
BACKEND_MARKERS = {"func": "o", "generic": "s", "jax": "D", "l2l": "^", "higher": "v", "torch": "X"}
BACKEND_LINESTYLES = {"func": "-", "generic": (0, (5, 1)), "l2l": "--", "higher": ":", "torch": "-.",
                      "jax": (0, (3, 1, 1, 1))}
STEP_MARKERS = {1: "o", 5: "s", 10: "D"}
STEP_LINESTYLES = {1: "-", 5: "--", 10: ":"}
SWITCH_COLOR = "0.93"  # the shaded linear part of a symlog axis
#: the default name of an error axis (the sine families' metric); a figure of another metric passes its label
METRIC = "MSE"
#: Paper sizes (inches): one column of a two-column paper, and the full text width
ONE_COLUMN, TWO_COLUMN = 3.3, 6.9
PAPER_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
            "legend.fontsize": 7, "figure.titlesize": 8, "lines.linewidth": 1.2, "lines.markersize": 4,
            "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6, "errorbar.capsize": 2,
            "legend.frameon": False, "pdf.fonttype": 42, "svg.fonttype": "none", "hatch.linewidth": 0.6,
            "axes.spines.top": False, "axes.spines.right": False}


def algorithm_style(algorithm: str) -> dict:
    """Colour, marker and line style of an algorithm: its registry position (an unregistered name
    gets a fixed one from its name's checksum, so it too never changes between figures)."""
    if algorithm in ALGORITHM_ORDER:
        index = ALGORITHM_ORDER.index(algorithm)
    else:
        index = len(ALGORITHM_ORDER) + zlib.crc32(algorithm.encode()) % max(1, len(COLORS) - len(ALGORITHM_ORDER))
    return {"color": COLORS[index % len(COLORS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)]}


def short(label: str) -> str:
    """`maml [func, S=1, ...]` -> `maml`: a legend names the algorithm, the caption its configuration."""
    return str(label).split(" [")[0]


def _finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    values = frame[columns].to_numpy(dtype=float)
    return frame[np.isfinite(values).all(axis=1)]


def _identical_to(frame: pd.DataFrame, value: str, x: str = "eval_steps") -> dict[str, str]:
    """label -> the earlier label whose curve is exactly the same numbers (NaN equal to NaN: MSL's
    mean is MAML's even where both are non-finite)."""
    seen, same = [], {}
    for label, group in frame.groupby("label", sort=False):
        key = group.sort_values(x)[[x, value]].to_numpy(dtype=float)
        match = next((other for other, values in seen
                      if values.shape == key.shape and np.array_equal(values, key, equal_nan=True)), None)
        if match is None:
            seen.append((label, key))
        else:
            same[label] = match
    return same


def _band(group: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Lower and upper edge of a line's interval: columns `low`/`high`, or `value` ± `<value>_ci95`
    (`mse_ci95`, `accuracy_ci95`: the evaluation rows' interval of their metric)."""
    if {"low", "high"} <= set(group):
        return group["low"].to_numpy(dtype=float), group["high"].to_numpy(dtype=float)
    if f"{value}_ci95" in group:
        ci = np.nan_to_num(group[f"{value}_ci95"].to_numpy(dtype=float), nan=np.nan, posinf=np.nan)
        return group[value].to_numpy() - ci, group[value].to_numpy() + ci
    return None


def _fmt(value: float) -> str:
    return "∞" if np.isinf(value) else f"{value:.2g}"


def mark_overflow(ax, positions, values, low: float | None, high: float | None, color, axis: str = "y",
                  label: bool = True) -> int:
    """Values beyond the axis ends (`low`, `high`; None: open) drawn as arrows on the edge, the
    first one labelled with the largest (smallest) value it stands for; returns how many. The
    arrow lines carry gid "overflow" (tests and readers can tell them from data)."""
    positions, values = np.asarray(positions, dtype=float), np.asarray(values, dtype=float)
    count = 0
    for end, beyond, marker in ((high, values > (high if high is not None else np.inf), "^" if axis == "y" else ">"),
                                (low, values < (low if low is not None else -np.inf), "v" if axis == "y" else "<")):
        if end is None or not beyond.any():
            continue
        count += int(beyond.sum())
        at = np.full(beyond.sum(), end)
        xy = (positions[beyond], at) if axis == "y" else (at, positions[beyond])
        ax.plot(*xy, marker=marker, linestyle="", color=color, clip_on=False, markersize=5, gid="overflow",
                zorder=4)
        if label:
            extreme = values[beyond].max() if marker in "^>" else values[beyond].min()
            first = (xy[0][0], xy[1][0])
            offset = (3, 2) if axis == "y" else (-2, 3)
            ax.annotate(_fmt(extreme), first, xytext=offset, textcoords="offset points", fontsize=6, color=color,
                        ha="left" if axis == "y" else "right", va="bottom", annotation_clip=False)
    return count


def mark_chance(ax, chance: float | None, axis: str = "y"):
    """The metric's guessing level (`Metric.chance`; None: nothing drawn) as a dashed grey line
    labelled "chance" (gid "chance"), so that a legend lists it and a reader sees how far above
    guessing a curve is."""
    if chance is None:
        return None
    line = ax.axhline if axis == "y" else ax.axvline
    return line(chance, color="0.45", linewidth=0.8, linestyle="--", label="chance", gid="chance", zorder=1)


def linear_limits(values, pad: float = 0.06) -> tuple[float, float]:
    """A linear axis' range over the finite `values` (points, interval ends, the chance level),
    widened by `pad` of its width so that no point sits on an edge."""
    values = np.asarray(values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    return _padded(float(values.min()), float(values.max()), None, pad)


def tick_text(value: float, _=None) -> str:
    """A tick label as a reader writes it: 0.01, 1, 300, and 10^4 from 10,000 on (no 10^-2 mantissas)."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        exponent = np.log10(abs(value))
        if np.isclose(exponent, round(exponent)):
            return f"${'-' if value < 0 else ''}10^{{{int(round(exponent))}}}$"
        return f"{value:.0e}"
    return f"{value:g}"


def plain_ticks(ax, axis: str = "y") -> None:
    """Log-axis ticks at 1, 2 and 5 per decade (thinned by matplotlib over many decades) labelled as
    plain numbers (`tick_text`): an axis spanning less than a decade still reads."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    target.set_major_formatter(FuncFormatter(tick_text))
    target.set_minor_formatter(NullFormatter())


def mark_symlog(ax, axis: str, linthresh: float, nonnegative: bool = False, limits=None,
                name_switch: bool = True) -> None:
    """A symlog `axis` (linear within ±linthresh, log beyond) with its linear part shaded and the
    switch named in the axis label, so that no reader takes the switch for data; 0 and at most two
    decades a side are labelled. `limits`: the axis range, for the ticks; `name_switch=False`: the
    label stays (the caller names the switch once, e.g. for a row of panels)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    if axis == "y":
        ax.set_yscale("symlog", linthresh=linthresh, linscale=0.6)
        ax.axhspan(0 if nonnegative else -linthresh, linthresh, color=SWITCH_COLOR, zorder=0, linewidth=0,
                   gid="symlog-switch")
        target, label, setter = ax.yaxis, ax.get_ylabel(), ax.set_ylabel
    else:
        ax.set_xscale("symlog", linthresh=linthresh, linscale=0.6)
        ax.axvspan(0 if nonnegative else -linthresh, linthresh, color=SWITCH_COLOR, zorder=0, linewidth=0,
                   gid="symlog-switch")
        target, label, setter = ax.xaxis, ax.get_xlabel(), ax.set_xlabel
    low, high = limits if limits is not None else (ax.get_ylim() if axis == "y" else ax.get_xlim())
    first = int(np.floor(np.log10(linthresh)))
    ticks = [0.0]
    for side, end in ((1, high), (-1, -low)):
        if end <= linthresh:
            continue
        decades = list(range(first, int(np.floor(np.log10(end))) + 1))
        decades = decades[1:]  # the shaded band marks the switch itself
        stride = max(1, -(-len(decades) // 2))
        ticks += [side * 10.0 ** d for d in decades[::-1][::stride]]
    target.set_major_locator(FixedLocator(sorted(ticks)))
    target.set_major_formatter(FuncFormatter(tick_text))
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())
    if not name_switch:
        return
    setter(f"{label}\n(symlog: linear in the shaded ±{linthresh:g})" if not nonnegative else
           f"{label}\n(symlog: linear below {linthresh:g}, shaded)")


def symlog_threshold(values) -> float:
    """The power of ten at or below the smallest non-zero |value| (at least 1e-3 of the largest):
    every estimate lands on the log part, clear of zero."""
    values = np.abs(np.asarray(values, dtype=float))
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return 1.0
    return float(10 ** np.floor(np.log10(max(values.min(), values.max() * 1e-3))))


def _draw_interval(ax, steps, values, band, color, top: float | None, bottom: float | None = None) -> None:
    """A band where every point has an interval, error bars where only some have; edges beyond the
    axis (`bottom`, `top`) stop at it (the point itself is marked by `mark_overflow`)."""
    if band is None:
        return
    low, high = (np.asarray(edge, dtype=float) for edge in band)
    known = ~np.isnan(low) & ~np.isnan(high)
    if not known.any():
        return
    if top is not None:
        high = np.minimum(np.nan_to_num(high, posinf=top), top)
    if bottom is not None:
        low = np.maximum(low, bottom)
    if known.all():
        ax.fill_between(steps, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)
    else:
        ax.errorbar(steps[known], values[known], yerr=[np.clip(values[known] - low[known], 0, None),
                                                       np.clip(high[known] - values[known], 0, None)],
                    fmt="none", ecolor=color, elinewidth=0.8)


X_NAMES = {"eval_steps": "step", "k_shot": "K", "iteration": "iteration"}  # in notes: "non-finite from step 8"


def mark_trained_steps(ax, steps) -> None:
    """A dotted vertical line at each trained inner-step count S in `steps` (gid `trained_steps`):
    on an axis of adaptation steps, the steps right of it are beyond what was meta-trained
    (extrapolation, `analysis.extrapolated`)."""
    for s in sorted(set(int(v) for v in steps)):
        ax.axvline(s, color="0.45", linewidth=0.8, linestyle=":", gid="trained_steps", zorder=0)


def plot_lines(ax, frame: pd.DataFrame, x: str, value: str, ylabel: str, xlabel: str, ymax: float | None = None,
               ymin: float | None = None, log: bool = True, title: str | None = None, legend: bool = True,
               notes: str = "legend"):
    """`value` against `x`, one line per `label` in its algorithm's style, with its interval
    (`low`/`high` or `<value>_ci95`). Columns: label, algorithm, `x`, `value`.

    The y axis spans [ymin, ymax] (log by default; ymin defaults to half the smallest positive
    point, or 0 on a linear axis, ymax to 1.3x the largest); points above ymax are arrows on the
    top edge. Notes say from which x a line is off scale (and how high), non-finite, or identical
    to an earlier line (drawn hollow over it): in the line's legend label (`notes="legend"`) or in
    one text block under the panel (`notes="caption"`), so that they never overlap."""
    finite = _finite(frame, [value])
    points = finite[value].to_numpy(dtype=float)
    positive = points[points > 0]
    if ymax is None and points.size:
        ymax = 1.3 * float(points.max()) if points.max() > 0 else None
    if ymin is None and log and positive.size:
        ymin = float(positive.min()) / 2
    same = _identical_to(frame, value, x)
    caption = []
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values(x)
        style = algorithm_style(group["algorithm"].iloc[0])
        remarks = [f"= {short(same[label])}, identical"] if label in same else []
        bad = group[~np.isfinite(group[value].to_numpy(dtype=float))]
        where = X_NAMES.get(x, x)
        if not bad.empty:
            remarks.append(f"non-finite from {where} {bad[x].min():g}")
        group = _finite(group, [value])
        xs, values = group[x].to_numpy(dtype=float), group[value].to_numpy(dtype=float)
        if ymax is not None and (values > ymax).any():
            above = values > ymax
            remarks.append(f"▲ off scale from {where} {xs[above][0]:g}, max {values[above].max():.3g}")
            mark_overflow(ax, xs, values, None, ymax, style["color"], label=False)
        text = label
        if remarks and notes == "legend":
            text += f" ({'; '.join(remarks)})"
        elif remarks:
            caption.append(f"{short(label)}: {'; '.join(remarks)}")
        duplicate = label in same  # drawn hollow and larger, so the line underneath shows through
        inside = values <= ymax if ymax is not None else np.ones(len(values), bool)
        ax.plot(xs[inside], values[inside], label=text, color=style["color"], linestyle=style["linestyle"],
                marker=style["marker"], markersize=6 if duplicate else 3.5,
                markerfacecolor="none" if duplicate else style["color"])
        band = _band(group, value)
        if band is not None:
            band = (band[0][inside], band[1][inside])
        _draw_interval(ax, xs[inside], values[inside], band, style["color"], ymax, ymin)
    if log:
        ax.set_yscale("log")
        plain_ticks(ax, "y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(ymin if log or ymin is not None else 0, ymax)
    if title:
        ax.set_title(title)
    if caption:
        ax.annotate("\n".join(caption), xy=(0, 0), xycoords="axes fraction", xytext=(0, -26),
                    textcoords="offset points", va="top", ha="left", fontsize=6)
    if legend:
        ax.legend()
    return ax


def plot_adaptation(ax, frame: pd.DataFrame, title: str | None = None, ymax: float | None = None,
                    value: str = "mse", ylabel: str = f"meta-test {METRIC} (95% CI)", legend: bool = True,
                    notes: str = "legend", log: bool = True, ymin: float | None = None):
    """Meta-test error against adaptation steps (Finn et al. 2017, Fig. 2): `plot_lines` over
    `eval_steps`, the y axis up to `ymax` (default 2x the largest no-adaptation value, step 0:
    adaptation that ends above it made things worse and is off scale)."""
    finite = _finite(frame, [value])
    if ymax is None and not finite.empty:
        start = finite[finite["eval_steps"] == finite["eval_steps"].min()]
        ymax = 2.0 * float(start[value].max()) if start[value].max() > 0 else None
    return plot_lines(ax, frame, "eval_steps", value, ylabel,
                      "adaptation steps (own inner update)", ymax=ymax, ymin=ymin,
                      log=log, title=title, legend=legend, notes=notes)


def plot_blowup(ax, frame: pd.DataFrame, title: str | None = None, legend: bool = True, linthresh: float = 0.1,
                x: str = "eval_steps", xlabel: str = "adaptation steps on the support set"):
    """Blow-up rate (percent of seed × task evaluations) against adaptation steps (or another `x`, e.g.
    the threshold's factor), one line per `label` in its algorithm's style, with the band
    `low`-`high` where given, on a symlog axis (linear below `linthresh` %, shaded). Columns: label,
    algorithm, `x`, blowup (a fraction), optionally low, high. A note under the panel names the
    lines that never blew up (they lie on 0) and lines identical to an earlier one."""
    same = _identical_to(frame, "blowup", x)
    never, identical = [], []
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values(x)
        style = algorithm_style(group["algorithm"].iloc[0])
        name = short(label)
        if bool((group["blowup"] == 0).all()):
            never.append(name)
        elif label in same:
            identical.append(f"{name} = {short(same[label])}")
        hollow = label in same
        ax.plot(group[x], 100 * group["blowup"], label=label, color=style["color"],
                linestyle=style["linestyle"], marker=style["marker"], markersize=6 if hollow else 3.5,
                markerfacecolor="none" if hollow else style["color"])
        if {"low", "high"} <= set(group):
            _draw_interval(ax, group[x].to_numpy(), 100 * group["blowup"].to_numpy(dtype=float),
                           (100 * group["low"].to_numpy(dtype=float), 100 * group["high"].to_numpy(dtype=float)),
                           style["color"], None)
    tops = frame[[c for c in ("blowup", "high") if c in frame]].to_numpy(dtype=float)
    top = min(100.0, max(100.0 * float(np.nanmax(tops)) * 1.5, 1.0))
    ax.set_ylim(bottom=0, top=top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("blow-up rate (% of tasks × seeds)")
    mark_symlog(ax, "y", linthresh, nonnegative=True, limits=(0, top))  # 0 visible, 0.1% and 50% both readable
    notes = ([f"never blew up (on 0): {', '.join(never)}"] if never else []) + (
        [f"identical: {'; '.join(identical)}"] if identical else [])
    if notes:
        ax.annotate("\n".join(textwrap.fill(note, 46) for note in notes), xy=(0, 0), xycoords="axes fraction", xytext=(0, -26),
                    textcoords="offset points", va="top", ha="left", fontsize=6)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return ax


#: an interval end farther from the reference line than this many times the farthest point
#: estimate is clipped to the axis edge (an arrow with its value); on a symlog axis it is 10x
CLIP_FACTOR = 3.0
OUTLIER_FACTOR = 100.0  # on symlog: an estimate this many times the median |estimate| is drawn as an arrow


def plot_paired(ax, frame: pd.DataFrame, value: str, reference_line: float, xlabel: str, title: str | None = None,
                symlog: bool = False, limits: tuple[float, float] | None = None, name_switch: bool = True):
    """A forest plot: one row per `algorithm`, its estimate `value` with the `value_low`-`value_high`
    interval, one marker per adaptation step (STEP_MARKERS), in the algorithm's colour, and a
    vertical line at `reference_line` (no difference). Columns: algorithm, eval_steps, value,
    value_low, value_high.

    The axis spans the point estimates, except on symlog any estimate more than OUTLIER_FACTOR x the
    median non-zero |estimate| from the reference (a blown-up median); interval ends farther than
    CLIP_FACTOR times the farthest shown estimate (10x on symlog) stop at the edge too. What lies
    beyond is an arrow with its value, so one wide interval or one blown-up estimate cannot
    flatten the rest. `symlog`: linear within the smallest estimate's decade
    (shaded), log beyond; `limits` fixes the axis instead."""
    algorithms = list(dict.fromkeys(frame["algorithm"]))
    steps = sorted(frame["eval_steps"].unique())
    offsets = {s: (i - (len(steps) - 1) / 2) * 0.22 for i, s in enumerate(steps)}
    points = frame[value].to_numpy(dtype=float)
    finite = points[np.isfinite(points)] - reference_line
    if symlog and finite.size and (finite != 0).any():
        finite = finite[np.abs(finite) <= OUTLIER_FACTOR * np.median(np.abs(finite[finite != 0]))]
    linthresh = symlog_threshold(finite) if symlog else None
    if limits is None:
        reach = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-12) * (10.0 if symlog else CLIP_FACTOR)
        ends = frame[[f"{value}_low", f"{value}_high"]].to_numpy(dtype=float).ravel() - reference_line
        ends = ends[np.isfinite(ends) & (np.abs(ends) <= reach)]
        span = np.concatenate([finite, ends, [0.0]])
        lo, hi = _padded(span.min(), span.max(), linthresh)
        lo, hi = lo + reference_line, hi + reference_line
    else:
        lo, hi = limits
    for row_index, algorithm in enumerate(algorithms):
        color = algorithm_style(algorithm)["color"]
        for _, row in frame[frame["algorithm"] == algorithm].iterrows():
            y = row_index + offsets[row["eval_steps"]]
            low, high, point = row[f"{value}_low"], row[f"{value}_high"], row[value]
            if not (np.isnan(low) or np.isnan(high)):
                ax.plot([max(low, lo), min(high, hi)], [y, y], color=color, linewidth=1.2)
                mark_overflow(ax, [y, y], [low, high], lo, hi, color, axis="x")
            mark_overflow(ax, [y], [point if np.isfinite(point) else np.inf], lo, hi, color, axis="x",
                          label=np.isnan(low) or np.isnan(high))
            if np.isfinite(point) and lo <= point <= hi:
                ax.plot([point], [y], marker=STEP_MARKERS.get(int(row["eval_steps"]), "o"), color=color,
                        linestyle="", markersize=4, label=f"{int(row['eval_steps'])} step(s)" if len(steps) > 1
                        else None)
    ax.axvline(reference_line, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(algorithms)), algorithms)
    ax.set_ylim(len(algorithms) - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.set_xlabel(xlabel)
    if symlog:
        mark_symlog(ax, "x", linthresh, limits=(lo, hi), name_switch=name_switch)
    if title:
        ax.set_title(title)
    return ax


def _padded(low: float, high: float, linthresh: float | None, pad: float = 0.06) -> tuple[float, float]:
    """[low, high] widened by `pad` of its width on the axis as drawn (linear, or symlog with
    `linthresh`), so that no point sits on an edge."""
    if linthresh is None:
        width = (high - low) or 1.0
        return low - pad * width, high + pad * width
    from matplotlib.scale import SymmetricalLogTransform

    transform = SymmetricalLogTransform(10, linthresh, 0.6)
    a, b = transform.transform(np.array([low, high], dtype=float))
    width = (b - a) or 1.0
    return tuple(transform.inverted().transform(np.array([a - pad * width, b + pad * width])))


def plot_ecdf(ax, differences: dict[int, np.ndarray], color, xlabel: str, title: str | None = None,
              symlog: bool = True, higher_is_better: bool = False):
    """Empirical CDF of per-task paired differences, one line per adaptation step (its own marker
    and dash, all in the compared algorithm's colour), on a symlog x axis (shaded linear part;
    `symlog=False`: linear, for a bounded metric), with the zero line. Infinite differences (one
    side blew up) sit on the axis edge, counted in the legend. Each legend entry gives the share of
    tasks on the better side of 0 (< 0 for an error, > 0 with `higher_is_better`).
    `differences`: step -> per-task differences."""
    finite = np.concatenate([d[np.isfinite(d)] for d in differences.values()])
    linthresh = symlog_threshold(np.quantile(np.abs(finite), 0.05)) if finite.size else 1.0
    # the axis ends at 10x the smallest per-step 95th percentile of |difference|: tasks that blew up
    # after more steps pile at the edge (counted in the legend) instead of stretching the axis
    top = 10 * min(float(np.quantile(np.abs(d[np.isfinite(d)]), 0.95)) for d in differences.values()
                   if np.isfinite(d).any()) if finite.size else 1.0
    if not symlog:  # a bounded metric: every finite difference on the axis
        top = linear_limits(np.abs(finite))[1] if finite.size and np.abs(finite).max() > 0 else 1.0
    for step, values in differences.items():
        values = np.sort(np.asarray(values, dtype=float))
        n = len(values)
        beyond = int((np.abs(values) > top).sum())
        shown = np.clip(np.nan_to_num(values, posinf=top, neginf=-top), -top, top)
        better = float(np.mean(values > 0 if higher_is_better else values < 0))
        side = ">" if higher_is_better else "<"
        label = f"{step} step{'s' if step != 1 else ''}: {side} 0 on {better:.0%}" + (
            f" ({beyond} beyond the axis)" if beyond else "")
        ax.step(shown, np.arange(1, n + 1) / n, where="post", color=color,
                linestyle=STEP_LINESTYLES.get(step, "-."), label=label, marker=STEP_MARKERS.get(step, "o"),
                markevery=max(1, n // 8), markersize=3.5)
    ax.axvline(0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlim(-top, top)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    if symlog:
        mark_symlog(ax, "x", linthresh, limits=(-top, top))
    ax.set_ylabel("share of tasks ≤ x")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.36))  # below: the curves fill the panel
    if title:
        ax.set_title(title)
    return ax


def plot_training_curves(ax, frame: pd.DataFrame, value: str = "loss", ylabel: str | None = None,
                         title: str | None = None, log: bool = True, smooth: int = 1, legend: bool = True):
    """`value` against meta-training iteration, one line per `label` in its algorithm's style: the
    mean over seeds, with a band from the lowest to the highest seed. `smooth` > 1: the line is a
    centred rolling mean over that many logged points (the raw mean drawn faint behind it), for
    losses logged from one batch. A line identical to an earlier one (MSL at S = 1 is MAML) says
    so in the legend and is drawn with hollow markers over it. Columns: label, algorithm, seed,
    iteration, `value`."""
    seen = {}
    for label, group in frame.groupby("label", sort=False):
        group = _finite(group, [value])
        if group.empty:
            continue
        style = algorithm_style(group["algorithm"].iloc[0])
        curve = group.groupby("iteration")[value].agg(["mean", "min", "max"]).sort_index()
        key = tuple(curve["mean"].round(12)) + tuple(curve.index)
        earlier = seen.setdefault(key, short(label))
        duplicate = earlier != short(label)
        text = f"{label} ({group['seed'].nunique()} seeds)" + (f" (= {earlier}, identical)" if duplicate else "")
        line = curve["mean"]
        if smooth > 1:
            ax.plot(curve.index, curve["mean"], color=style["color"], linewidth=0.5, alpha=0.35)
            line = curve["mean"].rolling(smooth, center=True, min_periods=1).mean()
        ax.plot(curve.index, line, label=text, color=style["color"], linestyle=style["linestyle"],
                marker=style["marker"], markevery=max(1, len(curve) // 8), markersize=6 if duplicate else 3.5,
                markerfacecolor="none" if duplicate else style["color"])
        if group["seed"].nunique() > 1:
            ax.fill_between(curve.index, curve["min"], curve["max"], color=style["color"], alpha=BAND_ALPHA / 2,
                            linewidth=0)
    if log:
        ax.set_yscale("log")
        plain_ticks(ax, "y")
    ax.set_xlabel("meta-training iteration")
    ax.set_ylabel(ylabel or value)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return ax


def plot_qualitative(ax, qualitative: dict, title: str | None = None):
    """One fitted task (the record names it; `sine-half` so far): ground truth, the K support
    points, and the model's prediction before adaptation and after each stored number of steps.
    `qualitative` is a run record's `qualitative` entry (x, truth, support_x, support_y, pred)."""
    ax.plot(qualitative["x"], qualitative["truth"], color="black", linewidth=1.5, label="ground truth")
    styles = {"0": ("pre-update", ":", COLORS[5]), "1": ("1 grad step", "--", COLORS[1]),
              "10": ("10 grad steps", "-", COLORS[0])}
    for step, pred in sorted(qualitative["pred"].items(), key=lambda item: int(item[0])):
        label, style, color = styles.get(step, (f"{step} grad steps", "-.", COLORS[4]))
        ax.plot(qualitative["x"], pred, linestyle=style, color=color, label=label)
    ax.scatter(qualitative["support_x"], qualitative["support_y"], marker="^", color=COLORS[3], zorder=3, s=14,
               label=f"{len(qualitative['support_x'])} support points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def _cell_grid(ax, grid: pd.DataFrame, norm, cmap: str, fmt, fontsize=6):
    """imshow of `grid` (rows top to bottom as given), every finite cell printed with `fmt` (white
    on the dark end of `cmap`); grey: no finite value. Not seaborn.heatmap: that redraws the whole
    figure per panel."""
    values = grid.to_numpy(dtype=float)
    values = np.where(np.isfinite(values), values, np.nan)
    image = ax.imshow(np.ma.masked_invalid(values), norm=norm, cmap=cmap, aspect="auto")
    ax.set_facecolor("0.85")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]) and fmt is not None:
                text = fmt(values[i, j])
                if text:
                    # the colour maps run light to dark, HEATMAP_CMAP_HIGHER dark to light
                    dark = norm is not None and (norm(values[i, j]) < 0.45 if cmap == HEATMAP_CMAP_HIGHER
                                                 else norm(values[i, j]) > 0.55)
                    ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                            color="white" if dark else "black")
    return image


def heatmap_cmap(higher_is_better: bool = False) -> str:
    """The heatmaps' colour map: the better end light for either direction of the metric."""
    return HEATMAP_CMAP_HIGHER if higher_is_better else HEATMAP_CMAP


def plot_lr_heatmap(ax, frame: pd.DataFrame, norm: Normalize | None = None, title: str | None = None,
                    colorbar: bool = True, label: str = f"validation {METRIC}", value: str = "mse",
                    higher_is_better: bool = False, log: bool = True):
    """A metric (default: the validation error that chooses configurations) over LR_base (x) x
    LR_meta (y). Columns: lr_base, lr_meta, `value`; optional `note` (written into a cell without a
    finite value, e.g. "diverged"), `partial` (text, e.g. "1/3 seeds": that configuration lost
    seeds; the cell is hatched and says so) and `chosen` (bool: a thick frame marks the
    configuration the other figures show). Grey cells: no finite value (or not run). `norm` lets
    panels share one colour scale (default: log, or linear with `log=False`); the better end is
    light (`heatmap_cmap`); every cell prints its value, so one beyond the scale is read exactly."""
    grid = frame.pivot_table(index="lr_meta", columns="lr_base", values=value, aggfunc="mean", dropna=False)
    grid = grid.sort_index(ascending=False).sort_index(axis=1)
    finite = grid.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite) & ((finite > 0) if log else True)]
    if norm is None and finite.size:
        norm = (LogNorm(finite.min(), max(finite.max(), finite.min() * 1.01)) if log
                else Normalize(finite.min(), finite.max() if finite.max() > finite.min() else finite.min() + 1e-12))
    cmap = heatmap_cmap(higher_is_better)
    image = _cell_grid(ax, grid, norm, cmap, lambda v: f"{v:.2g}")
    rows, columns = list(grid.index), list(grid.columns)
    for entry in frame.itertuples():
        i, j = rows.index(entry.lr_meta), columns.index(entry.lr_base)
        partial = getattr(entry, "partial", "") or ""
        if not np.isfinite(float(getattr(entry, value))) and getattr(entry, "note", None):
            ax.text(j, i, entry.note, ha="center", va="center", fontsize=5)
        if partial:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="0.25",
                                   linewidth=0, gid="partial"))
            ax.text(j, i + 0.32, partial, ha="center", va="center", fontsize=5, color="black",
                    bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        if getattr(entry, "chosen", False):
            ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="black", linewidth=1.8,
                                   gid="chosen", label="chosen configuration"))
    ax.set_xticks(range(len(columns)), [f"{v:g}" for v in columns])
    ax.set_yticks(range(len(rows)), [f"{v:g}" for v in rows])
    if colorbar and norm is not None:
        ax.figure.colorbar(image, ax=ax, label=label)
    ax.set_xlabel("LR_base (inner step size)")
    ax.set_ylabel("LR_meta (outer step size)")
    if title:
        ax.set_title(title)
    return ax


STABILITY_NORM = SymLogNorm(linthresh=0.1, vmin=0.0, vmax=100.0)  # blow-up %: 0 white, 0.1% visible, 100% dark


def plot_stability_map(ax, frame: pd.DataFrame, title: str | None = None):
    """Blow-up rate (%) over LR_base (x) x adaptation steps (y, 0 at the top), on a symlog colour
    scale (STABILITY_NORM, linear below 0.1%); cells print their rate where above 0. Columns:
    lr_base, eval_steps, blowup (a fraction)."""
    grid = frame.pivot_table(index="eval_steps", columns="lr_base", values="blowup", aggfunc="mean",
                             dropna=False).sort_index().sort_index(axis=1) * 100
    image = _cell_grid(ax, grid, STABILITY_NORM, STABILITY_CMAP, lambda v: f"{v:.2g}" if v > 0 else "",
                       fontsize=5)
    ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{int(v)}" for v in grid.index])
    ax.set_xlabel("LR_base")
    ax.set_ylabel("adaptation steps")
    if title:
        ax.set_title(title)
    return image


def plot_speed_points(ax, frame: pd.DataFrame, title: str | None = None,
                      xlabel: str = "ms / meta-iteration (log)", value: str = "sec_per_iter", scale: float = 1e3):
    """Time per meta-training iteration, one row per frame row, as a point (marker: backend,
    colour: algorithm) with its `low`-`high` interval where given, on a log axis (points, not
    bars: a bar's length on a log axis means nothing); a row's `note` is printed at its right.
    Labels: `series`. Columns: algorithm, backend, series, `value`, optional low, high, note."""
    frame = frame.reset_index(drop=True)
    for i, row in frame.iterrows():
        color = algorithm_style(row["algorithm"])["color"]
        marker = BACKEND_MARKERS.get(str(row["backend"]).split(" ")[0], "o")
        if {"low", "high"} <= set(frame) and np.isfinite(row["low"]) and np.isfinite(row["high"]):
            ax.plot([row["low"] * scale, row["high"] * scale], [i, i], color=color, linewidth=1.2)
        ax.plot([row[value] * scale], [i], marker=marker, color=color, linestyle="", markersize=4.5)
        note = row.get("note") if "note" in frame else None
        ax.annotate(f"{row[value] * scale:.3g}" + (f"  {note}" if isinstance(note, str) and note else ""),
                    (1, i), xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=6, annotation_clip=False)
    ax.set_yticks(range(len(frame)), frame["series"])
    ax.set_ylim(len(frame) - 0.5, -0.5)
    ax.set_xscale("log")
    plain_ticks(ax, "x")
    ax.grid(axis="x", which="both", color="0.9", linewidth=0.5)
    ax.set_axisbelow(True)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return ax


plot_speed_bars = plot_speed_points  # its former name


def plot_speed_vs_steps(ax, frame: pd.DataFrame, title: str | None = None,
                        ylabel: str = "s / iteration (log)", value: str = "sec_per_iter", legend: bool = True):
    """`value` (seconds per iteration, or a speed-up ratio) against the number of inner steps S,
    one line per `label`: colour and marker by `algorithm`; line style by `backend` where an
    algorithm has several lines, else the algorithm's own; intervals `low`-`high` where given.
    A dotted line of the same colour is an ensemble's per-member time where
    `sec_per_iter_member` differs. Columns: label, algorithm, backend, inner_steps, `value`."""
    several = frame.groupby("algorithm")["label"].nunique().max() > 1
    for label, group in frame.groupby("label", sort=False):
        group = group.sort_values("inner_steps")
        style = algorithm_style(group["algorithm"].iloc[0])
        dash = BACKEND_LINESTYLES.get(group["backend"].iloc[0], (0, (2, 2))) if several else style["linestyle"]
        ax.plot(group["inner_steps"], group[value], marker=style["marker"], color=style["color"], linestyle=dash,
                label=label)
        if {"low", "high"} <= set(group) and np.isfinite(group[["low", "high"]].to_numpy(dtype=float)).all():
            _draw_interval(ax, group["inner_steps"].to_numpy(), group[value].to_numpy(dtype=float),
                           (group["low"].to_numpy(dtype=float), group["high"].to_numpy(dtype=float)),
                           style["color"], None)
        if value == "sec_per_iter" and "sec_per_iter_member" in group and not np.allclose(
                group["sec_per_iter_member"], group["sec_per_iter"]):
            ax.plot(group["inner_steps"], group["sec_per_iter_member"], marker=style["marker"], linestyle=":",
                    color=style["color"], markerfacecolor="none", label=f"{label}, per member")
    ax.set_yscale("log")
    plain_ticks(ax, "y")
    ax.set_xlabel("inner steps S")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted(frame["inner_steps"].unique()))
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return ax
