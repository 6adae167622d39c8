"""The report's figures: an `Analysis` -> matplotlib figures rendered to bytes (PNG, SVG, PDF)
and one caption each.

Each maker picks the data and the layout and calls the ax-level functions of
`benchmarks.plots`; one that lacks its data raises Skip with the reason, which the report
lists. Nothing here writes files.

Every figure answers one question, the first sentence of its caption (FIGURES, written beside
it as `<name>.caption.txt` with any notes its data called for). Decisions:
- Robust statistics first: per-algorithm error curves show the IQM of the per-task errors
  (the mean of the middle half of seeds x tasks); the mean appears only at steps where it is
  finite and no task blew up (elsewhere it measures how far the blow-ups went: fig7 counts them).
- Intervals at every step: the tables' bootstrap (2,000 resamples) at 1, 5 and 10 steps, and
  FIGURE_RESAMPLES resamples at the other steps (a 2,000-resample bootstrap per step and line
  would cost minutes on the paper's 18,000 tasks; 200 give the band's shape).
- Legends name algorithms; the configuration each line is (chosen by validation) is in the
  caption, once.
- The mean's interval is the tables' two-way bootstrap where per-task errors are stored (the
  t-formula only where not, and the caption says so). Axes of adaptation steps draw the trained
  inner steps S as a dotted line and the caption calls the steps beyond it extrapolation
  (`analysis.extrapolated`); fig14 (blow-up rate against the threshold's factor, 3x/10x/100x)
  marks its panels beyond S with the tables' dagger.
- Sizes are a paper's: TWO_COLUMN (6.9 in) wide, or ONE_COLUMN (3.3 in) for a single panel,
  8-pt text (`plots.PAPER_RC`).
- The folder's metric (`Analysis.metric`) names every axis, caption and column (`captions`,
  `_column`); "better" follows its direction. Only an error that spans decades (LOG_METRICS:
  MSE) gets log and symlog axes and log colour scales; any other metric (accuracy in [0, 1])
  is drawn on linear axes over its values, with a dashed "chance" line where it has a guessing
  level. The heatmaps' better end is light in both directions. Figures that only an MSE folder
  can have are skipped with the reason elsewhere: the blow-up figures (fig7, fig10: their
  yardstick is a multiple of an MSE error scale, `Metric.scaled_blowups`), the sine fit (fig3)
  and Finn et al.'s sinusoid numbers (fig13). The sine figures are unchanged, byte for byte.
"""
from __future__ import annotations

import io
import logging
import weakref

import numpy as np
import pandas as pd

from benchmarks import statistics
from benchmarks.analysis import (CONFIG_COLUMNS, PAIRED_REFERENCES, SELECT_STEPS, TABLE_STEPS, Analysis,
                                 best_per_algorithm, matching, mode, pool_seeds, ranked, summary_frame)
from benchmarks.records import metric_columns
from benchmarks.tables import scope_text
from tasks.problem import MSE, Metric

log = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")
CAPTION = "caption.txt"
#: what the report writes per figure: `<name>.<suffix>`
OUTPUTS = FORMATS + (CAPTION,)
DPI = 200
FIGURE_RESAMPLES = 200  # bootstrap resamples at the steps the tables do not bootstrap (see the module docstring)
HEATMAP_COLUMNS = 4  # panels per row: a wide sweep wraps instead of becoming a 4000-px strip
HEATMAP_DECADES = 3.0  # colour scale from the best value to at most 1000x it; every cell prints its value
#: The two algorithms fig3 shows side by side (`python -m benchmarks report --qualitative-pair A,B`).
QUALITATIVE_PAIR = ("maml", "pretrain")
#: The task of a stored qualitative fit that does not name one: every run made before the
#: name was stored fitted `sine-half`.
QUALITATIVE_DEFAULT_TASK = "sine-half"
TASK_CAPTIONS = {"sine-half": "support only on x ∈ [0, 5]", "sine-freq": "y = A·sin(w·x + φ)"}
DISPLAY_NAMES = {"maml": "MAML", "pretrain": "pre-training"}
#: the paired comparisons whose per-task differences fig9 draws in full: (A, B) -> A − B
HEADLINE_PAIRS = (("metasgd", "maml"), ("maml", "pretrain"))
CONTENTION = "measured under contention (quality sweep, parallel workers; `make speed` measures cleanly)"
#: this suite's engine, and the peers its speed-up is measured against (fig5)
SPEED_ENGINE = "func"
SPEED_PEERS = {"l2l": "learn2learn", "jax": "JAX"}
METRIC = MSE.label  # FIGURES' metric: the sine families'; a folder in another metric reads `captions(metric)`
#: metrics whose values span decades: log (and symlog) axes and colour scales; any other is drawn linear
LOG_METRICS = (MSE.name,)
FIGURES = {
    "fig1_adaptation_steps":
        f"How fast does each algorithm's typical test error fall with adaptation steps? Test {METRIC} against "
        "adaptation steps, best configuration per algorithm (chosen by validation), one column per test K: the IQM "
        "of the per-task errors with its 95% bootstrap band (log axis), and below it the mean with its 95% CI (the "
        "same two-way bootstrap where per-task errors are stored), drawn only where it is finite and no task blew "
        "up. Points above the axis are arrows on the edge; dotted vertical line: the trained inner steps S.",
    "fig2_gradient_norm":
        "Does meta-training move the initialisation to where the loss is steep? Frobenius norm of the "
        "initial gradient on one fixed probe batch over meta-training, best configuration per algorithm, "
        "mean over seeds with the min-max band.",
    "fig3_qualitative_sine_half":
        "What do the adapted functions look like? Fits on the one fixed task every run stores (named in the "
        "title): the qualitative pair (default MAML vs pre-training, `report --qualitative-pair`), before and after "
        "1 and 10 steps.",
    "fig4_lr_heatmaps":
        f"How sensitive is each algorithm to LR_base and LR_meta, and which pair did validation choose? Final "
        f"validation {METRIC} after {SELECT_STEPS} step (the selection statistic) over LR_base x LR_meta, one panel "
        "per (algorithm, S), one log colour scale; every cell prints its value. Framed: the configuration the "
        "other figures show. Hatched: a configuration that lost seeds (diverged or failed), its value from the "
        "surviving seeds. Grey: not run or no finite value.",
    "fig5a_speed_by_backend":
        "How much faster is this suite's engine than learn2learn and JAX per meta-iteration? Left: milliseconds "
        "per meta-iteration per (algorithm, backend) at one (S, meta-batch), median with the inter-quartile range "
        "(log axis). Right: the speed-up of the `func` engine, the peer's time over ours, per algorithm. Source: "
        "the speed suite's clean measurement if this folder has one (speed.csv), else the sweep's own timings, "
        "labelled as measured under contention.",
    "fig5b_speed_vs_inner_steps":
        "Does the speed-up over learn2learn and JAX hold as inner steps S grow? The peer's time per "
        "meta-iteration over the `func` engine's, against S, one line per algorithm; same source as 5a.",
    "fig6_learning_curves":
        "Did meta-training converge? Each algorithm's own meta-training loss (one batch per logged iteration, "
        "a rolling mean over 5 points drawn over the raw values), one panel per algorithm: the objectives differ, "
        "so the panels are not compared with each other (fig12 compares the algorithms on validation).",
    "fig7_blowup_rate":
        "When does adaptation diverge? Share of test tasks x seeds whose adapted error is non-finite or above "
        f"{statistics.BLOWUP_FACTOR:g}x the zero predictor's at each step (a task can drop back below it later; the "
        "cumulative rate is in tables.md (a2)), against adaptation steps, best configuration per algorithm, one "
        "panel per test K, 95% bootstrap bands; symlog axis, linear (shaded) below 0.1%; dotted vertical line: the "
        "trained inner steps S.",
    "fig8_paired_comparison":
        "Task by task, which algorithm beats MAML and pre-training, and by how much? On the shared test tasks "
        "(trained and evaluated at the figures' K): the median per-task difference, one panel per adaptation step "
        "(symlog axis, linear part shaded; interval ends far beyond every estimate are arrows on the edge), and "
        "the probability of improvement, with 95% bootstrap CIs.",
    "fig9_paired_ecdf":
        "How are the per-task differences of the headline pairs distributed? Empirical CDF over the shared test "
        "tasks of A's error minus B's (each averaged over seeds; below 0: A better) for Meta-SGD − MAML and "
        "MAML − pre-training, after 1, 5 and 10 steps; symlog axis, linear part shaded.",
    "fig10_stability_map":
        "At which inner learning rates and step counts does adaptation blow up? Blow-up rate of the test tasks "
        "x seeds over LR_base x adaptation steps, per (algorithm, S), LR_meta (and the rest) chosen by validation "
        "for each LR_base; symlog colour scale, linear below 0.1%.",
    "fig11_error_vs_k":
        f"How much does each algorithm gain from more support examples? Test {METRIC} (IQM with 95% bootstrap "
        "CI, log axis) against K, trained and tested at that K, best configuration per algorithm and K, after 1 "
        "and after 10 adaptation steps.",
    "fig12_validation_curves":
        f"When during meta-training does each algorithm reach its validation error? Validation {METRIC} after "
        f"{SELECT_STEPS} step at the trained K (the selection statistic) at every evaluated iteration, best "
        "configuration per algorithm, mean over seeds with its 95% CI (log axis).",
    "fig14_blowup_threshold":
        "Does a conclusion about blow-ups depend on the threshold's factor? Share of test tasks x seeds blown up at "
        "step 1, 5 and 10 (one panel each) with the threshold at "
        f"{', '.join(f'{f:g}' for f in statistics.SENSITIVITY_FACTORS)}x the error scale (factor on a log axis; "
        f"dotted: the tables' {statistics.BLOWUP_FACTOR:g}x), best configuration per algorithm at the figures' test "
        "K, 95% bootstrap bands; rate on a symlog axis, linear (shaded) below 0.1%.",
    "fig15_blowup_amplitude":
        "Which tasks does a fixed inner rate blow up on? Share of test tasks x seeds blown up at step 1, 5 and 10 "
        "(one panel each) against the task's amplitude A (five equal-width bins of the test tasks' A, at the bin's "
        "centre; the support loss's curvature grows with A squared), best configuration per algorithm at the "
        "figures' test K, 95% bootstrap bands; symlog axis, linear (shaded) below 0.1%.",
    "fig13_reproduction":
        f"Does this suite reproduce Finn et al. (2017)'s sinusoid numbers? Test {METRIC} at K = 5 of models trained "
        "at K = 10 in Finn's setup, after 1, 5 and 10 steps, as the paper reports it: the mean of one trained model "
        "over one set of 600 test tasks. Dots: each of our (seed, test set) means; bar: the range the rule reads "
        "(the central 95% of them, min–max with 40 or fewer), tick: their median; open diamond: the published "
        "value. Rule, fixed before the results were read and the same at every step: reproduced when the diamond "
        "lies within the bar, else ours lower or higher (tables.md (d)). Log axis; sets above it (a diverged task "
        "decides a set's mean) are arrows on the edge.",
}
#: FIGURES for a metric other than MSE (`captions`): its label, linear axes, its direction and chance
#: level; figures absent here either do not show the metric (2, 5, 6) or are skipped for it (3, 7, 10)
_OTHER_METRIC_CAPTIONS = {
    "fig1_adaptation_steps":
        "How fast does each algorithm's typical test {label} improve with adaptation steps? Test {label} against "
        "adaptation steps, best configuration per algorithm (chosen by validation), one column per test K: the IQM "
        "of the per-task values with its 95% bootstrap band, and below it the mean with its 95% CI, drawn only where "
        "no task's value is non-finite; linear axes ({direction} is better{chance}).",
    "fig4_lr_heatmaps":
        "How sensitive is each algorithm to LR_base and LR_meta, and which pair did validation choose? Final "
        "validation {label} after {steps} step (the selection statistic) over LR_base x LR_meta, one panel per "
        "(algorithm, S), one linear colour scale, the better ({direction}) end light; every cell prints its value. "
        "Framed: the configuration the other figures show (the {best} validation {label}). Hatched: a configuration "
        "that lost seeds (diverged or failed), its value from the surviving seeds. Grey: not run or no finite value.",
    "fig8_paired_comparison":
        "Task by task, which algorithm beats MAML and pre-training, and by how much? On the shared test tasks "
        "(trained and evaluated at the figures' K): the median per-task difference of the {label} ({sign} 0: better "
        "than the reference), one panel per adaptation step (linear axis; interval ends far beyond every estimate "
        "are arrows on the edge), and the probability of improvement ({label} {relation} the reference's), with "
        "95% bootstrap CIs.",
    "fig9_paired_ecdf":
        "How are the per-task differences of the headline pairs distributed? Empirical CDF over the shared test "
        "tasks of A's {label} minus B's (each averaged over seeds; {side} 0: A better) for Meta-SGD − MAML and "
        "MAML − pre-training, after 1, 5 and 10 steps; linear axis.",
    "fig11_error_vs_k":
        "How much does each algorithm gain from more support examples? Test {label} (IQM with 95% bootstrap CI, "
        "linear axis, {direction} is better{chance}) against K, trained and tested at that K, best configuration "
        "per algorithm and K, after 1 and after 10 adaptation steps.",
    "fig12_validation_curves":
        "When during meta-training does each algorithm reach its validation {label}? Validation {label} after "
        "{steps} step at the trained K (the selection statistic) at every evaluated iteration, best configuration "
        "per algorithm, mean over seeds with its 95% CI (linear axis, {direction} is better{chance}).",
    "fig13_reproduction":
        "Does this suite reproduce Finn et al. (2017)'s sinusoid numbers? Drawn for the sine regression families "
        "only: the published numbers are their test errors.",
}


def captions(metric: Metric = MSE) -> dict[str, str]:
    """Each figure's caption (its question, then how to read it) for a folder in `metric`: FIGURES
    for MSE, else the metric's label, direction and chance level (never "MSE")."""
    if metric.name in LOG_METRICS:
        return dict(FIGURES)
    higher = metric.higher_is_better
    fields = {"label": metric.label, "steps": SELECT_STEPS, "direction": "higher" if higher else "lower",
              "best": "highest" if higher else "lowest", "sign": ">" if higher else "<",
              "side": "above" if higher else "below", "relation": ">" if higher else "<",
              "chance": f"; dashed: chance, {metric.chance:.3g}" if metric.chance is not None else ""}
    return {name: _OTHER_METRIC_CAPTIONS[name].format(**fields) if name in _OTHER_METRIC_CAPTIONS else text
            for name, text in FIGURES.items()}


class Skip(Exception):
    """A figure that cannot be drawn from these records; the message says why."""


def _note(fig, text: str) -> None:
    """A sentence for this figure's caption file (what its data called for, e.g. the configurations)."""
    fig._metabench_notes = [*getattr(fig, "_metabench_notes", []), text]


def _column(a: Analysis, template: str = "{}") -> str:
    """An analysis frame's column of the folder's metric: "{}" -> `mse` / `accuracy`, "val_{}" ->
    `val_accuracy`, "{}_ci95" -> its interval (the names `benchmarks.records.metric_columns` gives
    the evaluation rows)."""
    return template.format(metric_columns(a.metric)[0])


def _log_axis(a: Analysis) -> bool:
    """Whether the folder's metric spans decades (LOG_METRICS): log axes; else linear ones."""
    return a.metric.name in LOG_METRICS


def _linear(a: Analysis, *frames_and_columns) -> dict:
    """plot_lines' y-axis arguments for a metric drawn linear: the range of the given (frame,
    columns) values and the chance level; {} (its log defaults) for a metric on a log axis."""
    if _log_axis(a):
        return {}
    from benchmarks.plots import linear_limits

    values = [frame[[c for c in columns if c in frame]].to_numpy(dtype=float).ravel()
              for frame, columns in frames_and_columns]
    chance = a.metric.chance if a.metric.chance is not None else np.nan
    ymin, ymax = linear_limits(np.concatenate([*values, [chance]]))
    return {"log": False, "ymin": ymin, "ymax": ymax}


def _with_interval(a: Analysis, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(frame, columns) for `_linear`: the metric's values and the ends of their 95% CI."""
    value, ci = _column(a), _column(a, "{}_ci95")
    values = frame[value].astype(float)
    ends = frame.assign(low=values - frame[ci].astype(float), high=values + frame[ci].astype(float))
    return ends, [value, "low", "high"]


def _chance(a: Analysis, axes) -> None:
    """The metric's guessing level on every axis given (nothing for a metric without one)."""
    from benchmarks.plots import mark_chance

    for ax in np.ravel(axes):
        if ax.get_visible():
            mark_chance(ax, a.metric.chance)


#: why fig7 and fig10 are drawn for MSE only
BLOWUP_SKIP = ("blow-up rates need the suite's yardstick, a multiple of the zero predictor's squared error "
               "(`Metric.scaled_blowups`); without it a blow-up is a non-finite value only (the tables count them)")


def _only_mse(a: Analysis, why: str, applies: bool | None = None) -> None:
    """Skip a figure that only a folder in MSE can have (`applies`: the condition, by default that
    the metric is MSE); the reason names the folder's metric."""
    if not (a.metric.name == MSE.name if applies is None else applies):
        raise Skip(f"{why}; this folder reports {a.metric.label} "
                   f"({'higher' if a.metric.higher_is_better else 'lower'} is better)")


def _best(a: Analysis) -> pd.DataFrame:
    """The per-algorithm best configurations, in registry order (legends list algorithms alike)."""
    if a.figure_best.empty:
        raise Skip(f"no `ok` cell with a validation {a.metric.label} to choose a best configuration by")
    return _registry_sorted(a.figure_best)


def _configurations(best: pd.DataFrame) -> str:
    return "Configurations (chosen by validation): " + "; ".join(best["label"]) + "."


def _need_task_errors(a: Analysis) -> None:
    if not a.task_errors:
        raise Skip(a.task_errors.missing())


def _trained_steps(a: Analysis, fig, axes, configs: pd.DataFrame, steps=None) -> None:
    """The trained inner steps S of `configs` as dotted lines on every visible axis of adaptation steps
    (`plots.mark_trained_steps`), and the caption's word on the steps beyond them (`analysis.extrapolated`),
    where any drawn step (`steps`: default up to TABLE_STEPS' last) lies beyond an S."""
    from benchmarks import plots

    trained = sorted({int(s) for s in configs["inner_steps"]})
    last = max(TABLE_STEPS) if steps is None else max(steps)
    for ax in np.ravel(axes):
        if ax.get_visible():
            plots.mark_trained_steps(ax, trained)
    if trained and last > min(trained):
        _note(fig, f"Dotted line{'s' if len(trained) > 1 else ''}: the trained inner steps S = "
                   f"{', '.join(map(str, trained))}; a step right of a configuration's S is beyond the trained inner "
                   "steps (extrapolation: a rule meta-trained for S steps applied more times).")


def _legend_below(fig, axes, columns: int = 4) -> None:
    """One legend for the figure, below the panels (clear of data, notes and title): every line's
    label once."""
    handles = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(columns, len(handles)))


# ----------------------------------------------------------------------------- per-step statistics

_FIGURE_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _summary(a: Analysis, config, split: str, eval_k: int, step: int, bootstrap: bool = True) -> dict | None:
    """`TaskErrors.summary` at one step; where the tables do not bootstrap (steps other than
    TABLE_STEPS), a FIGURE_RESAMPLES bootstrap, memoised per analysis."""
    if step in TABLE_STEPS or not bootstrap:
        return a.task_errors.summary(config, split, eval_k, step, bootstrap=bootstrap)
    memo = _FIGURE_MEMO.setdefault(a.task_errors, {})
    key = (tuple(config[c] for c in CONFIG_COLUMNS), split, int(eval_k), int(step))
    if key not in memo:
        found = a.task_errors.errors(config, split, eval_k)
        memo[key] = None if found is None or step >= found[0].shape[1] else statistics.summarize(
            found[0][:, step], found[1], n_resamples=FIGURE_RESAMPLES, higher_is_better=a.metric.higher_is_better)
    return memo[key]


def _per_step(a: Analysis, config, eval_k: int, name: str) -> pd.DataFrame:
    """One row per adaptation step: estimate `name` of the configuration's per-task test errors
    with its bootstrap interval (see `_summary`)."""
    found = a.task_errors.errors(config, "test", eval_k)
    if found is None:
        return pd.DataFrame()
    rows = []
    for step in range(found[0].shape[1]):
        estimate = _summary(a, config, "test", eval_k, step)[name]
        rows.append({"eval_steps": step, name: estimate.value, "low": estimate.low, "high": estimate.high})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- error curves

def _fig_adaptation(a: Analysis, plt):
    from benchmarks import plots

    best = _best(a)
    rows = []
    for _, config in best.iterrows():
        test = matching(a.pooled, config)
        rows.append(test[test["split"] == "test"].assign(label=config["algorithm"]))
    frame = pd.concat(rows)
    if frame.empty:
        raise Skip("the best configurations have no test evaluations")
    eval_ks = sorted(frame["eval_k_shot"].unique())
    robust, omitted = {}, []
    value = _column(a)
    # the mean's interval: the two-way bootstrap where per-task errors are stored, else the t-formula's
    frame = frame.assign(low=frame[value].astype(float) - frame[_column(a, "{}_ci95")].astype(float),
                         high=frame[value].astype(float) + frame[_column(a, "{}_ci95")].astype(float))
    t_formula = bool(len(frame))
    if a.task_errors:
        for k in eval_ks:
            parts = []
            for _, config in best.iterrows():
                part = _per_step(a, config, k, "iqm")
                if part.empty:
                    continue
                means = _per_step(a, config, k, "mean").set_index("eval_steps")
                rows = (frame["algorithm"] == config["algorithm"]) & (frame["eval_k_shot"] == k)
                steps = frame.loc[rows, "eval_steps"]
                frame.loc[rows, "low"] = steps.map(means["low"]).to_numpy()
                frame.loc[rows, "high"] = steps.map(means["high"]).to_numpy()
                t_formula = False
                parts.append(part.assign(label=config["algorithm"], algorithm=config["algorithm"]))
                # the mean only where it is finite and no task blew up
                blowup = [_summary(a, config, "test", k, s, bootstrap=False)["blowup"].value
                          for s in part["eval_steps"]]
                blown = part["eval_steps"][np.asarray(blowup) > 0]
                if not blown.empty:
                    first = int(blown.min())
                    omitted.append(f"{config['algorithm']} from step {first} at K={int(k)}")
                    mask = (frame["algorithm"] == config["algorithm"]) & (frame["eval_k_shot"] == k) & (
                        frame["eval_steps"] >= first)
                    frame = frame[~mask]
            if parts:
                robust[k] = pd.concat(parts)
    n_rows = 2 if robust else 1
    fig, axes = plt.subplots(n_rows, len(eval_ks), figsize=(plots.TWO_COLUMN, 2.3 * n_rows + 1.0), squeeze=False,
                             layout="constrained")
    label = a.metric.label
    for j, k in enumerate(eval_ks):
        mean_row = axes[n_rows - 1, j]
        if robust:
            if k in robust:
                plots.plot_adaptation(axes[0, j], robust[k], value="iqm", title=f"{int(k)}-shot test: IQM",
                                      ylabel=f"IQM of test {label} (95% CI)", legend=False, notes="caption",
                                      **_linear(a, (robust[k], ["iqm", "low", "high"])))
            else:
                axes[0, j].set_visible(False)
        part = frame[frame["eval_k_shot"] == k]
        part = part[np.isfinite(part[value].astype(float))]
        plots.plot_adaptation(mean_row, part, title=f"{int(k)}-shot test: mean"
                              + (" (where no task blew up)" if omitted else ""), value=value,
                              ylabel=f"mean test {label} (95% CI)", legend=False, notes="caption",
                              **_linear(a, (part, [value, "low", "high"])))
    _chance(a, axes)
    _trained_steps(a, fig, axes, best)
    _legend_below(fig, axes)
    fig.suptitle(f"Test {label} vs adaptation steps ({scope_text(a)})")
    _note(fig, _configurations(best))
    if t_formula:
        _note(fig, "No per-task errors are stored: the mean's interval is the t-formula's (tables.md, note under (a)).")
    if omitted:
        _note(fig, "Mean omitted from the first step at which a task blew up (fig7): " + "; ".join(omitted) + ".")
    return fig


def _curves_of_best(a: Analysis, value: str) -> pd.DataFrame:
    parts = [matching(a.curves, config).assign(label=config["algorithm"]) for _, config in _best(a).iterrows()]
    frame = pd.concat(parts)
    frame = frame[np.isfinite(frame[value].astype(float))] if not frame.empty else frame
    if frame.empty:
        raise Skip(f"the best configurations logged no finite {value} values")
    return frame


def _fig_grad_norm(a: Analysis, plt):
    from benchmarks import plots

    frame = _curves_of_best(a, "grad_norm")
    fig, ax = plt.subplots(figsize=(plots.TWO_COLUMN, 2.8), layout="constrained")
    plots.plot_training_curves(ax, frame, "grad_norm", ylabel=r"$\|\nabla_\theta \mathcal{L}_{support}\|_F$",
                               title=f"Initial-gradient norm on a fixed probe batch ({scope_text(a)})", legend=False)
    _legend_below(fig, [ax])
    _note(fig, _configurations(_best(a)))
    return fig


def _fig_learning_curves(a: Analysis, plt):
    from benchmarks import plots

    frame = _curves_of_best(a, "loss")
    algorithms = list(dict.fromkeys(frame["algorithm"]))
    columns = min(4, len(algorithms))
    n_rows = -(-len(algorithms) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(plots.TWO_COLUMN, 1.6 * n_rows + 0.5), squeeze=False,
                             layout="constrained", sharex=True)
    for ax, algorithm in zip(axes.ravel(), algorithms):
        plots.plot_training_curves(ax, frame[frame["algorithm"] == algorithm], "loss", ylabel="own loss",
                                   title=algorithm, smooth=5, legend=False)
    for ax in axes.ravel()[len(algorithms):]:
        ax.set_visible(False)
    fig.suptitle(f"Meta-training loss, each algorithm's own objective ({scope_text(a)})")
    _note(fig, _configurations(_best(a)))
    return fig


def _fig_validation_curves(a: Analysis, plt):
    from benchmarks import plots

    best = _best(a)
    evaluations = summary_frame(a.records, every_iteration=True)
    evaluations = evaluations[(evaluations["status"] == "ok") & (evaluations["split"] == "validation")
                              & (evaluations["eval_k_shot"] == evaluations["k_shot"])
                              & (evaluations["eval_steps"] == SELECT_STEPS)]
    value, label = _column(a), a.metric.label
    for column in (value, _column(a, "{}_ci95"), "iteration"):
        evaluations[column] = pd.to_numeric(evaluations[column], errors="coerce")
    parts = []
    for _, config in best.iterrows():
        pooled = pool_seeds(matching(evaluations, config), CONFIG_COLUMNS + ["iteration"], metric=a.metric)
        if pooled["iteration"].nunique() >= 2:
            parts.append(pooled.assign(label=config["algorithm"]))
    if not parts:
        raise Skip("no best configuration was evaluated at ≥2 iterations (`eval_every`)")
    frame = pd.concat(parts)
    fig, ax = plt.subplots(figsize=(plots.TWO_COLUMN, 2.8), layout="constrained")
    plots.plot_lines(ax, frame, "iteration", value, f"validation {label} after {SELECT_STEPS} step (95% CI)",
                     "meta-training iteration", legend=False, notes="caption",
                     title=f"Validation {label} during meta-training ({scope_text(a)})",
                     **_linear(a, _with_interval(a, frame)))
    _chance(a, ax)
    _legend_below(fig, [ax])
    _note(fig, _configurations(best))
    return fig


def _fig_error_vs_k(a: Analysis, plt):
    from benchmarks import plots

    _need_task_errors(a)
    if not a.scope:
        raise Skip(f"no `ok` cell with a validation {a.metric.label}")
    task = a.scope["task"]
    scores = a.scores[(a.scores["task"] == task) & a.scores["val_n_seeds"].notna()]
    ks = sorted(int(k) for k in scores["k_shot"].unique())
    if len(ks) < 2:
        raise Skip(f"needs models trained at ≥2 values of K on task {task}; found K = {ks}")
    steps = (TABLE_STEPS[0], TABLE_STEPS[-1])
    rows, configurations = [], []
    for k in ks:
        for _, config in _registry_sorted(best_per_algorithm(scores, task, k, a.metric)).iterrows():
            configurations.append(f"K={k}: {config['label']}")
            for step in steps:
                found = a.task_errors.summary(config, "test", k, step)
                if found is not None:
                    iqm = found["iqm"]
                    rows.append({"label": config["algorithm"], "algorithm": config["algorithm"], "k_shot": k,
                                 "eval_steps": step, "iqm": iqm.value, "low": iqm.low, "high": iqm.high})
    frame = pd.DataFrame(rows)
    if frame.empty or frame.groupby("label")["k_shot"].nunique().max() < 2:
        raise Skip("no algorithm has per-task test errors at its trained K for ≥2 values of K")
    # one y axis for both panels: linear over every value and interval for a metric drawn linear; for MSE up
    # to 2x the worst one-step error (more steps should only lower it, and what blew up after 10 steps is an
    # arrow on the edge)
    values = frame["iqm"].to_numpy(dtype=float)
    limits = _linear(a, (frame, ["iqm", "low", "high"])) or {
        "ymin": float(values[np.isfinite(values) & (values > 0)].min()) / 2,
        "ymax": 2.0 * float(frame.loc[frame["eval_steps"] == steps[0], "iqm"].replace(np.inf, np.nan).max())}
    label = a.metric.label
    fig, axes = plt.subplots(1, len(steps), figsize=(plots.TWO_COLUMN, 2.8), squeeze=False, layout="constrained")
    for ax, step in zip(axes[0], steps):
        plots.plot_lines(ax, frame[frame["eval_steps"] == step], "k_shot", "iqm", f"IQM of test {label} (95% CI)",
                         "K (support examples, trained and tested)", legend=False, notes="caption",
                         title=f"after {step} step{'s' if step > 1 else ''}", **limits)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    _chance(a, axes)
    _legend_below(fig, axes)
    fig.suptitle(f"Test {label} against K (task {task})")
    _note(fig, "Configurations (chosen by validation per K): " + "; ".join(configurations) + ".")
    return fig


# ----------------------------------------------------------------------------- fits

def _qualitative_of(a: Analysis, algorithm: str):
    rows = a.figure_best[a.figure_best["algorithm"] == algorithm]
    if rows.empty:
        raise Skip(f"no `{algorithm}` configuration with a validation {a.metric.label} at {scope_text(a)}")
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

    _only_mse(a, "the qualitative figure draws fitted curves y(x) of the sine regression families")
    _best(a)
    panels = [_qualitative_of(a, algorithm) for algorithm in QUALITATIVE_PAIR]
    tasks = sorted({qualitative.get("task", QUALITATIVE_DEFAULT_TASK) for _, _, qualitative in panels})
    if len(tasks) > 1:
        raise Skip(f"the stored fits of {', '.join(QUALITATIVE_PAIR)} are on different tasks ({', '.join(tasks)})")
    fig, axes = plt.subplots(1, 2, figsize=(plots.TWO_COLUMN, 2.6), sharey=True, layout="constrained")
    for ax, (config, seed, qualitative), algorithm in zip(axes, panels, QUALITATIVE_PAIR):
        name = DISPLAY_NAMES.get(algorithm, algorithm)
        plots.plot_qualitative(ax, qualitative, title=f"{name}: seed {seed}")
        _note(fig, f"{name}: {config['label']}, seed {seed}.")
    caption = f" ({TASK_CAPTIONS[tasks[0]]})" if tasks[0] in TASK_CAPTIONS else ""
    fig.suptitle(f"Task `{tasks[0]}`{caption}; models from {scope_text(a)}")
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


# ----------------------------------------------------------------------------- hyperparameters

def _panel_order(panels: dict) -> dict:
    from benchmarks.plots import ALGORITHM_ORDER

    order = {name: i for i, name in enumerate(ALGORITHM_ORDER)}
    return dict(sorted(panels.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0])))


def _scope_scores(a: Analysis) -> pd.DataFrame:
    if not a.scope:
        raise Skip(f"no `ok` cell with a validation {a.metric.label}")
    return a.scores[(a.scores["task"] == a.scope["task"]) & (a.scores["k_shot"] == a.scope["k_shot"])]


def _heatmap_panels(a: Analysis) -> dict[tuple, pd.DataFrame]:
    scores = _scope_scores(a)
    chosen_keys = {tuple(row[c] for c in CONFIG_COLUMNS) for _, row in a.figure_best.iterrows()}
    panels, shapes = {}, []
    for (algorithm, steps), group in scores.groupby(["algorithm", "inner_steps"]):
        n_base, n_meta = group["lr_base"].nunique(), group["lr_meta"].nunique()
        shapes.append(f"{algorithm} S={steps}: {n_base}×{n_meta}")
        if n_base < 2 or n_meta < 2:
            continue
        # one value per LR pair: the configuration (backend, B, iterations) chosen by validation
        chosen = ranked(group, a.metric).groupby(["lr_base", "lr_meta"], sort=False).head(1)
        value = chosen[_column(a, "val_{}")].astype(float)
        value = value.where(np.isfinite(value), chosen[_column(a, "val_{}_finite")].astype(float))  # a seed non-finite
        lost = (chosen["n_ok"] < chosen["n_cells"]) | (chosen["val_n_finite"].fillna(0) < chosen["val_n_seeds"])
        finite_seeds = chosen["val_n_finite"].fillna(0).astype(int)
        seeds = [f"{f}/{n} seeds" for f, n in zip(finite_seeds, chosen["n_cells"])]
        partial = np.where(lost & np.isfinite(value), seeds, "")
        note = np.where(chosen["n_ok"] == 0, "diverged", "non-finite")
        panels[(algorithm, int(steps))] = pd.DataFrame({
            "lr_base": chosen["lr_base"], "lr_meta": chosen["lr_meta"], "value": value, "note": note,
            "partial": partial,
            "chosen": [tuple(row[c] for c in CONFIG_COLUMNS) in chosen_keys for _, row in chosen.iterrows()]})
    if not panels:
        raise Skip("needs ≥2 values of both LR_base and LR_meta for some (S, algorithm) at "
                   f"{scope_text(a)}; LR_base×LR_meta values found: {', '.join(shapes)}")
    return _panel_order(panels)


def _grid_of_panels(plt, n: int, height: float):
    columns = min(HEATMAP_COLUMNS, n)
    n_rows = -(-n // columns)
    from benchmarks.plots import TWO_COLUMN

    fig, axes = plt.subplots(n_rows, columns, figsize=(TWO_COLUMN, height * n_rows + 0.7), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


def _outer_labels_only(ax, index: int, columns: int) -> None:
    """Axis titles on the left column only: the panels of a grid share them."""
    if index % columns:
        ax.set_ylabel("")


def _fig_heatmaps(a: Analysis, plt):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm, Normalize

    from benchmarks import plots

    panels = _heatmap_panels(a)
    log, label, higher = _log_axis(a), a.metric.label, a.metric.higher_is_better
    values = pd.concat([frame["value"] for frame in panels.values()]).astype(float).to_numpy()
    values = values[np.isfinite(values) & ((values > 0) if log else True)]
    norm = None
    if values.size and log:
        low = values.min()
        norm = LogNorm(low, max(min(values.max(), low * 10 ** HEATMAP_DECADES), low * 1.01), clip=True)
    elif values.size:  # a bounded metric: every value on one linear scale
        norm = Normalize(values.min(), max(values.max(), values.min() + 1e-12))
    cmap = plots.heatmap_cmap(higher)
    fig, axes = _grid_of_panels(plt, len(panels), 1.55)
    for i, (ax, ((algorithm, steps), frame)) in enumerate(zip(axes.ravel(), panels.items())):
        chosen = " (chosen)" if frame["chosen"].any() else ""
        plots.plot_lr_heatmap(ax, frame, norm=norm, title=f"{algorithm}, S={steps}{chosen}", colorbar=norm is None,
                              label=f"validation {label}", value="value", higher_is_better=higher, log=log)
        _outer_labels_only(ax, i, axes.shape[1])
    if norm is not None:  # one scale for every panel
        clipped = values.max() > norm.vmax
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.6,
                     label=f"validation {label}@{SELECT_STEPS}" + (" (darkest: ≥ scale end)" if clipped else "")
                     + ("" if log else f" ({'higher' if higher else 'lower'} is better: light)"),
                     extend="max" if clipped else "neither")
    fig.suptitle(f"Validation {label} after {SELECT_STEPS} step, mean over seeds ({scope_text(a)})")
    return fig


def _fig_stability(a: Analysis, plt):
    from matplotlib.cm import ScalarMappable

    from benchmarks import plots

    _only_mse(a, BLOWUP_SKIP, a.metric.scaled_blowups)
    _need_task_errors(a)
    scores = _scope_scores(a)
    scores = scores[scores["val_n_seeds"].notna()]
    k = a.scope["k_shot"]
    panels = {}
    for (algorithm, steps), group in scores.groupby(["algorithm", "inner_steps"]):
        rows = []
        for lr_base, candidates in group.groupby("lr_base"):
            # the LR_meta validation chooses, if it has errors
            for _, config in ranked(candidates, a.metric).iterrows():
                found = a.task_errors.errors(config, "test", k)
                if found is not None:
                    rows += [{"lr_base": lr_base, "eval_steps": s,
                              "blowup": _summary(a, config, "test", k, s, bootstrap=False)["blowup"].value}
                             for s in range(found[0].shape[1])]
                    break
        frame = pd.DataFrame(rows)
        if not frame.empty and frame["lr_base"].nunique() >= 2:
            panels[(algorithm, int(steps))] = frame
    if not panels:
        raise Skip(f"needs per-task test errors at ≥2 values of LR_base for some (algorithm, S) at {scope_text(a)}")
    panels = _panel_order(panels)
    fig, axes = _grid_of_panels(plt, len(panels), 1.9)
    for i, (ax, ((algorithm, steps), frame)) in enumerate(zip(axes.ravel(), panels.items())):
        plots.plot_stability_map(ax, frame, title=f"{algorithm}, S={steps}")
        _outer_labels_only(ax, i, axes.shape[1])
    bar = fig.colorbar(ScalarMappable(norm=plots.STABILITY_NORM, cmap=plots.STABILITY_CMAP), ax=axes, shrink=0.6,
                       label="blow-up rate (% of tasks × seeds; linear below 0.1)")
    bar.set_ticks([0, 0.1, 1, 10, 100], labels=["0", "0.1", "1", "10", "100"])
    bar.ax.axhline(0.1, color="white", linewidth=1.0, linestyle="--")  # the switch from linear to log
    fig.suptitle(f"Blow-up rate over LR_base × adaptation steps ({scope_text(a)}, test K={k})")
    return fig


# ----------------------------------------------------------------------------- speed

def _suite_meta_iterations(a: Analysis) -> pd.DataFrame:
    """The speed suite's meta-iteration timings as (algorithm, backend, inner_steps, meta_batch,
    sec_per_iter, sec_per_iter_member, low, high); empty if there is no usable speed.csv. The
    suite stores each timing's median and the width of its inter-quartile range, not the
    quartiles: the interval drawn is median ± IQR/2."""
    suite = a.speed_suite
    needed = {"kind", "algorithm", "backend", "inner_steps", "meta_batch", "ms_median"}
    if suite.empty or not needed <= set(suite):
        return pd.DataFrame()
    rows = suite[suite["kind"] == "meta_iteration"]
    half = (rows["ms_iqr"] if "ms_iqr" in rows else pd.Series(np.nan, index=rows.index)) / 2
    rows = rows.assign(sec_per_iter=rows["ms_median"] / 1e3, sec_per_iter_member=rows["ms_median"] / 1e3,
                       low=(rows["ms_median"] - half) / 1e3, high=(rows["ms_median"] + half) / 1e3)
    return rows[["algorithm", "backend", "inner_steps", "meta_batch", "sec_per_iter", "sec_per_iter_member", "low",
                 "high"]]


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
    """(timings, source text): the speed suite's if present, else the sweep's (no intervals)."""
    suite = _suite_meta_iterations(a)
    if not suite.empty:
        return suite, "speed suite (`speed.md`): one process, fixed batch, median and IQR over rounds"
    if a.speed.empty:
        raise Skip("no cell recorded its seconds per iteration, and no speed suite (speed.csv) in this folder")
    device = mode(a.speed.loc[a.speed.index.repeat(a.speed["n_cells"]), "device"])
    on_device = a.speed[a.speed["device"] == device]
    return on_device, f"quality-sweep cells on {device}, {CONTENTION}"


def _speedups(timings: pd.DataFrame) -> pd.DataFrame:
    """Per (algorithm, S, meta-batch, peer): the peer's time over SPEED_ENGINE's (> 1: ours faster),
    with an interval from the two timings' intervals where both have one (the ratio of the far
    ends: conservative)."""
    keys = ["algorithm", "inner_steps", "meta_batch"]
    ours = timings[timings["backend"] == SPEED_ENGINE]
    rows = []
    for peer in SPEED_PEERS:
        theirs = timings[timings["backend"] == peer]
        both = ours.merge(theirs, on=keys, suffixes=("", "_peer"))
        for _, row in both.iterrows():
            entry = {**{k: row[k] for k in keys}, "backend": peer, "peer": SPEED_PEERS[peer],
                     "speedup": row["sec_per_iter_peer"] / row["sec_per_iter"], "low": np.nan, "high": np.nan}
            if "low" in row and np.isfinite([row["low"], row["high"], row["low_peer"], row["high_peer"]]).all():
                entry.update(low=row["low_peer"] / row["high"], high=row["high_peer"] / row["low"])
            rows.append(entry)
    return pd.DataFrame(rows)


def _fig_speed_bars(a: Analysis, plt):
    from benchmarks import plots

    timings, source = _speed_source(a)
    pairs = timings.groupby(["inner_steps", "meta_batch"]).size().reset_index(name="n")
    pair = pairs.sort_values(["n", "inner_steps", "meta_batch"], ascending=[False, True, True]).iloc[0]
    steps, batch = int(pair["inner_steps"]), int(pair["meta_batch"])
    frame = timings[(timings["inner_steps"] == steps) & (timings["meta_batch"] == batch)]
    rows = []
    for _, row in frame.iterrows():
        ensemble = "ensemble_max" in row and row["ensemble_max"] > 1
        name = f"{row['algorithm']} [{row['backend']}]"
        interval = {"low": row.get("low", np.nan), "high": row.get("high", np.nan)}
        rows.append({"algorithm": row["algorithm"], "backend": row["backend"], "sec_per_iter": row["sec_per_iter"],
                     "series": f"{name[:-1]}, ensemble program]" if ensemble else name, **interval})
        if ensemble:
            rows.append({"algorithm": row["algorithm"], "backend": row["backend"],
                         "sec_per_iter": row["sec_per_iter_member"], "series": f"{name[:-1]}, per member]"})
    if not a.speed_suite.empty:
        rows += _suite_ensembles(a, steps, batch)
    data = _registry_sorted(pd.DataFrame(rows))
    speedups = _speedups(frame)
    height = max(0.115 * len(data) + 1.0, 2.2)
    if speedups.empty:
        fig, ax = plt.subplots(figsize=(plots.TWO_COLUMN, height), layout="constrained")
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(plots.TWO_COLUMN, height), layout="constrained",
                                 gridspec_kw={"width_ratios": [1.5, 1]})
    plots.plot_speed_points(axes[0], data, title=f"S={steps}, meta-batch {batch}\n{source}",
                            xlabel="ms / meta-iteration (log; marker: backend)")
    axes[0].title.set_fontsize(6.5)
    if not speedups.empty:
        speedups = _registry_sorted(speedups).assign(
            series=lambda f: f["algorithm"] + " vs " + f["peer"], sec_per_iter=lambda f: f["speedup"])
        plots.plot_speed_points(axes[1], speedups, title=f"speed-up of `{SPEED_ENGINE}`", scale=1.0,
                                xlabel=f"peer's time / {SPEED_ENGINE}'s (log; > 1: {SPEED_ENGINE} faster)")
        axes[1].axvline(1.0, color="0.4", linewidth=0.8, linestyle="--")
        for _, row in speedups.iterrows():
            _note(fig, f"{row['algorithm']}: {row['speedup']:.3g}x faster than {row['peer']}.")
    return fig


def _fig_speed_steps(a: Analysis, plt):
    from benchmarks import plots

    timings, source = _speed_source(a)
    batch = int(mode(timings["meta_batch"], prefer=25))
    frame = timings[timings["meta_batch"] == batch]
    speedups = _speedups(frame)
    counts = speedups.groupby(["algorithm", "peer"])["inner_steps"].nunique() if not speedups.empty else pd.Series()
    if counts.empty or counts.max() < 2:
        raise Skip(f"needs `{SPEED_ENGINE}` and a peer ({', '.join(SPEED_PEERS)}) timed at ≥2 values of S for one "
                   f"algorithm at meta-batch {batch}; S values found: "
                   f"{sorted(int(s) for s in frame['inner_steps'].unique())}")
    peers = [p for p in SPEED_PEERS.values() if p in set(speedups["peer"])]
    fig, axes = plt.subplots(1, len(peers), figsize=(plots.TWO_COLUMN if len(peers) > 1 else plots.ONE_COLUMN + 0.6,
                                                     2.6), squeeze=False, layout="constrained", sharey=True)
    for i, (ax, peer) in enumerate(zip(axes[0], peers)):
        part = _registry_sorted(speedups[speedups["peer"] == peer]).assign(label=lambda f: f["algorithm"])
        plots.plot_speed_vs_steps(ax, part, value="speedup", legend=False,
                                  title=(f"meta-batch {batch}; {source}\n" if i == 0 else "") + f"over {peer}",
                                  ylabel=f"speed-up of `{SPEED_ENGINE}` (log)")
        ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.title.set_fontsize(6.5)
    _legend_below(fig, axes)
    return fig


# ----------------------------------------------------------------------------- per-task statistics

def _fig_blowup(a: Analysis, plt):
    from benchmarks import plots

    _only_mse(a, BLOWUP_SKIP, a.metric.scaled_blowups)
    best = _best(a)
    _need_task_errors(a)
    panels = {}
    for _, config in best.iterrows():
        tested = matching(a.pooled, config)
        for k in sorted(tested[tested["split"] == "test"]["eval_k_shot"].unique()):
            part = _per_step(a, config, k, "blowup")
            if not part.empty:
                panels.setdefault(int(k), []).append(part.assign(label=config["algorithm"],
                                                                 algorithm=config["algorithm"]))
    if not panels:
        raise Skip("the best configurations have no stored per-task test errors")
    fig, axes = plt.subplots(1, len(panels), figsize=(plots.TWO_COLUMN, 3.0), squeeze=False, layout="constrained",
                             sharey=True)
    for ax, (k, parts) in zip(axes[0], sorted(panels.items())):
        plots.plot_blowup(ax, pd.concat(parts), title=f"{k}-shot test", legend=False)
    _trained_steps(a, fig, axes, best)
    _legend_below(fig, axes)
    fig.suptitle(f"Blow-up rate vs adaptation steps ({scope_text(a)})")
    _note(fig, _configurations(best))
    return fig


def _fig_blowup_threshold(a: Analysis, plt):
    from benchmarks import plots
    from benchmarks.tables import EXTRAPOLATION_MARK, EXTRAPOLATION_NOTE  # tables imports this module's neighbours

    _only_mse(a, BLOWUP_SKIP, a.metric.scaled_blowups)
    best = _best(a)
    _need_task_errors(a)
    k = a.scope["k_shot"]
    factors = statistics.SENSITIVITY_FACTORS
    panels: dict[int, list[pd.DataFrame]] = {}
    for _, config in best.iterrows():
        for step in TABLE_STEPS:
            rates = a.task_errors.sensitivity(config, "test", k, step, factors)
            if rates is not None:
                panels.setdefault(step, []).append(pd.DataFrame({
                    "factor": factors, "blowup": [r.value for r in rates], "low": [r.low for r in rates],
                    "high": [r.high for r in rates], "label": config["algorithm"], "algorithm": config["algorithm"]}))
    if not panels:
        raise Skip(f"the best configurations have no stored per-task test errors at test K={k}")
    fig, axes = plt.subplots(1, len(panels), figsize=(plots.TWO_COLUMN, 3.0), squeeze=False, layout="constrained",
                             sharey=True)
    beyond = False
    for j, (ax, (step, parts)) in enumerate(zip(axes[0], sorted(panels.items()))):
        mark = EXTRAPOLATION_MARK if (best["inner_steps"].astype(int) < step).any() else ""
        beyond |= bool(mark)
        plots.plot_blowup(ax, pd.concat(parts), title=f"at step {step}{mark}", legend=False, x="factor",
                          xlabel="threshold (x error scale)")
        if j:
            ax.set_ylabel("")
        ax.set_xscale("log")
        ax.set_xticks(factors, [f"{f:g}x" for f in factors])
        ax.minorticks_off()
        ax.axvline(statistics.BLOWUP_FACTOR, color="0.45", linewidth=0.8, linestyle=":", zorder=0)
    _legend_below(fig, axes)
    fig.suptitle(f"Blow-up rate against the threshold's factor ({scope_text(a)}, test K={k}; dotted: the tables' "
                 f"{statistics.BLOWUP_FACTOR:g}x)")
    _note(fig, _configurations(best))
    if beyond:
        trained = sorted({int(s) for s in best["inner_steps"]})
        _note(fig, f"{EXTRAPOLATION_NOTE} A panel is marked where its step is beyond some configuration's S "
                   f"(trained S: {', '.join(map(str, trained))}).")
    return fig


def _fig_blowup_amplitude(a: Analysis, plt):
    from benchmarks import plots
    from benchmarks.tables import EXTRAPOLATION_MARK

    _only_mse(a, BLOWUP_SKIP, a.metric.scaled_blowups)
    best = _best(a)
    _need_task_errors(a)
    k = a.scope["k_shot"]
    frame = a.by_amplitude
    if frame.empty:
        raise Skip("no blow-up rate by amplitude: it needs per-task test errors of a sine family, on the test tasks "
                   "its fixed streams redraw (a warning names any store whose tasks are not those)")
    parts = []
    for _, config in best.iterrows():
        rows = matching(frame, config)
        rows = rows[rows["eval_k_shot"] == k]
        parts.append(rows.assign(label=config["algorithm"], algorithm=config["algorithm"],
                                 amplitude=(rows["amplitude_low"] + rows["amplitude_high"]) / 2,
                                 low=rows["blowup_low"], high=rows["blowup_high"]))
    parts = pd.concat(parts) if parts else pd.DataFrame()
    if parts.empty:
        raise Skip(f"the best configurations have no blow-up rates by amplitude at test K={k}")
    steps = sorted(parts["eval_steps"].unique())
    fig, axes = plt.subplots(1, len(steps), figsize=(plots.TWO_COLUMN, 3.0), squeeze=False, layout="constrained",
                             sharey=True)
    for j, (ax, step) in enumerate(zip(axes[0], steps)):
        mark = EXTRAPOLATION_MARK if (best["inner_steps"].astype(int) < step).any() else ""
        plots.plot_blowup(ax, parts[parts["eval_steps"] == step], title=f"at step {step}{mark}", legend=False,
                          x="amplitude", xlabel="task amplitude A (bin centre)")
        if j:
            ax.set_ylabel("")
    _legend_below(fig, axes)
    fig.suptitle(f"Blow-up rate against the task's amplitude ({scope_text(a)}, test K={k})")
    _note(fig, _configurations(best))
    return fig


def _scoped_paired(a: Analysis) -> pd.DataFrame:
    paired = a.paired
    if not paired.empty:
        paired = paired[(paired["task"] == a.scope["task"]) & (paired["k_shot"] == a.scope["k_shot"])
                        & (paired["eval_k_shot"] == a.scope["k_shot"])]
    return paired


def _fig_paired(a: Analysis, plt):
    from benchmarks import plots

    best = _best(a)
    _need_task_errors(a)
    paired = _scoped_paired(a)
    references = [r for r in PAIRED_REFERENCES if not paired.empty and r in set(paired["reference"])]
    if not references:
        raise Skip(f"no reference algorithm ({', '.join(PAIRED_REFERENCES)}) with a chosen configuration beside "
                   f"another algorithm at {scope_text(a)}")
    steps = sorted(paired["eval_steps"].unique())
    n_algorithms = paired["algorithm"].nunique()
    log, label, higher = _log_axis(a), a.metric.label, a.metric.higher_is_better
    fig, axes = plt.subplots(len(references), len(steps) + 1, figsize=(plots.TWO_COLUMN, (
        0.17 * n_algorithms + 1.0) * len(references) + 0.4), squeeze=False, layout="constrained")
    for i, reference in enumerate(references):
        part = _registry_sorted(paired[paired["reference"] == reference])
        for j, step in enumerate(steps):
            ax = axes[i, j]
            plots.plot_paired(ax, part[part["eval_steps"] == step], "median_difference", 0.0,
                              f"median difference vs {reference}" if j == 0 else "vs " + reference, symlog=log,
                              title=f"{step} step{'s' if step > 1 else ''}: median difference", name_switch=False)
            if j:
                ax.set_yticklabels([])
        ax = axes[i, -1]
        plots.plot_paired(ax, part, "p_improvement", 0.5, f"P({label} {'>' if higher else '<'} {reference}'s)",
                          title=f"vs {reference}: P(improvement)", limits=(-0.02, 1.02))
        ax.set_yticklabels([])
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], marker=plots.STEP_MARKERS.get(int(s), "o"), color="0.3", linestyle="",
                               label=f"after {int(s)} step{'s' if s > 1 else ''}") for s in steps],
               loc="outside lower center", ncols=len(steps))
    better = "positive" if higher else "negative"
    scale = "difference axes symlog, linear in the shaded band" if log else f"differences of {label}, linear axes"
    fig.suptitle(f"Paired comparisons on the same {int(paired['n_tasks'].iloc[0])} test tasks ({scope_text(a)}, "
                 f"test K={a.scope['k_shot']}; {better} difference: better than the reference; 95% bootstrap CIs;\n"
                 f"{scale})")
    _note(fig, _configurations(best))
    return fig


def _fig_ecdf(a: Analysis, plt):
    from benchmarks import plots

    best = _best(a)
    _need_task_errors(a)
    chosen = best.set_index("algorithm", drop=False)
    k = a.scope["k_shot"]
    panels = []
    for first, second in HEADLINE_PAIRS:
        if first not in chosen.index or second not in chosen.index:
            continue
        ours, theirs = (a.task_errors.errors(chosen.loc[name], "test", k) for name in (first, second))
        if ours is None or theirs is None or ours[0].shape[2] != theirs[0].shape[2]:
            continue
        differences = {s: statistics.paired_differences(ours[0][:, s], theirs[0][:, s]) for s in TABLE_STEPS
                       if s < min(ours[0].shape[1], theirs[0].shape[1])}
        panels.append((first, second, differences))
    if not panels:
        raise Skip(f"no headline pair ({', '.join(f'{x} vs {y}' for x, y in HEADLINE_PAIRS)}) with per-task test "
                   f"errors on shared tasks at {scope_text(a)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(plots.TWO_COLUMN if len(panels) > 1 else plots.ONE_COLUMN,
                                                      2.8), squeeze=False, layout="constrained")
    label, higher = a.metric.label, a.metric.higher_is_better
    for ax, (first, second, differences) in zip(axes[0], panels):
        better = "" if _log_axis(a) else f"\n({'> 0' if higher else '< 0'}: {first} better)"
        plots.plot_ecdf(ax, differences, plots.algorithm_style(first)["color"],
                        f"{first}'s {label} − {second}'s, per task{better}", title=f"{first} − {second}",
                        symlog=_log_axis(a), higher_is_better=higher)
    n_tasks = len(next(iter(panels[0][2].values())))
    fig.suptitle(f"Per-task paired differences on {n_tasks} shared test tasks ({scope_text(a)}, test K={k})")
    _note(fig, _configurations(best))
    return fig


def _fig_reproduction(a: Analysis, plt):
    """Per step and algorithm, every single-model x single-set mean (the paper's statistic), the
    range the reproduction rule reads, their median and the published value (`benchmarks.paper`)."""
    from benchmarks import paper, plots

    _only_mse(a, "Finn et al. (2017)'s published numbers are test errors of the sine regression families")
    frame = paper.comparison(a.final, a.task_errors, a.metric)
    if frame.empty:
        raise Skip(f"no cells in Finn et al.'s setup ({', '.join(f'{k}={v}' for k, v in paper.SETUP.items())})")
    frame = frame[frame["published"].notna()]
    if frame.empty:
        raise Skip("no algorithm with a published number (" + ", ".join(sorted(set(paper.PUBLISHED["algorithm"])))
                   + ") in Finn et al.'s setup")
    if not a.task_errors:
        raise Skip(f"the reproduction rule reads single-set means from the per-task store: {a.task_errors.missing()}")
    series = list(dict.fromkeys(zip(frame["algorithm"], frame["backend"])))
    steps = list(paper.STEPS)
    means = {}
    for _, row in frame.iterrows():
        values = paper.single_sets(a.task_errors, row, int(row["eval_steps"]))[0]
        means[(row["algorithm"], row["backend"], int(row["eval_steps"]))] = np.where(np.isfinite(values), values,
                                                                                      np.inf)
    finite = np.concatenate([v[np.isfinite(v)] for v in means.values()] + [frame["published"].to_numpy(float)])
    medians = frame["single_set_median"].to_numpy(dtype=float)
    top = 3.0 * max(frame["published"].max(), np.nanmax(np.where(np.isfinite(medians), medians, np.nan),
                                                       initial=0.0))
    bottom = finite.min() / 1.5
    fig, ax = plt.subplots(figsize=(plots.ONE_COLUMN + 0.4, 3.2), layout="constrained")
    width = 0.8 / len(series)
    for i, (algorithm, backend) in enumerate(series):
        color = plots.algorithm_style(algorithm)["color"]
        rows = frame[(frame["algorithm"] == algorithm) & (frame["backend"] == backend)].set_index("eval_steps")
        base = np.array([steps.index(s) for s in rows.index]) + (i - (len(series) - 1) / 2) * width
        for x, (step, row) in zip(base, rows.iterrows()):
            values = means[(algorithm, backend, int(step))]
            if not len(values):
                continue
            jitter = x - width * 0.1 + np.linspace(-0.22, 0.22, len(values)) * width if len(values) > 1 else [x]
            jitter = np.asarray(jitter, dtype=float)
            shown = values <= top
            ax.plot(jitter[shown], values[shown], marker="o", linestyle="", markersize=2.5, alpha=0.6, color=color,
                    markeredgewidth=0, gid="single-set",
                    label=f"{algorithm} [{backend}]: single-set means" if step == rows.index[0] else None)
            plots.mark_overflow(ax, jitter, values, None, top, color)
            low, high = row["single_set_low"], min(row["single_set_high"], top)
            ax.plot([x + width * 0.25] * 2, [low, high], color=color, linewidth=1.2, solid_capstyle="butt")
            ax.plot([x + width * 0.25], [row["single_set_median"]], marker="_", markersize=7, color=color,
                    linestyle="")
        ax.plot(base + width * 0.25, rows["published"], marker="D", markerfacecolor="white", color="black",
                linestyle="", markersize=4.5, zorder=5, label="Finn et al. 2017" if i == 0 else None)
    ax.set_yscale("log")
    plots.plain_ticks(ax, "y")
    ax.set_ylim(bottom, top)
    ax.set_xticks(range(len(steps)), [f"{s} step{'s' if s > 1 else ''}" for s in steps])
    ax.set_ylabel(f"test {a.metric.label} at K = {paper.EVAL_K}, one model x one set")
    ax.set_title("Finn et al. 2017, Table 2, vs this suite")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="0.4", linewidth=1.2, marker="_", markersize=7))
    labels.append("range the rule reads, median")
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    verdicts = [f"{r['algorithm']}@{int(r['eval_steps'])}: {paper.fmt_verdict(r)} (percentile "
                f"{paper.fmt_percentile(r['published_percentile'])})" for _, r in frame.iterrows()]
    _note(fig, "Verdicts: " + "; ".join(verdicts) + ".")
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
    "fig9_paired_ecdf": _fig_ecdf,
    "fig10_stability_map": _fig_stability,
    "fig11_error_vs_k": _fig_error_vs_k,
    "fig12_validation_curves": _fig_validation_curves,
    "fig14_blowup_threshold": _fig_blowup_threshold,
    "fig15_blowup_amplitude": _fig_blowup_amplitude,
    "fig13_reproduction": _fig_reproduction,
}


def make_figure(name: str, a: Analysis, plt):
    """One figure in the paper style (`plots.PAPER_RC`); raises Skip. The caller closes it."""
    import matplotlib

    from benchmarks.plots import PAPER_RC

    with matplotlib.rc_context(PAPER_RC):
        fig = FIGURE_MAKERS[name](a, plt)
    fig._metabench_caption = captions(a.metric)[name]
    return fig


def caption(name: str, fig) -> str:
    """The caption file's text: the figure's question and reading (`captions` of its folder's
    metric, FIGURES for MSE), then its notes."""
    return " ".join([getattr(fig, "_metabench_caption", FIGURES[name]), *getattr(fig, "_metabench_notes", [])]) + "\n"


def render_figures(a: Analysis) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """Draw every figure into memory: ({name: {output suffix (OUTPUTS): bytes}}, {skipped name: reason})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.plots import PAPER_RC

    rendered, skipped = {}, {}
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}
    with matplotlib.rc_context({"svg.hashsalt": "metabench", "figure.max_open_warning": 0, **PAPER_RC}):
        for name in FIGURE_MAKERS:
            try:
                fig = make_figure(name, a, plt)
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
                    fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata.get(fmt))
                    rendered[name][fmt] = buffer.getvalue()
                rendered[name][CAPTION] = caption(name, fig).encode()
            finally:
                plt.close(fig)
    return rendered, skipped
