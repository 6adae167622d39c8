"""Algorithm registry: name -> backend -> learner class, filled by `register_algorithm`.

An algorithm is either an inner-update rule (`algorithms.rules.InnerRule`: MAML and its
variants, and any researcher's rule), which runs on every backend that covers it:

- `torch`: the plain per-task autograd loop (any rule, any network; the reference);
- `generic`: the vectorised torch.func engine (any rule, any network);
- `func`: the hand-written accelerated engine where it covers the rule and the network,
  else the generic engine (the record's `engine` says which ran);
- `l2l` (learn2learn) and `higher` where those libraries offer the rule;

or a set of learner classes of its own (Reptile, pre-training, the `jax` backend). Plug-ins
call `register_algorithm` from their own module (see `benchmarks.plugins`: names must match
`NAME`, and `SOURCES` remembers which code registered each algorithm; `source_of(name)` says,
`BUILTIN_SOURCE` for the suite's own).

Networks: `register_network(name, factory)` adds a plug-in `nn.Module` (`factory(input_dim,
output_dim)`; `algorithms.network.NETWORKS`), named like an algorithm (`check_name`), its source
remembered in `NETWORK_SOURCES` (`network_source_of`; the fingerprint's `code.network`). A cell's
`network` then names it. It runs on `torch`, `generic` (and `func`, which falls back to generic),
`l2l` and `higher` (both wrap any module; learn2learn's head-only ANIL needs an nn.Sequential);
`jax` and the accelerated engine build only the suite's MLPs and refuse it, saying so.

`get_algorithm(name, backend, hp, generator, device, network=..., problem=...)` builds a learner; an
unknown name or backend raises KeyError listing the known ones, and so does a backend that cannot
train with the task's problem (`tasks.problem`: loss and sizes) or a network with running
statistics (BatchNorm), naming the reason: `get_learner_class` decides, so that a sweep skips such
cells when it is read.
"""
from __future__ import annotations

import functools
import sys

import torch

from algorithms import func_engine as fe
from algorithms import jax_engine as je
from algorithms import loop_backends as lb
from algorithms.base import Adaptation, HyperParams, MetaLearner
from algorithms.generic_engine import GenericLearner
from algorithms.network import (BUILTIN_NETWORKS, DEFAULT_NETWORK, NETWORKS, NetworkSpec, PluginNetwork, as_spec,
                                running_buffers)
from algorithms.rules import FirstOrder, InnerRule, LastLayerOnly, MultiStepLoss, PerEntryRates
from benchmarks.plugins import BUILTIN_SOURCE, NAME, Sources, check_name, code_source

ALGORITHMS: dict[str, dict[str, type[MetaLearner]]] = {}
RULES: dict[str, InnerRule] = {}  # the algorithms that are inner-update rules
REFUSALS: dict[str, dict[str, str]] = {}  # algorithm -> {rule backend not offered: why} (Finn's network)
RULE_BACKENDS: dict[str, type[MetaLearner]] = {
    "torch": lb.TorchRuleLearner, "generic": GenericLearner, "func": fe.FuncLearner,
    "l2l": lb.L2LLearner, "higher": lb.HigherLearner,
}
BUILTIN = ("maml", "fomaml", "msl", "metasgd", "anil", "reptile", "pretrain")
SOURCES = Sources()  # which code registered each algorithm (its fingerprint names it unless built in)
NETWORK_SOURCES = Sources()  # which code registered each plug-in network

NUMERICS_VERSION = 1  # bump with any change that moves a number: records made under another version are never reused


@functools.cache
def _bind(base: type[MetaLearner], rule: InnerRule, name: str) -> type[MetaLearner]:
    """`base` running `rule`: a subclass whose only change is the declaration."""
    return type(f"{base.__name__}[{name}]", (base,), {"rule": rule, "__doc__": f"{name} ({rule!r}) on {base.__name__}."})


def register_algorithm(name: str, rule: InnerRule | None = None, *, learners: dict | None = None,
                       backends: tuple[str, ...] | None = None, replace: bool = False) -> dict[str, type[MetaLearner]]:
    """Register algorithm `name` and return its backend table.

    `rule`: an `InnerRule` instance; it gets every backend of `RULE_BACKENDS` that covers it
    (restricted to `backends` when given). `learners`: {backend: MetaLearner subclass} added
    as they are (for algorithms that are not inner-update rules, or a library-specific version).
    Registering a taken name raises ValueError unless `replace`; so does a name not matching
    `NAME`. The calling module is recorded as the algorithm's source (`source_of`).
    """
    check_name("algorithm", name)
    if name in ALGORITHMS and not replace:
        raise ValueError(f"algorithm {name!r} is already registered (pass replace=True to override it)")
    if rule is None and not learners:
        raise ValueError(f"algorithm {name!r}: give an InnerRule, learner classes, or both")
    if rule is not None and not isinstance(rule, InnerRule):
        raise TypeError(f"algorithm {name!r}: rule must be an algorithms.rules.InnerRule instance, got {rule!r}")
    table: dict[str, type[MetaLearner]] = {}
    refusals: dict[str, str] = {}
    if rule is not None:
        unknown = sorted(set(backends or ()) - set(RULE_BACKENDS))
        if unknown:
            raise ValueError(f"algorithm {name!r}: unknown rule backends {unknown}; valid: {', '.join(RULE_BACKENDS)}")
        for backend, base in RULE_BACKENDS.items():
            if backends is not None and backend not in backends:
                continue
            if backend == "func" and _refusal(base, rule, DEFAULT_NETWORK):
                base = GenericLearner  # the accelerated engine cannot run this rule as declared
            refused = _refusal(base, rule, DEFAULT_NETWORK)
            if refused:
                refusals[backend] = refused  # not offered; `get_learner_class` says why
            else:
                table[backend] = _bind(base, rule, name)
    for backend, cls in (learners or {}).items():
        if not (isinstance(cls, type) and issubclass(cls, MetaLearner)):
            raise TypeError(f"algorithm {name!r}, backend {backend!r}: a MetaLearner subclass is needed, got {cls!r}")
        table[backend] = cls
    ALGORITHMS[name] = table
    REFUSALS[name] = {b: r for b, r in refusals.items() if b not in table}
    SOURCES.record(name, table, code_source(sys._getframe(1)))
    if rule is not None:
        RULES[name] = rule
    else:
        RULES.pop(name, None)
    return table


def _refusal(base: type[MetaLearner], rule: InnerRule, network) -> str | None:
    """Why backend class `base` cannot run `rule` as declared on `network` (None: it can)."""
    refused = base.refusal(rule, network)
    if refused or base.covers(rule):
        return refused
    return f"{base.engine} does not offer this rule's update, order or loss weights"


def register_network(name: str, factory, *, replace: bool = False):
    """Register plug-in network `name`: `factory(input_dim, output_dim)` returns a fresh `nn.Module`
    (its own initialisation, drawn from torch's global RNG, which the suite seeds per run).

    ValueError for a name not matching `NAME`, one that spells a built-in MLP ("relu-40-40"), or
    one taken (unless `replace`); TypeError when the factory does not build a module with
    parameters (tried once, 1 -> 1). The calling module is recorded as its source."""
    check_name("network", name)
    if name in BUILTIN_NETWORKS:
        raise ValueError(f"network name {name!r} spells a built-in MLP ('<activation>-<width>...'); choose another")
    if name in NETWORKS and not replace:
        raise ValueError(f"network {name!r} is already registered (pass replace=True to override it)")
    if not callable(factory):
        raise TypeError(f"network {name!r}: factory must be callable (input_dim, output_dim) -> nn.Module, "
                        f"got {factory!r}")
    PluginNetwork(name, factory).build(torch.Generator().manual_seed(0))  # fails here, not mid-sweep
    NETWORKS[name] = factory
    NETWORK_SOURCES.record(name, factory, code_source(sys._getframe(1)))
    return factory


def network_source_of(name: str) -> str | None:
    """The code that registered network `name`: `BUILTIN_SOURCE` for an MLP spec, None if unknown."""
    if name in NETWORKS:
        return NETWORK_SOURCES.of(name, NETWORKS[name])
    return BUILTIN_SOURCE if name in BUILTIN_NETWORKS else None


def source_of(name: str) -> str | None:
    """The code that registered algorithm `name` (None: not registered here)."""
    return SOURCES.of(name, ALGORITHMS[name]) if name in ALGORITHMS else None


def list_algorithms() -> dict[str, list[str]]:
    return {name: sorted(backends) for name, backends in sorted(ALGORITHMS.items())}


def meta_learners(baseline: str = "pretrain") -> list[str]:
    """Every registered algorithm but the baseline (what is compared against it)."""
    return [name for name in ALGORITHMS if name != baseline]


def get_learner_class(name: str, backend: str, network: NetworkSpec | str | None = None,
                      problem=None) -> type[MetaLearner]:
    """The class that runs `name` on `backend` for `network` (default Finn's ReLU 40-40) and the
    task's `problem` (a `tasks.problem.Problem` or a family; default the sine families' 1 -> 1 MSE).

    `func` falls back to the generic engine for a network, a rule's adapted names or a problem the
    accelerated one does not cover (a rule bound to `GenericLearner`; Reptile and pre-training to
    their `problem_fallback`), and the class's `engine` says so; another backend that cannot build
    the network, run the rule as declared on it (`MetaLearner.refusal`) or train with the problem's
    loss and sizes (`MetaLearner.problem_refusal`) raises KeyError saying why, as does a network
    with running statistics on any backend (`network.running_buffers`). A backend not offered at
    registration (`REFUSALS`: it refused Finn's network) is named with its reason.
    """
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; known algorithms: {', '.join(sorted(ALGORITHMS))}")
    if backend not in ALGORITHMS[name]:
        why = REFUSALS.get(name, {}).get(backend)
        raise KeyError(f"algorithm {name!r} has no backend {backend!r}{f' ({why})' if why else ''}; "
                       f"its backends: {', '.join(sorted(ALGORITHMS[name]))}")
    spec = as_spec(network)
    stateful = running_buffers(spec)
    if stateful:
        raise KeyError(f"network {spec.name!r} updates {list(stateful)} in its forward (running statistics, e.g. "
                       "BatchNorm's): per-task functional adaptation cannot thread them, on any backend; use batch "
                       "statistics only (track_running_stats=False) or a LayerNorm")
    cls = ALGORITHMS[name][backend]
    rule = RULES.get(name)
    if backend == "func" and cls.problem_refusal(problem):  # the accelerated engine: 1 -> 1 MSE only
        cls = _bind(GenericLearner, rule, name) if rule is not None else getattr(cls, "problem_fallback", cls)
    cls = _network_class(name, backend, cls, spec, rule)
    why = cls.problem_refusal(problem)
    if why:
        raise KeyError(f"backend {backend!r} of {name!r} cannot train this task: {why}")
    return cls


def _network_class(name: str, backend: str, cls: type[MetaLearner], spec, rule) -> type[MetaLearner]:
    """`cls`, or for `func` the generic engine, where it covers `spec`; else KeyError saying why."""
    refused = None if rule is None or not cls.covers_network(spec) else cls.refusal(rule, spec)
    if cls.covers_network(spec) and not refused:
        return cls
    if backend == "func" and rule is not None:
        return _bind(GenericLearner, rule, name)
    if refused:
        raise KeyError(f"backend {backend!r} of {name!r} cannot run it as declared on network {spec.name!r}: {refused}")
    if isinstance(spec, PluginNetwork):
        raise KeyError(f"backend {backend!r} of {name!r} cannot run plug-in network {spec.name!r} (it builds only "
                       f"the suite's MLPs; use backend 'torch', 'generic', 'l2l' or 'higher')")
    raise KeyError(f"backend {backend!r} of {name!r} cannot run network {spec.name!r} "
                   f"(it covers ReLU networks; use backend 'torch' or 'generic')")


def get_algorithm(name: str, backend: str, hp: HyperParams, generator, device: str = "cpu", network=None,
                  **options) -> MetaLearner:
    """A learner of `get_learner_class(name, backend, network, options.get("problem"))`."""
    cls = get_learner_class(name, backend, network, options.get("problem"))
    return cls(hp, generator, device=device, network=network, **options)


# -- the built-ins: five rules and two learners of their own ----------------------------------
register_algorithm("maml", InnerRule(), learners={"jax": je.JaxMAML})
register_algorithm("fomaml", FirstOrder(), learners={"jax": je.JaxFOMAML})
register_algorithm("msl", MultiStepLoss())
register_algorithm("metasgd", PerEntryRates())
register_algorithm("anil", LastLayerOnly())
register_algorithm("reptile", learners={"torch": lb.TorchReptile, "func": fe.FuncReptile})
register_algorithm("pretrain", learners={"torch": lb.TorchPretrain, "func": fe.FuncPretrain})
for _builtin in BUILTIN:  # registered just above, by this module: the suite's own code
    SOURCES.record(_builtin, ALGORITHMS[_builtin], BUILTIN_SOURCE)

#: algorithms that learn to adapt (compared against the `pretrain` baseline)
META_LEARNERS = meta_learners()

__all__ = ["ALGORITHMS", "RULES", "META_LEARNERS", "NAME", "SOURCES", "Adaptation", "HyperParams", "InnerRule",
           "MetaLearner", "NETWORKS", "NetworkSpec", "list_algorithms", "get_algorithm", "get_learner_class",
           "register_algorithm", "register_network", "network_source_of", "source_of"]
