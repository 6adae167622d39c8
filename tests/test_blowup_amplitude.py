"""Blow-up rate against the task's amplitude (`benchmarks.task_parameters`, blowup_amplitude.csv,
fig15): the test tasks redrawn from their fixed streams are the stored ones, and every bin's rate
equals one recomputed independently from `tasks.evaluation_set` and the stored errors."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import statistics
from benchmarks.analysis import analyse
from benchmarks.artifacts import load_task_errors
from benchmarks.cli import main
from benchmarks.records import load_records
from benchmarks.task_parameters import BINS, amplitude_frame
from tasks import SineFamily, evaluation_set

SWEEP = """
algorithm = "maml"
backend = "func"
task = "sine"
k_shot = 5
inner_steps = 1
lr_base = 0.3
lr_meta = 0.001
meta_batch = 5
iterations = 20
seed = [0, 1]
eval_every = 0
log_every = 10
eval_steps = 10
n_test_tasks = 60
n_test_sets = 2
n_validation_tasks = 60  # as many as a test set: the other-tasks test swaps them in at the same count
compile = false
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("amplitude")
    (root / "sweep.toml").write_text(SWEEP)
    out = root / "out"
    assert main(["run", "--config", str(root / "sweep.toml"), "--out", str(out), "--threads", "1"]) == 0
    records = load_records(out)
    return analyse(records, load_task_errors(out, records))


def test_every_bin_matches_an_independent_recomputation(folder):
    frame = folder.by_amplitude
    assert not frame.empty and set(frame["eval_steps"]) == {1, 5, 10}
    config = folder.best.iloc[0]
    values, threshold, _ = folder.task_errors.errors(config, "test", 5)
    amplitude = np.concatenate([evaluation_set(SineFamily(k_shot=5), "test", 60, k_shot=5, n_query=100,
                                               seed_offset=j).params["amplitude"].double().numpy() for j in range(2)])
    edges = np.linspace(amplitude.min(), amplitude.max(), BINS + 1)
    assert np.allclose(sorted(set(frame["amplitude_low"])), edges[:-1])
    assert frame.groupby("eval_steps")["n_tasks"].sum().eq(120).all()  # every task in one bin
    for step in (1, 5, 10):
        blown = statistics.blown_up(values[:, step], threshold)
        rows = frame[frame["eval_steps"] == step].sort_values("amplitude_low")
        for b, (_, row) in enumerate(rows.iterrows()):
            in_bin = (amplitude >= edges[b]) & ((amplitude < edges[b + 1]) if b < BINS - 1 else True)
            assert row["n_tasks"] == in_bin.sum()
            assert row["blowup"] == pytest.approx(blown[:, in_bin].mean(), abs=1e-15)
            assert row["blowup_low"] <= row["blowup"] <= row["blowup_high"]
    assert frame["blowup"].max() > 0  # LR_base 0.3 blows some large-amplitude tasks up: the test can see a bin


def test_other_tasks_than_the_stored_ones_give_no_rows(folder, monkeypatch):
    """Redrawn tasks that are not the stored ones (here: another test stream) are refused, never binned."""
    import benchmarks.job as job

    real = job.evaluation_sets

    def other_tasks(family, settings, eval_ks, device):
        sets = real(family, settings, eval_ks, device)
        return {(split, k): real(family, settings, [k], device)[("validation", k)] * len(batches)
                for (split, k), batches in sets.items()}

    monkeypatch.setattr(job, "evaluation_sets", other_tasks)
    assert amplitude_frame(folder).empty


def test_a_metric_without_scaled_blowups_has_none(folder):
    from dataclasses import replace

    from tasks.problem import accuracy

    assert amplitude_frame(replace(folder, metric=accuracy(2))).empty
