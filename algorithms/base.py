"""The one interface every (algorithm, backend) implements, and its hyperparameters.

A learner owns its meta-parameters and outer optimiser. The shared training loop only
calls `step(batch, iteration)`; the shared evaluation only reads `adaptation()`. Nothing
outside a learner branches on its name.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from algorithms.network import DEFAULT_NETWORK, NetworkSpec


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
    """What evaluation needs: the learned initialisation and how a task adapts from it.

    `params` are detached and in the network's order; `lrs` holds each parameter's inner rate
    (None: not adapted). With `rule` None a task adapts by SGD with `lrs` (the built-ins);
    otherwise by the algorithm's own rule with its learned `extra` meta-parameters and `hp`
    (e.g. per-step rates), exactly as in training: its adapted names, its per-task state
    (`init_state`) and its context vectors (`context`, reset values) come from the rule itself.
    `network` says which network `params` belong to.
    """

    params: list[torch.Tensor]
    lrs: list
    network: NetworkSpec = DEFAULT_NETWORK
    rule: object | None = None  # an algorithms.rules.InnerRule
    extra: list[torch.Tensor] = field(default_factory=list)
    hp: HyperParams | None = None


#: the project's folder of compiled programs (git-ignored `.cache/`), one subfolder per torch
#: version and machine (`compile_cache_dir`)
COMPILE_CACHE_ROOT = Path(__file__).resolve().parents[1] / ".cache" / "inductor"


def compile_cache_dir(device: str | torch.device = "cpu") -> Path:
    """Where compiled programs persist: `.cache/inductor/<torch version>-<machine id>`, the id a
    hash of `benchmarks.hardware.hardware(device)` (processor, vector ISA, GPU).

    Why Inductor's own caches (its FX graph cache and AOTAutograd cache, keyed by the graph, the
    inputs' shapes/strides/dtypes, the Inductor configuration and the torch version) and not
    hand-written pickling: a warm program is the same compiled code, so the floats are bitwise
    those of a cold compile (`tests/test_compile_cache.py`). Why a folder per torch version and
    machine on top: its CPU code is built with `-march=native`, which Inductor's key covers only
    through the vector ISA, so a cache shared between machines (a network home) could hand a
    program to a processor that lacks an instruction; torch versions never share entries.
    Why not Inductor's default (`/tmp/torchinductor_<user>`): temporary folders are wiped, and
    the project folder makes the cache visible and removable with the checkout (`rm -r .cache`).
    """
    from benchmarks.hardware import hardware

    machine = hashlib.sha256(hardware(device).encode()).hexdigest()[:12]
    return COMPILE_CACHE_ROOT / f"{torch.__version__}-{machine}"


def use_compile_cache(device: str | torch.device = "cpu") -> None:
    """Point Inductor at `compile_cache_dir(device)` unless TORCHINDUCTOR_CACHE_DIR names another
    folder than torch's default (the user's choice, or the speed suite's empty folder for cold
    compiles, wins). Called before each compile, in whichever process (worker, Ray task) compiles,
    so every cell, seed and worker of a sweep shares one cache; learning rates and seeds do not
    enter its key: a seed only changes the values of inputs (initial meta-parameters, task
    batches), and LR_base and LR_meta are tensors the trace reads from the learner, constants of
    the graph that Inductor passes at call time and keys by shape and dtype only (a warm program
    with another LR_meta was checked to follow the eager run; two jobs differing only in LR_base,
    LR_meta and seed compile once, the second hitting the FX graph cache: tests/test_compile_choice.py).
    So one compile serves every cell of a program shape, which `compile = "auto"` counts on
    (`benchmarks.compile_choice`: cold for the first cell of a group, warm for the rest)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        folder = compile_cache_dir(device)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only checkout or install: torch's default folder, rather than no compile
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def mse_only_refusal(problem, who: str) -> str | None:
    """`tasks.problem.refuse_unless_mse`'s reason as a value (None: a 1 -> 1 MSE problem), for the
    `problem_refusal` of a backend written for the sine families' problem only."""
    from tasks.problem import refuse_unless_mse

    try:
        refuse_unless_mse(problem, who)
    except ValueError as error:
        return str(error)
    return None


#: the hyperparameters a learner may declare test-time only (`MetaLearner.test_time_keys`): those
#: `MetaLearner.adaptation_for` knows how to apply to a trained learner's adaptation
TEST_TIME_KEYS = ("lr_base",)


class MetaLearner(ABC):
    """One meta-learning algorithm on one backend."""

    #: the learned initialisation of the base network plus any extra meta-parameters
    meta_parameters: list[torch.Tensor]

    #: hyperparameters this learner's training never reads, only the shared evaluation (through
    #: `adaptation_for`): pre-training's LR_base, its fine-tuning rate at test time. Cells that
    #: differ only in them train once per job and are each evaluated with their own value
    #: (`benchmarks.job`), so tuning pre-training's test-time rate on validation, as Finn et al.
    #: did, costs evaluations, not trainings. A promise, tested for the built-ins (their training
    #: is bitwise the same at any value); only keys in TEST_TIME_KEYS can be declared.
    test_time_keys: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.test_time_keys) - set(TEST_TIME_KEYS))
        if unknown:  # a declaration nothing would honour: refused when the class is defined
            raise TypeError(f"{cls.__name__}.test_time_keys declares {unknown}: only "
                            f"{', '.join(TEST_TIME_KEYS)} can be applied after training")

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu"):
        self.hp = hp
        self.device = torch.device(device)

    @abstractmethod
    def meta_gradient(self, batch, iteration: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Meta-training loss (detached scalar) and the gradient for each meta-parameter."""

    @abstractmethod
    def adaptation(self) -> Adaptation:
        """The initialisation and inner learning rates the shared evaluation adapts from."""

    def adaptation_for(self, member: int, hp: HyperParams) -> Adaptation:
        """Member `member`'s adaptation with `hp`'s values of `test_time_keys` (a cell that shared
        its training); `adaptation(member)` itself when nothing is declared test-time."""
        adaptation = self.adaptation(member)
        if "lr_base" not in self.test_time_keys:
            return adaptation
        if any(isinstance(lr, torch.Tensor) for lr in adaptation.lrs):
            raise ValueError(f"{type(self).__name__} declares lr_base test-time only, but its adaptation "
                             "carries learned rates: training produced them")
        return replace(adaptation, lrs=[None if lr is None else hp.lr_base for lr in adaptation.lrs],
                       hp=None if adaptation.hp is None else replace(adaptation.hp, lr_base=hp.lr_base))

    #: whether cells differing only in seed/LR_base/LR_meta may train as one batched program
    ensembles: bool = False
    #: whether the numbers are bitwise the same at any torch thread count (tested for the
    #: vectorised engines); where not (the per-task loops: measured up to 7e-4 relative between
    #: 1 and 2 threads), the thread count enters the record's fingerprint
    thread_invariant: bool = False

    @classmethod
    def covers(cls, rule) -> bool:
        """Whether this backend can run the inner-update rule `rule` (see `algorithms.rules`)."""
        return True

    @classmethod
    def covers_network(cls, network) -> bool:
        """Whether this backend can build and differentiate `network` (a `NetworkSpec`)."""
        return True

    @classmethod
    def refusal(cls, rule, network) -> str | None:
        """Why this backend cannot run `rule` exactly as declared on `network` (a `NetworkSpec`):
        e.g. its adapted parameters (by name), state or context; None when it can. The registry
        does not offer a backend that refuses the default network; `get_learner_class` refuses
        another network with this reason. Never a silent fallback to something else."""
        return None

    @classmethod
    def problem_refusal(cls, problem) -> str | None:
        """Why this backend cannot train with the task's problem (`tasks.problem.Problem`: its loss
        and network dimensions); None when it can. `get_learner_class` refuses (or, for `func`,
        falls back) with this reason, so a sweep skips the cell at parse time. Default: a learner
        whose constructor takes no `problem` (a plug-in written for the sine families) runs the
        suite's 1 -> 1 MSE problem only."""
        import inspect

        from tasks.problem import REGRESSION, problem_of

        if problem_of(problem) == REGRESSION or "problem" in inspect.signature(cls.__init__).parameters:
            return None
        return f"{cls.__name__} takes no task problem: it trains 1 -> 1 MSE only"

    #: which engine computes the meta-gradient ("accelerated", "generic", a library name): recorded
    engine: str = "reference"

    #: whether `compile=True` is accepted (the meta-gradient through torch.compile)
    compiles: bool = False
    #: seconds spent in compiled programs' first calls (compile + one step): recorded apart from
    #: the step time, which excludes them
    compile_seconds: float = 0.0

    def _compiled_call(self, key, build, *args):
        """Call the compiled program for `key`, made by `build()` on first use; that first call
        (compile + one step) is timed into `compile_seconds`, never into the step time. Compiles go
        through the persistent cache shared by the sweep (`use_compile_cache`): a program another
        cell, seed or worker compiled before costs its tracing and loading only."""
        programs = self.__dict__.setdefault("_programs", {})
        if key in programs:
            return programs[key](*args)
        started = time.perf_counter()
        use_compile_cache(self.device)  # its import of Inductor is part of the compile
        programs[key] = build()  # torch.compile compiles on the first call, `_compile_traced` here
        result = programs[key](*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_seconds += time.perf_counter() - started
        return result

    def _inductor_options(self) -> dict | None:
        """On CPU, Inductor's C++ wrapper: it calls the generated kernels from C++ instead of Python,
        bitwise the same floats, ~10% less time per call at these sizes (measured 0.231 -> 0.205 ms
        for the compiled second-order meta-gradient at S = 1, T = 25, one thread). CUDA keeps the
        default wrapper (not measured there)."""
        return {"cpp_wrapper": True} if self.device.type == "cpu" else None

    def _compile(self, fn, fullgraph: bool = True):
        """`torch.compile(fn, fullgraph=fullgraph, dynamic=False)`: for code that may break the
        graph (a plug-in's rule or network); TorchDynamo checks its guards on every call."""
        return torch.compile(fn, fullgraph=fullgraph, dynamic=False, options=self._inductor_options())

    def _compile_traced(self, fn, inputs: list[torch.Tensor], keep: list[torch.Tensor]):
        """`fn(*inputs)` -> tuple of tensors, traced once into an aten graph (`make_fx` on fake
        tensors) and compiled by Inductor (`torch._inductor.compile`); called without TorchDynamo.

        Why: at these sizes TorchDynamo's per-call work (guard evaluation, frame handling) was
        ~25 µs of a 0.13 ms compiled FOMAML meta-gradient (S = 1, T = 25, one thread; measured
        0.126 -> 0.098 ms with the same kernels, bitwise the same floats). The price is that
        nothing is guarded: the program is specialised to the inputs' shapes, strides and dtypes
        and to every Python value `fn` read, so the caller keys it by them (`_compiled_call`);
        tensors `fn` reads from elsewhere (fixed configuration such as LR_base) are baked in as
        constants, so everything that changes between calls must be an input. A constant that
        shares memory with a tensor of `keep` (the meta-parameters, the optimiser's state) means a
        value that changes was baked in: that raises instead of silently computing with stale values.
        """
        from torch.fx.experimental.proxy_tensor import make_fx

        with torch.no_grad():
            graph = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        kept = {t.untyped_storage().data_ptr() for t in keep}
        for node in graph.graph.nodes:
            value = getattr(graph, node.target) if node.op == "get_attr" else None
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in kept:
                raise RuntimeError(f"compiled program: {node.target} is a meta-parameter or optimiser state "
                                   "baked in as a constant; pass it as an input")
        return torch._inductor.compile(graph, list(inputs), options=self._inductor_options())

    def double(self) -> "MetaLearner":
        """This learner in float64, in place (for float64 cross-checks between backends)."""
        raise NotImplementedError(f"{type(self).__name__} has no float64 mode")

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
