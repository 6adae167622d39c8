"""Figures to publication standard: every check reads the drawn data back from the matplotlib
objects (lines, patches, axis limits), on small constructed analyses (records from
tests/test_report.py's builders, numbers chosen so the right picture is known)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_report import full_sweep, make_record, stored, write_records  # noqa: E402

from benchmarks import figures, plots  # noqa: E402
from benchmarks.analysis import analyse  # noqa: E402

ALGORITHMS = ("maml", "msl", "metasgd", "pretrain")
#: test MSE after one step: Meta-SGD a little better than MAML (the headline), pre-training far worse
LEVELS = {"maml": 1.0, "msl": 1.0, "metasgd": 0.95, "pretrain": 2.0}


def headline_records(eval_ks=(5, 10)) -> list[dict]:
    """MAML = MSL (identical curves), Meta-SGD slightly better after one step but with 24 of 50
    tasks blown up (1e6) from step 5 on, so its 10-step median difference has one enormous
    interval; pre-training far worse."""
    return [make_record(name, "func", seed, val=LEVELS[name], test=LEVELS[name], eval_ks=eval_ks,
                        blowups=(5, 24) if name == "metasgd" else None)
            for name in ALGORITHMS for seed in (0, 1)]


@pytest.fixture(scope="module")
def headline():
    records = headline_records()
    return analyse(records, stored(records))


def draw(name, analysis):
    return figures.make_figure(name, analysis, plt)


def _curves(ax):
    """The data lines of a panel: labelled, in data coordinates, not overflow arrows."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")
            and line.get_gid() != "overflow" and line.get_transform() == ax.transData]


def _style(line):
    return (matplotlib.colors.to_hex(line.get_color()), line.get_marker(), str(line.get_linestyle()),
            line.get_markerfacecolor() == "none")


def _extent(ax, lines, axis):
    """Per line: (low, high) of its finite data on `axis`, in the axis' own scale (log, symlog); a
    reference line (axvline: x in data, y in axes coordinates) counts on its data axis."""
    transform = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
    out = []
    for line in lines:
        if not line.get_transform().contains_branch_seperately(ax.transData)[0 if axis == "x" else 1]:
            continue
        data = np.asarray(line.get_xdata() if axis == "x" else line.get_ydata(), dtype=float)
        data = data[np.isfinite(data)]
        if data.size:
            values = np.asarray(transform.transform(data), dtype=float).ravel()
            values = values[np.isfinite(values)]
            if values.size:
                out.append((values.min(), values.max()))
    return out


def assert_no_axis_set_by_one_interval(fig, factor=10.0):
    """No panel's range is more than `factor` x the range of everything drawn on it but its widest
    lines (the widest tenth, at least one; interval segments are lines too), in the axis' scale."""
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_gid() != "overflow"]
        for axis in ("x", "y"):
            extents = sorted(_extent(ax, lines, axis), key=lambda e: e[1] - e[0])
            if len(extents) < 3:
                continue
            rest = extents[:-max(1, int(np.ceil(0.1 * len(extents))))]
            others = max(e[1] for e in rest) - min(e[0] for e in rest)
            transform = (ax.xaxis if axis == "x" else ax.yaxis).get_transform()
            view = np.asarray(transform.transform(np.asarray(ax.get_xlim() if axis == "x" else ax.get_ylim())),
                              dtype=float)
            span = abs(view[1] - view[0])
            if others == 0:  # everything else is one value (e.g. a blow-up rate of 0): nothing to flatten
                continue
            assert span <= factor * others, (ax.get_title(), axis, span, others)


@pytest.mark.parametrize("name", ["fig1_adaptation_steps", "fig7_blowup_rate", "fig8_paired_comparison",
                                  "fig9_paired_ecdf", "fig12_validation_curves"])
def test_every_curve_is_distinguishable_and_no_interval_sets_an_axis(headline, name):
    fig = draw(name, headline)
    try:
        for ax in fig.axes:
            styles = [_style(line) for line in _curves(ax)]
            assert len(styles) == len(set(styles)), (name, ax.get_title(), styles)
        assert_no_axis_set_by_one_interval(fig)
    finally:
        plt.close(fig)


def test_one_colour_per_algorithm_from_a_colour_blind_safe_palette():
    colours = [plots.algorithm_style(name)["color"] for name in plots.ALGORITHM_ORDER]
    assert len(set(colours)) == len(colours)
    assert set(colours) <= set(plots.COLORS[:8])  # Okabe-Ito
    assert plots.algorithm_style("maml")["color"] == "#0072B2"


def test_the_headline_difference_is_off_the_zero_line(headline):
    """Meta-SGD's small one-step gain over MAML must not sit on the zero line because some other
    interval (Meta-SGD's own at 10 steps) is enormous."""
    fig = draw("fig8_paired_comparison", headline)
    try:
        panel = next(ax for ax in fig.axes if ax.get_title().startswith("1 step") and "maml" in ax.get_xlabel())
        row = [t.get_text() for t in panel.get_yticklabels()].index("metasgd")
        point = next(line for line in panel.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1
                     and line.get_ydata()[0] == pytest.approx(row))
        x = float(point.get_xdata()[0])
        assert x < 0
        to_axes = panel.transAxes.inverted().transform
        at, zero = (to_axes(panel.transData.transform((v, row)))[0] for v in (x, 0.0))
        assert zero - at > 0.05, (x, at, zero)  # at least 5% of the panel's width apart
        ten = next(ax for ax in fig.axes if ax.get_title().startswith("10 steps") and "maml" in ax.get_xlabel())
        assert [line for line in ten.get_lines() if line.get_gid() == "overflow"]  # the huge end: an arrow
        assert any(p.get_gid() == "symlog-switch" for p in panel.patches)  # the switch point is drawn
    finally:
        plt.close(fig)


def test_adaptation_figure_is_robust_first_on_a_log_axis(headline):
    fig = draw("fig1_adaptation_steps", headline)
    try:
        iqm = [ax for ax in fig.axes if "IQM" in ax.get_title()]
        means = [ax for ax in fig.axes if "mean" in ax.get_title()]
        assert iqm and means and all(ax.get_yscale() == "log" for ax in iqm + means)
        assert all("SGD" not in ax.get_xlabel() for ax in fig.axes)
        for ax in means:  # Meta-SGD's mean stops before its first blown-up step
            line = next(line for line in _curves(ax) if line.get_label() == "metasgd")
            assert max(line.get_xdata()) < 5
        for ax in iqm:  # an interval at every step, not only at 1, 5, 10
            assert len(ax.collections) >= len(_curves(ax))
        assert "blew up" in figures.caption("fig1_adaptation_steps", fig)
    finally:
        plt.close(fig)


def test_blowup_axis_marks_its_switch_point(headline):
    fig = draw("fig7_blowup_rate", headline)
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "symlog"
        assert any(p.get_gid() == "symlog-switch" for p in ax.patches) and "linear below 0.1" in ax.get_ylabel()
    finally:
        plt.close(fig)


def _with_partial_cell(records):
    """full_sweep with one LR pair of MAML at S = 1 that lost one of its two seeds on both backends
    (so that whichever validation prefers lost a seed)."""
    out = []
    for record in records:
        cell = record["cell"]
        if (cell["algorithm"], cell["inner_steps"], cell["lr_base"], cell["lr_meta"], cell["seed"]) == (
                "maml", 1, 0.05, 0.01, 1):
            record = make_record("maml", cell["backend"], 1, lr_base=0.05, lr_meta=0.01, status="diverged",
                                 error="non-finite loss")
        out.append(record)
    return out


def test_heatmap_shows_validation_error_marks_the_choice_and_hatches_lost_seeds():
    records = _with_partial_cell(full_sweep())
    analysis = analyse(records, stored(records))
    fig = draw("fig4_lr_heatmaps", analysis)
    try:
        panels = [ax for ax in fig.axes if ax.get_title()]
        labels = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]  # the colour bar
        assert any("validation" in label for label in labels) and "Validation" in fig.get_suptitle()
        chosen = [ax for ax in panels if any(p.get_gid() == "chosen" for p in ax.patches)]
        best = analysis.figure_best
        assert len(chosen) == len(best)  # one framed cell per algorithm's chosen configuration
        maml = best[best["algorithm"] == "maml"].iloc[0]
        assert chosen[0].get_title().startswith(f"maml, S={maml['inner_steps']}")
        partial = [ax for ax in panels if any(p.get_gid() == "partial" for p in ax.patches)]
        assert [ax.get_title().split(" (")[0] for ax in partial] == ["maml, S=1"]
        texts = {t.get_text() for t in partial[0].texts}
        assert "1/2 seeds" in texts
        scores = analysis.scores
        row = scores[(scores["algorithm"] == "maml") & (scores["backend"] == "func") & (scores["inner_steps"] == 1)
                     & (scores["lr_base"] == 0.01) & (scores["lr_meta"] == 0.001)].iloc[0]
        assert f"{row['val_mse']:.2g}" in texts or f"{row['val_mse']:.2g}" in {
            t.get_text() for ax in panels for t in ax.texts}
        assert f"{row['test_mse']:.2g}" != f"{row['val_mse']:.2g}"  # so that the check above tells them apart
    finally:
        plt.close(fig)


def test_speed_is_points_and_speedups_not_bars_on_a_log_axis():
    suite = pd.DataFrame([{"kind": "meta_iteration", "algorithm": a, "backend": b, "inner_steps": s, "meta_batch": 25,
                           "members": 1, "mode": None, "ms_median": ms * s, "ms_iqr": 0.1 * ms}
                          for a, b, ms in (("maml", "l2l", 8.94), ("maml", "func", 0.73), ("maml", "jax", 0.9),
                                           ("pretrain", "torch", 0.6)) for s in (1, 5)])
    analysis = analyse(full_sweep(), speed_suite=suite)
    fig = draw("fig5a_speed_by_backend", analysis)
    try:
        times, ratios = fig.axes[:2]
        assert not [p for p in times.patches if isinstance(p, matplotlib.patches.Rectangle)]  # no bars
        assert times.get_xscale() == "log" and "hatch" not in times.get_xlabel()
        points = {t.get_text(): line.get_xdata()[0] for t, line in zip(
            ratios.get_yticklabels(), [line for line in ratios.get_lines() if line.get_marker() != "None"
                                       and len(line.get_xdata()) == 1])}
        assert points["maml vs learn2learn"] == pytest.approx(8.94 / 0.73)
        assert points["maml vs JAX"] == pytest.approx(0.9 / 0.73)
    finally:
        plt.close(fig)
    fig = draw("fig5b_speed_vs_inner_steps", analysis)
    try:
        assert len(fig.axes) == 2 and all(len(_curves(ax)) == 1 for ax in fig.axes)  # one line each, not 29
    finally:
        plt.close(fig)


def test_new_figures_draw_where_the_data_exist_and_skip_with_a_reason():
    analysis = analyse(full_sweep(), stored(full_sweep()))
    for name, reason in (("fig11_error_vs_k", "≥2 values of K"), ("fig13_reproduction", "Finn")):
        with pytest.raises(figures.Skip, match=reason):
            draw(name, analysis)
    fig = draw("fig10_stability_map", analysis)  # blow-up rate over LR_base x steps: 2 LR_base values
    plt.close(fig)
    records = [make_record(name, "func", seed, k_shot=k, eval_ks=(k,), val=LEVELS[name] * 10 / k,
                           test=LEVELS[name] * 10 / k) for name in ("maml", "pretrain") for k in (5, 10, 20)
               for seed in (0, 1)]
    fig = draw("fig11_error_vs_k", analyse(records, stored(records)))
    try:
        ax = fig.axes[0]
        line = next(line for line in _curves(ax) if line.get_label() == "maml")
        assert list(line.get_xdata()) == [5, 10, 20] and list(np.diff(line.get_ydata()) < 0) == [True, True]
    finally:
        plt.close(fig)


def test_reproduction_figure_puts_the_published_numbers_beside_ours():
    from benchmarks import paper

    records = [make_record(name, "func", seed, iterations=70_000, val=LEVELS[name], test=LEVELS[name])
               for name in ("maml", "pretrain") for seed in (0, 1)]
    fig = draw("fig13_reproduction", analyse(records, stored(records)))
    try:
        ax = fig.axes[0]
        published = [line for line in ax.get_lines() if line.get_marker() == "D"]
        values = sorted(v for line in published for v in line.get_ydata())
        assert values == sorted(paper.PUBLISHED["published"])
        assert ax.get_yscale() == "log"
    finally:
        plt.close(fig)


def test_every_figure_is_written_as_png_svg_pdf_with_a_caption(tmp_path, monkeypatch):
    from benchmarks.report import write_report

    makers = {name: figures.FIGURE_MAKERS[name] for name in ("fig7_blowup_rate", "fig13_reproduction")}
    monkeypatch.setattr(figures, "FIGURE_MAKERS", makers)  # one that draws, one that skips: fast
    out = write_records(tmp_path, headline_records(eval_ks=(10,)))
    report = write_report(out)
    written = {p.name for p in (out / "figures").iterdir()}
    assert set(report.skipped) == {"fig13_reproduction"}
    name = "fig7_blowup_rate"
    assert {f"{name}.png", f"{name}.svg", f"{name}.pdf", f"{name}.caption.txt"} == written
    assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    text = (out / "figures" / f"{name}.caption.txt").read_text()
    assert text.startswith(figures.FIGURES[name]) and "Configurations (chosen by validation)" in text
    for question in figures.FIGURES.values():  # the first sentence is the question the figure answers
        first = question.split("?")[0]
        assert "?" in question and first.count(". ") == first.count("et al. "), question
