"""The comparison with Finn et al. 2017's Table 2 (report section (d), `benchmarks.paper`)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.paper import PUBLISHED, REL_TOL, comparison
from benchmarks.report import final_evaluations, write_report
from test_report import make_record, write_records

FINN = dict(backend="func", k_shot=10, inner_steps=1, lr_base=0.01, lr_meta=0.001, meta_batch=25, iterations=70_000)


def _finn_records(maml_mse_at_k5: float, pretrain_mse_at_k5: float, seeds=(0, 1, 2)) -> list[dict]:
    """`make_record` puts 1.5 x `test` at the other K after one step (+0.01 per seed)."""
    return [make_record(algorithm, seed=seed, test=mse / 1.5, **FINN)
            for algorithm, mse in (("maml", maml_mse_at_k5), ("pretrain", pretrain_mse_at_k5), ("fomaml", 0.7))
            for seed in seeds]


def test_published_numbers_are_finn_table_2():
    table = PUBLISHED.set_index(["algorithm", "eval_steps"])["published"].to_dict()
    assert table == {("maml", 1): 0.67, ("maml", 5): 0.38, ("maml", 10): 0.35,
                     ("pretrain", 1): 2.41, ("pretrain", 5): 2.23, ("pretrain", 10): 2.19}


def test_comparison_pools_seeds_at_k5_and_judges_with_the_stated_tolerance():
    frame = comparison(final_evaluations(_finn_records(0.67, 2.41 * (1 + 2 * REL_TOL))))
    one = frame[frame["eval_steps"] == 1].set_index("algorithm")
    assert one.loc["maml", "mse"] == pytest.approx(0.67 + 0.01, abs=1e-9), "mean of seeds 0.67, 0.68, 0.69"
    assert one.loc["maml", "per_seed"] == "0.67, 0.68, 0.69"
    assert one.loc["maml", "n_seeds"] == 3
    assert one.loc["maml", "reproduced"] == True  # noqa: E712 (1.5% off)
    assert one.loc["pretrain", "reproduced"] == False, one.loc["pretrain", "relative_difference"]  # noqa: E712
    assert math.isnan(one.loc["fomaml", "published"]) and pd.isna(one.loc["fomaml", "reproduced"])
    assert sorted(frame["eval_steps"].unique()) == [1, 5, 10]


def test_only_finn_setup_at_eval_k5_enters():
    other = [make_record("maml", seed=0, test=0.1, **{**FINN, "inner_steps": 5}),
             make_record("maml", seed=0, test=0.1, **{**FINN, "iterations": 2000}),
             make_record("maml", seed=0, test=0.1, **{**FINN, "k_shot": 20}, eval_ks=(20,))]
    assert comparison(final_evaluations(other)).empty
    frame = comparison(final_evaluations(other + _finn_records(0.67, 2.41)))
    assert set(frame["inner_steps"]) == {1} and set(frame["k_shot"]) == {10} and set(frame["iterations"]) == {70_000}


def test_report_writes_section_d_only_for_the_paper_setup(tmp_path):
    paper = write_records(tmp_path / "paper", _finn_records(0.67, 2.41))
    write_report(paper)
    text = (paper / "tables.md").read_text()
    assert "## (d) Finn et al. 2017, Table 2" in text and "0.67 ✓" in text, text
    assert (paper / "paper_comparison.csv").exists()
    other = write_records(tmp_path / "other", [make_record("maml", seed=0, inner_steps=5)])
    write_report(other)
    assert "## (d)" not in (other / "tables.md").read_text()
    assert not (other / "paper_comparison.csv").exists()
