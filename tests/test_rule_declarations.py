"""Issue 21, "model-agnostic for real": a rule's declaration is what every backend runs.

- named adapted tensors (`adapts(names)`): a rule adapting only the output bias or only the first
  layer has the `torch` loop's meta-gradient on every offered backend, and a backend that cannot
  honour the set (learn2learn, higher, the hand-written engine) is not offered or refuses, saying why;
- inner-optimiser state (`init_state`, `update_with_state`): the SGD-momentum and Adam examples
  against an independent per-task implementation in float64; the generic engine calls a rule once
  per step (its elementwise check runs on copies); state kept on the rule object is refused;
- context parameters (`context`): the CAVIA example against an independent implementation, the
  context reset per task and never meta-learned; the evaluation adapts with the same declaration.

The independent implementations below are written from scratch (MLP by hand, a per-task loop with
torch.autograd), not the project's loop.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import algorithms
from algorithms import HyperParams, get_algorithm, get_learner_class, register_algorithm
from algorithms.evaluation import adaptation_curve
from algorithms.rules import InnerRule
from benchmarks.config import parse_sweep  # imported before any scratch registry: it keeps the real one
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
FAMILY = get_task("sine")
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def scratch_registry():
    """Registrations made by a test vanish after it (the registry's dicts are restored in place:
    other modules, e.g. the sweep parser, hold them)."""
    saved = {name: dict(getattr(algorithms, name)) for name in ("ALGORITHMS", "RULES", "REFUSALS")}
    yield
    for name, content in saved.items():
        getattr(algorithms, name).clear()
        getattr(algorithms, name).update(content)


@pytest.fixture(scope="module")
def examples():
    """The example plug-ins, imported from their files as a user's `--plugin` would."""
    from benchmarks.plugins import load_plugins

    load_plugins([str(ROOT / "examples" / "plugin_inner_optim" / "inner_optim.py"),
                  str(ROOT / "examples" / "plugin_cavia" / "cavia.py")])
    return ["maml-momentum", "maml-adam", "cavia"]


def _batch(seed=3, n=4):
    return FAMILY.sample(n, torch.Generator().manual_seed(seed)).map(lambda t: t.double())


def _learner(name, backend, hp, **options):
    return get_algorithm(name, backend, hp, torch.Generator().manual_seed(1), **options).double()


def _meta_gradient(name, backend, hp, batch, **options):
    learner = _learner(name, backend, hp, **options)
    loss, grads = learner.meta_gradient(batch)
    return learner, float(loss), grads


def _worst(grads, reference) -> float:
    assert len(grads) == len(reference)
    return max(float((g - r).norm() / r.norm().clamp_min(1e-300)) for g, r in zip(grads, reference))


# -- the independent implementation -------------------------------------------------------------

def _forward(params, x, contexts=()):
    """Finn's MLP by hand; contexts are appended to every input point (CAVIA)."""
    h = torch.cat([x, *(c.expand(x.shape[0], c.shape[0]) for c in contexts)], dim=1)
    layers = len(params) // 2
    for i in range(layers):
        h = h @ params[2 * i].T + params[2 * i + 1]
        if i < layers - 1:
            h = torch.relu(h)
    return h


def _mse(params, x, y, contexts=()):
    return ((_forward(params, x, contexts) - y) ** 2).mean()


def sgd(lr):
    return (lambda p: None), (lambda p, g, s, t: (p - lr * g, s))


def momentum(lr, mu=0.9):
    def step(p, g, v, t):
        v = mu * v + g
        return p - lr * v, v
    return torch.zeros_like, step


def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    def step(p, g, s, t):
        m, v = b1 * s[0] + (1 - b1) * g, b2 * s[1] + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
        return p - lr * m_hat / torch.sqrt(v_hat + eps ** 2), (m, v)
    return (lambda p: (torch.zeros_like(p), torch.zeros_like(p))), step


def _adapt_one_task(meta, xs, ys, steps, optimiser, adapted, n_context, create_graph):
    """One task from scratch: the adapted tensors (network's, then contexts) after 0..steps steps."""
    init, step = optimiser
    contexts = [torch.zeros(n_context, dtype=F64, requires_grad=True)] if n_context else []
    fast = list(meta) + contexts
    index = [i for i, a in enumerate(list(adapted) + [True] * len(contexts)) if a]
    state = {i: init(fast[i]) for i in index}
    yield fast
    for t in range(steps):
        n = len(meta)
        grads = torch.autograd.grad(_mse(fast[:n], xs, ys, fast[n:]), [fast[i] for i in index],
                                    create_graph=create_graph)
        fast = list(fast)
        for i, g in zip(index, grads):
            fast[i], state[i] = step(fast[i], g, state[i], t)
        yield fast


def reference_meta_gradient(init, batch, steps, optimiser, adapted, n_context=0):
    meta = [p.detach().clone().requires_grad_() for p in init]
    n, total = len(meta), 0.0
    for t in range(len(batch)):
        xs, ys, xq, yq = (v[t] for v in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
        *_, fast = _adapt_one_task(meta, xs, ys, steps, optimiser, adapted, n_context, create_graph=True)
        total = total + _mse(fast[:n], xq, yq, fast[n:]) / len(batch)
    return float(total), list(torch.autograd.grad(total, meta))


def reference_curve(init, batch, steps, optimiser, adapted, n_context=0):
    """Query MSE after 0..steps steps, per task: [steps + 1, tasks]."""
    meta = [p.detach().clone().requires_grad_() for p in init]
    n, columns = len(meta), []
    for t in range(len(batch)):
        xs, ys, xq, yq = (v[t] for v in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
        columns.append(torch.stack([_mse(f[:n], xq, yq, f[n:]).detach() for f in
                                    _adapt_one_task(meta, xs, ys, steps, optimiser, adapted, n_context, False)]))
    return torch.stack(columns, dim=1)


def _init(learner):
    return [p.detach() for p in learner.net.parameters()]


# -- 1. named adapted tensors ---------------------------------------------------------------------

class OutputBiasOnly(InnerRule):
    """Adapts the network's output bias and nothing else (named)."""

    def adapts(self, names):
        return [name == names[-1] for name in names]


class FirstLayerOnly(InnerRule):
    def adapts(self, names):
        return [name.startswith("0.") for name in names]


class HeadByName(InnerRule):
    """ANIL's set, spelled by name: the accelerated engine and learn2learn honour it."""

    def adapts(self, names):
        return [name.startswith("4.") for name in names]


@pytest.mark.parametrize(("rule", "adapted"), [(OutputBiasOnly(), [False] * 5 + [True]),
                                                (FirstLayerOnly(), [True, True] + [False] * 4)],
                         ids=["output-bias", "first-layer"])
def test_a_named_adapted_set_has_the_loops_meta_gradient_on_every_offered_backend(scratch_registry, rule, adapted):
    """Before: `adapts(n)` got a count, and `func`, learn2learn and higher ran all-layer MAML
    (7.0 relative off the loop's meta-gradient). Now every offered backend runs the named set and
    the others are not offered, with the reason."""
    name = f"named-{type(rule).__name__.lower()}"
    table = register_algorithm(name, rule)
    assert sorted(table) == ["func", "generic", "torch"], table
    reasons = algorithms.REFUSALS[name]
    assert "learn2learn adapts every parameter" in reasons["l2l"]
    assert "higher adapts every parameter" in reasons["higher"]
    with pytest.raises(KeyError, match="has no backend 'l2l' \\(learn2learn adapts every parameter"):
        get_learner_class(name, "l2l")
    sweep = parse_sweep({"algorithm": name, "backend": ["l2l", "higher", "torch"], "iterations": 5})
    assert [c.backend for c in sweep.cells] == ["torch"]
    (_, l2l), (_, higher) = sweep.skipped
    assert "has no backend 'l2l' (learn2learn adapts every parameter" in l2l
    assert "has no backend 'higher' (higher adapts every parameter" in higher
    hp = HyperParams(inner_steps=2, lr_base=0.3, meta_batch=4, iterations=10)
    batch = _batch()
    loop, loss_ref, reference = _meta_gradient(name, "torch", hp, batch)
    independent = reference_meta_gradient(_init(loop), batch, 2, sgd(0.3), adapted)[1]
    assert _worst(reference, independent) < 1e-10
    for backend in ("generic", "func"):
        learner, loss, grads = _meta_gradient(name, backend, hp, batch)
        assert learner.engine == "generic"  # the hand-written pass adapts whole last layers only
        assert abs(loss - loss_ref) <= 1e-12 * abs(loss_ref) and _worst(grads, reference) < 1e-10, backend
        assert [lr is not None for lr in learner.adaptation().lrs] == adapted
    maml = _meta_gradient("maml", "torch", hp, batch)[2]
    assert _worst(maml, reference) > 1e-2  # what running all-layer MAML instead would have given


def test_a_named_head_runs_on_the_accelerated_engine_and_learn2learn_as_anil_does(scratch_registry):
    register_algorithm("head-by-name", HeadByName())
    assert sorted(algorithms.ALGORITHMS["head-by-name"]) == ["func", "generic", "l2l", "torch"]
    assert algorithms.ALGORITHMS["head-by-name"]["func"].engine == "accelerated"
    hp = HyperParams(inner_steps=2, lr_base=0.3, meta_batch=4, iterations=10)
    batch = _batch()
    reference = _meta_gradient("head-by-name", "torch", hp, batch)[2]
    for backend in ("func", "l2l"):
        learner = _learner("head-by-name", backend, hp)
        data = batch if not learner.stacked_batches else type(batch).stack([batch])
        grads = learner.meta_gradient(data)[1]
        grads = [g[0] for g in grads] if learner.stacked_batches else grads
        assert _worst(grads, reference) < 1e-10, backend
        assert [lr is not None for lr in learner.adaptation().lrs] == [False] * 4 + [True] * 2, backend
    anil = _learner("anil", "func", hp)
    assert anil.frozen_layers == _learner("head-by-name", "func", hp).frozen_layers == 2


def test_a_backend_refuses_a_network_on_which_it_cannot_honour_the_named_set(scratch_registry):
    """On a one-hidden-layer network "4.*" names nothing: learn2learn is refused with the reason
    (and the sweep skips it, saying so), `func` runs the generic engine."""

    register_algorithm("head-by-name", HeadByName())
    hp = HyperParams(inner_steps=1, meta_batch=2, iterations=5)
    with pytest.raises(KeyError, match="cannot run it as declared on network 'relu-40': learn2learn adapts"):
        get_learner_class("head-by-name", "l2l", "relu-40")
    assert get_learner_class("head-by-name", "func", "relu-40").engine == "generic"
    with pytest.raises(ValueError, match="adapts no parameter and has no context"):
        get_algorithm("head-by-name", "torch", hp, torch.Generator(), network="relu-40").meta_gradient(_batch())
    sweep = parse_sweep({"algorithm": "head-by-name", "backend": ["l2l", "torch"], "network": "relu-40",
                         "iterations": 5})
    assert [c.backend for c in sweep.cells] == ["torch"]
    assert "learn2learn adapts every parameter" in sweep.skipped[0][1], sweep.skipped


def test_a_bad_or_old_style_adapts_declaration_is_refused_at_registration(scratch_registry):
    class CountStyle(InnerRule):
        def adapts(self, n_params):  # the old signature: a count
            return [i >= n_params - 2 for i in range(n_params)]

    class WrongLength(InnerRule):
        def adapts(self, names):
            return [True]

    class BadLayers(InnerRule):
        adapted_layers = -1

    with pytest.raises(TypeError, match="adapts\\(names\\) receives the network's parameter names"):
        register_algorithm("count-style", CountStyle())
    with pytest.raises(ValueError, match="must return one bool per parameter name \\(6: 0.weight"):
        register_algorithm("wrong-length", WrongLength())
    with pytest.raises(ValueError, match="adapted_layers must be None"):
        register_algorithm("bad-layers", BadLayers())
    assert not {"count-style", "wrong-length", "bad-layers"} & set(algorithms.ALGORITHMS)


# -- 2. inner-optimiser state ---------------------------------------------------------------------

OPTIMISERS = {"maml-momentum": momentum, "maml-adam": adam}


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_stateful_inner_optimisers_match_an_independent_implementation(examples, name):
    """Momentum and Adam: per-task state from zero, threaded through S = 3 steps, differentiated
    through (second order). Before: state on the rule object was 161% off on the generic engine."""
    hp = HyperParams(inner_steps=3, lr_base=0.05, meta_batch=4, iterations=10)
    batch = _batch()
    assert sorted(algorithms.ALGORITHMS[name]) == ["func", "generic", "torch"]
    assert "no inner-optimiser state" in algorithms.REFUSALS[name]["l2l"]
    for backend in ("torch", "generic", "func"):
        learner, loss, grads = _meta_gradient(name, backend, hp, batch)
        loss_ref, reference = reference_meta_gradient(_init(learner), batch, 3, OPTIMISERS[name](0.05), [True] * 6)
        assert abs(loss - loss_ref) <= 1e-12 * loss_ref and _worst(grads, reference) < 1e-10, backend
    assert all(learner._direct_steps.values())  # elementwise: one call for all tasks' rows
    sgd_grads = _meta_gradient("maml", "torch", hp, batch)[2]
    assert _worst(sgd_grads, reference) > 1e-2  # the state matters


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_stateful_rules_are_evaluated_as_trained(examples, name):
    """The evaluation threads the same state, beyond S steps too (10 > S = 2)."""
    hp = HyperParams(inner_steps=2, lr_base=0.05, meta_batch=4, iterations=10)
    batch = _batch(seed=5, n=6)
    learner = _learner(name, "torch", hp)
    adaptation = learner.adaptation()
    assert adaptation.rule is algorithms.RULES[name]
    curve = adaptation_curve(adaptation, batch, steps=10)
    expected = reference_curve(_init(learner), batch, 10, OPTIMISERS[name](0.05), [True] * 6)
    assert torch.allclose(curve, expected, rtol=1e-10, atol=0)


class CountedSGD(InnerRule):
    """Plain SGD that records which rule object ran which step (in a list outside the object)."""

    calls: list = []

    def update(self, params, grads, extra, step, hp):
        CountedSGD.calls.append((id(self), step))
        return [p if g is None else p - hp.lr_base * g for p, g in zip(params, grads)]


class CountedMomentum(CountedSGD):
    def init_state(self, params, extra, hp):
        return [torch.zeros_like(p) for p in params]

    def update_with_state(self, params, grads, extra, step, hp, state):
        CountedSGD.calls.append((id(self), step))
        state = [v if g is None else 0.9 * v + g for v, g in zip(state, grads)]
        return [p if g is None else p - hp.lr_base * v for p, g, v in zip(params, grads, state)], state


@pytest.mark.parametrize("rule", [CountedSGD(), CountedMomentum()], ids=["stateless", "stateful"])
def test_the_generic_engine_calls_a_rule_once_per_step(scratch_registry, rule):
    """Its elementwise check used to call the rule itself a second time at each step's first use."""
    register_algorithm("counted", rule)
    hp = HyperParams(inner_steps=3, lr_base=0.1, meta_batch=4, iterations=10)
    learner = _learner("counted", "generic", hp)
    CountedSGD.calls.clear()
    learner.meta_gradient(_batch())
    assert [step for who, step in CountedSGD.calls if who == id(rule)] == [0, 1, 2]
    assert learner._direct_steps == {0: True, 1: True, 2: True}


class MomentumOnTheRule(InnerRule):
    """The issue's plug-in: momentum buffers kept on the rule object, reset at step 0."""

    def update(self, params, grads, extra, step, hp):
        if step == 0:
            self.velocity = [torch.zeros_like(p) for p in params]
        self.velocity = [v if g is None else 0.9 * v + g for v, g in zip(self.velocity, grads)]
        return [p if g is None else p - hp.lr_base * v for p, g, v in zip(params, grads, self.velocity)]


@pytest.mark.parametrize("backend", ["torch", "generic"])
def test_state_kept_on_the_rule_object_is_refused(scratch_registry, backend):
    register_algorithm("momentum-on-rule", MomentumOnTheRule())
    hp = HyperParams(inner_steps=2, lr_base=0.1, meta_batch=4, iterations=10)
    learner = get_algorithm("momentum-on-rule", backend, hp, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="update assigned velocity on the rule object; keep per-task state in "
                                         "init_state/update_with_state"):
        learner.meta_gradient(_batch().map(lambda t: t.float()))


def test_a_fast_path_beside_state_or_context_is_refused():
    with pytest.raises(TypeError, match="set fast_update = None"):
        class Bad(InnerRule):  # noqa: F841
            fast_update = "sgd"

            def context(self, hp):
                return [torch.zeros(2)]


def test_the_stateless_signature_keeps_working():
    """`update` alone (the built-ins, LSLR) is `update_with_state` with no state."""
    rule, hp = InnerRule(), HyperParams(lr_base=0.5)
    params, grads = [torch.ones(2)], [torch.ones(2)]
    new, state = rule.update_with_state(params, grads, [], 0, hp, [])
    assert state == [] and torch.equal(new[0], torch.full((2,), 0.5))


# -- 3. context parameters (CAVIA) ----------------------------------------------------------------

def test_cavia_matches_an_independent_implementation(examples):
    """Only the zero-reset context adapts; the network (first layer 1 + 4 inputs) is meta-learned
    through it. The context is no meta-parameter: after Adam steps it still starts at zero for
    every task (the reference resets it), and it gets no meta-gradient."""
    hp = HyperParams(inner_steps=2, lr_base=0.5, meta_batch=4, iterations=10)
    assert sorted(algorithms.ALGORITHMS["cavia"]) == ["func", "generic", "torch"]
    for backend in ("torch", "generic", "func"):
        learner = _learner("cavia", backend, hp)
        assert [tuple(p.shape) for p in learner.meta_parameters][:2] == [(40, 5), (40,)]
        assert len(learner.meta_parameters) == 6  # the network's only
        generator = torch.Generator().manual_seed(7)
        for iteration in range(2):
            learner.step(FAMILY.sample(4, generator).map(lambda t: t.double()), iteration)
        batch = _batch()
        loss, grads = learner.meta_gradient(batch)
        loss_ref, reference = reference_meta_gradient(_init(learner), batch, 2, sgd(0.5), [False] * 6, n_context=4)
        assert abs(float(loss) - loss_ref) <= 1e-12 * loss_ref and _worst(grads, reference) < 1e-10, backend
        assert learner.engine in ("loop", "generic")


def test_cavia_is_evaluated_as_trained_and_reevaluates_from_its_artifacts(examples):
    """Evaluation resets and adapts the context (10 steps > S); the network's own parameters stay.
    The stored artifacts give the same curve (the context comes from the rule, not the file)."""
    from benchmarks.artifacts import from_adaptation, from_bytes, to_bytes

    hp = HyperParams(inner_steps=1, lr_base=0.5, meta_batch=4, iterations=10)
    learner = get_algorithm("cavia", "generic", hp, torch.Generator().manual_seed(1))
    adaptation = learner.adaptation()
    assert adaptation.rule is algorithms.RULES["cavia"] and adaptation.lrs == [None] * 6
    batch = _batch(seed=5, n=6).map(lambda t: t.float())
    curve = adaptation_curve(adaptation, batch, steps=10)
    expected = reference_curve([p.double() for p in _init(learner)], batch.map(lambda t: t.double()), 10,
                               sgd(0.5), [False] * 6, n_context=4)
    assert torch.allclose(curve.double(), expected, rtol=1e-4, atol=0) and not torch.equal(curve[1], curve[0])
    stored = from_bytes(to_bytes(from_adaptation(adaptation)))
    again = stored.adaptation(network=adaptation.network, rule=algorithms.RULES["cavia"], hp=hp)
    assert torch.equal(adaptation_curve(again, batch, steps=10), curve)


def test_cavia_trains_and_evaluates_through_a_job(examples):
    """The whole job (evaluation, qualitative fits on the context-fed network) on `func` and `torch`."""
    from benchmarks.job import run_job

    sweep = parse_sweep({"algorithm": "cavia", "backend": ["func", "torch"], "inner_steps": 1, "iterations": 4,
                         "meta_batch": 3, "n_test_tasks": 8, "n_validation_tasks": 4, "eval_steps": 2,
                         "log_every": 2})
    for cell in sweep.cells:
        (record,) = run_job([cell], sweep.settings)
        assert record["status"] == "ok", record.get("error")
        assert record["engine"] == ("generic" if cell.backend == "func" else "loop")


@pytest.mark.slow
def test_the_examples_run_compiled_on_the_generic_engine(examples):
    """`compile = true`: the compiled program threads the same state and context (float64). Small
    programs (compiling is most of the time): momentum at S = 2 (at S = 1 it is SGD), Adam and
    CAVIA at S = 1 (Adam's first step is already unlike SGD's)."""
    batch = _batch(n=3)
    cases = {"maml-momentum": (2, momentum(0.05), [True] * 6, 0), "maml-adam": (1, adam(0.05), [True] * 6, 0),
             "cavia": (1, sgd(0.05), [False] * 6, 4)}
    for name, (steps, optimiser, adapted, n_context) in cases.items():
        hp = HyperParams(inner_steps=steps, lr_base=0.05, meta_batch=3, iterations=10)
        learner, loss, grads = _meta_gradient(name, "generic", hp, batch, compile=True)
        assert learner.engine == "generic+compile"
        loss_ref, reference = reference_meta_gradient(_init(learner), batch, steps, optimiser, adapted, n_context)
        assert abs(loss - loss_ref) <= 1e-10 * loss_ref and _worst(grads, reference) < 1e-9, name
