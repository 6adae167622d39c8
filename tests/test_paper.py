"""The comparison with Finn et al. 2017's Table 2 (report section (d), `benchmarks.paper`)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.analysis import analyse, final_evaluations
from benchmarks.paper import MIN_SINGLE_SETS, PUBLISHED, comparison, comparison_table, note
from benchmarks.report import write_report
from test_report import N_TASKS, make_record, stored, write_records

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


def test_comparison_pools_seeds_at_k5_as_context_and_judges_only_from_enough_single_sets():
    records = _finn_records(0.67, 2.41 * 1.5)
    frame = comparison(final_evaluations(records), analyse(records, stored(records)).task_errors)
    one = frame[frame["eval_steps"] == 1].set_index("algorithm")
    assert one.loc["maml", "mse"] == pytest.approx(0.67 + 0.01, abs=1e-9), "mean of seeds 0.67, 0.68, 0.69"
    assert one.loc["maml", "per_seed"] == "0.67, 0.68, 0.69"
    assert one.loc["maml", "n_seeds"] == 3
    # 3 seeds x 1 test set of 50 tasks: 3 single-set means, too few for a verdict however close or far
    for algorithm in ("maml", "pretrain"):
        assert one.loc[algorithm, "n_single_sets"] == 3 and pd.isna(one.loc[algorithm, "verdict"])
        assert f"a verdict needs {MIN_SINGLE_SETS}" in one.loc[algorithm, "no_verdict_reason"]
    assert math.isnan(one.loc["fomaml", "published"]) and pd.isna(one.loc["fomaml", "verdict"])
    assert pd.isna(one.loc["fomaml", "no_verdict_reason"])  # nothing to judge, nothing to explain
    assert sorted(frame["eval_steps"].unique()) == [1, 5, 10]


def test_only_finn_setup_at_eval_k5_enters():
    other = [make_record("maml", seed=0, test=0.1, **{**FINN, "inner_steps": 5}),
             make_record("maml", seed=0, test=0.1, **{**FINN, "iterations": 2000}),
             make_record("maml", seed=0, test=0.1, **{**FINN, "k_shot": 20}, eval_ks=(20,))]
    assert comparison(final_evaluations(other)).empty
    frame = comparison(final_evaluations(other + _finn_records(0.67, 2.41)))
    assert set(frame["inner_steps"]) == {1} and set(frame["k_shot"]) == {10} and set(frame["iterations"]) == {70_000}


def test_pretraining_enters_at_the_test_time_step_validation_chose_and_maml_only_at_finns():
    """Finn et al. tuned the pretrained baseline's step size: pre-training's LR_base (a test-time key)
    is chosen on validation, whatever its value; MAML's LR_base is training setup, so 0.01 only."""
    pretrain = [make_record("pretrain", seed=seed, val=val, test=test, **{**FINN, "lr_base": lr})
                for lr, val, test in ((0.003, 2.0, 1.0), (0.01, 1.5, 1.2), (0.1, 1.1, 1.9), (0.3, 1.3, 0.5))
                for seed in (0, 1, 2)]
    maml = [make_record("maml", seed=seed, val=val, **{**FINN, "lr_base": lr})
            for lr, val in ((0.01, 1.0), (0.03, 0.5)) for seed in (0, 1, 2)]
    frame = comparison(final_evaluations(pretrain + maml))
    chosen = frame.groupby("algorithm")["lr_base"].unique()
    assert list(chosen["pretrain"]) == [0.1], "lowest validation MSE, not lowest test MSE (0.3) nor Finn's 0.01"
    # chosen at the compared K = 5, not at the trained K = 10: a step right for 10 points can diverge on 5
    at_k5 = [r | {"evaluations": [e | {"mse": e["mse"] * (3.0 if e["split"] == "validation" and e["eval_k_shot"] == 5
                                                          and r["cell"]["lr_base"] == 0.1 else 1.0)}
                                  for e in r["evaluations"]]} for r in pretrain]
    assert list(comparison(final_evaluations(at_k5))["lr_base"].unique()) == [0.3]
    assert "pretrain: its test-time LR_base = 0.1, chosen on validation at K = 5" in note(frame)
    assert list(chosen["maml"]) == [0.01], "MAML's LR_base is its training setup: not chosen"
    without_validation = [r | {"evaluations": [e for e in r["evaluations"] if e["split"] == "test"]} for r in pretrain]
    fallback = comparison(final_evaluations(without_validation))
    assert set(fallback["lr_base"]) == {0.01}, "nothing to choose by: the published setup's value"


def test_report_writes_section_d_only_for_the_paper_setup(tmp_path):
    paper = write_records(tmp_path / "paper", _finn_records(0.67, 2.41))
    write_report(paper)
    text = (paper / "tables.md").read_text()
    assert "## (d) Finn et al. 2017, Table 2" in text and "| 0.67 |" in text, text
    assert f"3 single-set means, a verdict needs {MIN_SINGLE_SETS}" in text
    assert (paper / "paper_comparison.csv").exists()
    other = write_records(tmp_path / "other", [make_record("maml", seed=0, inner_steps=5)])
    write_report(other)
    assert "## (d)" not in (other / "tables.md").read_text()
    assert not (other / "paper_comparison.csv").exists()


def _section_d(text: str) -> list[dict]:
    block = text.split("## (d)")[1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in block[2:]]


def test_section_d_gains_blowup_rates_and_keeps_robust_statistics_in_the_csv(tmp_path):
    records = _finn_records(0.67, 2.41)
    for record in records:
        if record["cell"]["algorithm"] == "maml":  # one task blows up from step 5 in every seed
            record.update(make_record("maml", seed=record["cell"]["seed"], test=0.67 / 1.5, blowups=(5, 1), **FINN))
    out = write_records(tmp_path, records)
    write_report(out)
    rows = {(r["algorithm"], r["steps"]): r for r in _section_d((out / "tables.md").read_text())}
    one, ten = rows[("maml", "1")], rows[("maml", "10")]
    assert one["blow-up"] == "0" and ten["blow-up"].startswith(f"{100 / N_TASKS:.2g}% [")
    assert float(ten["pooled mean ± CI (per seed)"].split()[0]) > 1e4  # the pooled mean is the blow-up's ...
    assert float(ten["median"]) > 1e4 and ten["single-set means"] == "3 (3 × 1 of 50)"  # ... and each set's
    frame = pd.read_csv(out / "paper_comparison.csv")
    assert {"median", "median_low", "median_high", "iqm", "iqm_low", "iqm_high", "blowup"} <= set(frame.columns)
    assert "deciding nothing" in (out / "tables.md").read_text()


def test_section_d_without_per_task_errors_and_with_a_nan_seed():
    records = [make_record(a, seed=s, test=0.5, store=False, **FINN) for a in ("maml", "pretrain") for s in (0, 1, 2)]
    for row in records[2]["evaluations"]:  # maml seed 2 turns NaN after 5 steps
        if row["split"] == "test" and row["eval_steps"] >= 5:
            row["mse"] = math.nan
    table = comparison_table(comparison(final_evaluations(records), analyse(records).task_errors))
    five = table[(table["algorithm"] == "maml") & (table["steps"] == 5)].iloc[0]
    assert five["pooled mean ± CI (per seed)"].startswith("nan [2/3 seeds finite:")
    assert five["pooled mean ± CI (per seed)"].endswith("nan)")  # the seed's own value stays visible
    assert five["single-set means"] == five["median"] == five["range"] == five["blow-up"] == "–"
    assert five["verdict"] == "– (no per-task store)"


def test_paired_comparison_exists_for_the_paper_setup():
    records = _finn_records(0.67, 2.41)
    analysis = analyse(records, stored(records))
    at_k5 = analysis.paired[(analysis.paired["eval_k_shot"] == 5) & (analysis.paired["k_shot"] == 10)]
    assert {("fomaml", "maml"), ("pretrain", "maml"), ("maml", "pretrain"), ("fomaml", "pretrain")} <= set(
        zip(at_k5["algorithm"], at_k5["reference"]))
    maml = at_k5[(at_k5["algorithm"] == "maml") & (at_k5["reference"] == "pretrain")]
    assert (maml["p_improvement"] == 1.0).all() and (maml["median_difference_high"] < 0).all()
