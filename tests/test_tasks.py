"""Task registry, the sine family (Finn et al. 2017) and the fixed evaluation sets.

Every check compares with an independent computation (the formula y = A·sin(x + φ), a
hand-replayed draw order, a two-sample KS test) or with a concrete number.
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from tasks import TaskBatch, evaluation_set, get_task, list_tasks

FIELDS = ("x_support", "y_support", "x_query", "y_query", "amplitude", "phase")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_batches_equal(a: TaskBatch, b: TaskBatch) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), f"{name} differs"


def batches_equal(a: TaskBatch, b: TaskBatch) -> bool:
    return all(getattr(a, n).shape == getattr(b, n).shape and torch.equal(getattr(a, n), getattr(b, n))
               for n in FIELDS)


# ----------------------------------------------------------------------------- registry

def test_registry_lists_sine_variants():
    names = list_tasks()
    assert {"sine", "sine-half"} <= set(names), names
    assert names == sorted(names), names
    for name in names:
        family = get_task(name, k_shot=3, n_query=4)
        assert (family.k_shot, family.n_query) == (3, 4), (name, family)


def test_unknown_task_lists_known_ones():
    with pytest.raises(KeyError) as info:
        get_task("nope")
    message = str(info.value)
    assert "nope" in message and "sine" in message and "sine-half" in message, message


def test_unknown_task_parameter_is_a_value_error():
    with pytest.raises(ValueError, match="sine") as info:
        get_task("sine", wavelength=2.0)
    assert "wavelength" in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- sine sampling

def test_shapes_and_dtypes():
    batch = get_task("sine", k_shot=7, n_query=13).sample(5, gen(0))
    assert len(batch) == 5
    for name, points in (("x_support", 7), ("y_support", 7), ("x_query", 13), ("y_query", 13)):
        tensor = getattr(batch, name)
        assert tuple(tensor.shape) == (5, points, 1), (name, tuple(tensor.shape))
        assert tensor.dtype == torch.float32, (name, tensor.dtype)
    assert tuple(batch.amplitude.shape) == (5,) and tuple(batch.phase.shape) == (5,), \
        (tuple(batch.amplitude.shape), tuple(batch.phase.shape))
    double = get_task("sine").sample(2, gen(0), dtype=torch.float64)
    assert double.y_query.dtype == torch.float64, double.y_query.dtype


def test_finn_ranges_hold_on_a_large_sample():
    """A ~ U[0.1, 5.0), φ ~ U[0, π), x ~ U[-5, 5]: in range, and filling the range."""
    batch = get_task("sine", k_shot=10, n_query=10).sample(20_000, gen(1))
    a, p = batch.amplitude, batch.phase
    x = torch.cat([batch.x_support.flatten(), batch.x_query.flatten()])
    assert 0.1 <= a.min() and a.max() < 5.0, (a.min().item(), a.max().item())
    assert 0.0 <= p.min() and p.max() < math.pi, (p.min().item(), p.max().item())
    assert -5.0 <= x.min() and x.max() <= 5.0, (x.min().item(), x.max().item())
    # uniform, not bunched: extremes near the ends and the mean at the midpoint
    assert a.min() < 0.11 and a.max() > 4.99, (a.min().item(), a.max().item())
    assert p.min() < 0.01 and p.max() > math.pi - 0.01, (p.min().item(), p.max().item())
    assert x.min() < -4.99 and x.max() > 4.99, (x.min().item(), x.max().item())
    assert abs(a.mean().item() - 2.55) < 0.05, a.mean().item()
    assert abs(p.mean().item() - math.pi / 2) < 0.03, p.mean().item()
    assert abs(x.mean().item()) < 0.03, x.mean().item()


def test_targets_follow_the_formula():
    """y = A·sin(x + φ) (plus sign: the sin(x−φ) drift is a known anti-pattern), support and query."""
    batch = get_task("sine", k_shot=5, n_query=20).sample(50, gen(2))
    a = batch.amplitude.double().view(-1, 1, 1)
    p = batch.phase.double().view(-1, 1, 1)
    for x, y in ((batch.x_support, batch.y_support), (batch.x_query, batch.y_query)):
        expected = a * torch.sin(x.double() + p)
        error = (y.double() - expected).abs().max().item()
        assert error < 1e-5, f"max |y - A·sin(x+φ)| = {error}"
        wrong_sign = (y.double() - a * torch.sin(x.double() - p)).abs().max().item()
        assert wrong_sign > 0.1, f"y also matches A·sin(x-φ) (max error {wrong_sign})"


def test_same_seed_same_batch_other_seed_other_batch():
    family = get_task("sine")
    assert_batches_equal(family.sample(8, gen(3)), family.sample(8, gen(3)))
    other = family.sample(8, gen(4))
    first = family.sample(8, gen(3))
    for name in FIELDS:
        assert not torch.equal(getattr(first, name), getattr(other, name)), f"{name} equal across seeds 3 and 4"


def test_sampling_advances_only_its_own_generator():
    """No global RNG: torch's default generator state is byte-identical afterwards."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state().clone()
    generator = gen(5)
    start = generator.get_state().clone()
    get_task("sine", noise=0.3).sample(10, generator)
    get_task("sine-half").sample(10, generator)
    assert torch.equal(torch.random.get_rng_state(), before), "global RNG state changed"
    assert not torch.equal(generator.get_state(), start), "the explicit generator was not used"


def test_draw_order_replayed_by_hand():
    """What "vectorised" means here. Draw order is A (all tasks), φ, support x, query x,
    noise, so one call with n tasks is *not* bitwise n calls with one task. What must hold:
    the batch equals an independent replay of that documented order with plain
    `torch.rand`/`torch.randn`, and task i of the batch is `batch.select(i)` with its own
    A and φ (tested in `test_select_*`). Distributional equality with per-task calls is
    checked separately with a KS test."""
    family = get_task("sine", k_shot=4, n_query=6, noise=0.25)
    batch = family.sample(9, gen(6))
    replay = gen(6)
    a = 0.1 + 4.9 * torch.rand(9, generator=replay)
    p = math.pi * torch.rand(9, generator=replay)
    xs = -5 + 10 * torch.rand(9, 4, 1, generator=replay)
    xq = -5 + 10 * torch.rand(9, 6, 1, generator=replay)
    ys = a.view(-1, 1, 1) * torch.sin(xs + p.view(-1, 1, 1)) + 0.25 * torch.randn(9, 4, 1, generator=replay)
    yq = a.view(-1, 1, 1) * torch.sin(xq + p.view(-1, 1, 1)) + 0.25 * torch.randn(9, 6, 1, generator=replay)
    for name, expected in zip(FIELDS, (xs, ys, xq, yq, a, p)):
        torch.testing.assert_close(getattr(batch, name), expected, msg=lambda m, n=name: f"{n}: {m}")


def test_select_is_task_i_of_the_batch():
    batch = get_task("sine", k_shot=3, n_query=5).sample(6, gen(7))
    for i in range(6):
        one = batch.select(i)
        assert len(one) == 1, len(one)
        for name in FIELDS:
            assert torch.equal(getattr(one, name)[0], getattr(batch, name)[i]), (i, name)
        y = one.amplitude[0] * torch.sin(one.x_query[0] + one.phase[0])
        assert torch.allclose(one.y_query[0], y, atol=1e-6), (i, (one.y_query[0] - y).abs().max().item())
    picked = batch.select(torch.tensor([4, 1]))
    assert torch.equal(picked.amplitude, batch.amplitude[[4, 1]]), (picked.amplitude, batch.amplitude)


def test_vectorised_and_per_task_sampling_have_the_same_distribution():
    """One call of 2000 tasks vs 2000 calls of one task: two-sample KS on A, φ and x
    (seeded, so deterministic; p > 0.01 with 2000 samples per side)."""
    family = get_task("sine", k_shot=1, n_query=1)
    batched = family.sample(2000, gen(8))
    generator = gen(9)
    singles = [family.sample(1, generator) for _ in range(2000)]
    for name in ("amplitude", "phase", "x_support", "y_query"):
        left = getattr(batched, name).flatten().numpy()
        right = torch.cat([getattr(s, name).flatten() for s in singles]).numpy()
        result = stats.ks_2samp(left, right)
        assert result.pvalue > 0.01, f"{name}: KS statistic {result.statistic:.3f}, p = {result.pvalue:.2g}"


def test_n_tasks_must_be_positive():
    with pytest.raises(ValueError, match="n_tasks"):
        get_task("sine").sample(0, gen(0))


# ----------------------------------------------------------------------------- noise

def test_zero_noise_gives_exact_targets():
    family = get_task("sine", noise=0.0)
    batch = family.sample(100, gen(10))
    exact = family.function(batch.x_query, batch.amplitude, batch.phase)
    assert torch.equal(batch.y_query, exact), (batch.y_query - exact).abs().max().item()
    assert torch.equal(batch.y_support, family.function(batch.x_support, batch.amplitude, batch.phase))


@pytest.mark.parametrize("noise", [0.1, 0.5])
def test_noise_residual_std_matches_the_noise_level(noise):
    """20 000 residuals per split: the std estimate's relative SE is ~0.5%; allow 3%."""
    family = get_task("sine", k_shot=20, n_query=20, noise=noise)
    batch = family.sample(1000, gen(11))
    for x, y in ((batch.x_support, batch.y_support), (batch.x_query, batch.y_query)):
        residual = y - family.function(x, batch.amplitude, batch.phase)
        std, mean = residual.std().item(), residual.mean().item()
        assert abs(std - noise) < 0.03 * noise, f"residual std {std:.4f}, noise {noise}"
        assert abs(mean) < 0.03 * noise, f"residual mean {mean:.4f}, noise {noise}"


# ----------------------------------------------------------------------------- sine-half

def test_sine_half_supports_on_the_right_queries_everywhere():
    batch = get_task("sine-half", k_shot=10, n_query=50).sample(200, gen(12))
    xs, xq = batch.x_support, batch.x_query
    assert 0.0 <= xs.min() and xs.max() <= 5.0, (xs.min().item(), xs.max().item())
    assert xs.min() < 0.05 and xs.max() > 4.95, (xs.min().item(), xs.max().item())
    assert -5.0 <= xq.min() and xq.max() <= 5.0, (xq.min().item(), xq.max().item())
    negative = (xq < 0).float().mean().item()
    assert 0.45 < negative < 0.55, f"fraction of query x < 0: {negative:.3f}"
    assert torch.allclose(batch.y_support, batch.amplitude.view(-1, 1, 1) * torch.sin(xs + batch.phase.view(-1, 1, 1)))


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("params, name", [
    ({"amplitude_range": (5.0, 0.1)}, "amplitude_range"),
    ({"amplitude_range": (1.0, 1.0)}, "amplitude_range"),
    ({"amplitude_range": ("low", "high")}, "amplitude_range"),
    ({"amplitude_range": None}, "amplitude_range"),
    ({"amplitude_range": (0.1, 2.0, 5.0)}, "amplitude_range"),
    ({"amplitude_range": (0.1, math.inf)}, "amplitude_range"),
    ({"amplitude_range": ("0.1", "5.0")}, "amplitude_range"),  # numeric strings are not numbers
    ({"amplitude_range": "15"}, "amplitude_range"),  # once unpacked to the range (1.0, 5.0)
    ({"x_range": (5.0, -5.0)}, "x_range"),
    ({"x_range": (2.0, 2.0)}, "x_range"),
    ({"phase_range": (math.pi, 0.0)}, "phase_range"),
    ({"support_x_range": (5.0, 0.0)}, "support_x_range"),
    ({"k_shot": 0}, "k_shot"),
    ({"k_shot": 2.5}, "k_shot"),
    ({"k_shot": True}, "k_shot"),
    ({"n_query": 0}, "n_query"),
    ({"noise": -0.1}, "noise"),
    ({"noise": math.nan}, "noise"),
    ({"noise": "0.1"}, "noise"),
])
def test_invalid_parameters_name_the_parameter(params, name):
    with pytest.raises(ValueError) as info:
        get_task("sine", **params)
    message = str(info.value)
    assert name in message, f"{params}: message does not name {name!r}: {message}"


def test_a_fixed_phase_is_allowed():
    batch = get_task("sine", phase_range=(0.5, 0.5)).sample(4, gen(0))
    assert torch.all(batch.phase == 0.5), batch.phase


# ----------------------------------------------------------------------------- evaluation sets

def test_evaluation_set_defaults_and_determinism():
    family = get_task("sine", k_shot=5, n_query=10)
    first, second = evaluation_set(family), evaluation_set(family)
    assert_batches_equal(first, second)
    assert len(first) == 600, len(first)
    assert tuple(first.x_support.shape) == (600, 5, 1), tuple(first.x_support.shape)
    assert tuple(first.x_query.shape) == (600, 100, 1), tuple(first.x_query.shape)


def test_evaluation_splits_differ_from_each_other_and_from_training():
    family = get_task("sine", k_shot=10, n_query=10)
    test, validation = evaluation_set(family, "test"), evaluation_set(family, "validation")
    training = family.with_points(10, 100).sample(600, gen(0))
    assert not batches_equal(test, validation), "test == validation"
    for name, batch in (("test", test), ("validation", validation)):
        assert not batches_equal(batch, training), f"{name} == the seed-0 training batch"
        shared = set(batch.amplitude.tolist()) & set(training.amplitude.tolist())
        assert len(shared) <= 1, f"{name} shares {len(shared)} amplitudes with training seed 0"
    shared = set(test.amplitude.tolist()) & set(validation.amplitude.tolist())
    assert len(shared) <= 1, f"test and validation share {len(shared)} amplitudes"


def test_evaluation_set_k_shot_override_keeps_the_tasks():
    """Other K: the support size changes, the tasks (A, φ) do not, so K's compare paired."""
    family = get_task("sine", k_shot=10)
    at_10, at_5 = evaluation_set(family, "test", n_tasks=50), evaluation_set(family, "test", n_tasks=50, k_shot=5)
    assert tuple(at_5.x_support.shape) == (50, 5, 1), tuple(at_5.x_support.shape)
    assert tuple(at_5.x_query.shape) == (50, 100, 1), tuple(at_5.x_query.shape)
    assert torch.equal(at_5.amplitude, at_10.amplitude) and torch.equal(at_5.phase, at_10.phase)


def test_evaluation_set_keeps_the_family_variant():
    batch = evaluation_set(get_task("sine-half"), "validation", n_tasks=100)
    assert batch.x_support.min() >= 0.0, batch.x_support.min().item()
    assert (batch.x_query < 0).any(), batch.x_query.min().item()


def test_unknown_split_lists_known_splits():
    with pytest.raises(ValueError) as info:
        evaluation_set(get_task("sine"), "train")
    message = str(info.value)
    assert "train" in message and "test" in message and "validation" in message, message
