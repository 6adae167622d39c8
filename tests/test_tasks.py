"""Task registry, the sine family (Finn et al. 2017) and the fixed evaluation sets.

Every check compares with an independent computation (the formula y = A·sin(x + φ), a
hand-replayed draw order, a two-sample KS test) or with a concrete number.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest
import torch
from scipy import stats

from tasks import TaskBatch, evaluation_set, get_task, list_tasks

FIELDS = ("x_support", "y_support", "x_query", "y_query", "amplitude", "phase")


def part(batch: TaskBatch, name: str) -> torch.Tensor:
    """A data tensor or a per-task parameter of `batch`, by name."""
    return batch.params[name] if name in batch.params else getattr(batch, name)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_batches_equal(a: TaskBatch, b: TaskBatch) -> None:
    for name in FIELDS:
        assert torch.equal(part(a, name), part(b, name)), f"{name} differs"


def batches_equal(a: TaskBatch, b: TaskBatch) -> bool:
    return all(part(a, n).shape == part(b, n).shape and torch.equal(part(a, n), part(b, n))
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
        tensor = part(batch, name)
        assert tuple(tensor.shape) == (5, points, 1), (name, tuple(tensor.shape))
        assert tensor.dtype == torch.float32, (name, tensor.dtype)
    assert tuple(batch.params["amplitude"].shape) == (5,) and tuple(batch.params["phase"].shape) == (5,), \
        (tuple(batch.params["amplitude"].shape), tuple(batch.params["phase"].shape))
    double = get_task("sine").sample(2, gen(0), dtype=torch.float64)
    assert double.y_query.dtype == torch.float64, double.y_query.dtype


def test_finn_ranges_hold_on_a_large_sample():
    """A ~ U[0.1, 5.0), φ ~ U[0, π), x ~ U[-5, 5]: in range, and filling the range."""
    batch = get_task("sine", k_shot=10, n_query=10).sample(20_000, gen(1))
    a, p = batch.params["amplitude"], batch.params["phase"]
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
    a = batch.params["amplitude"].double().view(-1, 1, 1)
    p = batch.params["phase"].double().view(-1, 1, 1)
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
        assert not torch.equal(part(first, name), part(other, name)), f"{name} equal across seeds 3 and 4"


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
        torch.testing.assert_close(part(batch, name), expected, msg=lambda m, n=name: f"{n}: {m}")


def test_select_is_task_i_of_the_batch():
    batch = get_task("sine", k_shot=3, n_query=5).sample(6, gen(7))
    for i in range(6):
        one = batch.select(i)
        assert len(one) == 1, len(one)
        for name in FIELDS:
            assert torch.equal(part(one, name)[0], part(batch, name)[i]), (i, name)
        y = one.params["amplitude"][0] * torch.sin(one.x_query[0] + one.params["phase"][0])
        assert torch.allclose(one.y_query[0], y, atol=1e-6), (i, (one.y_query[0] - y).abs().max().item())
    picked = batch.select(torch.tensor([4, 1]))
    assert torch.equal(picked.params["amplitude"], batch.params["amplitude"][[4, 1]]), picked.params


def test_vectorised_and_per_task_sampling_have_the_same_distribution():
    """One call of 2000 tasks vs 2000 calls of one task: two-sample KS on A, φ and x
    (seeded, so deterministic; p > 0.01 with 2000 samples per side)."""
    family = get_task("sine", k_shot=1, n_query=1)
    batched = family.sample(2000, gen(8))
    generator = gen(9)
    singles = [family.sample(1, generator) for _ in range(2000)]
    for name in ("amplitude", "phase", "x_support", "y_query"):
        left = part(batched, name).flatten().numpy()
        right = torch.cat([part(s, name).flatten() for s in singles]).numpy()
        result = stats.ks_2samp(left, right)
        assert result.pvalue > 0.01, f"{name}: KS statistic {result.statistic:.3f}, p = {result.pvalue:.2g}"


def test_n_tasks_must_be_positive():
    with pytest.raises(ValueError, match="n_tasks"):
        get_task("sine").sample(0, gen(0))


# ----------------------------------------------------------------------------- noise

def test_zero_noise_gives_exact_targets():
    family = get_task("sine", noise=0.0)
    batch = family.sample(100, gen(10))
    exact = family.function(batch.x_query, batch.params)
    assert torch.equal(batch.y_query, exact), (batch.y_query - exact).abs().max().item()
    assert torch.equal(batch.y_support, family.function(batch.x_support, batch.params))


@pytest.mark.parametrize("noise", [0.1, 0.5])
def test_noise_residual_std_matches_the_noise_level(noise):
    """20 000 residuals per split: the std estimate's relative SE is ~0.5%; allow 3%."""
    family = get_task("sine", k_shot=20, n_query=20, noise=noise)
    batch = family.sample(1000, gen(11))
    for x, y in ((batch.x_support, batch.y_support), (batch.x_query, batch.y_query)):
        residual = y - family.function(x, batch.params)
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
    a, p = batch.params["amplitude"].view(-1, 1, 1), batch.params["phase"].view(-1, 1, 1)
    assert torch.allclose(batch.y_support, a * torch.sin(xs + p))


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
    assert torch.all(batch.params["phase"] == 0.5), batch.params["phase"]


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
        shared = set(batch.params["amplitude"].tolist()) & set(training.params["amplitude"].tolist())
        assert len(shared) <= 1, f"{name} shares {len(shared)} amplitudes with training seed 0"
    shared = set(test.params["amplitude"].tolist()) & set(validation.params["amplitude"].tolist())
    assert len(shared) <= 1, f"test and validation share {len(shared)} amplitudes"


def test_evaluation_set_k_shot_override_keeps_the_tasks():
    """Other K: the support size changes, the tasks (A, φ) do not, so K's compare paired."""
    family = get_task("sine", k_shot=10)
    at_10, at_5 = evaluation_set(family, "test", n_tasks=50), evaluation_set(family, "test", n_tasks=50, k_shot=5)
    assert tuple(at_5.x_support.shape) == (50, 5, 1), tuple(at_5.x_support.shape)
    assert tuple(at_5.x_query.shape) == (50, 100, 1), tuple(at_5.x_query.shape)
    for name in ("amplitude", "phase"):
        assert torch.equal(at_5.params[name], at_10.params[name]), name


def test_evaluation_set_keeps_the_family_variant():
    batch = evaluation_set(get_task("sine-half"), "validation", n_tasks=100)
    assert batch.x_support.min() >= 0.0, batch.x_support.min().item()
    assert (batch.x_query < 0).any(), batch.x_query.min().item()


def test_unknown_split_lists_known_splits():
    with pytest.raises(ValueError) as info:
        evaluation_set(get_task("sine"), "train")
    message = str(info.value)
    assert "train" in message and "test" in message and "validation" in message, message


# ----------------------------------------------------------------------------- unchanged sine draws

def _digest(batch: TaskBatch) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in FIELDS:
        digest.update(part(batch, name).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_sine_draws_are_those_of_every_committed_result():
    """Values computed with the code before `TaskBatch.params` (A, φ, support x, query x, noise
    in that order): a changed draw order or formula changes them, and every stored result with them."""
    batch = get_task("sine", k_shot=3, n_query=2).sample(2, gen(0))
    assert [v.hex() for v in batch.params["amplitude"].tolist()] == ["0x1.440d580000000p+1", "0x1.eea0f20000000p+1"]
    assert [v.hex() for v in batch.params["phase"].tolist()] == ["0x1.1ca1900000000p-2", "0x1.a8bdaa0000000p-2"]
    assert [v.hex() for v in batch.x_support.flatten()[:3].tolist()] == [
        "-0x1.ecff600000000p+0", "0x1.573dd00000000p+0", "-0x1.95c6000000000p-4"]
    assert [v.hex() for v in batch.y_query.flatten()[:3].tolist()] == [
        "-0x1.31c0180000000p+1", "-0x1.a3ed8a0000000p+0", "0x1.d0913c0000000p+1"]
    noisy = get_task("sine", k_shot=3, n_query=2, noise=0.1).sample(2, gen(0))
    assert noisy.y_query.flatten()[0].item().hex() == "-0x1.3c54440000000p+1"
    for (name, params), expected in {("sine", ()): "fbb5dbac9ff8d7e3", ("sine-half", ()): "83b587b74fa82a9e",
                                     ("sine", (("noise", 0.1),)): "67eceeaafac43c58"}.items():
        drawn = get_task(name, k_shot=5, n_query=7, **dict(params)).sample(50, gen(3))
        assert _digest(drawn) == expected, (name, params)
    assert _digest(evaluation_set(get_task("sine"), "test", n_tasks=100)) == "5cc24399154999e6"
    # float64: the generator's draws bitwise; y (sin, and the noise's log/cos) to 1e-12, since
    # torch's vectorised float64 maths rounds differently on AVX2 and AVX-512 CPUs
    wide = get_task("sine", noise=0.2).sample(20, gen(5), dtype=torch.float64)
    import hashlib
    digest = hashlib.sha256()
    for name in ("amplitude", "phase", "x_support", "x_query"):
        digest.update(part(wide, name).contiguous().numpy().tobytes())
    assert digest.hexdigest()[:16] == "5fc28072cd42027a"
    assert wide.y_query.flatten()[0].item() == pytest.approx(float.fromhex("0x1.1f89e07eaf170p-6"), rel=1e-12)
    assert wide.y_support.flatten()[0].item() == pytest.approx(float.fromhex("-0x1.f1d3b64781ecbp-2"), rel=1e-12)
    assert set(batch.params) == {"amplitude", "phase"}, set(batch.params)


# ----------------------------------------------------------------------------- sine-freq

def test_sine_freq_draws_a_frequency_in_range_and_follows_its_formula():
    family = get_task("sine-freq", k_shot=10, n_query=20)
    batch = family.sample(5000, gen(13))
    a, p, w = (batch.params[name] for name in ("amplitude", "phase", "frequency"))
    assert 0.8 <= w.min() and w.max() <= 1.2, (w.min().item(), w.max().item())
    assert w.min() < 0.801 and w.max() > 1.199, (w.min().item(), w.max().item())  # fills the range
    assert 0.1 <= a.min() and a.max() < 5.0 and 0.0 <= p.min() and p.max() < math.pi
    for x, y in ((batch.x_support, batch.y_support), (batch.x_query, batch.y_query)):
        expected = a.view(-1, 1, 1) * torch.sin(w.view(-1, 1, 1) * x + p.view(-1, 1, 1))
        assert torch.equal(y, expected), (y - expected).abs().max().item()
        without_w = a.view(-1, 1, 1) * torch.sin(x + p.view(-1, 1, 1))
        assert (y - without_w).abs().max() > 0.5, "the frequency is not used"
    assert torch.equal(family.function(batch.x_query, batch.params), batch.y_query)


def test_sine_freq_draw_order_replayed_by_hand():
    """A, φ, w, support x, query x, noise: A and φ are therefore the plain sine's draws."""
    batch = get_task("sine-freq", k_shot=4, n_query=6, noise=0.25).sample(9, gen(6))
    replay = gen(6)
    a = 0.1 + 4.9 * torch.rand(9, generator=replay)
    p = math.pi * torch.rand(9, generator=replay)
    w = 0.8 + 0.4 * torch.rand(9, generator=replay)
    xs = -5 + 10 * torch.rand(9, 4, 1, generator=replay)
    xq = -5 + 10 * torch.rand(9, 6, 1, generator=replay)
    ys = a.view(-1, 1, 1) * torch.sin(w.view(-1, 1, 1) * xs + p.view(-1, 1, 1)) + 0.25 * torch.randn(9, 4, 1, generator=replay)
    yq = a.view(-1, 1, 1) * torch.sin(w.view(-1, 1, 1) * xq + p.view(-1, 1, 1)) + 0.25 * torch.randn(9, 6, 1, generator=replay)
    for name, expected in zip(FIELDS + ("frequency",), (xs, ys, xq, yq, a, p, w)):
        torch.testing.assert_close(part(batch, name), expected, msg=lambda m, n=name: f"{n}: {m}")
    plain = get_task("sine", k_shot=4, n_query=6).sample(9, gen(6))
    assert torch.equal(plain.params["amplitude"], batch.params["amplitude"])


def test_sine_freq_parameters_are_checked_and_the_plain_family_has_no_frequency():
    with pytest.raises(ValueError, match="frequency_range"):
        get_task("sine-freq", frequency_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="frequency_range"):
        get_task("sine", frequency_range=(0.8, 1.2))  # the plain family's fields (and fingerprints) are unchanged
    fixed = get_task("sine-freq", frequency_range=(2.0, 2.0)).sample(3, gen(0))
    assert torch.all(fixed.params["frequency"] == 2.0), fixed.params["frequency"]


# ----------------------------------------------------------------------------- TaskBatch

def _batch_with_params(n_tasks: int, seed: int) -> TaskBatch:
    g = gen(seed)
    data = [torch.rand(n_tasks, k, 1, generator=g) for k in (3, 3, 5, 5)]
    return TaskBatch(*data, params={"a": torch.rand(n_tasks, generator=g), "m": torch.rand(n_tasks, 2, 2, generator=g)})


def test_task_batch_params_go_through_select_stack_and_to():
    batch = _batch_with_params(6, 0)
    one = batch.select(4)
    assert len(one) == 1 and torch.equal(one.params["a"], batch.params["a"][4:5])
    assert torch.equal(one.params["m"][0], batch.params["m"][4])
    picked = batch.select(torch.tensor([5, 0]))
    assert torch.equal(picked.params["m"], batch.params["m"][[5, 0]]) and torch.equal(picked.x_query, batch.x_query[[5, 0]])
    other = _batch_with_params(6, 1)
    stacked = TaskBatch.stack([batch, other])
    assert tuple(stacked.params["a"].shape) == (2, 6) and tuple(stacked.params["m"].shape) == (2, 6, 2, 2)
    assert torch.equal(stacked.params["m"][1], other.params["m"]) and torch.equal(stacked.y_support[0], batch.y_support)
    moved = batch.to("meta")
    assert moved.params["a"].device.type == "meta" and moved.x_support.device.type == "meta"
    assert set(moved.params) == {"a", "m"}
    double = batch.map(torch.Tensor.double)
    assert double.params["m"].dtype == torch.float64 and double.y_query.dtype == torch.float64
    with pytest.raises(ValueError, match="different parameters"):
        TaskBatch.stack([batch, TaskBatch(batch.x_support, batch.y_support, batch.x_query, batch.y_query)])


def test_task_batch_without_params_and_the_old_import_path():
    from tasks.batch import TaskBatch as Direct

    plain = TaskBatch(*(torch.zeros(2, 1, 1) for _ in range(4)))
    assert plain.params == {} and len(plain.select(slice(0, 1))) == 1 and Direct is TaskBatch
    assert len(TaskBatch.stack([plain, plain])) == 2


def test_stacked_parameters_give_each_members_targets():
    """`function` broadcasts over a leading members dimension, as ensembles stack batches."""
    family = get_task("sine-freq", k_shot=3, n_query=4)
    batches = [family.sample(5, gen(s)) for s in (1, 2)]
    stacked = TaskBatch.stack(batches)
    assert torch.equal(family.function(stacked.x_query, stacked.params), stacked.y_query)


# ----------------------------------------------------------------------------- registry and plug-ins

@dataclass(frozen=True)
class LineFamily:
    """A toy family, y = s·x with s ~ U[0, 1): the registry must not need a sine."""

    k_shot: int = 5
    n_query: int = 5
    scale: float = 1.0

    def function(self, x, params):
        return params["slope"][..., None, None] * x

    def sample(self, n_tasks, generator, dtype=torch.float32):
        params = {"slope": self.scale * torch.rand(n_tasks, generator=generator, dtype=dtype)}
        xs = torch.rand(n_tasks, self.k_shot, 1, generator=generator, dtype=dtype)
        xq = torch.rand(n_tasks, self.n_query, 1, generator=generator, dtype=dtype)
        return TaskBatch(xs, self.function(xs, params), xq, self.function(xq, params), params)

    def with_points(self, k_shot, n_query):
        return replace(self, k_shot=k_shot, n_query=n_query)


@pytest.fixture
def registry():
    """The `tasks` module, its registry restored afterwards (tests register toy families)."""
    import tasks

    saved, loaded = dict(tasks.TASKS), set(tasks._loaded_plugins)
    yield tasks
    tasks.TASKS.clear()
    tasks.TASKS.update(saved)
    tasks._loaded_plugins.clear()
    tasks._loaded_plugins.update(loaded)


def test_register_task_makes_a_toy_family_available(registry):
    from benchmarks.config import TASKS as seen_by_config

    registry.register_task("line", LineFamily)
    assert "line" in list_tasks() and "line" in seen_by_config
    family = get_task("line", k_shot=3, n_query=4, scale=2.0)
    batch = family.sample(7, gen(0))
    assert tuple(batch.x_support.shape) == (7, 3, 1) and tuple(batch.y_query.shape) == (7, 4, 1)
    slope = batch.params["slope"]
    assert torch.equal(batch.y_query, slope.view(-1, 1, 1) * batch.x_query)
    assert 1.0 < slope.max() < 2.0, slope  # the parameter `scale` reached the family
    test = evaluation_set(family, "test", n_tasks=10)
    assert tuple(test.x_query.shape) == (10, 100, 1)


def test_register_task_refuses_a_taken_name_unless_replacing(registry):
    with pytest.raises(ValueError, match="'sine'.*replace=True"):
        registry.register_task("sine", LineFamily)
    assert type(get_task("sine")).__name__ == "SineFamily"
    registry.register_task("line", LineFamily)
    with pytest.raises(ValueError, match="'line'"):
        registry.register_task("line", LineFamily)
    registry.register_task("line", partial(LineFamily, scale=3.0), replace=True)
    assert get_task("line").scale == 3.0
    with pytest.raises(TypeError, match="callable"):
        registry.register_task("bad", LineFamily())


def test_a_family_without_the_interface_is_named(registry):
    registry.register_task("half-done", lambda **params: object())
    with pytest.raises(TypeError, match="'half-done'.*k_shot.*sample.*with_points.*function"):
        get_task("half-done")


PLUGIN = '''
from tasks import register_task
from test_tasks import LineFamily


def register():
    register_task("plugin-line", LineFamily)
'''


def _fake_entry_points(monkeypatch, *values):
    import importlib.metadata as metadata

    points = [metadata.EntryPoint(name=f"ep{i}", value=value, group="metabench.tasks") for i, value in enumerate(values)]
    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None: [p for p in points if group is None or p.group == group])


def test_entry_point_plugins_are_called_or_imported(registry, monkeypatch, tmp_path):
    (tmp_path / "fake_task_plugin.py").write_text(PLUGIN)
    (tmp_path / "fake_task_module.py").write_text(
        "from tasks import register_task\nfrom test_tasks import LineFamily\nregister_task('module-line', LineFamily)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_points(monkeypatch, "fake_task_plugin:register", "fake_task_module")
    assert registry.load_plugins() == ["ep0", "ep1"]
    assert {"plugin-line", "module-line"} <= set(list_tasks())
    assert len(get_task("plugin-line", k_shot=2).sample(3, gen(0))) == 3
    assert registry.load_plugins() == [], "a plug-in was loaded twice"


@pytest.mark.parametrize("value, cause", [("no_such_task_plugin:register", "ModuleNotFoundError"),
                                          ("fake_task_dupe:register", "already registered")])
def test_a_broken_plugin_is_named(registry, monkeypatch, tmp_path, value, cause):
    (tmp_path / "fake_task_dupe.py").write_text(
        "from tasks import register_task, SineFamily\n\ndef register():\n    register_task('sine', SineFamily)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_entry_points(monkeypatch, value)
    with pytest.raises(registry.TaskPluginError) as info:
        registry.load_plugins()
    message = str(info.value)
    assert "'ep0'" in message and value in message and "metabench.tasks" in message and cause in message, message


def test_an_installed_plugin_is_loaded_at_import(tmp_path):
    """A real distribution (a dist-info with entry_points.txt on the path): `benchmarks list`
    shows its task, and a sweep may name it."""
    import subprocess
    import sys

    (tmp_path / "toy_tasks_plugin.py").write_text(
        "from tasks import register_task, SineFamily\n\n"
        "def register():\n    register_task('toy-sine', SineFamily)\n")
    info = tmp_path / "toy_tasks_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-tasks-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[metabench.tasks]\ntoy = toy_tasks_plugin:register\n")
    root = Path(__file__).resolve().parents[1]
    code = ("from benchmarks.config import TASKS; from tasks import get_task; import torch; "
            "assert 'toy-sine' in TASKS; print(len(get_task('toy-sine').sample(2, torch.Generator())))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "2", result.stderr
    (info / "entry_points.txt").write_text("[metabench.tasks]\ntoy = toy_tasks_plugin:missing\n")
    result = subprocess.run([sys.executable, "-m", "benchmarks", "list"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "'toy'" in result.stderr and "toy_tasks_plugin:missing" in result.stderr, \
        result.stderr
