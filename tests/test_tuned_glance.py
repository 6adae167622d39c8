"""The tuning's block (`readme.tuned_glance`) on a constructed tuning.csv: the equal planned budget
(bracketing's added candidates apart, also when one of them survives to a later rung), the
bracketed column from `at_edge`, and the reference's cell at the same S beside the tuned one."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import readme

GROUP = {"task": "sine", "backend": "func", "k_shot": 10, "network": "relu-40-40", "meta_batch": 25}


def _row(algorithm, rung, iterations, lr_base, extension=0, chosen=False, at_edge="", inner_steps=1):
    return {**GROUP, "algorithm": algorithm, "inner_steps": inner_steps, "lr_base": lr_base, "lr_meta": 0.001,
            "rung": rung, "iterations": iterations, "seeds": 3, "val_mse": 0.5, "extension": extension,
            "survived": chosen, "chosen": chosen, "at_edge": at_edge}


def _robust(algorithm, mean, inner_steps=1, seeds=3):
    return {**GROUP, "algorithm": algorithm, "inner_steps": inner_steps, "lr_base": 0.01, "lr_meta": 0.001,
            "iterations": 90, "eval_k_shot": 10, "eval_steps": 1, "n_seeds": seeds, "n_tasks": 600, "mean": mean,
            "mean_low": mean - 0.1, "mean_high": mean + 0.1}


@pytest.fixture
def results(tmp_path):
    rows = [_row("maml", 0, 10, lr) for lr in (0.003, 0.01, 0.03)]
    rows += [_row("maml", 0, 10, 0.09, extension=1), _row("maml", 1, 90, 0.09, extension=1, chosen=True,
                                                         at_edge="lr_base=high")]
    rows += [_row("reptile", 0, 10, lr, inner_steps=5) for lr in (0.003, 0.01, 0.03)]
    rows += [_row("reptile", 1, 90, 0.01, chosen=True, inner_steps=5)]
    (tmp_path / "tuned").mkdir()
    (tmp_path / "reference").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "tuned" / "tuning.csv", index=False)
    pd.DataFrame([_robust("maml", 0.3), _robust("reptile", 0.35, inner_steps=5)]).to_csv(
        tmp_path / "tuned" / "robust.csv", index=False)
    pd.DataFrame([_robust("maml", 0.34, seeds=10), _robust("reptile", 0.9, seeds=10),
                  _robust("reptile", 0.4, inner_steps=5, seeds=10)]).to_csv(tmp_path / "reference" / "robust.csv",
                                                                           index=False)
    readme._csv.cache_clear()
    yield tmp_path
    readme._csv.cache_clear()


def test_the_block_states_budget_bracketing_and_the_reference(results):
    text = readme.tuned_glance(results)
    assert "360 iterations of planned tuning per algorithm (the same for every one)" in text  # 3 x 3 x 10 + 3 x 90
    maml = next(line for line in text.splitlines() if line.startswith("| maml |"))
    reptile = next(line for line in text.splitlines() if line.startswith("| reptile |"))
    assert "| 0.09 |" in maml and "no: lr_base=high" in maml and "4 (1 added, 30 it.)" in maml
    assert "0.3 [0.2, 0.4]" in maml and "0.34 [0.24, 0.44]" in maml
    assert "| 5 |" in reptile and "| yes |" in reptile and "0.4 [0.3, 0.5]" in reptile  # the reference's S = 5
    # tuned maml 0.3 < reptile 0.35; reference maml 0.34 < reptile (S = 5) 0.4: the same order, -12% and -12.5%
    assert "tuned: maml < reptile; at Finn's rates: maml < reptile (the same order)" in text
    assert "Tuned minus reference: -13% to -12% of the reference's mean." in text


def test_a_changed_ranking_and_a_reference_at_another_lr_base_are_said(results):
    frame = pd.read_csv(results / "reference" / "robust.csv")
    frame.loc[frame["algorithm"] == "maml", ["mean", "mean_low", "mean_high", "lr_base"]] = [0.5, 0.4, 0.6, 0.03]
    frame.to_csv(results / "reference" / "robust.csv", index=False)
    readme._csv.cache_clear()
    text = readme.tuned_glance(results)
    assert "at Finn's rates: reptile < maml (a different order)" in text
    assert "0.5 [0.4, 0.6] (LR_base 0.03)" in text


def test_an_unequal_budget_is_said(results):
    frame = pd.read_csv(results / "tuned" / "tuning.csv")
    frame.loc[frame["algorithm"] == "reptile", "iterations"] *= 2
    frame.to_csv(results / "tuned" / "tuning.csv", index=False)
    readme._csv.cache_clear()
    assert "unequal: 360; 720 iterations" in readme.tuned_glance(results)
