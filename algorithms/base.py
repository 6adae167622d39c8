"""The one interface every (algorithm, backend) implements, and its hyperparameters.

A learner owns its meta-parameters and outer optimiser. The shared training loop only
calls `step(batch, iteration)`; the shared evaluation only reads `adaptation()`. Nothing
outside a learner branches on its name.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class HyperParams:
    """MAML's vocabulary: S inner steps, LR_base inner SGD rate, LR_meta outer Adam rate.

    `iterations` is the planned training length (MAML++'s loss-weight annealing needs it);
    `msl_anneal_iters` defaults to 10% of it.
    """

    inner_steps: int = 1
    lr_base: float = 0.01
    lr_meta: float = 1e-3
    meta_batch: int = 25
    iterations: int = 1000
    msl_anneal_iters: int | None = None

    def __post_init__(self):
        def check_int(name, minimum):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        def check_rate(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

        check_int("inner_steps", 0)
        check_int("meta_batch", 1)
        check_int("iterations", 1)
        check_rate("lr_base")
        check_rate("lr_meta")
        if self.msl_anneal_iters is not None:
            check_int("msl_anneal_iters", 1)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class Adaptation:
    """What evaluation needs: the learned initialisation and each parameter's inner rate.

    `params` are detached and in the network's order; a rate of None means "not adapted".
    """

    params: list[torch.Tensor]
    lrs: list


class MetaLearner(ABC):
    """One meta-learning algorithm on one backend."""

    #: the learned initialisation of the base network plus any extra meta-parameters
    meta_parameters: list[torch.Tensor]

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu"):
        self.hp = hp
        self.device = torch.device(device)

    @abstractmethod
    def meta_gradient(self, batch, iteration: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Meta-training loss (detached scalar) and the gradient for each meta-parameter."""

    @abstractmethod
    def adaptation(self) -> Adaptation:
        """The initialisation and inner learning rates the shared evaluation adapts from."""

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.meta_parameters, lr=self.hp.lr_meta)

    def step(self, batch, iteration: int = 0) -> dict[str, torch.Tensor]:
        """One meta-iteration: meta-gradient, then one outer optimiser step (loss stays a tensor: no sync)."""
        if not hasattr(self, "optimizer"):
            self.optimizer = self.make_optimizer()
        loss, grads = self.meta_gradient(batch, iteration)
        for p, g in zip(self.meta_parameters, grads):
            p.grad = g
        self.optimizer.step()
        return {"loss": loss}
