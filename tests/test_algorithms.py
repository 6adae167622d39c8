"""Every registered algorithm against the same checks and against independent computations.

- one conformance test over the whole registry: builds, trains through the
  shared loop, finite loss, deterministic under a seed, rejects bad hyperparameters, and
  its `adaptation()` is shaped like the network;
- second-order MAML from learn2learn, higher and the func engine against a meta-gradient
  written here with plain `torch.autograd.grad(create_graph=True)`;
- the same meta-gradients in float64 against central finite differences of the meta-loss;
- FOMAML against the plain query gradient at the adapted weights;
- MSL with last-step loss weights against MAML, and the MAML++ weight schedule itself;
- every meta-learner against the pre-training baseline after a short seeded run, and the
  baseline's evaluation against its own fine-tuning.

The func engine's hand-written reverse pass against its own autograd path, and func against
learn2learn number for number, are in tests/test_func_engine.py and not repeated here.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from algorithms import ALGORITHMS, META_LEARNERS, HyperParams, get_algorithm
from algorithms.evaluation import adaptation_curve, evaluate
from algorithms.network import make_network
from algorithms.schedules import last_step_weights, msl_weights
from benchmarks.training import meta_train
from tasks import TaskBatch, evaluation_set, get_task

FAMILY = get_task("sine")
PAIRS = [(name, backend) for name, backends in ALGORITHMS.items() for backend in backends]
SECOND_ORDER_MAML = [b for b in ("l2l", "higher", "func", "jax") if b in ALGORITHMS["maml"]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- helpers: batches for either kind of learner, and the independent computations ------------

def _batch(n_tasks: int = 5, seed: int = 3) -> TaskBatch:
    return FAMILY.sample(n_tasks, torch.Generator().manual_seed(seed))


def _for(learner, batch: TaskBatch) -> TaskBatch:
    """The func engine takes batches stacked with a leading ensemble dimension; loop backends don't."""
    return TaskBatch.stack([batch]) if learner.stacked_batches else batch


def _unstack(learner, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Meta-gradients without the func engine's ensemble dimension."""
    return [g[0] for g in grads] if learner.stacked_batches else list(grads)


def _network_params(learner) -> list[torch.Tensor]:
    """The base network's weights (the first meta-parameters; Meta-SGD's rates follow them)."""
    n = len(list(make_network(torch.Generator().manual_seed(0)).parameters()))
    return _unstack(learner, [p.detach() for p in learner.meta_parameters[:n]])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _max_relative(grads, reference) -> float:
    """Largest per-tensor norm-based relative error ||a − b|| / ||b||."""
    assert len(grads) == len(reference), (len(grads), len(reference))
    return max(_relative(g, r) for g, r in zip(grads, reference))


def _mlp(params, x):
    """1 → … → 1 ReLU MLP in torch's layout, written here independently of algorithms.network."""
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i].T + params[i + 1]
        if i + 2 < len(params):
            h = h.clamp_min(0)
    return h


def _mse(params, x, y):
    return ((_mlp(params, x) - y) ** 2).mean()


def _maml_reference(params, batch: TaskBatch, lr: float, steps: int, dtype=torch.float64):
    """Second-order MAML by hand: per task θ' = θ − α∇L_support(θ) S times with create_graph,
    query loss at θ', mean over tasks (as LoopLearner.meta_gradient normalises), gradient w.r.t. θ.
    Returns (meta-loss, gradients)."""
    theta = [p.detach().to(dtype).requires_grad_() for p in params]
    xs, ys, xq, yq = (t.to(dtype) for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
    total = 0.0
    for t in range(len(batch)):
        phi = theta
        for _ in range(steps):
            grads = torch.autograd.grad(_mse(phi, xs[t], ys[t]), phi, create_graph=True)
            phi = [p - lr * g for p, g in zip(phi, grads)]
        total = total + _mse(phi, xq[t], yq[t]) / len(batch)
    return total.detach(), list(torch.autograd.grad(total, theta))


def _meta_loss(params, batch: TaskBatch, lr: float, steps: int) -> float:
    """The MAML meta-loss value alone (float64), for finite differences."""
    xs, ys, xq, yq = (t.double() for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
    total = 0.0
    with torch.enable_grad():
        for t in range(len(batch)):
            phi = [p.detach().double().requires_grad_() for p in params]
            for _ in range(steps):
                grads = torch.autograd.grad(_mse(phi, xs[t], ys[t]), phi)
                phi = [(p - lr * g).detach().requires_grad_() for p, g in zip(phi, grads)]
            total += float(_mse(phi, xq[t], yq[t]).detach()) / len(batch)
    return total


def _fomaml_reference(params, batch: TaskBatch, lr: float, steps: int):
    """First-order MAML: adapt by S SGD steps with no graph, then the plain query-loss gradient
    at the adapted weights, averaged over tasks (float64)."""
    xs, ys, xq, yq = (t.double() for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
    mean = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for t in range(len(batch)):
        phi = [p.detach().double() for p in params]
        for _ in range(steps):
            leaves = [p.requires_grad_() for p in phi]
            grads = torch.autograd.grad(_mse(leaves, xs[t], ys[t]), leaves)
            phi = [(p - lr * g).detach() for p, g in zip(leaves, grads)]
        leaves = [p.requires_grad_() for p in phi]
        for acc, g in zip(mean, torch.autograd.grad(_mse(leaves, xq[t], yq[t]), leaves)):
            acc += g / len(batch)
    return mean


def _train(learner, iterations: int, seed: int = 0):
    """The shared loop with a per-iteration report; returns each iteration's loss."""
    reports = meta_train(learner, FAMILY, [torch.Generator().manual_seed(seed)], iterations,
                         set(range(1, iterations + 1)))
    return [float(r["loss"].reshape(-1)[0]) for r in reports]


# -- 1. one conformance test over the whole registry --------------------------------------------

BAD_HYPERPARAMETERS = [("lr_base", 0.0), ("lr_base", -0.01), ("lr_base", math.nan), ("lr_meta", 0.0),
                       ("lr_meta", -1e-3), ("lr_meta", math.inf), ("inner_steps", -1), ("meta_batch", 0),
                       ("meta_batch", -5)]


@pytest.mark.parametrize(("name", "backend"), PAIRS, ids=[f"{n}-{b}" for n, b in PAIRS])
def test_conformance(name, backend):
    hp = HyperParams(inner_steps=2, lr_base=0.02, lr_meta=1e-2, meta_batch=4, iterations=5)

    # rejects bad hyperparameters, naming the field and the value
    for field, value in BAD_HYPERPARAMETERS:
        with pytest.raises(ValueError) as error:
            get_algorithm(name, backend, replace(hp, **{field: value}), torch.Generator().manual_seed(1))
        message = str(error.value)
        assert field in message and repr(value) in message, f"{field}={value!r} rejected with {message!r}"

    # trains through the shared loop, with a finite loss, deterministically under a seed
    runs = []
    for _ in range(2):
        learner = get_algorithm(name, backend, hp, torch.Generator().manual_seed(1))
        start = [p.detach().clone() for p in learner.meta_parameters]
        losses = _train(learner, hp.iterations)
        assert len(losses) == hp.iterations and all(math.isfinite(v) for v in losses), f"losses {losses}"
        runs.append((learner, losses))
    (first, losses), (second, again) = runs
    assert losses == again, f"same seeds, different losses: {losses} vs {again}"
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(first.meta_parameters, start))
    assert moved > 1e-4, f"meta-parameters moved at most {moved:.3g} in {hp.iterations} iterations"
    for p, q in zip(first.meta_parameters, second.meta_parameters):
        assert torch.equal(p, q), f"same seeds, weights differ by {float((p - q).abs().max()):.3g}"

    # the adaptation is the network's weights (in its order and shapes) and a rate for each
    network = [p.shape for p in make_network(torch.Generator().manual_seed(0)).parameters()]
    adaptation = first.adaptation()
    assert [p.shape for p in adaptation.params] == network
    assert not any(p.requires_grad for p in adaptation.params)
    assert len(adaptation.lrs) == len(network)
    for lr, shape in zip(adaptation.lrs, network):
        if isinstance(lr, torch.Tensor):  # Meta-SGD: a learned rate per entry
            assert lr.shape == shape and torch.isfinite(lr).all()
        else:
            # func keeps LR_base in a float32 tensor: 0.02 comes back as 0.0199999995
            assert lr is None or math.isclose(lr, hp.lr_base, rel_tol=1e-6), \
                f"rate {lr!r}, expected None or {hp.lr_base}"


# -- 2. second-order MAML: every backend against autograd written here ----------------------------

def _float64(learner):
    """The same learner in float64 (the backends build float32 networks; the maths is dtype-free)."""
    return learner.double()


def _as_float64(batch: TaskBatch) -> TaskBatch:
    return batch.map(torch.Tensor.double)


def _meta_gradient(learner, batch: TaskBatch, float64: bool = False):
    """(meta-loss, meta-gradients without the ensemble dimension), in float32 or float64."""
    if float64:
        learner, batch = _float64(learner), _as_float64(batch)
    loss, grads = learner.meta_gradient(_for(learner, batch))
    grads = _unstack(learner, grads)
    assert all(g.dtype == (torch.float64 if float64 else torch.float32) for g in grads), [g.dtype for g in grads]
    return float(loss.reshape(-1)[0]), grads


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _build(name: str, backend: str, hp: HyperParams, seed: int = 1):
    return get_algorithm(name, backend, hp, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("inner_steps", [1, 2, 5])
def test_maml_backends_equal_direct_autograd(inner_steps):
    """learn2learn, higher and the func engine against the reference above (Finn's LR_base).

    In float64 (each backend converted, same code path) every weight tensor agrees to 1e-9
    relative (measured ≤ 4e-14 over 10 batches). In float32, as they train, the whole
    meta-gradient agrees to 1e-5 (measured ≤ 4e-7); per tensor float32 is ill-conditioned for
    the output bias: its meta-gradient is one number, a mean of per-task terms ~20x larger,
    and cancellation leaves up to 3e-5 relative rounding (batch seed 4, S = 5).
    func is included as one more independent cross-check (tests/test_func_engine.py compares
    it with learn2learn number for number).
    """
    lr = 0.01
    hp = HyperParams(inner_steps=inner_steps, lr_base=lr, meta_batch=5)
    batch = _batch(5)
    init = [p.detach() for p in make_network(torch.Generator().manual_seed(1)).parameters()]
    ref_loss, reference = _maml_reference(init, batch, lr, inner_steps)
    errors = {}
    for backend in SECOND_ORDER_MAML:
        learner = _build("maml", backend, hp)
        for p, q in zip(_network_params(learner), init, strict=True):  # same init seed, same network
            assert torch.equal(p, q), f"{backend}: initial weights differ from make_network(seed 1)'s"
        loss, grads = _meta_gradient(learner, batch)
        assert abs(loss - float(ref_loss)) <= 1e-5 * float(ref_loss), f"{backend}: loss {loss} vs {float(ref_loss)}"
        loss64, grads64 = _meta_gradient(learner, batch, float64=True)
        # (LoopLearner accumulates the reported loss in a float32 zero: 1e-7 even in float64)
        assert abs(loss64 - float(ref_loss)) <= 1e-6 * float(ref_loss), f"{backend}: {loss64} vs {float(ref_loss)}"
        errors[backend] = (_relative(_flat(grads), _flat(reference)), _max_relative(grads64, reference))
    summary = ", ".join(f"{b}: float32 {e32:.1e}, float64 {e64:.1e}" for b, (e32, e64) in errors.items())
    print(f"S={inner_steps}: relative error to direct autograd: {summary}")
    assert all(e32 < 1e-5 and e64 < 1e-9 for e32, e64 in errors.values()), f"S={inner_steps}: {summary}"
    first_order = _max_relative(_fomaml_reference(init, batch, lr, inner_steps), reference)
    assert first_order > 1e-2, f"first-order differs by only {first_order:.2e}: the check cannot tell them apart"


# -- 3. finite differences in float64 ----------------------------------------------------------------

@pytest.mark.parametrize("source", ["reference"] + SECOND_ORDER_MAML)
def test_maml_meta_gradient_equals_finite_differences(source):
    """Central differences (ε = 1e-6) of the meta-loss along a random direction and along the
    largest entry of each weight tensor, against the meta-gradient in float64 (the test's own
    autograd path, and each backend converted to float64). Measured: 1e-10 and ≤ 1e-8 relative."""
    steps, lr, eps = 2, 0.01, 1e-6
    hp = HyperParams(inner_steps=steps, lr_base=lr, meta_batch=4)
    batch = _batch(4, seed=5)
    learner = _build("maml", "l2l" if source == "reference" else source, hp)
    theta = [p.double() for p in _network_params(learner)]
    if source == "reference":
        grads = _maml_reference(theta, batch, lr, steps)[1]
    else:
        grads = _meta_gradient(learner, batch, float64=True)[1]

    def central(direction):
        plus = _meta_loss([p + eps * d for p, d in zip(theta, direction)], batch, lr, steps)
        minus = _meta_loss([p - eps * d for p, d in zip(theta, direction)], batch, lr, steps)
        return (plus - minus) / (2 * eps)

    gen = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in theta]
    analytic = float(sum((g * d).sum() for g, d in zip(grads, direction)))
    numeric = central(direction)
    error = abs(analytic - numeric) / abs(numeric)
    assert error < 1e-6, f"{source}: directional derivative {analytic:.10g} vs finite difference {numeric:.10g}"
    first_order = float(sum((g * d).sum() for g, d in zip(_fomaml_reference(theta, batch, lr, steps), direction)))
    blind = abs(first_order - numeric) / abs(numeric)
    assert blind > 1e-4, f"first-order MAML is within {blind:.1e} of the finite difference: the check is blind"

    for i, g in enumerate(grads):
        index = int(g.abs().argmax())
        unit = [torch.zeros_like(p) for p in theta]
        unit[i].view(-1)[index] = 1.0
        numeric = central(unit)
        analytic = float(g.reshape(-1)[index])
        assert abs(analytic - numeric) <= 1e-6 * abs(numeric), \
            f"{source}: d/dθ[{i}][{index}] = {analytic:.10g} vs finite difference {numeric:.10g}"


# -- 4. FOMAML ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", list(ALGORITHMS["fomaml"]))
@pytest.mark.parametrize("inner_steps", [1, 3])
def test_fomaml_is_the_query_gradient_at_the_adapted_weights(backend, inner_steps):
    """Same tolerances as the MAML comparison: float64 per tensor, float32 over the whole gradient."""
    lr = 0.01
    hp = HyperParams(inner_steps=inner_steps, lr_base=lr, meta_batch=5)
    batch = _batch(5, seed=11)
    learner = _build("fomaml", backend, hp, seed=2)
    init = _network_params(learner)
    reference = _fomaml_reference(init, batch, lr, inner_steps)
    error32 = _relative(_flat(_meta_gradient(learner, batch)[1]), _flat(reference))
    error64 = _max_relative(_meta_gradient(learner, batch, float64=True)[1], reference)
    message = f"fomaml/{backend} S={inner_steps}: relative error float32 {error32:.1e}, float64 {error64:.1e}"
    print(message)
    assert error32 < 1e-5 and error64 < 1e-9, message
    second_order = _max_relative(_maml_reference(init, batch, lr, inner_steps)[1], reference)
    assert second_order > 1e-2, f"second-order differs by only {second_order:.2e}: the check is blind"


# -- 5. MSL ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [b for b in ALGORITHMS["msl"] if b in ALGORITHMS["maml"]])
def test_msl_with_last_step_weights_is_maml(backend, monkeypatch):
    steps = 3
    hp = HyperParams(inner_steps=steps, lr_base=0.05, meta_batch=5, iterations=100)
    batch = _batch(5, seed=13)
    msl = get_algorithm("msl", backend, hp, torch.Generator().manual_seed(4))
    maml = get_algorithm("maml", backend, hp, torch.Generator().manual_seed(4))
    _, maml_grads = maml.meta_gradient(_for(maml, batch))
    _, msl_grads = msl.meta_gradient(_for(msl, batch), iteration=0)
    unforced = _max_relative(msl_grads, maml_grads)
    assert unforced > 1e-3, f"MSL equals MAML ({unforced:.2e}) even with uniform weights: the check is blind"
    monkeypatch.setattr(msl.rule, "loss_weights", lambda hp, iteration: last_step_weights(steps))  # the declaration
    _, msl_grads = msl.meta_gradient(_for(msl, batch), iteration=0)
    error = _max_relative(msl_grads, maml_grads)
    assert error < 1e-6, f"msl/{backend} with weights {last_step_weights(steps)}: relative error {error:.2e} to maml"


@pytest.mark.parametrize("anneal", [1, 7, 100])
def test_msl_weight_schedule(anneal):
    assert msl_weights(0, 0, anneal) == [1.0] and msl_weights(0, 10 * anneal, anneal) == [1.0]
    for steps in [1, 2, 3, 5, 10, 50]:
        floor = 0.03 / steps
        annealed_final = 1 - (steps - 1) * floor
        previous = None
        for it in range(0, 3 * anneal + 2):
            w = msl_weights(steps, it, anneal)
            where = f"S={steps}, iteration {it}, anneal {anneal}: {w}"
            assert len(w) == steps + 1 and w[0] == 0.0, where
            assert abs(sum(w) - 1) < 1e-12, f"sum {sum(w)!r}; {where}"
            assert all(v >= floor - 1e-15 for v in w[1:-1]), f"below the floor {floor}; {where}"
            if it == 0:
                assert all(abs(v - 1 / steps) < 1e-12 for v in w[1:]), f"not uniform at the start; {where}"
            if it >= anneal:
                assert abs(w[-1] - annealed_final) < 1e-12, f"final weight, expected {annealed_final}; {where}"
            if previous is not None:
                assert all(v <= p + 1e-15 for v, p in zip(w[1:-1], previous[1:-1])), f"non-final rose; {where}"
                assert w[-1] >= previous[-1] - 1e-15, f"final weight fell; {where}"
            previous = w
    for steps in range(0, 6):
        assert last_step_weights(steps) == [0.0] * steps + [1.0]


# -- 6, 7. meta-learners against the pre-training baseline -------------------------------------------

# ci.toml's second grid: a setting in which every meta-learner beats pre-training after one step
BEATS_PRETRAIN = HyperParams(inner_steps=3, lr_base=0.02, lr_meta=1e-3, meta_batch=25, iterations=200)


@pytest.fixture(scope="module")
def test_set():
    return evaluation_set(FAMILY, "test", n_tasks=200)


@pytest.fixture(scope="module")
def trained():
    """(name, backend) -> its learner after a seeded run of BEATS_PRETRAIN (each trained once per module)."""
    cache = {}

    def get(name, backend="func"):
        if (name, backend) not in cache:
            with torch.random.fork_rng():  # the learners never touch the global RNG; make sure of it
                torch.manual_seed(12345)
                learner = get_algorithm(name, backend, BEATS_PRETRAIN, torch.Generator().manual_seed(1))
                losses = _train(learner, BEATS_PRETRAIN.iterations)
            assert all(math.isfinite(v) for v in losses), f"{name}/{backend}: non-finite training loss"
            cache[name, backend] = learner
        return cache[name, backend]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", META_LEARNERS)
def test_meta_learner_beats_pretraining_after_one_step(name, trained, test_set):
    pretrain, learner = trained("pretrain").adaptation(), trained(name).adaptation()
    ours, baseline = evaluate(learner, test_set, steps=1), evaluate(pretrain, test_set, steps=1)
    mse, ci = float(ours.mse[1]), float(ours.mse_ci95[1])
    base, base_ci = float(baseline.mse[1]), float(baseline.mse_ci95[1])
    # paired over the same 200 test tasks: the difference's standard error is far below either CI
    diff = adaptation_curve(learner, test_set, 1)[1] - adaptation_curve(pretrain, test_set, 1)[1]
    mean, se = float(diff.mean()), float(diff.std() / len(diff) ** 0.5)
    message = (f"{name}: 1-step test MSE {mse:.3f} ± {ci:.3f} vs pretrain {base:.3f} ± {base_ci:.3f} "
               f"(n={len(diff)}; paired difference {mean:.3f} ± {se:.3f} s.e.)")
    print(message)
    assert mse < base and mean + 3 * se < 0, message


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(ALGORITHMS["pretrain"]))
def test_pretrain_is_evaluated_after_its_fine_tuning(backend, trained, test_set):
    """Its step-10 MSE is the fine-tuned model's: lower than step 0, and equal to fine-tuning by hand
    (a public implementation reports the un-adapted model's MSE for this baseline)."""
    adaptation = trained("pretrain", backend).adaptation()
    frame = evaluate(adaptation, test_set, steps=10)
    before, after = float(frame.mse[0]), float(frame.mse[10])
    message = f"pretrain/{backend}: test MSE after 10 steps {after:.4f} vs before {before:.4f}"
    print(message)
    assert after < before - 0.1, message
    # 10 SGD steps per task by hand (float64), then the query MSE
    lr = adaptation.lrs[0]
    assert all(r == lr for r in adaptation.lrs), adaptation.lrs
    by_hand = []
    for t in range(len(test_set)):
        phi = [p.double() for p in adaptation.params]
        task = [v[t].double() for v in (test_set.x_support, test_set.y_support, test_set.x_query, test_set.y_query)]
        for _ in range(10):
            leaves = [p.requires_grad_() for p in phi]
            grads = torch.autograd.grad(_mse(leaves, task[0], task[1]), leaves)
            phi = [(p - lr * g).detach() for p, g in zip(leaves, grads)]
        by_hand.append(float(_mse(phi, task[2], task[3])))
    expected = sum(by_hand) / len(by_hand)
    assert abs(after - expected) < 1e-4 * expected, \
        f"{backend}: evaluated {after:.6f} vs fine-tuned by hand {expected:.6f}"
