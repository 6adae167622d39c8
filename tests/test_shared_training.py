"""Test-time hyperparameters share one training (`MetaLearner.test_time_keys`, `job.shared_training`).

Pre-training's LR_base is only its fine-tuning rate at test time, so a sweep that tunes it on
validation (issue 23: Finn et al. tuned pre-training's test-time step size) trains each seed once
and evaluates each rate. The declaration is a promise: training must be bitwise the same at any
value (tested here per backend), and the shared job's numbers bitwise those of separate runs.
A learner whose training reads the key (MAML) never shares; a declaration nothing can honour is
refused.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from algorithms import get_learner_class
from algorithms.base import MetaLearner
from benchmarks.config import parse_sweep
from benchmarks.job import run_job, shared_training
from benchmarks.sweep import group_jobs

RATES = [0.01, 0.3]


def _sweep(**values):
    return parse_sweep({"algorithm": "pretrain", "backend": "func", "iterations": 6, "seed": 0, "meta_batch": 4,
                        "n_test_tasks": 8, "n_validation_tasks": 8, "eval_steps": 3, "log_every": 2,
                        "eval_every": 3, "eval_k_shot": [5], "compile": False, **values})


def _numbers(record) -> str:
    """What a record says a training produced: its curve, every evaluation and the stored weights
    and per-task errors (as JSON: a NaN equals a NaN there)."""
    artifacts = record["_artifacts"]
    return json.dumps([record["status"], record["curve"], record["evaluations"], [p.tolist() for p in artifacts.params],
                       artifacts.lrs, {str(k): v.tolist() for k, v in artifacts.errors.items()}], sort_keys=True)


def _alone(cell, settings):
    [record] = run_job([cell], settings, threads=1)
    return record


@pytest.mark.parametrize("backend", ["func", "torch"])
def test_pretraining_is_bitwise_the_same_at_any_lr_base(backend, one_thread):
    sweep = _sweep(backend=backend, lr_base=RATES)
    low, high = (_alone(cell, sweep.settings) for cell in sweep.cells)
    assert low["status"] == high["status"] == "ok"
    assert low["curve"] == high["curve"]
    for a, b in zip(low["_artifacts"].params, high["_artifacts"].params):
        assert np.array_equal(a, b)
    assert low["evaluations"] != high["evaluations"]  # the rate does reach the evaluation


@pytest.mark.parametrize("backend", ["func", "torch"])
def test_a_job_of_rates_trains_once_per_seed_with_the_numbers_of_separate_runs(backend, one_thread):
    sweep = _sweep(backend=backend, lr_base=RATES, seed=[0, 1] if backend == "func" else 0)
    jobs = group_jobs(sweep.cells, sweep.settings)
    assert len(jobs) == 1 and len(jobs[0]) == len(sweep.cells)  # the rates (and func's seeds) in one job
    shared = run_job(jobs[0], sweep.settings, threads=1)
    trained = len({c.seed for c in sweep.cells})
    assert {r["ensemble_size"] for r in shared} == {trained}
    for cell, record in zip(jobs[0], shared):
        assert record["cell_id"] == cell.cell_id
        assert _numbers(record) == _numbers(_alone(cell, sweep.settings))
        assert record["_artifacts"].lrs[0] == cell.lr_base  # stored with the cell's own rate: re-evaluable
    sharing = [r for r in shared if "shares_training_with" in r]
    assert len(sharing) == len(shared) - trained
    for record in sharing:
        first = next(r for r in shared if r["cell_id"] == record["shares_training_with"])
        assert first["cell"]["seed"] == record["cell"]["seed"] and first["cell"]["lr_base"] != record["cell"]["lr_base"]


def test_maml_reads_lr_base_so_its_rates_never_share(one_thread):
    sweep = _sweep(algorithm="maml", lr_base=RATES)
    cells, member = shared_training(sweep.cells, get_learner_class("maml", "func").test_time_keys)
    assert cells == sweep.cells and member == [0, 1]
    records = run_job(group_jobs(sweep.cells, sweep.settings)[0], sweep.settings, threads=1)
    assert [r["ensemble_size"] for r in records] == [2, 2]
    assert not any("shares_training_with" in r for r in records)
    assert records[0]["curve"] != records[1]["curve"]
    torch_sweep = _sweep(algorithm="maml", backend="torch", lr_base=RATES)
    assert len(group_jobs(torch_sweep.cells, torch_sweep.settings)) == 2  # a loop backend: one job per cell


def test_a_declaration_nothing_applies_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"test_time_keys declares \['lr_meta'\]: only lr_base"):
        type("Meta", (MetaLearner,), {"test_time_keys": ("lr_meta",)})


def test_learned_rates_cannot_be_declared_test_time(one_thread):
    metasgd = get_learner_class("metasgd", "func")
    declared = type("TestTimeMetaSGD", (metasgd,), {"test_time_keys": ("lr_base",)})
    sweep = _sweep(algorithm="metasgd", iterations=2)
    [cell] = sweep.cells
    learner = declared(cell.hyperparams(), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="learned rates"):
        learner.adaptation_for(0, cell.hyperparams())
