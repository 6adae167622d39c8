"""Algorithm registry: name -> backend -> learner class.

`get_algorithm(name, backend, hp, generator, device)` builds a learner; an unknown name or
backend raises an error listing the known ones. Backends: `l2l` (learn2learn), `higher`,
`torch` (a plain per-task autograd loop), `func` (the vectorised engine) and `jax` (jit + vmap +
optax, maml and fomaml only).
"""
from __future__ import annotations

from algorithms import func_engine as fe
from algorithms import jax_engine as je
from algorithms import loop_backends as lb
from algorithms.base import Adaptation, HyperParams, MetaLearner

ALGORITHMS: dict[str, dict[str, type[MetaLearner]]] = {
    "maml": {"l2l": lb.L2LMAML, "higher": lb.HigherMAML, "func": fe.FuncMAML, "jax": je.JaxMAML},
    "fomaml": {"l2l": lb.L2LFOMAML, "func": fe.FuncFOMAML, "jax": je.JaxFOMAML},
    "msl": {"l2l": lb.L2LMSL, "func": fe.FuncMSL},
    "metasgd": {"l2l": lb.L2LMetaSGD, "func": fe.FuncMetaSGD},
    "anil": {"l2l": lb.L2LANIL, "func": fe.FuncANIL},
    "reptile": {"torch": lb.TorchReptile, "func": fe.FuncReptile},
    "pretrain": {"torch": lb.TorchPretrain, "func": fe.FuncPretrain},
}

NUMERICS_VERSION = 1  # bump with any change that moves a number: records made under another version are never reused

#: algorithms that learn to adapt (compared against the `pretrain` baseline)
META_LEARNERS = [name for name in ALGORITHMS if name != "pretrain"]


def list_algorithms() -> dict[str, list[str]]:
    return {name: sorted(backends) for name, backends in sorted(ALGORITHMS.items())}


def get_learner_class(name: str, backend: str) -> type[MetaLearner]:
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; known algorithms: {', '.join(sorted(ALGORITHMS))}")
    if backend not in ALGORITHMS[name]:
        raise KeyError(f"algorithm {name!r} has no backend {backend!r}; its backends: {', '.join(sorted(ALGORITHMS[name]))}")
    return ALGORITHMS[name][backend]


def get_algorithm(name: str, backend: str, hp: HyperParams, generator, device: str = "cpu", **options) -> MetaLearner:
    return get_learner_class(name, backend)(hp, generator, device=device, **options)


__all__ = ["ALGORITHMS", "META_LEARNERS", "Adaptation", "HyperParams", "MetaLearner", "list_algorithms",
           "get_algorithm", "get_learner_class"]
