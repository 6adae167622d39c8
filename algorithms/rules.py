"""The unit of extension: an algorithm declared as an inner-update rule.

MAML and its variants differ only in *how a task adapts* and *what the meta-loss weighs*:

- `first_order`: inner gradients are constants (FOMAML);
- `adapts(names)`: which of the network's parameters adapt, by name (`named_parameters()`
  order, e.g. "0.weight", "4.bias" for the MLP), one bool per name; `adapted_layers` is the
  convenience most rules need (None: all; k: the parameters of the last k modules, ANIL's
  head is 1, 0 adapts none of them);
- `loss_weights(hp, iteration)`: weight of the query loss after each inner step 0..S (MSL);
- `extra(params, hp)`: extra meta-parameters learned with the initialisation (Meta-SGD's
  per-entry rates, LSLR's per-layer per-step rates), one tensor per entry of the list;
- `update(params, grads, extra, step, hp)`: one inner step of ONE task (`grads[i]` is None
  for a parameter that does not adapt), differentiable in params, grads and extra;
- `init_state(params, extra, hp)` and `update_with_state(params, grads, extra, step, hp,
  state) -> (params, state)`: an inner optimiser with per-task state (SGD-momentum's buffers,
  Adam's moments), started afresh for every task and threaded through its steps; a rule
  without state writes `update` only (the default `update_with_state` calls it);
- `context(hp)`: context vectors (CAVIA): per-task inputs that adapt from these fixed values
  and are never meta-learned (no meta-gradient, no outer optimiser); each is a 1-D tensor
  concatenated to every input point, so the network's first layer takes 1 + their sizes inputs.

"Parameters" in `extra`, `init_state`, `update` and `update_with_state` are the network's
parameters followed by the rule's context vectors (which always adapt; `adapts` covers the
network's names only).

Every backend runs the same declaration, or is not offered for it: the plain autograd loop
(`torch`) and the generic vectorised `torch.func` engine (`generic`) run any rule on any
network; learn2learn/higher where they offer the rule (stateless SGD on all layers or the last
layer, per-entry rates, no context); the hand-written `func` engine for the rules it
accelerates (`fast_update`: "sgd" for a fixed LR_base, "per-entry" for Meta-SGD's learned rates,
adapting the last k whole layers of a ReLU MLP, no state, no context; anything else runs on the
generic engine and the record says so). A backend that cannot honour a declaration on a network
is not registered for it or refuses it with the reason (`MetaLearner.refusal`). The evaluation
adapts with the same declaration (adapted names, state, context), so a learned rule is
evaluated exactly as it was trained.

A rule is written for one task's parameters, as plain tensor code; the engines batch it.
State lives in `init_state`/`update_with_state`, never on the rule object: the engines call a
rule once per step for all tasks at once (or vmapped), so attributes assigned during `update`
would be shared by every task; the engines refuse such a rule (`check_no_python_state`).
"""
from __future__ import annotations

import numpy as np
import torch

from algorithms.base import Adaptation, HyperParams
from algorithms.schedules import last_step_weights, msl_weights

#: methods whose override means the rule is not plain (per-entry) SGD with rates
_OWN_UPDATE = ("update", "update_with_state", "init_state", "context")


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
    #: per step, on copies of the rule) and vmaps where the two differ; a rule that mixes entries
    #: (norms, sums) may say False to skip the check.
    elementwise: bool | None = None

    def __init_subclass__(cls, **kwargs):
        """A rule that writes its own `update` (or state, or context) has no fast path unless it
        names one: inheriting `fast_update = "sgd"` would let the hand-written engine and
        learn2learn/higher run plain SGD in its place, silently. The fast paths are stateless
        and context-free, so naming one beside state or a context is refused."""
        super().__init_subclass__(**kwargs)
        if any(name in vars(cls) for name in _OWN_UPDATE) and "fast_update" not in vars(cls):
            cls.fast_update = None
        if cls.fast_update is not None and (has_state(cls) or has_context(cls)):
            raise TypeError(f"{cls.__name__}: fast_update = {cls.fast_update!r} names a stateless, context-free "
                            "fast path, but the rule declares init_state/update_with_state or context; "
                            "set fast_update = None")

    def loss_weights(self, hp: HyperParams, iteration: int) -> list[float]:
        return last_step_weights(hp.inner_steps)

    def extra(self, params: list[torch.Tensor], hp: HyperParams) -> list[torch.Tensor]:
        return []

    def update(self, params: list[torch.Tensor], grads: list[torch.Tensor | None], extra: list[torch.Tensor],
               step: int, hp: HyperParams) -> list[torch.Tensor]:
        return [p if g is None else p - hp.lr_base * g for p, g in zip(params, grads)]

    def init_state(self, params: list[torch.Tensor], extra: list[torch.Tensor], hp: HyperParams) -> list[torch.Tensor]:
        """One task's inner-optimiser state before its first step (none: a stateless rule)."""
        return []

    def update_with_state(self, params, grads, extra, step: int, hp: HyperParams, state: list[torch.Tensor]):
        """One task's inner step with its state: (new params, new state). Default: `update`."""
        return self.update(params, grads, extra, step, hp), state

    def context(self, hp: HyperParams) -> list[torch.Tensor]:
        """Context vectors' reset values (1-D each; none by default). The engines cast them to
        the parameters' dtype and device."""
        return []

    def adapts(self, names: list[str]) -> list[bool]:
        """Which of the network's parameters adapt in the inner loop, one bool per name in
        `named_parameters()` order. With `adapted_layers = k`: the parameters of the last k
        modules that own parameters (a name's module is what precedes its last dot)."""
        if self.adapted_layers is None:
            return [True] * len(names)
        layers = list(dict.fromkeys(_module_of(name) for name in names))
        kept = set(layers[len(layers) - self.adapted_layers:]) if self.adapted_layers else set()
        return [_module_of(name) in kept for name in names]

    def __repr__(self) -> str:
        return type(self).__name__


def _module_of(name: str) -> str:
    return name.rpartition(".")[0]


def has_state(rule) -> bool:
    """Whether the rule (instance or class) declares an inner-optimiser state."""
    cls = rule if isinstance(rule, type) else type(rule)
    return cls.init_state is not InnerRule.init_state or cls.update_with_state is not InnerRule.update_with_state


def has_context(rule) -> bool:
    cls = rule if isinstance(rule, type) else type(rule)
    return cls.context is not InnerRule.context


def adapted_mask(rule: InnerRule, names: list[str]) -> list[bool]:
    """`rule.adapts(names)`, checked: one bool per name (network parameters only; contexts always adapt)."""
    names = list(names)
    layers = rule.adapted_layers
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 0):
        raise ValueError(f"{rule!r}: adapted_layers must be None (all) or an integer >= 0, got {layers!r}")
    try:
        mask = rule.adapts(names)
    except TypeError as error:
        raise TypeError(f"{rule!r}.adapts(names) receives the network's parameter names ({names}) and returns one "
                        f"bool per name (it used to receive a count): {error}") from None
    if not isinstance(mask, (list, tuple)) or len(mask) != len(names) or \
            not all(isinstance(a, (bool, np.bool_)) for a in mask):
        raise ValueError(f"{rule!r}.adapts(names) must return one bool per parameter name ({len(names)}: "
                         f"{', '.join(names)}), got {mask!r}")
    return [bool(a) for a in mask]


def rule_context(rule: InnerRule, hp: HyperParams, like: torch.Tensor) -> list[torch.Tensor]:
    """The rule's context reset values in `like`'s dtype and device, checked (1-D tensors)."""
    found = rule.context(hp)
    if not isinstance(found, (list, tuple)) or not all(isinstance(c, torch.Tensor) and c.dim() == 1 and c.numel()
                                                       for c in found):
        raise ValueError(f"{rule!r}.context(hp) must return a list of non-empty 1-D tensors, got {found!r}")
    return [c.detach().to(dtype=like.dtype, device=like.device) for c in found]


def context_width(rule: InnerRule, hp: HyperParams) -> int:
    """How many input features the rule's contexts add to the network's first layer."""
    return sum(c.numel() for c in rule_context(rule, hp, torch.empty(0)))


def apply_update(rule: InnerRule, params, grads, extra, step: int, hp: HyperParams, state):
    """`rule.update_with_state`, its result checked: (params, state) of the lengths given."""
    found = rule.update_with_state(params, grads, extra, step, hp, state)
    if not (isinstance(found, tuple) and len(found) == 2 and len(found[0]) == len(params)
            and len(found[1]) == len(state)):
        raise ValueError(f"{rule!r}.update_with_state must return (params, state) with {len(params)} parameters "
                         f"and {len(state)} state tensors")
    return list(found[0]), list(found[1])


def check_no_python_state(rule: InnerRule, before: dict) -> None:
    """Refuse a rule whose `update` assigned attributes (`before`: `vars(rule)` copied before the call).

    Why: state kept on the rule object is shared by all tasks and replayed wrongly by any engine
    that batches or probes the update (issue 21: 161% off on the generic engine, no error)."""
    after = vars(rule)
    changed = sorted(k for k in set(before) | set(after)
                     if k not in before or k not in after or before[k] is not after[k])
    if changed:
        raise ValueError(f"{rule!r}: update assigned {', '.join(changed)} on the rule object; keep per-task state "
                         "in init_state/update_with_state (algorithms.rules), not on the rule")


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
    (the learned rates are the rates), else the rule itself with its learned `extra` (and its
    state and context, which the evaluation takes from the rule)."""
    names, params = zip(*((name, p.detach()) for name, p in net.named_parameters()))
    params = list(params)
    adapted = adapted_mask(rule, names)
    if rule.fast_update == "per-entry":
        return Adaptation(params, [e.detach() if a else None for e, a in zip(extra, adapted)], network=network)
    lrs = [hp.lr_base if a else None for a in adapted]
    if rule.fast_update is not None:
        return Adaptation(params, lrs, network=network)
    return Adaptation(params, lrs, network=network, rule=rule, extra=[e.detach() for e in extra], hp=hp)


__all__ = ["InnerRule", "FirstOrder", "MultiStepLoss", "LastLayerOnly", "PerEntryRates", "rule_adaptation",
           "adapted_mask", "apply_update", "has_context", "has_state", "rule_context"]
