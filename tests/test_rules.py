"""Algorithms as declarations (issue 11): one rule, every backend, the same numbers.

- every (rule algorithm, backend) pair against the generic torch.func engine on the same
  declaration, in float64 at S = 1, 2, 5 and a large LR_base (where differences would grow);
- the accelerated engine equals the generic one (part of the above: `func` is a backend);
- the network is configuration: Tanh networks on every backend that builds them, `func` falling
  back to the generic engine and saying so, and a network changes a cell's identity;
- a plug-in loaded from outside the repository trains (in spawned workers), reports,
  re-evaluates to the same numbers and regresses like a built-in;
- the registry refuses what it cannot register.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from algorithms import ALGORITHMS, RULES, HyperParams, get_algorithm, get_learner_class, register_algorithm
from algorithms.evaluation import adaptation_curve
from algorithms.rules import InnerRule
from benchmarks.config import Cell, ConfigError, parse_sweep
from benchmarks.fingerprint import fingerprint
from benchmarks.records import identity
from tasks import TaskBatch, evaluation_set, get_task

ROOT = Path(__file__).resolve().parents[1]
LSLR_SOURCE = ROOT / "examples" / "plugin_lslr" / "lslr.py"
FAMILY = get_task("sine")
RULE_PAIRS = [(name, backend) for name in RULES for backend in ALGORITHMS[name] if backend != "generic"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def lslr():
    """The example plug-in, imported from its file as a user's `--plugin` would."""
    from benchmarks.plugins import load_plugins

    load_plugins([str(LSLR_SOURCE)])
    return "lslr"


def _float64(batch: TaskBatch) -> TaskBatch:
    return batch.map(lambda t: t.double())


def _meta_gradient(name, backend, hp, batch, network=None):
    learner = get_algorithm(name, backend, hp, torch.Generator().manual_seed(1), network=network).double()
    data = TaskBatch.stack([batch]) if learner.stacked_batches else batch
    loss, grads = learner.meta_gradient(data, iteration=2)
    if learner.stacked_batches:
        loss, grads = loss[0], [g[0] for g in grads]
    return learner, float(loss), grads


def _worst(grads, reference) -> float:
    assert len(grads) == len(reference)
    return max(float((g - r).norm() / r.norm().clamp_min(1e-300)) for g, r in zip(grads, reference))


def _batch(seed=3, n=5):
    return _float64(FAMILY.sample(n, torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("inner_steps", [1, 2, 5])
@pytest.mark.parametrize(("name", "backend"), RULE_PAIRS, ids=[f"{n}-{b}" for n, b in RULE_PAIRS])
def test_every_backend_agrees_with_the_generic_engine(name, backend, inner_steps):
    """Measured: ≤ 7e-14 relative (float64); LR_base 0.3 makes S = 5 losses ~1e7, so the
    comparison is far from benign. MSL at iteration 2 of a 5-iteration anneal: unequal weights."""
    hp = HyperParams(inner_steps=inner_steps, lr_base=0.3, meta_batch=5, iterations=20, msl_anneal_iters=5)
    batch = _batch()
    _, loss_ref, reference = _meta_gradient(name, "generic", hp, batch)
    _, loss, grads = _meta_gradient(name, backend, hp, batch)
    assert abs(loss - loss_ref) <= 1e-12 * abs(loss_ref), (loss, loss_ref)
    assert _worst(grads, reference) < 1e-10, f"{name}/{backend} S={inner_steps}: {_worst(grads, reference):.2e}"


def test_the_check_can_fail():
    """Another rule's gradient is far from the reference: the tolerance above is not blind."""
    hp = HyperParams(inner_steps=2, lr_base=0.3, meta_batch=5, iterations=20)
    batch = _batch()
    _, _, maml = _meta_gradient("maml", "generic", hp, batch)
    _, _, fomaml = _meta_gradient("fomaml", "func", hp, batch)
    assert _worst(fomaml, maml) > 1e-3


@pytest.mark.parametrize("backend", ["torch", "func", "l2l"])
def test_tanh_network_on_every_backend_that_builds_it(backend):
    """func has no hand-written Tanh pass: it runs the generic engine and says so."""
    hp = HyperParams(inner_steps=2, lr_base=0.1, meta_batch=4, iterations=10)
    batch = _batch(n=4)
    _, _, reference = _meta_gradient("maml", "generic", hp, batch, network="tanh-64-64")
    learner, _, grads = _meta_gradient("maml", backend, hp, batch, network="tanh-64-64")
    assert [g.shape for g in grads] == [torch.Size(s) for s in ([64, 1], [64], [64, 64], [64], [1, 64], [1])]
    assert _worst(grads, reference) < 1e-10
    assert learner.engine == {"func": "generic", "torch": "loop", "l2l": "learn2learn"}[backend]
    assert isinstance(learner.net[1], torch.nn.Tanh)


def test_a_backend_that_cannot_build_a_network_is_skipped_with_a_reason():
    sweep = parse_sweep({"algorithm": ["maml", "reptile"], "backend": ["jax", "func"], "network": "TANH-64-64",
                         "iterations": 5})
    assert sorted(c.backend + "/" + c.algorithm for c in sweep.cells) == ["func/maml"]
    assert all(c.network == "tanh-64-64" for c in sweep.cells)  # one spelling per network
    reasons = " | ".join(reason for _, reason in sweep.skipped)
    assert "cannot run network 'tanh-64-64'" in reasons, reasons
    with pytest.raises(ConfigError, match="unknown activation 'gelu'; valid choices: relu, tanh"):
        parse_sweep({"algorithm": "maml", "backend": "func", "network": "gelu-40"})


def test_the_network_is_part_of_a_cells_identity():
    relu, tanh = Cell("maml", "func"), Cell("maml", "func", network="tanh-40-40")
    assert relu.cell_id != tanh.cell_id and "nettanh-40-40" in tanh.cell_id
    assert "net" not in relu.cell_id  # Finn's network: committed ids keep their names
    assert identity({"cell": asdict(relu)}) != identity({"cell": asdict(tanh)})
    settings = parse_sweep({"algorithm": "maml", "backend": "func"}).settings
    assert fingerprint(relu, settings)["network"] != fingerprint(tanh, settings)["network"]
    old_record = {"cell": {k: v for k, v in asdict(relu).items() if k != "network"}}  # written before the key
    from benchmarks.records import ADDED_CELL_KEYS

    assert identity({"cell": {**ADDED_CELL_KEYS, **old_record["cell"]}}) == identity({"cell": asdict(relu)})


def test_lslr_meta_gradient_agrees_between_the_loop_and_the_vectorised_engine(lslr):
    """The plug-in's meta-gradient, including its per-step rates, on `torch` and on `func`
    (which runs it on the generic engine); rates made unequal first so each step's rate matters."""
    hp = HyperParams(inner_steps=3, lr_base=0.2, meta_batch=5, iterations=20)
    batch = _batch()
    results = []
    for backend in ("torch", "func"):
        learner = get_algorithm(lslr, backend, hp, torch.Generator().manual_seed(1)).double()
        with torch.no_grad():
            for e in learner.extra:
                e.mul_(torch.tensor([1.0, 0.5, 1.5], dtype=torch.float64))
        loss, grads = learner.meta_gradient(batch)
        results.append((learner, grads))
    (loop, loop_grads), (func, func_grads) = results
    assert func.engine == "generic" and len(loop_grads) == 6 + 6
    assert [g.shape for g in loop_grads[6:]] == [torch.Size([3])] * 6  # a rate per tensor and step
    assert _worst(func_grads, loop_grads) < 1e-10


class NormalizedStep(InnerRule):
    """A step of length LR_base along the task's whole gradient: its norm mixes every entry, so it
    is not elementwise and must run per task on the generic engine."""

    def update(self, params, grads, extra, step, hp):
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None))
        return [p if g is None else p - hp.lr_base * g / norm for p, g in zip(params, grads)]


class DeclaredElementwise(NormalizedStep):
    elementwise = True  # wrongly: the engine then calls it once on every task's rows


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    import algorithms

    monkeypatch.setattr(algorithms, "ALGORITHMS", dict(algorithms.ALGORITHMS))
    monkeypatch.setattr(algorithms, "RULES", dict(algorithms.RULES))


def test_a_rule_that_mixes_entries_runs_per_task_on_the_generic_engine(scratch_registry):
    """The generic engine calls an elementwise rule once on all tasks' rows and vmaps any other;
    with `elementwise` undeclared it finds out itself (bitwise check against the vmapped update).
    A rule that wrongly declares itself elementwise would get another gradient: the first-use
    self-check against the plain loop refuses it (before it, the wrong gradient went through).
    Writing `update` without naming a `fast_update` leaves no backend that would run plain SGD
    in its place (the hand-written engine, learn2learn, higher)."""
    from algorithms.selfcheck import SelfCheckError

    hp = HyperParams(inner_steps=3, lr_base=0.3, meta_batch=5, iterations=20)
    batch = _batch()
    for name, rule in (("normstep", NormalizedStep()), ("normstep-declared", DeclaredElementwise())):
        table = register_algorithm(name, rule)
        assert table["func"].engine == "generic" and sorted(table) == ["func", "generic", "torch"], table
    _, loss_ref, reference = _meta_gradient("normstep", "torch", hp, batch)
    learner, loss, grads = _meta_gradient("normstep", "func", hp, batch)
    for _ in range(2):  # later calls take the path the first call chose
        assert _worst(learner.meta_gradient(batch, iteration=2)[1], grads) == 0
    assert _worst(grads, reference) < 1e-10
    with pytest.raises(SelfCheckError, match="eager path"):
        _meta_gradient("normstep-declared", "func", hp, batch)


def test_the_mlp_runs_all_tasks_at_once_as_vmap_runs_them_one_by_one():
    """`batched_forward` (the built-in MLP's) gives the per-task `functional_call` numbers."""
    from algorithms.generic_engine import TaskProgram
    from algorithms.network import make_network

    batch = _batch()
    for network in ("relu-40-40", "tanh-64-64", "relu"):
        mlp = make_network(torch.Generator().manual_seed(0), network=network, dtype=torch.float64)
        plain = torch.nn.Sequential(*mlp)  # no batched_forward: the engine vmaps functional_call
        params = [p.detach().unsqueeze(0).expand(5, *p.shape) + 0.01 * torch.randn(5, *p.shape, dtype=torch.float64)
                  for p in mlp.parameters()]
        fast = TaskProgram(mlp, InnerRule(), None, [True] * len(params))
        slow = TaskProgram(plain, InnerRule(), None, [True] * len(params))
        a = fast.batched_losses(params, batch.x_support, batch.y_support)
        b = slow.batched_losses(params, batch.x_support, batch.y_support)
        assert a.shape == (5,) and torch.allclose(a, b, rtol=1e-13, atol=0), (network, a, b)


def test_lslr_is_evaluated_with_its_own_per_step_rates(lslr):
    """A zero rate at step 0 leaves the first step's MSE where it started; plain SGD would not."""
    hp = HyperParams(inner_steps=2, lr_base=0.05, meta_batch=5, iterations=20)
    learner = get_algorithm(lslr, "torch", hp, torch.Generator().manual_seed(1))
    with torch.no_grad():
        for e in learner.extra:
            e[0] = 0.0
    adaptation = learner.adaptation()
    assert adaptation.rule is RULES[lslr] and len(adaptation.extra) == 6
    curve = adaptation_curve(adaptation, evaluation_set(FAMILY, n_tasks=20), steps=3)
    assert torch.equal(curve[1], curve[0]) and not torch.equal(curve[2], curve[1])


def test_registry_refuses_what_it_cannot_register():
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("maml", InnerRule())
    with pytest.raises(ValueError, match="algorithm name must be"):
        register_algorithm("Bad Name", InnerRule())
    with pytest.raises(TypeError, match="InnerRule instance"):
        register_algorithm("notarule", object())
    with pytest.raises(KeyError, match="cannot run network"):
        get_learner_class("pretrain", "func", "tanh-40-40")


def _cli(*args, cwd=ROOT, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=cwd, capture_output=True, text=True,
                            env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_a_plugin_from_outside_the_repository_runs_reports_reevaluates_and_regresses(tmp_path):
    """Spawned workers import the plug-in themselves; nothing in the repository names it."""
    plugin = tmp_path / "elsewhere" / "my_lslr.py"
    plugin.parent.mkdir()
    shutil.copy(LSLR_SOURCE, plugin)
    plugin.write_text(plugin.read_text().replace('register_algorithm("lslr"', 'register_algorithm("my-lslr"'))
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = ["my-lslr", "pretrain"]\nbackend = ["func", "torch"]\ninner_steps = 2\n'
                      'iterations = 30\nmeta_batch = 5\nseed = [0, 1]\nn_test_tasks = 40\nn_validation_tasks = 20\n'
                      'eval_steps = 3\nlog_every = 10\n')
    out = tmp_path / "out"
    _cli("run", "--config", str(config), "--out", str(out), "--workers", "2", "--plugin", str(plugin))
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records), [r["status"] for r in records]
    engines = {(r["cell"]["algorithm"], r["cell"]["backend"]): r["engine"] for r in records}
    assert engines[("my-lslr", "func")] == "generic" and engines[("pretrain", "func")] == "accelerated"
    assert engines[("my-lslr", "torch")] == "loop"
    assert "my-lslr" in (out / "tables.md").read_text()
    # unknown without the plug-in: a clear error, exit 2, nothing written
    missing = _cli("run", "--config", str(config), "--out", str(tmp_path / "other"), check=False)
    assert missing.returncode == 2 and "unknown algorithm 'my-lslr'" in missing.stderr, missing.stderr
    assert not (tmp_path / "other").exists()
    # the stored per-step rates reproduce the evaluation exactly
    again = tmp_path / "again"
    _cli("re-evaluate", str(out), "--out", str(again), "--plugin", str(plugin))
    for record in records:
        redone = json.loads((again / "runs" / f"{record['cell_id']}.json").read_text())
        assert redone["evaluations"] == record["evaluations"], record["cell_id"]
    result = _cli("regress", "--baseline", str(out), "--candidate", str(again), "--plugin", str(plugin))
    assert "bitwise equal" in result.stdout, result.stdout


def test_compiled_generic_engine_matches_eager():
    """torch.compile of the generic meta-gradient (MSL: annealed weights enter as a tensor, so
    the program is not recompiled as they change). Rounding differs: float32, 1e-5 relative."""
    hp = HyperParams(inner_steps=2, lr_base=0.1, meta_batch=5, iterations=20, msl_anneal_iters=5)
    batch = FAMILY.sample(5, torch.Generator().manual_seed(3))
    eager = get_algorithm("msl", "generic", hp, torch.Generator().manual_seed(1))
    compiled = get_algorithm("msl", "generic", hp, torch.Generator().manual_seed(1), compile=True)
    assert compiled.engine == "generic+compile"
    for iteration in (0, 3):
        _, reference = eager.meta_gradient(batch, iteration)
        _, grads = compiled.meta_gradient(batch, iteration)
        assert _worst(grads, reference) < 1e-5


@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_compiled_generic_engine_trains_like_eager(name):
    """Compiled generic runs step with torch's fused Adam (eager ones keep the per-tensor loop):
    10 steps at S = 5, LR_base 0.05 on fresh batches stay within 2e-6 relative of eager on every
    meta-parameter, Meta-SGD's learned rates included (measured ≤ 1.2e-7)."""
    hp = HyperParams(inner_steps=5, lr_base=0.05, meta_batch=5, iterations=10)
    eager = get_algorithm(name, "generic", hp, torch.Generator().manual_seed(1))
    compiled = get_algorithm(name, "generic", hp, torch.Generator().manual_seed(1), compile=True)
    streams = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for iteration in range(10):
        for learner, generator in zip((eager, compiled), streams):
            learner.step(FAMILY.sample(5, generator), iteration)
    assert compiled.optimizer.defaults["fused"] and not eager.optimizer.defaults["fused"]
    assert _worst(compiled.meta_parameters, eager.meta_parameters) < 2e-6
