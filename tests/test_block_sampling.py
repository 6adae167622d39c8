"""Pre-sampled task blocks (`sample_block`, `benchmarks.training`): the task stream and the trained
numbers are bitwise those of per-iteration sampling, and the progress callback stays off the hot path."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from algorithms import HyperParams, get_algorithm
from benchmarks import training
from benchmarks.plugins import load_plugins
from benchmarks.training import meta_train
from tasks import GaussClassFamily, SineFamily, SineFreqFamily, TaskBatch, get_task
from tasks.batch import DATA, sequential_block

ROOT = Path(__file__).resolve().parents[1]


def _plugin_sine_subclass():
    """The example plug-in's `sine-mae` (a SineFamily subclass that changes only its problem)."""
    load_plugins([str(ROOT / "examples/plugin_task/linear_class.py")])
    return get_task("sine-mae")


def _assert_same(a: TaskBatch, b: TaskBatch, where=""):
    for name in DATA:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y), f"{where} {name}"
    assert sorted(a.params) == sorted(b.params), where
    for key in a.params:
        assert a.params[key].shape == b.params[key].shape and torch.equal(a.params[key], b.params[key]), f"{where} {key}"


def _assert_block_is_sequential(family, n_tasks, sizes, dtype=torch.float32, seed=5):
    """Blocks of `sizes` iterations, one after the other, against as many `sample` calls."""
    blocks, sequential = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for size in sizes:
        block = family.sample_block(size, n_tasks, blocks, dtype=dtype)
        assert len(block) == size
        for i in range(size):
            _assert_same(block.select(i).map(lambda t: t[0]), family.sample(n_tasks, sequential, dtype),
                         f"{type(family).__name__} K={family.k_shot} T={n_tasks} iteration {i} of a block of {size}")
    assert torch.equal(blocks.get_state(), sequential.get_state()), "the block drew more or less than the calls"


# -- pitfall (a): which CPU draws split -------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_uniform_draw_is_the_concatenation_of_smaller_ones(dtype):
    for sizes in [(1, 1), (25, 25, 250, 250), (7, 3, 70, 70), (15, 17), (5, 12_345), (16, 16)]:
        whole, parts = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        one = torch.rand(sum(sizes), generator=whole, dtype=dtype)
        assert torch.equal(one, torch.cat([torch.rand(s, generator=parts, dtype=dtype) for s in sizes])), sizes
        assert torch.equal(whole.get_state(), parts.get_state())


def test_gaussian_draws_do_not_split():
    """Why noise and `gauss-class` fall back to sequential draws: torch.randn transforms groups of 16."""
    whole, parts = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    one = torch.randn(500, generator=whole)
    assert not torch.equal(one, torch.cat([torch.randn(250, generator=parts) for _ in range(2)]))


# -- the task stream, bit for bit ---------------------------------------------------------------

@pytest.mark.parametrize("task", ["sine", "sine-half", "sine-freq"])
@pytest.mark.parametrize("k_shot", [5, 10, 20])
@pytest.mark.parametrize("n_tasks", [1, 7, 25])
def test_sine_blocks_equal_sequential_samples(task, k_shot, n_tasks):
    family = get_task(task, k_shot=k_shot, n_query=k_shot + 3)
    _assert_block_is_sequential(family, n_tasks, sizes=[1, 37, 8, 100])


@pytest.mark.parametrize("family", [SineFamily(phase_range=(1.0, 1.0)), SineFreqFamily(frequency_range=(0.5, 3.0)),
                                    SineFamily(amplitude_range=(-3.0, 1e3), x_range=(-1e4, 1e4))])
def test_other_ranges_and_float64(family):
    _assert_block_is_sequential(family, 13, sizes=[31, 2])
    _assert_block_is_sequential(family, 13, sizes=[9], dtype=torch.float64)


def test_a_block_over_two_threads_equals_sequential_samples():
    """A block large enough for torch to split its element-wise ops between threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _assert_block_is_sequential(get_task("sine-freq"), 25, sizes=[400])
    finally:
        torch.set_num_threads(threads)


def test_the_vectorised_block_draws_few_times(monkeypatch):
    """The point of blocks: one uniform draw per block, not ~4 per iteration."""
    calls = []
    real = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: calls.append(1) or real(*a, **k))
    SineFreqFamily().sample_block(50, 25, torch.Generator().manual_seed(0))
    assert len(calls) == 1


@pytest.mark.parametrize("family", [SineFamily(noise=0.3), SineFamily(noise=1.0, support_x_range=(0.0, 5.0)),
                                    GaussClassFamily(), GaussClassFamily(k_shot=1, n_way=3, dim=4)])
def test_families_whose_draws_do_not_split_sample_each_iteration(family, monkeypatch):
    """Fallback: Gaussian draws (noise, `gauss-class`) come from `sample`, one call per iteration."""
    _assert_block_is_sequential(family, 25, sizes=[1, 12])
    _assert_block_is_sequential(family, 7, sizes=[5])
    calls = []
    sample = type(family).sample
    monkeypatch.setattr(type(family), "sample", lambda self, *a, **k: calls.append(1) or sample(self, *a, **k))
    family.sample_block(6, 25, torch.Generator().manual_seed(0))
    assert len(calls) == 6


def test_a_subclass_that_overrides_the_draws_falls_back():
    class Shifted(SineFamily):  # a plug-in's own draw: the vectorised block would not know it
        def draw_params(self, n_tasks, generator, dtype):
            params = super().draw_params(n_tasks, generator, dtype)
            params["amplitude"] = params["amplitude"] + torch.rand(n_tasks, generator=generator, dtype=dtype)
            return params

    _assert_block_is_sequential(Shifted(), 7, sizes=[9, 4])
    assert not Shifted()._block_is_exact()
    plugin = _plugin_sine_subclass()
    assert plugin._block_is_exact()  # it changes only its problem: vectorised
    _assert_block_is_sequential(plugin, 7, sizes=[9, 4])


def test_sequential_block_and_bad_sizes():
    family = get_task("sine")
    generator = torch.Generator().manual_seed(1)
    expected = TaskBatch.stack([family.sample(4, generator) for _ in range(3)])
    _assert_same(sequential_block(family, 3, 4, torch.Generator().manual_seed(1)), expected)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="n_iterations"):
            family.sample_block(bad, 4, torch.Generator())
        with pytest.raises(ValueError, match="n_tasks"):
            family.sample_block(2, bad, torch.Generator())
        with pytest.raises(ValueError, match="n_iterations"):
            GaussClassFamily().sample_block(bad, 4, torch.Generator())


# -- the training loop --------------------------------------------------------------------------

class _PerIteration:
    """A family without `sample_block` (as a plug-in's): the loop samples it per iteration."""

    def __init__(self, family):
        self.family, self.k_shot = family, family.k_shot

    def sample(self, n_tasks, generator, dtype=torch.float32):
        return self.family.sample(n_tasks, generator, dtype)


class _Recorder:
    """A learner that only records the batches it is given."""

    def __init__(self, stacked, meta_batch=7):
        self.stacked_batches, self.device = stacked, torch.device("cpu")
        self.hp = HyperParams(meta_batch=meta_batch)
        self.batches = []

    def step(self, batch, iteration):
        self.batches.append(batch)
        return {"loss": torch.zeros(2)}


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 then 7 iterations, so runs end inside a block."""
    monkeypatch.setattr(training, "FIRST_BLOCK", 8)
    monkeypatch.setattr(training, "BLOCK_ITERATIONS", 7)


@pytest.mark.parametrize("stacked", [True, False])
def test_the_loop_steps_on_the_per_iteration_batches(stacked, small_blocks):
    family = get_task("sine-freq")
    members = 2 if stacked else 1
    runs = {}
    for name, fam in (("blocks", family), ("per-iteration", _PerIteration(family))):
        learner = _Recorder(stacked)
        generators = [torch.Generator().manual_seed(10 + m) for m in range(members)]
        list(meta_train(learner, fam, generators, 30, set()))
        runs[name] = learner.batches, [g.get_state() for g in generators]
    (blocks, block_states), (reference, reference_states) = runs["blocks"], runs["per-iteration"]
    assert len(blocks) == len(reference) == 30
    for i, (b, r) in enumerate(zip(blocks, reference)):
        _assert_same(b, r, f"iteration {i}")
        for name in DATA:
            t = getattr(b, name)
            assert t.is_contiguous() and t.data_ptr() % 64 == 0, (i, name)  # a compiled step copies misaligned inputs
    # the last block is the remainder: the generators end where per-iteration sampling leaves them
    assert all(torch.equal(s, r) for s, r in zip(block_states, reference_states))


def _train(backend, members, family, iterations=30):
    hps = [HyperParams(inner_steps=1, lr_base=0.03, lr_meta=3e-3, meta_batch=7, iterations=iterations)
           for _ in range(members)]
    inits = [torch.Generator().manual_seed(m) for m in range(members)]
    if members == 1:
        learner = get_algorithm("maml", backend, hps[0], inits[0])
    else:
        learner = get_algorithm("maml", backend, hps, inits)
    streams = [torch.Generator().manual_seed(100 + m) for m in range(members)]
    reports = list(meta_train(learner, family, streams, iterations, {10, iterations}))
    return [p.detach().clone() for p in learner.meta_parameters], reports


@pytest.mark.parametrize("backend, members", [("func", 2), ("func", 1), ("generic", 1)])
def test_training_with_blocks_ends_with_bitwise_the_same_weights(backend, members, small_blocks):
    """The stacked engine (an ensemble and a single run, compile off) and a non-stacked one (the
    generic engine; its first step imports torch._dynamo, ~4 s in a process that had not)."""
    family = get_task("sine")
    blocks, block_reports = _train(backend, members, family)
    reference, reference_reports = _train(backend, members, _PerIteration(family))
    assert len(blocks) == len(reference)
    for p, r in zip(blocks, reference):
        assert torch.equal(p, r), (p - r).abs().max()
    assert [r["iteration"] for r in block_reports] == [r["iteration"] for r in reference_reports] == [10, 30]
    for b, r in zip(block_reports, reference_reports):
        assert torch.equal(b["loss"], r["loss"])


def test_a_block_of_the_wrong_length_is_refused():
    class Short(SineFamily):
        def sample_block(self, n_iterations, n_tasks, generator, dtype=torch.float32):
            return super().sample_block(max(1, n_iterations - 1), n_tasks, generator, dtype)

    with pytest.raises(ValueError, match=r"Short.sample_block\(\d+, 7, generator\) returned \[\d+\] iterations, not"):
        list(meta_train(_Recorder(True), Short(), [torch.Generator()], 30, set()))
    generator = torch.Generator()
    state = generator.get_state()
    assert list(meta_train(_Recorder(True), get_task("sine"), [generator], 0, {0})) == []  # no iterations: no draw
    assert torch.equal(generator.get_state(), state)


# -- progress off the hot path ------------------------------------------------------------------

def test_progress_is_told_rarely_on_fast_loops_and_at_the_points_that_matter():
    seen = []
    list(meta_train(_Recorder(True), get_task("sine"), [torch.Generator()], 3000, {1000, 3000},
                    on_iteration=lambda n, live=None: seen.append(n)))
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 3000 and 1000 in seen
    assert len(seen) < 300, len(seen)  # a cheap step: about every PROGRESS_SECONDS, not every iteration


def test_progress_is_told_every_iteration_on_slow_loops(monkeypatch):
    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.0)
    seen = []
    list(meta_train(_Recorder(True), get_task("sine"), [torch.Generator()], 50, set(),
                    on_iteration=lambda n, live=None: seen.append(n)))
    assert seen == list(range(1, 51))
