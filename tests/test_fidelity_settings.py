"""The fidelity settings of issue 23 (the gap to Finn et al. 2017's one-step number): each protocol
difference of Finn's released code (`cbfinn/maml`) as a sweep setting, so that one change at a
time can be run (`benchmarks/configs/ablation.toml`, `make ablations`).

- `init = "finn"`: weights from a truncated normal (σ 0.01, cut at 2σ), biases zero, drawn from the
  cell's "weights" generator by every backend that builds the suite's MLP; refused at parse time
  where a learner or a plug-in network cannot honour it;
- `n_query = "k"`: K query points per training task;
- `n_eval_query`: query points per validation/test task (100, an integer, or "k": the evaluated K);
- `pretrain_points = "support"`: pre-training fits the support points only (Finn's `pretrain_op`).
At their defaults nothing changes: committed fingerprints and numbers stay.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from algorithms import ALGORITHMS, HyperParams, get_algorithm
from algorithms.base import Adaptation, MetaLearner
from algorithms.generic_engine import GenericPretrain
from algorithms.network import make_network
from benchmarks.cli import main
from benchmarks.config import ConfigError, Settings, cell_family, load_sweep
from benchmarks.fingerprint import EXECUTION_KEYS, differences, fingerprint, record_fingerprint
from benchmarks.job import evaluation_sets, run_job
from benchmarks.records import record_cell
from benchmarks.reevaluate import settings_from_record

ROOT = Path(__file__).resolve().parents[1]
HP = HyperParams(inner_steps=1, lr_base=0.01, lr_meta=1e-3, meta_batch=4, iterations=2)
#: every backend of `maml` that builds the suite's MLP, and the learners of their own
BACKENDS = [("maml", b) for b in ("func", "generic", "torch", "higher")] + [
    pytest.param("maml", b, marks=pytest.mark.slow) for b in ("l2l", "jax")] + [  # importing the library: seconds
    ("reptile", "func"), ("reptile", "torch"), ("pretrain", "func"), ("pretrain", "torch")]


def _sweep(**values) -> dict:
    return {"algorithm": "maml", "backend": "func", "iterations": 2, "seed": 0, "n_test_tasks": 4,
            "n_validation_tasks": 4, "eval_steps": 1, "log_every": 1, **values}


# ----------------------------------------------------------------------------- init = "finn"

def test_finn_init_is_a_truncated_normal_of_sd_001_with_zero_biases(one_thread):
    net = make_network(torch.Generator().manual_seed(0), init="finn")
    weights = torch.cat([p.flatten() for name, p in net.named_parameters() if name.endswith("weight")])
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    assert weights.abs().max() <= 0.02  # truncated at 2 sigma, as tf.truncated_normal
    # a normal of sd 0.01 cut at 2 sigma has sd 0.0088 (0.8796 sigma)
    assert 0.0083 < float(weights.std()) < 0.0093, float(weights.std())
    assert abs(float(weights.mean())) < 0.001
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    torch_init = make_network(torch.Generator().manual_seed(0))
    assert float(next(torch_init.parameters()).abs().max()) > 0.1  # torch's: U(-1, 1) on the first layer


def test_finn_init_draws_from_the_weights_generator_only(one_thread):
    torch.manual_seed(123)
    a = make_network(torch.Generator().manual_seed(5), init="finn")
    torch.manual_seed(456)  # the global RNG's state does not enter
    b = make_network(torch.Generator().manual_seed(5), init="finn")
    c = make_network(torch.Generator().manual_seed(6), init="finn")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    settings = Settings(init="finn")  # a cell's "weights" stream, as the job hands it to the learner
    learner = get_algorithm("maml", "func", HP, settings.generator(3, "weights"), init="finn")
    expected = make_network(settings.generator(3, "weights"), init="finn")
    assert all(torch.equal(p, q) for p, q in zip(learner.adaptation().params, expected.parameters()))


@pytest.mark.parametrize("algorithm,backend", BACKENDS)
def test_finn_init_is_the_same_weights_on_every_backend(algorithm, backend, one_thread):
    if backend == "jax":
        pytest.importorskip("jax")
    expected = [p.detach() for p in make_network(torch.Generator().manual_seed(7), init="finn").parameters()]
    learner = get_algorithm(algorithm, backend, HP, torch.Generator().manual_seed(7), init="finn")
    got = learner.adaptation().params
    assert len(got) == len(expected)
    assert all(torch.equal(g.cpu(), e) for g, e in zip(got, expected)), backend
    default = get_algorithm(algorithm, backend, HP, torch.Generator().manual_seed(7)).adaptation().params
    assert not torch.equal(default[0].cpu(), expected[0]), "init = 'finn' changed nothing"


def test_finn_init_on_another_network_and_problem(one_thread):
    """A tanh MLP (generic engine) and a classification problem (sized from the problem) honour it."""
    for values in ({"network": "tanh-64-64"}, {"task": "gauss-class", "network": "relu-64", "k_shot": 2}):
        sweep = load_sweep(_sweep(init="finn", **values))
        records = run_job(sweep.cells[:1], sweep.settings)
        assert records[0]["status"] == "ok", records[0].get("error")
        assert records[0]["fingerprint"]["init"] == "finn"
    learner = get_algorithm("maml", "generic", HP, torch.Generator().manual_seed(0), network="tanh-64-64", init="finn")
    biases = learner.adaptation().params[1::2]
    assert all(not b.any() for b in biases)


class _OwnNetwork(MetaLearner):
    """A plug-in learner that builds its network itself (no `init` option)."""

    def __init__(self, hp, generator, device="cpu", network=None):
        super().__init__(hp, generator, device)
        self.meta_parameters = list(make_network(generator).parameters())

    def meta_gradient(self, batch, iteration=0):
        return torch.zeros(()), [torch.zeros_like(p) for p in self.meta_parameters]

    def adaptation(self, member=0):
        return Adaptation([p.detach() for p in self.meta_parameters], [0.01] * len(self.meta_parameters))


def test_a_learner_that_cannot_honour_init_is_refused_at_parse_time(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "ownnet", {"torch": _OwnNetwork})
    assert load_sweep(_sweep(algorithm="ownnet", backend="torch")).cells  # at the default: runs as always
    with pytest.raises(ConfigError, match=r"init = 'finn'.*'ownnet'.*'torch'.*_OwnNetwork.*valid there: \"torch\""):
        load_sweep(_sweep(algorithm="ownnet", backend="torch", init="finn"))


def test_a_plugin_network_refuses_finn_init_at_parse_time(monkeypatch):
    from algorithms.network import NETWORKS

    monkeypatch.setitem(NETWORKS, "tiny-plugin", lambda i, o: torch.nn.Sequential(torch.nn.Linear(i, o)))
    assert load_sweep(_sweep(backend="generic", network="tiny-plugin")).cells
    with pytest.raises(ConfigError, match=r"init = 'finn'.*plug-in network 'tiny-plugin'.*its own initialisation"):
        load_sweep(_sweep(backend="generic", network="tiny-plugin", init="finn"))
    with pytest.raises(ValueError, match="tiny-plugin"):  # the builder refuses too: never a silent own init
        make_network(torch.Generator(), network="tiny-plugin", init="finn")


# ----------------------------------------------------------------------------- query points

def test_n_query_k_gives_k_query_points_in_training():
    for k in (3, 10):
        sweep = load_sweep(_sweep(k_shot=k, n_query="k"))
        batch = cell_family(sweep.cells[0], sweep.settings).sample(2, torch.Generator().manual_seed(0))
        assert batch.x_support.shape[1] == k and batch.x_query.shape[1] == k
    assert load_sweep(_sweep(n_query="K")).settings.n_query == "k"  # one spelling
    default = load_sweep(_sweep(k_shot=3))
    assert cell_family(default.cells[0], default.settings).sample(1, torch.Generator()).x_query.shape[1] == 10


def test_n_query_k_at_the_trained_k_is_the_same_fingerprint():
    """For the K = 10 transfer cell `n_query = "k"` changes nothing, so its fingerprint is unchanged."""
    sweep = load_sweep(_sweep(k_shot=10))
    cell = sweep.cells[0]
    assert fingerprint(cell, replace(sweep.settings, n_query="k")) == fingerprint(cell, sweep.settings)
    five = replace(cell, k_shot=5)
    assert fingerprint(five, replace(sweep.settings, n_query="k"))["n_query"] == 5


def test_n_eval_query_sets_the_query_points_of_every_evaluation_set():
    family = cell_family(load_sweep(_sweep()).cells[0], Settings())
    for value, expected in ((5, {5: 5, 10: 5}), ("k", {5: 5, 10: 10}), (100, {5: 100, 10: 100})):
        settings = Settings(n_test_tasks=3, n_validation_tasks=2, n_test_sets=2, n_eval_query=value)
        sets = evaluation_sets(family, settings, [5, 10], "cpu")
        for (split, k), batches in sets.items():
            for batch in batches:
                assert batch.x_support.shape[1] == k and batch.x_query.shape[1] == expected[k], (value, split, k)
    # the default is the sets of before, bitwise
    before = evaluation_sets(family, Settings(n_test_tasks=3, n_validation_tasks=2), [10], "cpu")
    from tasks import evaluation_set
    assert torch.equal(before[("test", 10)][0].x_query, evaluation_set(family, "test", 3, k_shot=10).x_query)


def test_a_job_with_the_query_settings_trains_and_evaluates_with_them(one_thread):
    sweep = load_sweep(_sweep(k_shot=4, eval_k_shot=[2], n_query="k", n_eval_query="k"))
    record = run_job(sweep.cells, sweep.settings)[0]
    assert record["status"] == "ok", record.get("error")
    assert record["settings"]["n_query"] == "k" and record["fingerprint"]["n_query"] == 4
    assert record["fingerprint"]["n_eval_query"] == "k"


# ----------------------------------------------------------------------------- pre-training points

def _tiny_batch(generator):
    from tasks import get_task

    return get_task("sine", k_shot=3, n_query=4).sample(2, generator)


def _mlp(params, x):
    """The MLP written out here (independent of the suite's forward)."""
    w1, b1, w2, b2, w3, b3 = params
    return torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3


@pytest.mark.parametrize("backend", ["func", "torch", "generic"])
@pytest.mark.parametrize("points", ["support", "support+query"])
def test_pretraining_gradient_is_the_autograd_gradient_of_its_points(backend, points, one_thread):
    generator = torch.Generator().manual_seed(0)
    if backend == "generic":  # what `func` runs for another problem: built directly here
        learner = GenericPretrain(HP, generator, pretrain_points=points)
    else:
        learner = get_algorithm("pretrain", backend, HP, generator, pretrain_points=points)
    learner.double()
    batch = _tiny_batch(torch.Generator().manual_seed(1))
    batch = replace(batch, **{k: getattr(batch, k).double()
                              for k in ("x_support", "y_support", "x_query", "y_query")})
    stacked = replace(batch, **{k: getattr(batch, k).unsqueeze(0)  # the accelerated engine's [members, tasks, ...]
                                for k in ("x_support", "y_support", "x_query", "y_query")})
    loss, grads = learner.meta_gradient(stacked if learner.stacked_batches else batch)
    params = [p.detach().clone().requires_grad_() for p in learner.adaptation().params]
    x, y = batch.x_support, batch.y_support
    if points == "support+query":
        x, y = torch.cat([x, batch.x_query], 1), torch.cat([y, batch.y_query], 1)
    expected_loss = (_mlp(params, x) - y).pow(2).mean()
    expected = torch.autograd.grad(expected_loss, params)
    assert torch.allclose(loss.reshape(()).double(), expected_loss.detach(), rtol=1e-12, atol=0)
    for g, e in zip(grads, expected):
        assert torch.allclose(g.reshape(e.shape), e, rtol=1e-10, atol=1e-14)


def test_a_pretrain_learner_that_cannot_honour_its_points_is_refused(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "pretrain", {"torch": _OwnNetwork})
    assert load_sweep(_sweep(algorithm="pretrain", backend="torch")).cells
    with pytest.raises(ConfigError, match=r"pretrain_points = 'support'.*'pretrain'.*_OwnNetwork"):
        load_sweep(_sweep(algorithm="pretrain", backend="torch", pretrain_points="support"))


def test_pretrain_points_enters_the_fingerprint_of_pretrain_cells_only():
    sweep = load_sweep(_sweep(algorithm=["maml", "pretrain"], pretrain_points="support"))
    prints = {c.algorithm: fingerprint(c, sweep.settings) for c in sweep.cells}
    assert prints["pretrain"]["pretrain_points"] == "support" and "pretrain_points" not in prints["maml"]


# ----------------------------------------------------------------------------- records and bad values

@pytest.mark.parametrize("folder", ["demo-sine_freq", "baseline"])  # folders made before the fidelity keys
def test_committed_fingerprints_are_unchanged(folder):
    for path in sorted((ROOT / "results" / folder / "runs").glob("*.json"))[:12]:
        record = json.loads(path.read_text())
        if not isinstance(record.get("fingerprint"), dict):
            continue
        stored = record["fingerprint"]
        assert record_fingerprint(record) == stored
        for key in ("init", "n_eval_query", "pretrain_points"):
            assert key not in stored
        cell = record_cell(record["cell"])
        fresh = fingerprint(cell, settings_from_record(record))
        machine = {k: v for k, v in fresh.items() if k not in EXECUTION_KEYS}  # another machine's: not compared
        assert differences({k: v for k, v in stored.items() if k not in EXECUTION_KEYS}, machine, cell) == [], path


@pytest.mark.parametrize("key,value,message", [
    ("init", "xavier", r"unknown init 'xavier'; valid choices: torch, finn"),
    ("init", "Finn", r"unknown init 'Finn' \(did you mean 'finn'\?\)"),
    ("n_query", "q", r"n_query must be an integer >= 1 or \"k\" .*got 'q'"),
    ("n_query", 0, r"n_query must be an integer >= 1 or \"k\" .*got 0"),
    ("n_query", True, r"n_query must be an integer >= 1 or \"k\" .*got True"),
    ("n_eval_query", 0, r"n_eval_query must be an integer >= 1 or \"k\" .*got 0"),
    ("n_eval_query", "k5", r"n_eval_query must be an integer >= 1 or \"k\" .*got 'k5'"),
    ("n_eval_query", 2.5, r"n_eval_query must be an integer >= 1 or \"k\" .*got 2.5"),
    ("n_eval_query", 10 ** 7, r"n_eval_query = 10000000 is above the limit"),
    ("pretrain_points", "query", r"unknown pretrain_points 'query'; valid choices: support\+query, support"),
])
def test_bad_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_sweep(**{key: value}))


def test_a_bad_value_exits_2_through_the_cli_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "s.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\niterations = 2\n')
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--set", 'init="xavier"']) == 2
    assert "unknown init 'xavier'" in capsys.readouterr().err and not out.exists()
