"""Plug-in networks (any nn.Module, `algorithms.register_network`) and the first-use self-check
(`algorithms.selfcheck`): issue 21, "Model-agnostic for real"."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import algorithms
from algorithms import HyperParams, get_algorithm, get_learner_class, register_network
from algorithms import selfcheck
from algorithms.network import NETWORKS, PluginNetwork, as_spec, make_network, sized
from benchmarks.plugins import load_plugins
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_network" / "resnet_ln.py"
HP = HyperParams(inner_steps=2, meta_batch=4, iterations=10)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Small(nn.Module):
    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.a, self.b = nn.Linear(input_dim, 8), nn.Linear(8, output_dim)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class WrongBatched(Small):
    """A `batched_forward` (the generic engine's fast protocol) that doubles the first bias."""

    def batched_forward(self, params, x):
        w1, b1, w2, b2 = params
        return torch.tanh(x @ w1.transpose(-1, -2) + 2 * b1.unsqueeze(-2)) @ w2.transpose(-1, -2) + b2.unsqueeze(-2)


@pytest.fixture
def registry():
    """Registrations made by a test are undone after it."""
    saved = dict(NETWORKS)
    yield
    NETWORKS.clear()
    NETWORKS.update(saved)


@pytest.fixture(scope="module")
def batch():
    return get_task("sine", k_shot=5, n_query=5).sample(4, torch.Generator().manual_seed(0))


def _loop_gradient(learner, batch):
    """The plain loop's float64 meta-gradient from the learner's weights (the reference)."""
    return selfcheck._reference(learner, batch.map(torch.Tensor.double), 0, torch.float64)


@pytest.mark.parametrize("name", ["Big", "a/b", "..x", "", "x" * 65, "relu-40-40", "tanh-8", "relu", 3, None])
def test_network_names_are_checked(registry, name):
    """The one NAME pattern, and no name that spells a built-in MLP."""
    with pytest.raises(ValueError, match="name"):
        register_network(name, Small)
    assert name not in NETWORKS


def test_bad_factories_and_taken_names_are_refused(registry):
    with pytest.raises(TypeError, match="callable"):
        register_network("x", "not a factory")
    with pytest.raises(TypeError, match="nn.Module with parameters"):
        register_network("x", lambda i, o: lambda t: t)
    with pytest.raises(TypeError, match="nn.Module with parameters"):
        register_network("x", lambda i, o: nn.ReLU())
    assert "x" not in NETWORKS
    register_network("x", Small)
    with pytest.raises(ValueError, match="already registered"):
        register_network("x", Small)
    register_network("x", WrongBatched, replace=True)
    assert as_spec("x").factory is WrongBatched


def test_unknown_network_lists_the_registered_ones(registry):
    register_network("small-net", Small)
    with pytest.raises(ValueError, match="registered networks: small-net"):
        as_spec("smal-net")


def test_config_accepts_a_registered_network(registry):
    from benchmarks.config import ConfigError, _check_value

    def check(key, value):
        return _check_value(key, value, {})

    register_network("small-net", Small)
    assert check("network", "small-net") == "small-net"
    assert check("network", "ReLU-40-40") == "relu-40-40"
    with pytest.raises(ConfigError, match="registered networks: small-net"):
        check("network", "nope")


def test_weights_depend_on_the_seed_alone_and_leave_the_global_rng(registry):
    register_network("small-net", Small)
    state = torch.random.get_rng_state()
    one = [p.detach() for p in make_network(torch.Generator().manual_seed(3), network="small-net").parameters()]
    torch.manual_seed(123)  # the global RNG's state does not matter
    two = [p.detach() for p in make_network(torch.Generator().manual_seed(3), network="small-net").parameters()]
    other = [p.detach() for p in make_network(torch.Generator().manual_seed(4), network="small-net").parameters()]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not all(torch.equal(a, b) for a, b in zip(one, other))
    torch.random.set_rng_state(state)


def test_a_plugin_network_is_sized_by_the_family(registry):
    register_network("small-net", Small)

    class Family:
        input_dim, output_dim = 3, 2

    spec = sized("small-net", Family())
    assert (spec.input_dim, spec.output_dim) == (3, 2)
    net = make_network(torch.Generator(), network=spec)
    assert net(torch.zeros(5, 3)).shape == (5, 2)
    assert sized("small-net", object()) == as_spec("small-net")  # a family declaring none: 1 -> 1
    assert sized("relu-40-40", Family()) == as_spec("relu-40-40")


def test_which_backends_run_a_plugin_network(registry, batch):
    register_network("small-net", Small)
    for backend in ("torch", "generic", "func", "l2l", "higher"):
        learner = get_algorithm("maml", backend, HP, torch.Generator().manual_seed(1), network="small-net")
        assert torch.isfinite(learner.step(batch)["loss"])
    assert get_learner_class("maml", "func", "small-net").engine == "generic"
    with pytest.raises(KeyError, match="plug-in network 'small-net'.*builds only the suite's MLPs"):
        get_learner_class("maml", "jax", "small-net")
    with pytest.raises(KeyError, match="nn.Sequential"):
        get_learner_class("anil", "l2l", "small-net")


def test_code_network_enters_the_fingerprint_of_registered_networks_only(registry):
    from benchmarks.config import Cell, Settings
    from benchmarks.fingerprint import fingerprint

    register_network("small-net", Small)
    values = fingerprint(Cell("maml", "generic", network="small-net"), Settings())
    assert values["code.network"].startswith("test_networks sha256:"), values["code.network"]
    assert algorithms.network_source_of("small-net") == values["code.network"]
    assert "code.network" not in fingerprint(Cell("maml", "generic", network="tanh-64-64"), Settings())
    assert algorithms.network_source_of("relu-40-40") == "builtin"
    assert algorithms.network_source_of("nope") is None


def test_builtins_skip_the_self_check(batch):
    learner = get_algorithm("maml", "generic", HP, torch.Generator().manual_seed(1), network="tanh-64-64")
    learner.step(batch)
    assert learner.self_check is None and learner.engine == "generic" and learner.compile_seconds == 0


def test_the_self_check_passes_on_the_eager_engine_and_is_recorded(registry, batch):
    register_network("small-net", Small)
    learner = get_algorithm("maml", "generic", HP, torch.Generator().manual_seed(1), network="small-net")
    learner.step(batch)
    assert learner.self_check.startswith("passed: max relative difference to the torch loop eager path")
    assert learner.engine == "generic"


def test_the_self_check_refuses_an_engine_that_disagrees_with_the_loop(registry, batch):
    """A network whose batched forward is wrong: the generic engine's meta-gradient differs from the
    loop's; the run refuses, naming the difference and the parameter."""
    register_network("wrong-batched", WrongBatched)
    learner = get_algorithm("maml", "generic", HP, torch.Generator().manual_seed(1), network="wrong-batched")
    before = [p.detach().clone() for p in learner.meta_parameters]
    with pytest.raises(selfcheck.SelfCheckError, match=r"max relative difference of eager path [0-9.e+-]+ at a\.\w+"):
        learner.step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.meta_parameters))  # no step taken


def test_layernorm_on_the_compiled_engine_equals_the_loop(batch):
    """Issue 21: a residual MLP with LayerNorm (the example plug-in) on the compiled generic engine.
    torch.func's grad transforms are wrong through LayerNorm's double backward (pytorch/functorch#534:
    ~3e-3 relative here, float64); the self-check catches it before any compile and the run takes
    the eager path (batched autograd), saying so in `engine`; its meta-gradient is the loop's."""
    load_plugins([str(EXAMPLE)])
    assert isinstance(as_spec("resnet-ln"), PluginNetwork)
    learner = get_algorithm("maml", "generic", HP, torch.Generator().manual_seed(1), network="resnet-ln", compile=True)
    learner.double()
    reference = _loop_gradient(learner, batch)
    _, grads = learner.meta_gradient(batch.map(torch.Tensor.double))
    worst, where = selfcheck.relative_difference(grads, reference, [n for n, _ in learner.net.named_parameters()])
    assert worst < 1e-10, (worst, where)
    assert learner.engine == "generic (eager: the torch.func path failed the self-check)"
    assert "failed: torch.func path" in learner.self_check and "at norms." in learner.self_check


def test_a_job_record_carries_the_self_check(registry):
    from benchmarks.config import Cell, Settings
    from benchmarks.job import run_job

    register_network("small-net", Small)
    cell = Cell("maml", "generic", network="small-net", inner_steps=1, meta_batch=4, iterations=2, seed=0)
    record, = run_job([cell], Settings(n_test_tasks=4, n_validation_tasks=4, log_every=2, eval_steps=1), threads=1)
    assert record["status"] == "ok", record.get("error")
    assert record["self_check"].startswith("passed")
    assert record["fingerprint"]["code.network"].startswith("test_networks sha256:")
    assert len(record["qualitative"]["pred"]["0"]) == 100


def test_re_evaluate_accepts_records_from_before_the_network_key():
    """`code.network` is checked like the other code keys; a record without `network` trained Finn's."""
    from benchmarks.plugins import PluginError
    from benchmarks.reevaluate import check_code

    old = {"status": "ok", "cell_id": "maml-func-sine", "cell": {"algorithm": "maml", "task": "sine"},
           "fingerprint": {}}
    check_code([old])
    plugin = {**old, "cell": {**old["cell"], "network": "gone-net"}, "fingerprint": {"code.network": "x.py sha256:0"}}
    with pytest.raises(PluginError, match="network 'gone-net'.*not registered"):
        check_code([plugin])
