"""Finn et al. (2017) sinusoid regression, y = A·sin(x + φ), and Li et al. (2017, Meta-SGD)'s
variant with a random frequency, y = A·sin(w·x + φ).

One `SineFamily` describes a task distribution; `sample` draws a whole meta-batch in one
vectorised call from an explicit `torch.Generator`, so runs never touch the global RNG, and
`sample_block` draws many iterations' meta-batches at once, bitwise the same as successive
`sample` calls (the training loop's pre-sampled blocks).
Variants (half-axis support, noise, other ranges) are the same class with other parameters;
the frequency variant is a subclass, so the plain family keeps its fields (they enter every
run's fingerprint) and its draws.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import torch

from tasks.batch import TaskBatch, check_block, sequential_block
from tasks.problem import REGRESSION


#: the largest magnitude a task parameter may have: tasks are drawn in float32, where a larger
#: finite float64 (1e39) is inf and the run would only "diverge"
MAX_PARAMETER = float(torch.finfo(torch.float32).max)


def _finite(value) -> bool:
    return math.isfinite(value) and abs(value) <= MAX_PARAMETER


def _check_range(name: str, bounds, allow_point: bool = False) -> tuple[float, float]:
    numbers_only = isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bounds)
    if not numbers_only:
        raise ValueError(f"{name} must be a pair [low, high] of numbers, got {bounds!r}")
    low, high = (float(v) for v in bounds)
    if not (_finite(low) and _finite(high) and _finite(high - low)):
        raise ValueError(f"{name} must be finite (bounds and width at most {MAX_PARAMETER:.3g}: tasks are drawn in "
                         f"float32), got {bounds!r}")
    if high < low or (high == low and not allow_point):
        raise ValueError(f"{name} must satisfy low < high, got [{low}, {high}]")
    return low, high


@dataclass(frozen=True)
class SineFamily:
    """Distribution over sinusoid tasks.

    Defaults are Finn et al.'s: A ~ U[0.1, 5.0), φ ~ U[0, π), x ~ U[-5, 5].
    `support_x_range` restricts where support points fall (the `sine-half` variant);
    `noise` is the standard deviation of Gaussian observation noise added to y.
    """

    k_shot: int = 10
    n_query: int = 10
    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    support_x_range: tuple[float, float] | None = None
    noise: float = 0.0

    # What the family asks of a network (`tasks.problem`); class attributes, not fields, so
    # that no fingerprint of a stored sine run changes.
    input_dim = 1
    output_dim = 1
    problem = REGRESSION

    def __post_init__(self):
        for name in ("k_shot", "n_query"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "amplitude_range", _check_range("amplitude_range", self.amplitude_range))
        object.__setattr__(self, "phase_range", _check_range("phase_range", self.phase_range, allow_point=True))
        object.__setattr__(self, "x_range", _check_range("x_range", self.x_range))
        if self.support_x_range is not None:
            object.__setattr__(self, "support_x_range", _check_range("support_x_range", self.support_x_range))
        if not isinstance(self.noise, (int, float)) or isinstance(self.noise, bool) or not (
                _finite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0 (at most {MAX_PARAMETER:.3g}: tasks are drawn in "
                             f"float32), got {self.noise!r}")

    @staticmethod
    def _scale(low_high, unit: torch.Tensor) -> torch.Tensor:
        """Uniforms on [0, 1) mapped to [low, high): element-wise, so a value does not depend on
        the shape of the tensor it is computed in (what `sample_block` relies on)."""
        low, high = low_high
        return low + (high - low) * unit

    @classmethod
    def _uniform(cls, low_high, shape, generator, dtype) -> torch.Tensor:
        return cls._scale(low_high, torch.rand(shape, generator=generator, dtype=dtype))

    def param_ranges(self) -> dict[str, tuple[float, float]]:
        """Each per-task parameter's range, in draw order (A, then φ; subclasses append)."""
        return {"amplitude": self.amplitude_range, "phase": self.phase_range}

    def draw_params(self, n_tasks: int, generator: torch.Generator, dtype) -> dict[str, torch.Tensor]:
        """Per-task parameters, drawn first and in `param_ranges` order."""
        return {name: self._uniform(bounds, (n_tasks,), generator, dtype) for name, bounds in self.param_ranges().items()}

    def function(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The noiseless target y = A·sin(x + φ) for x shaped [tasks, points, 1] and `params`
        a batch's per-task parameters ([tasks], or [members, tasks] with x one dimension more)."""
        amplitude, phase = params["amplitude"], params["phase"]
        return amplitude[..., None, None] * torch.sin(x + phase[..., None, None])

    def sample(self, n_tasks: int, generator: torch.Generator, dtype=torch.float32) -> TaskBatch:
        """Draw `n_tasks` tasks with K support and `n_query` query points each, in one call.

        Draw order is fixed (the parameters, support x, query x, noise), so the same generator
        state always gives the same batch.
        """
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        params = self.draw_params(n_tasks, generator, dtype)
        x_support = self._uniform(self.support_x_range or self.x_range, (n_tasks, self.k_shot, 1), generator, dtype)
        x_query = self._uniform(self.x_range, (n_tasks, self.n_query, 1), generator, dtype)
        y_support = self.function(x_support, params)
        y_query = self.function(x_query, params)
        if self.noise > 0:
            y_support = y_support + self.noise * torch.randn(y_support.shape, generator=generator, dtype=dtype)
            y_query = y_query + self.noise * torch.randn(y_query.shape, generator=generator, dtype=dtype)
        return TaskBatch(x_support, y_support, x_query, y_query, params)

    def sample_block(self, n_iterations: int, n_tasks: int, generator: torch.Generator,
                     dtype=torch.float32) -> TaskBatch:
        """The next `n_iterations` results of `sample(n_tasks, generator, dtype)`, stacked along a
        new leading dimension ([iterations, tasks, points, 1]), bit for bit, from one uniform draw.

        Why it is exact: a CPU `torch.rand` takes one number from the generator per element, in
        order, so one draw of the block is the iterations' draws one after the other (sliced here
        in `sample`'s order: parameters, support x, query x); the range maps, `x + φ`, `sin` and the
        products are element-wise and give the same bits in any tensor shape (both tested over
        thousands of iterations, K and meta-batch sizes, one and two threads, float32 and float64:
        tests/test_block_sampling.py). Not exact, hence drawn per iteration (`sequential_block`):
        observation noise (`torch.randn` transforms groups of 16, so its draws do not split), and a
        subclass that overrides any method the block mirrors (a plug-in's own draws).
        """
        check_block(n_iterations, n_tasks)
        if self.noise > 0 or not self._block_is_exact():
            return sequential_block(self, n_iterations, n_tasks, generator, dtype)
        ranges = self.param_ranges()
        support = self.support_x_range or self.x_range
        sizes = [n_tasks] * len(ranges) + [n_tasks * self.k_shot, n_tasks * self.n_query]
        parts = torch.rand((n_iterations, sum(sizes)), generator=generator, dtype=dtype).split(sizes, dim=1)
        params = {name: self._scale(bounds, part) for (name, bounds), part in zip(ranges.items(), parts)}
        x_support = self._scale(support, parts[-2]).view(n_iterations, n_tasks, self.k_shot, 1)
        x_query = self._scale(self.x_range, parts[-1]).view(n_iterations, n_tasks, self.n_query, 1)
        return TaskBatch(x_support, self.function(x_support, params), x_query, self.function(x_query, params), params)

    def _block_is_exact(self) -> bool:
        """Whether every method `sample_block` mirrors is this module's own (not a subclass's)."""
        return all(getattr(type(self), name).__module__ == __name__
                   for name in ("sample", "draw_params", "param_ranges", "function", "_uniform", "_scale"))

    def with_points(self, k_shot: int, n_query: int) -> "SineFamily":
        """The same family with other support/query sizes (e.g. for a meta-test set)."""
        return replace(self, k_shot=k_shot, n_query=n_query)


@dataclass(frozen=True)
class SineFreqFamily(SineFamily):
    """Meta-SGD's sinusoids (Li et al. 2017): y = A·sin(w·x + φ) with w ~ U[0.8, 1.2) as well.

    A subclass rather than a `frequency_range=None` field on `SineFamily`: a new field would
    enter the fingerprint of every plain-sine run and disown the stored results. Draw order:
    A, φ, w, support x, query x, noise.
    """

    frequency_range: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "frequency_range",
                           _check_range("frequency_range", self.frequency_range, allow_point=True))

    def param_ranges(self) -> dict[str, tuple[float, float]]:
        return {**super().param_ranges(), "frequency": self.frequency_range}

    def function(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The noiseless target y = A·sin(w·x + φ) (shapes as in `SineFamily.function`)."""
        amplitude, phase, frequency = params["amplitude"], params["phase"], params["frequency"]
        return amplitude[..., None, None] * torch.sin(frequency[..., None, None] * x + phase[..., None, None])
