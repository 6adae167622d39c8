"""The variance components of a seed x task design (`statistics.variance_components`): recovered
from data simulated with known components, exact on a hand-computable case, consistent with the
two-way bootstrap's interval, and the planning rule (`seeds_needed`) inverting `halfwidth`."""
import numpy as np
import pandas as pd
import pytest

from benchmarks import statistics


def simulate(n_seeds, n_tasks, sd_seed, sd_task, sd_inter, mean=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return (mean + sd_seed * rng.standard_normal((n_seeds, 1)) + sd_task * rng.standard_normal((1, n_tasks))
            + sd_inter * rng.standard_normal((n_seeds, n_tasks)))


def test_recovers_known_components():
    parts = statistics.variance_components(simulate(200, 2000, 0.3, 0.5, 0.2))
    assert parts.seed == pytest.approx(0.09, rel=0.25)
    assert parts.task == pytest.approx(0.25, rel=0.1)
    assert parts.interaction == pytest.approx(0.04, rel=0.02)
    assert (parts.n_seeds, parts.n_tasks) == (200, 2000)


def test_exact_on_an_additive_table():
    # x = a_s + b_t exactly: no interaction; seed and task variances are the sample variances
    a, b = np.array([0.0, 2.0, 4.0]), np.array([1.0, -1.0, 0.0, 3.0])
    parts = statistics.variance_components(a[:, None] + b[None, :])
    assert parts.interaction == pytest.approx(0.0, abs=1e-12)
    assert parts.seed == pytest.approx(np.var(a, ddof=1))
    assert parts.task == pytest.approx(np.var(b, ddof=1))
    assert parts.mean == pytest.approx(a.mean() + b.mean())


def test_negative_estimates_are_clipped():
    x = simulate(5, 50, 0.0, 0.0, 1.0, seed=3)  # no seed or task term: estimates scatter around 0
    parts = statistics.variance_components(x)
    assert parts.seed >= 0 and parts.task >= 0


def test_undefined_designs_give_none():
    assert statistics.variance_components(np.ones((1, 10))) is None
    assert statistics.variance_components(np.ones((4, 1))) is None
    x = simulate(4, 10, 0.1, 0.1, 0.1)
    x[2, 3] = np.inf
    assert statistics.variance_components(x) is None


def test_halfwidth_matches_the_bootstrap_to_first_order():
    x = simulate(10, 600, 0.05, 0.4, 0.1, seed=5)
    parts = statistics.variance_components(x)
    estimate = statistics.summarize(x, np.inf)["mean"]
    bootstrap_half = (estimate.high - estimate.low) / 2
    assert parts.halfwidth(10, 600) == pytest.approx(bootstrap_half, rel=0.3)


def test_seeds_needed_inverts_the_halfwidth():
    parts = statistics.variance_components(simulate(10, 600, 0.2, 0.3, 0.1, seed=7))
    target = parts.halfwidth(10, 600)
    needed = parts.seeds_needed(target, 600)
    assert needed <= 10 and parts.halfwidth(int(needed), 600) <= target * (1 + 1e-12)
    assert needed == 1 or parts.halfwidth(int(needed) - 1, 600) > target
    # a target narrower than the task term alone: no number of seeds reaches it
    assert parts.seeds_needed(0.5 * 1.96 * np.sqrt(parts.task / 600), 600) == np.inf


def test_report_writes_the_variance_table_from_the_store(tmp_path, monkeypatch):
    """Through the report: variance.csv recomputes from the per-task store exactly, table (a4) shows it,
    and the LaTeX/HTML renderings carry it."""
    from test_report import make_record, write_records

    from benchmarks import report
    from benchmarks.artifacts import load_task_errors
    from benchmarks.records import load_records

    monkeypatch.setattr(report, "render_figures", lambda a: ({}, {name: "stub" for name in report.FIGURES}))
    records = [make_record("maml", "func", seed, k_shot=10, val=0.3, test=0.3 + 0.05 * seed, eval_ks=(10,))
               for seed in (0, 1, 2)]
    out = write_records(tmp_path, records)
    report.write_report(out)
    frame = pd.read_csv(out / "variance.csv")
    assert set(frame["eval_steps"]) == {1, 5, 10} and (frame["n_seeds"] == 3).all()
    stored = load_task_errors(out, load_records(out))
    values = np.stack([stored[r["cell_id"]].errors[("test", 10)] for r in sorted(records, key=lambda r: r["cell"]["seed"])])
    row = frame[frame["eval_steps"] == 1].iloc[0]
    parts = statistics.variance_components(values[:, 1])
    assert row["var_seed"] == pytest.approx(parts.seed, rel=1e-12, abs=1e-15)
    assert row["var_task"] == pytest.approx(parts.task, rel=1e-12, abs=1e-15)
    assert row["halfwidth"] == pytest.approx(parts.halfwidth(3, values.shape[2]), rel=1e-12)
    text = (out / "tables.md").read_text()
    assert "(a4) Variance components" in text and "seeds for ±10%" in text
    assert (out / "latex" / "a4_variance.tex").exists()
    assert "a4_variance" in (out / "index.html").read_text() or "Variance components" in (out / "index.html").read_text()
