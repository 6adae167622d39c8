"""The report's figures: an `Analysis` -> matplotlib figures rendered to bytes (PNG, SVG).

Each maker picks the data and the layout and calls the ax-level functions of
`benchmarks.plots`; one that lacks its data raises Skip with the reason, which the report
lists. Nothing here writes files.
"""
from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd

from benchmarks.analysis import SELECT_STEPS, TABLE_STEPS, Analysis, matching, mode, ranked
from benchmarks.tables import scope_text

log = logging.getLogger(__name__)

FORMATS = ("png", "svg")
DPI = 150
HEATMAP_COLUMNS = 4  # panels per row: a wide sweep wraps instead of becoming a 4000-px strip
#: The two algorithms fig3 shows side by side (`python -m benchmarks report --qualitative-pair A,B`).
QUALITATIVE_PAIR = ("maml", "pretrain")
#: The task of a stored qualitative fit that does not name one: every run made before the
#: name was stored fitted `sine-half`.
QUALITATIVE_DEFAULT_TASK = "sine-half"
TASK_CAPTIONS = {"sine-half": "support only on x ∈ [0, 5]", "sine-freq": "y = A·sin(w·x + φ)"}
DISPLAY_NAMES = {"maml": "MAML", "pretrain": "pre-training"}
HEATMAP_DECADES = 1.0  # colour scale from the best value to 10x it; every cell prints its value
CONTENTION = ("measured under contention (quality sweep, parallel workers; `make speed` measures cleanly)")
FIGURES = {
    "fig1_adaptation_steps": "meta-test MSE vs adaptation steps, best configuration per algorithm, one column per "
                             "eval K: the mean with its 95% CI and, where per-task errors are stored, the IQM below it "
                             "(95% bootstrap CIs at 1, 5 and 10 steps)",
    "fig2_gradient_norm": "initial-gradient Frobenius norm over meta-training, best configuration per algorithm",
    "fig3_qualitative_sine_half": "fits on the one fixed task every run stores (named in the title; `sine-half` so "
                                  "far): the qualitative pair (default MAML vs pre-training, `report "
                                  "--qualitative-pair`), before and after 1 and 10 steps",
    "fig4_lr_heatmaps": "final test MSE (1 step) over LR_base x LR_meta, one panel per (algorithm, S), one colour "
                        "scale spanning a decade from the best value (every cell prints its value)",
    "fig5a_speed_by_backend": "s/iter per (algorithm, backend) at one (S, meta-batch): the speed suite's clean "
                              "measurement if this folder has one (speed.csv), else the sweep's own timings, "
                              "labelled as measured under contention",
    "fig5b_speed_vs_inner_steps": "s/iter against inner steps S per (algorithm, backend), same source as 5a",
    "fig6_learning_curves": "meta-training loss vs iteration, best configuration per algorithm",
    "fig7_blowup_rate": "share of test tasks x seeds whose adaptation blew up vs adaptation steps, best "
                        "configuration per algorithm, one panel per eval K (95% bootstrap CIs at 1, 5 and 10 steps)",
    "fig8_paired_comparison": "every algorithm against MAML and against pre-training on the shared test tasks "
                              "(trained and evaluated at the figures' K): median paired difference and probability "
                              "of improvement with 95% bootstrap CIs after 1, 5 and 10 steps",
}


class Skip(Exception):
    """A figure that cannot be drawn from these records; the message says why."""


def _best(a: Analysis) -> pd.DataFrame:
    """The per-algorithm best configurations, in registry order (legends list algorithms alike)."""
    if a.figure_best.empty:
        raise Skip("no `ok` cell with a validation MSE to choose a best configuration by")
    return _registry_sorted(a.figure_best)


def _need_task_errors(a: Analysis) -> None:
    if not a.task_errors:
        raise Skip("these records have no per-task errors (made before the per-task store)")


def _legend_below(fig, axes) -> None:
    """One legend for the figure, below the panels (clear of data, notes and title): every line's
    label once."""
    handles = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=2 if len(handles) > 3 else 1,
               fontsize="small")


def _per_step(a: Analysis, config, eval_k: int, name: str) -> pd.DataFrame:
    """One row per adaptation step: estimate `name` of the configuration's per-task test errors,
    with its bootstrap interval at the tables' steps (TABLE_STEPS; a bootstrap per step and line
    would cost minutes)."""
    found = a.task_errors.errors(config, "test", eval_k)
    if found is None:
        return pd.DataFrame()
    rows = []
    for step in range(found[0].shape[1]):
        estimate = a.task_errors.summary(config, "test", eval_k, step, bootstrap=step in TABLE_STEPS)[name]
        rows.append({"eval_steps": step, name: estimate.value, "low": estimate.low, "high": estimate.high})
    return pd.DataFrame(rows)


def _fig_adaptation(a: Analysis, plt):
    rows = []
    for _, config in _best(a).iterrows():
        test = matching(a.pooled, config)
        rows.append(test[test["split"] == "test"].assign(label=config["label"]))
    frame = pd.concat(rows)
    if frame.empty:
        raise Skip("the best configurations have no test evaluations")
    eval_ks = sorted(frame["eval_k_shot"].unique())
    robust = {}
    if a.task_errors:
        for k in eval_ks:
            parts = [_per_step(a, config, k, "iqm").assign(label=config["label"], algorithm=config["algorithm"])
                     for _, config in _best(a).iterrows()]
            parts = [p for p in parts if "iqm" in p]
            if parts:
                robust[k] = pd.concat(parts)
    n_rows = 2 if robust else 1
    fig, axes = plt.subplots(n_rows, len(eval_ks), figsize=(max(6.0 * len(eval_ks), 10.0), 4.2 * n_rows + 1.6),
                             squeeze=False, layout="constrained")
    for j, k in enumerate(eval_ks):
        _draw_adaptation(axes[0, j], frame[frame["eval_k_shot"] == k], "mse", "mean test MSE (95% CI)",
                         f"{int(k)}-shot meta-test: mean")
        if robust:
            if k in robust:
                _draw_adaptation(axes[1, j], robust[k], "iqm", "IQM of test MSE (95% bootstrap CI at 1, 5, 10 steps)",
                                 f"{int(k)}-shot meta-test: interquartile mean")
            else:
                axes[1, j].set_visible(False)
    _legend_below(fig, axes)
    fig.suptitle(f"Meta-test MSE vs adaptation steps ({scope_text(a)}; best configuration per algorithm by "
                 f"validation MSE@{SELECT_STEPS})", fontsize="medium")
    return fig


def _draw_adaptation(ax, frame: pd.DataFrame, value: str, ylabel: str, title: str) -> None:
    from benchmarks import plots

    plots.plot_adaptation(ax, frame, title=title, value=value, ylabel=ylabel, legend=False, notes="caption")


def _curves_of_best(a: Analysis, value: str) -> pd.DataFrame:
    parts = [matching(a.curves, config).assign(label=config["label"]) for _, config in _best(a).iterrows()]
    frame = pd.concat(parts)
    frame = frame[np.isfinite(frame[value].astype(float))] if not frame.empty else frame
    if frame.empty:
        raise Skip(f"the best configurations logged no finite {value} values")
    return frame


def _fig_training(a: Analysis, plt, value: str, ylabel: str, title: str):
    from benchmarks import plots

    frame = _curves_of_best(a, value)
    fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
    plots.plot_training_curves(ax, frame, value, ylabel=ylabel,
                               title=f"{title}\nmean over seeds, band min–max; {scope_text(a)}")
    ax.get_legend().remove()
    _legend_below(fig, [ax])
    ax.title.set_fontsize("medium")
    return fig


def _fig_grad_norm(a: Analysis, plt):
    return _fig_training(a, plt, "grad_norm", r"$\|\nabla_\theta \mathcal{L}_{support}\|_F$",
                         "Initial-gradient Frobenius norm on a fixed probe batch")


def _fig_learning_curves(a: Analysis, plt):
    return _fig_training(a, plt, "loss", "meta-training loss", "Meta-training loss (each algorithm's own objective)")


def _qualitative_of(a: Analysis, algorithm: str):
    rows = a.figure_best[a.figure_best["algorithm"] == algorithm]
    if rows.empty:
        raise Skip(f"no `{algorithm}` configuration with a validation MSE at {scope_text(a)}")
    config = rows.iloc[0]
    cells = matching(a.cells, config).sort_values("seed")
    by_id = {r["cell_id"]: r for r in a.records}
    for _, cell in cells.iterrows():
        record = by_id[cell["cell_id"]]
        if record["status"] == "ok" and record.get("qualitative"):
            return config, int(cell["seed"]), record["qualitative"]
    raise Skip(f"the best `{algorithm}` configuration stored no qualitative fit")


def _fig_qualitative(a: Analysis, plt):
    from benchmarks import plots

    _best(a)
    panels = [_qualitative_of(a, algorithm) for algorithm in QUALITATIVE_PAIR]
    tasks = sorted({qualitative.get("task", QUALITATIVE_DEFAULT_TASK) for _, _, qualitative in panels})
    if len(tasks) > 1:
        raise Skip(f"the stored fits of {', '.join(QUALITATIVE_PAIR)} are on different tasks ({', '.join(tasks)})")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (config, seed, qualitative), algorithm in zip(axes, panels, QUALITATIVE_PAIR):
        name = DISPLAY_NAMES.get(algorithm, algorithm)
        plots.plot_qualitative(ax, qualitative, title=f"{name}: {config['label']}, seed {seed}")
        ax.title.set_fontsize("small")
    caption = f" ({TASK_CAPTIONS[tasks[0]]})" if tasks[0] in TASK_CAPTIONS else ""
    fig.suptitle(f"Task `{tasks[0]}`{caption}; models from {scope_text(a)}", fontsize="medium")
    return fig


def parse_pair(text: str) -> tuple[str, str]:
    """`A,B` -> (A, B), two different known algorithms (the `--qualitative-pair` option)."""
    from algorithms import ALGORITHMS

    pair = tuple(name.strip() for name in text.split(","))
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"expected two different algorithms as A,B, got {text!r}")
    unknown = [name for name in pair if name not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithm(s) {', '.join(map(repr, unknown))}; known: {', '.join(ALGORITHMS)}")
    return pair


def _heatmap_panels(a: Analysis) -> dict[tuple, pd.DataFrame]:
    from benchmarks.plots import ALGORITHM_ORDER

    if not a.scope:
        raise Skip("no `ok` cell with a validation MSE")
    scores = a.scores[(a.scores["task"] == a.scope["task"]) & (a.scores["k_shot"] == a.scope["k_shot"])]
    panels, shapes = {}, []
    for (algorithm, steps), group in scores.groupby(["algorithm", "inner_steps"]):
        n_base, n_meta = group["lr_base"].nunique(), group["lr_meta"].nunique()
        shapes.append(f"{algorithm} S={steps}: {n_base}×{n_meta}")
        if n_base < 2 or n_meta < 2:
            continue
        # one value per LR pair: the configuration (backend, B, iterations) chosen by validation
        chosen = ranked(group).groupby(["lr_base", "lr_meta"], sort=False).head(1)
        note = np.where(chosen["n_ok"] == 0, "div./failed", "non-finite")
        panels[(algorithm, int(steps))] = pd.DataFrame({"lr_base": chosen["lr_base"], "lr_meta": chosen["lr_meta"],
                                                        "mse": chosen["test_mse"], "note": note})
    if not panels:
        raise Skip("needs ≥2 values of both LR_base and LR_meta for some (S, algorithm) at "
                   f"{scope_text(a)}; LR_base×LR_meta values found: {', '.join(shapes)}")
    order = {name: i for i, name in enumerate(ALGORITHM_ORDER)}
    return dict(sorted(panels.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0])))


def _fig_heatmaps(a: Analysis, plt):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    from benchmarks import plots

    panels = _heatmap_panels(a)
    values = pd.concat([frame["mse"] for frame in panels.values()]).astype(float).to_numpy()
    values = values[np.isfinite(values) & (values > 0)]
    norm = None
    if values.size:
        low = values.min()
        norm = LogNorm(low, max(min(values.max(), low * 10 ** HEATMAP_DECADES), low * 1.01), clip=True)
    n_columns = min(HEATMAP_COLUMNS, len(panels))
    n_rows = -(-len(panels) // n_columns)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(3.3 * n_columns + 1.2, 2.9 * n_rows + 0.6), squeeze=False,
                             layout="constrained")
    for ax, ((algorithm, steps), frame) in zip(axes.ravel(), panels.items()):
        plots.plot_lr_heatmap(ax, frame, norm=norm, title=f"{algorithm}, S={steps}", colorbar=norm is None)
        ax.title.set_fontsize("small")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if norm is not None:  # one scale for every panel
        clipped = values.max() > norm.vmax
        fig.colorbar(ScalarMappable(norm=norm, cmap=plots.HEATMAP_CMAP), ax=axes, shrink=0.8,
                     label="test MSE" + (" (darkest: ≥ scale end)" if clipped else ""),
                     extend="max" if clipped else "neither")
    fig.suptitle(f"Final test MSE after {SELECT_STEPS} step, mean over seeds ({scope_text(a)}; grey: not run "
                 "or no finite value)", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- speed

def _suite_meta_iterations(a: Analysis) -> pd.DataFrame:
    """The speed suite's meta-iteration timings as (algorithm, backend, inner_steps, meta_batch,
    sec_per_iter, sec_per_iter_member); empty if there is no usable speed.csv."""
    suite = a.speed_suite
    needed = {"kind", "algorithm", "backend", "inner_steps", "meta_batch", "ms_median"}
    if suite.empty or not needed <= set(suite):
        return pd.DataFrame()
    rows = suite[suite["kind"] == "meta_iteration"]
    rows = rows.assign(sec_per_iter=rows["ms_median"] / 1e3, sec_per_iter_member=rows["ms_median"] / 1e3)
    return rows[["algorithm", "backend", "inner_steps", "meta_batch", "sec_per_iter", "sec_per_iter_member"]]


def _suite_ensembles(a: Analysis, steps: int, batch: int) -> list[dict]:
    suite = a.speed_suite
    if not {"kind", "mode", "members"} <= set(suite):
        return []
    rows = suite[(suite["kind"] == "ensemble") & (suite["mode"] == "ensemble") & (suite["inner_steps"] == steps)
                 & (suite["meta_batch"] == batch)]
    return [{"algorithm": r["algorithm"], "backend": r["backend"], "sec_per_iter": r["ms_median"] / 1e3 / r["members"],
             "series": f"{r['algorithm']} [{r['backend']}, {int(r['members'])}-member ensemble, per member]"}
            for _, r in rows.iterrows()]


def _registry_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    from benchmarks.plots import ALGORITHM_ORDER

    order = {name: i for i, name in enumerate(ALGORITHM_ORDER)}
    by = ["_o", "algorithm"] + [c for c in ("series", "backend") if c in frame][:1]
    return frame.assign(_o=frame["algorithm"].map(lambda n: order.get(n, len(order)))).sort_values(
        by, kind="stable").drop(columns="_o")


def _speed_source(a: Analysis):
    """(timings, pair-choosing counts, source text): the speed suite's if present, else the sweep's."""
    suite = _suite_meta_iterations(a)
    if not suite.empty:
        return suite, suite, "speed suite (`speed.md`): one process, fixed batch, median over rounds"
    if a.speed.empty:
        raise Skip("no cell recorded its seconds per iteration, and no speed suite (speed.csv) in this folder")
    device = mode(a.speed.loc[a.speed.index.repeat(a.speed["n_cells"]), "device"])
    on_device = a.speed[a.speed["device"] == device]
    return on_device, on_device, f"quality-sweep cells on {device}, {CONTENTION}"


def _fig_speed_bars(a: Analysis, plt):
    from benchmarks import plots

    timings, _, source = _speed_source(a)
    pairs = timings.groupby(["inner_steps", "meta_batch"]).size().reset_index(name="n")
    pair = pairs.sort_values(["n", "inner_steps", "meta_batch"], ascending=[False, True, True]).iloc[0]
    steps, batch = int(pair["inner_steps"]), int(pair["meta_batch"])
    frame = timings[(timings["inner_steps"] == steps) & (timings["meta_batch"] == batch)]
    rows = []
    for _, row in frame.iterrows():
        ensemble = "ensemble_max" in row and row["ensemble_max"] > 1
        name = f"{row['algorithm']} [{row['backend']}]"
        rows.append({"algorithm": row["algorithm"], "backend": row["backend"], "sec_per_iter": row["sec_per_iter"],
                     "series": f"{name[:-1]}, ensemble program]" if ensemble else name})
        if ensemble:
            rows.append({"algorithm": row["algorithm"], "backend": row["backend"],
                         "sec_per_iter": row["sec_per_iter_member"], "series": f"{name[:-1]}, per member]"})
    if not a.speed_suite.empty:
        rows += _suite_ensembles(a, steps, batch)
    data = _registry_sorted(pd.DataFrame(rows))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(data) + 1.6), layout="constrained")
    plots.plot_speed_bars(ax, data, title=f"Meta-training speed, S={steps}, meta-batch {batch}\n{source}",
                          xlabel="s / meta-iteration (log; colour: algorithm, hatch: backend)")
    ax.title.set_fontsize("small")
    return fig


def _fig_speed_steps(a: Analysis, plt):
    from benchmarks import plots

    timings, _, source = _speed_source(a)
    batch = int(mode(timings["meta_batch"], prefer=25))
    frame = timings[timings["meta_batch"] == batch]
    counts = frame.groupby(["algorithm", "backend"])["inner_steps"].nunique()
    if counts.max() < 2:
        raise Skip(f"needs ≥2 values of S for one (algorithm, backend) at meta-batch {batch}; "
                   f"S values found: {sorted(int(s) for s in frame['inner_steps'].unique())}")
    keep = counts[counts >= 2].index
    frame = frame.set_index(["algorithm", "backend"]).loc[keep].reset_index()
    frame = _registry_sorted(frame.assign(label=frame["algorithm"] + " [" + frame["backend"] + "]"))
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    plots.plot_speed_vs_steps(ax, frame, title=f"Cost of inner steps, meta-batch {batch}\n{source}",
                              ylabel="s / meta-iteration (log)")
    ax.title.set_fontsize("small")
    return fig


# ----------------------------------------------------------------------------- per-task statistics

def _fig_blowup(a: Analysis, plt):
    from benchmarks import plots

    best = _best(a)
    _need_task_errors(a)
    panels = {}
    for _, config in best.iterrows():
        tested = matching(a.pooled, config)
        for k in sorted(tested[tested["split"] == "test"]["eval_k_shot"].unique()):
            part = _per_step(a, config, k, "blowup")
            if not part.empty:
                panels.setdefault(int(k), []).append(part.assign(label=config["label"], algorithm=config["algorithm"]))
    if not panels:
        raise Skip("the best configurations have no stored per-task test errors")
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0 * len(panels), 10.0), 5.6), squeeze=False,
                             layout="constrained")
    for ax, (k, parts) in zip(axes[0], sorted(panels.items())):
        plots.plot_blowup(ax, pd.concat(parts), title=f"{k}-shot meta-test", legend=False)
    _legend_below(fig, axes)
    from benchmarks.statistics import BLOWUP_FACTOR

    fig.suptitle(f"Blow-up rate vs adaptation steps ({scope_text(a)}): test MSE non-finite or > {BLOWUP_FACTOR:g}× "
                 "the zero predictor's; 95% bootstrap CI at 1, 5, 10 steps", fontsize="medium")
    return fig


def _fig_paired(a: Analysis, plt):
    from benchmarks import plots
    from benchmarks.analysis import PAIRED_REFERENCES

    _best(a)
    _need_task_errors(a)
    paired = a.paired
    if not paired.empty:
        paired = paired[(paired["task"] == a.scope["task"]) & (paired["k_shot"] == a.scope["k_shot"])
                        & (paired["eval_k_shot"] == a.scope["k_shot"])]
    references = [r for r in PAIRED_REFERENCES if not paired.empty and r in set(paired["reference"])]
    if not references:
        raise Skip(f"no reference algorithm ({', '.join(PAIRED_REFERENCES)}) with a chosen configuration beside "
                   f"another algorithm at {scope_text(a)}")
    fig, axes = plt.subplots(len(references), 2, figsize=(12, 0.45 * paired["algorithm"].nunique() * len(references)
                                                          + 2.5), squeeze=False, layout="constrained")
    for i, reference in enumerate(references):
        part = _registry_sorted(paired[paired["reference"] == reference])
        plots.plot_paired(axes[i, 0], part, "median_difference", 0.0,
                          f"median paired difference of test MSE vs {reference} (negative: better)",
                          title=f"against {reference}: median difference per task")
        plots.plot_paired(axes[i, 1], part, "p_improvement", 0.5, f"P(algorithm's MSE < {reference}'s)",
                          title=f"against {reference}: probability of improvement")
        axes[i, 1].set_xlim(-0.02, 1.02)
    n_tasks = int(paired["n_tasks"].iloc[0])
    fig.suptitle(f"Paired comparisons on the same {n_tasks} test tasks ({scope_text(a)}, eval K={a.scope['k_shot']}; "
                 f"steps {', '.join(str(s) for s in TABLE_STEPS)}; 95% bootstrap CIs)", fontsize="medium")
    return fig


FIGURE_MAKERS = {
    "fig1_adaptation_steps": _fig_adaptation,
    "fig2_gradient_norm": _fig_grad_norm,
    "fig3_qualitative_sine_half": _fig_qualitative,
    "fig4_lr_heatmaps": _fig_heatmaps,
    "fig5a_speed_by_backend": _fig_speed_bars,
    "fig5b_speed_vs_inner_steps": _fig_speed_steps,
    "fig6_learning_curves": _fig_learning_curves,
    "fig7_blowup_rate": _fig_blowup,
    "fig8_paired_comparison": _fig_paired,
}


def render_figures(a: Analysis) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """Draw every figure into memory: ({name: {format: bytes}}, {skipped name: reason})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rendered, skipped = {}, {}
    with matplotlib.rc_context({"svg.hashsalt": "metabench", "figure.max_open_warning": 0}):
        for name, make in FIGURE_MAKERS.items():
            try:
                fig = make(a, plt)
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
                    fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight",
                                metadata={"Date": None} if fmt == "svg" else None)
                    rendered[name][fmt] = buffer.getvalue()
            finally:
                plt.close(fig)
    return rendered, skipped
