"""The unit of extension: an algorithm declared as an inner-update rule.

MAML and its variants differ only in *how a task adapts* and *what the meta-loss weighs*:

- `first_order`: inner gradients are constants (FOMAML);
- `adapted_layers`: how many of the last layers adapt (None: all; 1: ANIL's head);
- `loss_weights(hp, iteration)`: weight of the query loss after each inner step 0..S (MSL);
- `extra(params, hp)`: extra meta-parameters learned with the initialisation (Meta-SGD's
  per-entry rates, LSLR's per-layer per-step rates), one tensor per entry of the list;
- `update(params, grads, extra, step, hp)`: one inner step of ONE task (`grads[i]` is None
  for a parameter that does not adapt), differentiable in params, grads and extra.

Every backend runs the same declaration: the plain autograd loop (`torch`), the generic
vectorised `torch.func` engine (`generic`, any rule, any network), learn2learn/higher where
they offer the rule, and the hand-written `func` engine for the rules it accelerates
(`fast_update`: "sgd" for a fixed LR_base, "per-entry" for Meta-SGD's learned rates; any
other rule, or a network it does not cover, falls back to the generic engine and the record
says so). The evaluation adapts with the same `update`, so a learned rule is evaluated exactly
as it was trained.

A rule is written for one task's parameters, as plain tensor code; the engines batch it.
"""
from __future__ import annotations

import torch

from algorithms.base import Adaptation, HyperParams
from algorithms.schedules import last_step_weights, msl_weights


class InnerRule:
    """Plain SGD at LR_base on every layer, query loss after the last step: second-order MAML.

    Subclass and override what differs; class attributes are the declaration's switches.
    """

    first_order: bool = False
    adapted_layers: int | None = None
    fast_update: str | None = "sgd"  # how the hand-written engine runs `update` (None: it cannot)
    #: whether `update` treats every entry on its own, so that it runs unchanged on every task's
    #: parameters at once ([tasks, ...], broadcasting against unbatched `extra`): the generic
    #: engine then calls it once instead of vmapping it. None: the engine checks (bitwise, once
    #: per step) and vmaps where the two differ; a rule that mixes entries (norms, sums) may
    #: say False to skip the check.
    elementwise: bool | None = None

    def __init_subclass__(cls, **kwargs):
        """A rule that writes its own `update` has no fast path unless it names one: inheriting
        `fast_update = "sgd"` would let the hand-written engine and learn2learn/higher run plain
        SGD in its place, silently."""
        super().__init_subclass__(**kwargs)
        if "update" in vars(cls) and "fast_update" not in vars(cls):
            cls.fast_update = None

    def loss_weights(self, hp: HyperParams, iteration: int) -> list[float]:
        return last_step_weights(hp.inner_steps)

    def extra(self, params: list[torch.Tensor], hp: HyperParams) -> list[torch.Tensor]:
        return []

    def update(self, params: list[torch.Tensor], grads: list[torch.Tensor | None], extra: list[torch.Tensor],
               step: int, hp: HyperParams) -> list[torch.Tensor]:
        return [p if g is None else p - hp.lr_base * g for p, g in zip(params, grads)]

    def adapts(self, n_params: int) -> list[bool]:
        """Which of the network's parameters (weights and biases, in order) adapt in the inner loop."""
        if self.adapted_layers is None:
            return [True] * n_params
        frozen = n_params - 2 * self.adapted_layers
        return [i >= frozen for i in range(n_params)]

    def __repr__(self) -> str:
        return type(self).__name__


class FirstOrder(InnerRule):
    """FOMAML: the inner gradients are treated as constants."""

    first_order = True


class MultiStepLoss(InnerRule):
    """MAML++ multi-step loss (Antoniou et al. 2019): query losses after every step, annealed
    towards the last over `msl_anneal_iters` (default 10% of training)."""

    def loss_weights(self, hp, iteration):
        return msl_weights(hp.inner_steps, iteration, hp.msl_anneal_iters or max(1, hp.iterations // 10))


class LastLayerOnly(InnerRule):
    """ANIL (Raghu et al. 2020): only the head adapts; the body is meta-learned and shared."""

    adapted_layers = 1


class PerEntryRates(InnerRule):
    """Meta-SGD (Li et al. 2017): a learned rate for every parameter entry, initialised at LR_base."""

    fast_update = "per-entry"

    def extra(self, params, hp):
        return [torch.full_like(p, hp.lr_base) for p in params]

    def update(self, params, grads, extra, step, hp):
        return [p if g is None else p - r * g for p, g, r in zip(params, grads, extra)]


def rule_adaptation(rule: InnerRule, net: torch.nn.Module, extra, hp: HyperParams, network) -> Adaptation:
    """How a task adapts under `rule`: SGD with rates where the rule is SGD (LR_base) or Meta-SGD
    (the learned rates are the rates), else the rule itself with its learned `extra`."""
    params = [p.detach() for p in net.parameters()]
    adapted = rule.adapts(len(params))
    if rule.fast_update == "per-entry":
        return Adaptation(params, [e.detach() if a else None for e, a in zip(extra, adapted)], network=network)
    lrs = [hp.lr_base if a else None for a in adapted]
    if rule.fast_update is not None:
        return Adaptation(params, lrs, network=network)
    return Adaptation(params, lrs, network=network, rule=rule, extra=[e.detach() for e in extra], hp=hp)


__all__ = ["InnerRule", "FirstOrder", "MultiStepLoss", "LastLayerOnly", "PerEntryRates", "rule_adaptation"]
