"""Figures of a folder whose metric is not MSE (issue 21): a classification folder (accuracy in
[0, 1], higher is better, chance 1/N) must be drawn in its own terms. Every check reads the drawn
data back from the matplotlib objects, on one synthetic folder built once (records shaped like
a gauss-class run's, numbers chosen so the right picture is known)."""
from __future__ import annotations

from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_report import make_record  # noqa: E402

from benchmarks import figures, plots  # noqa: E402
from benchmarks.analysis import analyse  # noqa: E402
from benchmarks.artifacts import Artifacts  # noqa: E402
from benchmarks.config import Cell  # noqa: E402
from tasks.problem import MSE, Metric, accuracy  # noqa: E402

N_WAY = 5
ACCURACY = accuracy(N_WAY)  # chance 0.2
N_TASKS = 40
STEPS = range(11)
#: per task: the step's mean plus OFFSET[j] (mean exactly 0), the same tasks for every record
OFFSET = np.random.default_rng(0).permutation(np.linspace(-0.1, 0.1, N_TASKS))
#: validation accuracy after one step: Meta-SGD best, then MAML, then FOMAML
LEVELS = {"maml": 0.6, "metasgd": 0.66, "fomaml": 0.5}
LR_BASE, LR_META = (0.01, 0.1), (0.001, 0.01)


def level(algorithm, lr_base, lr_meta) -> float:
    """The best validation accuracy at (LR_base 0.1, LR_meta 0.001), the worst at (0.01, 0.01): a
    lower-is-better choice would frame the opposite corner."""
    return LEVELS[algorithm] + 0.08 * (lr_base == 0.1) - 0.05 * (lr_meta == 0.01)


def classification_record(algorithm, seed, lr_base, lr_meta, metric=ACCURACY, k_shot=5) -> dict:
    """A gauss-class run record: `metric` per step (chance at step 0, rising with steps), its
    interval, the cross-entropy beside it, and the per-task store holding the metric (the
    zero-predictor MSE undefined, as for every metric without scaled blow-ups)."""
    record = make_record(algorithm, "func", seed, k_shot=k_shot, lr_base=lr_base, lr_meta=lr_meta, eval_ks=(k_shot,))
    cell = Cell(algorithm, "func", "gauss-class", k_shot, 1, lr_base, lr_meta, 25, 100, seed)
    record.update(cell_id=cell.cell_id, cell=asdict(cell), metric=metric.declaration(), qualitative=None)
    chance = metric.chance if metric.chance is not None else 0.9
    name = metric.name
    evaluations, errors = [], {}
    for iteration in (50, 100):
        for split, shift in (("validation", 0.0), ("test", -0.02)):
            top = level(algorithm, lr_base, lr_meta) + shift + 0.005 * seed - (0.1 if iteration < 100 else 0.0)
            if not metric.higher_is_better:  # an error rate: 1 - accuracy
                top = 1.0 - top
            values = [chance if s == 0 else top + (0.01 if metric.higher_is_better else -0.01) * (s - 1)
                      for s in STEPS]
            for s, value in zip(STEPS, values):
                evaluations.append({"iteration": iteration, "split": split, "eval_k_shot": k_shot, "eval_steps": s,
                                    "loss": 1.5 - value, "loss_ci95": 0.05, name: value, f"{name}_ci95": 0.03,
                                    "n_test_tasks": N_TASKS, "n_sets": 1, "set_sd": float("nan")})
            if iteration == 100:
                errors[(split, k_shot)] = np.asarray(values)[:, None] + OFFSET[None, :]
    record["evaluations"] = evaluations
    record["_artifacts"] = Artifacts(params=[np.zeros((1, 1), np.float32)], lrs=[lr_base], errors=errors,
                                     n_sets={"test": 1, "validation": 1},
                                     zero_mse={key: float("nan") for key in errors})
    return record


def classification_records(metric=ACCURACY) -> list[dict]:
    return [classification_record(algorithm, seed, lr_base, lr_meta, metric) for algorithm in LEVELS
            for lr_base in LR_BASE for lr_meta in LR_META for seed in (0, 1)]


def analysis_of(records):
    return analyse(records, {r["cell_id"]: r["_artifacts"] for r in records})


def draw_all(analysis) -> dict:
    """name -> the drawn figure, or the Skip's reason."""
    drawn = {}
    for name in figures.FIGURE_MAKERS:
        try:
            drawn[name] = figures.make_figure(name, analysis, plt)
        except figures.Skip as reason:
            drawn[name] = str(reason)
    return drawn


@pytest.fixture(scope="module")
def folder():
    analysis = analysis_of(classification_records())
    drawn = draw_all(analysis)
    yield analysis, drawn
    for fig in drawn.values():
        if not isinstance(fig, str):
            plt.close(fig)


def texts(fig) -> list[str]:
    """Every piece of text a reader sees: titles, axis labels (colour bars too), legends, notes."""
    found = [fig.get_suptitle()] + [t.get_text() for t in fig.texts]
    for legend in fig.legends:
        found += [t.get_text() for t in legend.get_texts()]
    for ax in fig.axes:
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        found += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        if ax.get_legend():
            found += [t.get_text() for t in ax.get_legend().get_texts()]
    return found


def drawn_figure(drawn, name):
    fig = drawn[name]
    assert not isinstance(fig, str), f"{name} skipped: {fig}"
    return fig


def chance_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() == "chance"]


def test_the_folder_reads_as_accuracy(folder):
    analysis, _ = folder
    assert analysis.metric == ACCURACY


def test_no_axis_label_caption_or_skip_reason_says_mse(folder):
    analysis, drawn = folder
    for name, fig in drawn.items():
        if isinstance(fig, str):
            assert "MSE" not in fig, (name, fig)
            continue
        shown = texts(fig) + [figures.caption(name, fig)]
        assert not [t for t in shown if "MSE" in t], (name, [t for t in shown if "MSE" in t])
    assert not [text for text in figures.captions(analysis.metric).values() if "MSE" in text]
    assert "test accuracy" in figures.caption("fig1_adaptation_steps", drawn["fig1_adaptation_steps"]).lower()
    assert "test accuracy" in drawn["fig1_adaptation_steps"].get_suptitle().lower()


@pytest.mark.parametrize("name", ["fig1_adaptation_steps", "fig12_validation_curves"])
def test_accuracy_axes_are_linear_with_a_chance_line(folder, name):
    _, drawn = folder
    fig = drawn_figure(drawn, name)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_lines()]
    assert panels
    for ax in panels:
        assert ax.get_yscale() == "linear", (name, ax.get_title())
        lines = chance_lines(ax)
        assert len(lines) == 1 and np.allclose(lines[0].get_ydata(), 1 / N_WAY), ax.get_title()
        assert lines[0].get_label() == "chance" and lines[0].get_linestyle() == "--"
        low, high = ax.get_ylim()
        data = [line for line in ax.get_lines() if line.get_gid() not in ("chance", "overflow", "trained_steps")]
        values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in data])
        assert low <= min(values.min(), 1 / N_WAY) and values.max() <= high <= 1.1  # nothing off scale
        assert not [line for line in ax.get_lines() if line.get_gid() == "overflow"]  # no "blow-up" arrows
    assert "chance" in [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_the_best_accuracy_is_on_top_not_an_off_scale_arrow(folder):
    """After 10 steps accuracy is highest: drawn inside the axis, as the largest point."""
    _, drawn = folder
    ax = next(ax for ax in drawn_figure(drawn, "fig1_adaptation_steps").axes if "mean" in ax.get_title())
    metasgd = next(line for line in ax.get_lines() if line.get_label() == "metasgd")
    assert list(metasgd.get_xdata()) == list(STEPS)
    assert np.argmax(metasgd.get_ydata()) == len(STEPS) - 1


@pytest.mark.parametrize("name", ["fig7_blowup_rate", "fig10_stability_map"])
def test_blowup_figures_are_skipped_with_a_reason(folder, name):
    _, drawn = folder
    reason = drawn[name]
    assert isinstance(reason, str) and "blow-up" in reason and "accuracy" in reason and "higher" in reason


@pytest.mark.parametrize("name", ["fig3_qualitative_sine_half", "fig13_reproduction"])
def test_sine_only_figures_are_skipped_with_a_reason(folder, name):
    _, drawn = folder
    reason = drawn[name]
    assert isinstance(reason, str) and "sine" in reason and "accuracy" in reason


def _heatmap_cells(ax):
    """(LR_base, LR_meta) -> printed value, and the framed cell, read from the drawn panel."""
    columns = [float(t.get_text()) for t in ax.get_xticklabels()]
    rows = [float(t.get_text()) for t in ax.get_yticklabels()]
    values = {}
    for text in ax.texts:
        x, y = text.get_position()
        values[(columns[round(x)], rows[round(y)])] = float(text.get_text())
    framed = [p for p in ax.patches if p.get_gid() == "chosen"]
    chosen = [(columns[round(p.get_x() + 0.45)], rows[round(p.get_y() + 0.45)]) for p in framed]
    return values, chosen


def test_heatmap_frames_the_highest_validation_accuracy_and_better_is_light(folder):
    analysis, drawn = folder
    fig = drawn_figure(drawn, "fig4_lr_heatmaps")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == len(LEVELS)
    for ax in panels:
        values, chosen = _heatmap_cells(ax)
        algorithm = ax.get_title().split(",")[0]
        assert len(values) == 4 and chosen == [max(values, key=values.get)], (algorithm, values, chosen)
        assert chosen == [(0.1, 0.001)]
        expected = np.mean([level(algorithm, 0.1, 0.001) + 0.005 * s for s in (0, 1)])
        assert values[chosen[0]] == pytest.approx(expected, abs=0.006)  # validation, not test (0.02 lower)
        image = ax.get_images()[0]
        grid = image.get_array()
        light = [np.dot(image.cmap(image.norm(v))[:3], (0.299, 0.587, 0.114)) for v in (grid.max(), grid.min())]
        assert light[0] > light[1]  # the best (highest) cell is the light one, as the lowest MSE is
        assert isinstance(image.norm, matplotlib.colors.Normalize) and not isinstance(
            image.norm, matplotlib.colors.LogNorm)
    bar = next(ax for ax in fig.axes if not ax.get_title())
    assert "validation accuracy" in bar.get_ylabel() and "higher is better" in bar.get_ylabel()


def test_paired_comparison_says_higher_is_better(folder):
    """Meta-SGD's accuracy is higher than MAML's: its median difference is positive, its
    probability of improvement above 0.5, and the figure says positive is better."""
    _, drawn = folder
    fig = drawn_figure(drawn, "fig8_paired_comparison")
    assert "positive difference: better" in fig.get_suptitle() and "symlog" not in fig.get_suptitle()
    step = next(ax for ax in fig.axes if ax.get_title().startswith("1 step") and "maml" in ax.get_xlabel())
    assert step.get_xscale() == "linear"
    row = [t.get_text() for t in step.get_yticklabels()].index("metasgd")
    point = next(line for line in step.get_lines() if len(line.get_xdata()) == 1 and line.get_gid() != "overflow"
                 and line.get_ydata()[0] == pytest.approx(row, abs=0.4))
    assert point.get_xdata()[0] > 0
    improvement = next(ax for ax in fig.axes if "P(" in ax.get_xlabel() and "maml" in ax.get_xlabel())
    assert improvement.get_xlabel() == "P(accuracy > maml's)"
    points = [line.get_xdata()[0] for line in improvement.get_lines() if len(line.get_xdata()) == 1
              and line.get_gid() != "overflow" and line.get_marker() != "None"
              and abs(line.get_ydata()[0] - row) < 0.4]
    assert points and min(points) > 0.5


def test_ecdf_counts_the_better_side_of_zero(folder):
    _, drawn = folder
    fig = drawn_figure(drawn, "fig9_paired_ecdf")
    ax = next(ax for ax in fig.axes if ax.get_title() == "metasgd − maml")
    assert ax.get_xscale() == "linear" and "> 0: metasgd better" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels and all("> 0 on 100%" in label for label in labels), labels
    low, high = ax.get_xlim()
    assert high <= 1.0 and low >= -1.0  # accuracy differences lie in [-1, 1]


def test_captions_follow_the_metric_and_mse_keeps_its_own():
    assert figures.captions(MSE) == figures.FIGURES
    lower = Metric("error_rate", "error rate", higher_is_better=False, chance=0.8, fn=lambda p, t: p)
    text = figures.captions(lower)
    assert "below 0: A better" in text["fig9_paired_ecdf"] and "lower is better" in text["fig12_validation_curves"]
    assert "chance, 0.8" in text["fig1_adaptation_steps"]
    higher = figures.captions(ACCURACY)
    assert "above 0: A better" in higher["fig9_paired_ecdf"] and "highest validation" in higher["fig4_lr_heatmaps"]


def test_a_lower_is_better_metric_other_than_mse_frames_its_lowest_cell_light():
    """An error rate (lower is better, chance 0.8): linear axes, the chance line, the heatmap's
    lowest cell framed and light, and still no blow-up figure."""
    metric = Metric("error_rate", "error rate", higher_is_better=False, chance=0.8, fn=lambda p, t: p)
    records = [classification_record("maml", seed, lr_base, lr_meta, metric) for lr_base in LR_BASE
               for lr_meta in LR_META for seed in (0, 1)]
    analysis = analysis_of(records)
    fig = figures.make_figure("fig4_lr_heatmaps", analysis, plt)
    try:
        ax = next(ax for ax in fig.axes if ax.get_title())
        values, chosen = _heatmap_cells(ax)
        assert chosen == [min(values, key=values.get)] == [(0.1, 0.001)]
        image = ax.get_images()[0]
        grid = image.get_array()
        light = [np.dot(image.cmap(image.norm(v))[:3], (0.299, 0.587, 0.114)) for v in (grid.min(), grid.max())]
        assert light[0] > light[1]
    finally:
        plt.close(fig)
    fig = figures.make_figure("fig12_validation_curves", analysis, plt)
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "linear" and chance_lines(ax)[0].get_ydata()[0] == pytest.approx(0.8)
    finally:
        plt.close(fig)
    with pytest.raises(figures.Skip, match="error rate"):
        figures.make_figure("fig7_blowup_rate", analysis, plt)


def test_the_plot_helpers_default_to_the_sine_look():
    """The ax-level defaults stay MSE's (the sine figures are unchanged)."""
    assert plots.heatmap_cmap() == plots.HEATMAP_CMAP and plots.heatmap_cmap(True) == plots.HEATMAP_CMAP_HIGHER
    fig, ax = plt.subplots()
    try:
        assert plots.mark_chance(ax, None) is None and not ax.get_lines()
    finally:
        plt.close(fig)
