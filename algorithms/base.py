"""The one interface every (algorithm, backend) implements, and its hyperparameters.

A learner owns its meta-parameters and outer optimiser. The shared training loop only
calls `step(batch, iteration)`; the shared evaluation only reads `adaptation()`. Nothing
outside a learner branches on its name.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
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
    On CPU the engine's programs are AOTInductor libraries in its `aoti/` subfolder
    (`compiled_program`), keyed by their own key, which also names torch version and machine.
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
    LR_meta and seed compile once, the second loading the first's program: tests/test_compile_choice.py,
    tests/test_warm_compile.py).
    So one compile serves every cell of a program shape, which `compile = "auto"` counts on
    (`benchmarks.compile_choice`: cold for the first cell of a group, warm for the rest)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or _is_torchs_default_cache_dir(current):
        folder = compile_cache_dir(device)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only checkout or install: torch's default folder, rather than no compile
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def _is_torchs_default_cache_dir(folder: str) -> bool:
    """Whether `folder` is Inductor's default (`/tmp/torchinductor_<user>`). Torch's answer needs
    `torch._inductor` imported (~2 s of CPU, a third of a warm compile before AOTInductor), so a
    folder not named like the default (the speed suite's, a user's) is answered without it."""
    if not os.path.basename(os.path.normpath(folder)).startswith("torchinductor_"):
        return False
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(folder) == os.path.abspath(default_cache_dir())


#: the layout of `compiled_program`'s entries (and how they are called): part of every key, so
#: entries written by another layout are never read
PROGRAM_FORMAT = "aoti-cpu-1"
#: environment variables that configure how Inductor builds but never what it builds: left out
#: of the key (every other variable naming Inductor, Dynamo, AOTI or the compiler is in it)
BUILD_ONLY_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_COMPILE_THREADS")


#: the project's packages whose code a trace runs: their source is in every `trace_key`, also
#: when installed into site-packages (other installed packages are covered by their version: torch's)
TRACED_PACKAGES = ("algorithms", "tasks")


#: Inductor settings a compile writes rather than reads (AOTInductor records the platform it built
#: for in `aot_inductor.metadata`): no part of the key, or a second compile in a process would
#: never find the first's programs
CONFIG_OUTPUTS = ("aot_inductor.metadata",)


def _lift_constants(graph: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """`graph` with its tensor constants (`get_attr`: LR_base, LR_meta) turned into leading inputs,
    and those tensors. An AOTInductor library would otherwise hold their values in its data, so
    a cell with another rate could not share it; Inductor's own compile lifts them the same way
    (first, in graph order), so the kernels, and the floats, are those of `torch._inductor.compile`."""
    constants, first = [], next(iter(graph.graph.nodes))
    for node in list(graph.graph.nodes):
        if node.op != "get_attr" or not isinstance(getattr(graph, node.target), torch.Tensor):
            continue
        constants.append(getattr(graph, node.target))
        with graph.graph.inserting_before(first):
            lifted = graph.graph.placeholder(f"lifted_constant_{len(constants)}")
        lifted.meta = dict(node.meta)
        node.replace_all_uses_with(lifted)
        graph.graph.erase_node(node)
        delattr(graph, node.target)
    graph.recompile()
    return graph, constants


def _config_changes() -> dict:
    """What configures Inductor's code beyond torch's defaults: the environment variables it and
    the compiler read, and settings changed in this process (`torch._inductor.config`,
    `torch._functorch.config`; read only where loaded: unloaded, they hold their defaults and
    the environment's, so the key needs no import of Inductor)."""
    import sys

    names = ("INDUCTOR", "DYNAMO", "AOTI", "TORCH_COMPILE", "ATEN_CPU_CAPABILITY", "CXX")
    environment = {k: v for k, v in sorted(os.environ.items())
                   if any(n in k for n in names) and k not in BUILD_ONLY_VARIABLES}
    changed = {}
    for name in ("torch._inductor.config", "torch._functorch.config"):
        module = sys.modules.get(name)
        if module is not None:  # by value: torch marks some settings overridden with their default
            changed[name] = {k: repr(v) for k, v in sorted(module._get_dict().items())
                             if k in module._config and v != module._config[k].default and k not in CONFIG_OUTPUTS}
    return {"environment": environment, "changed": changed}


def _compiler_identity() -> list:
    """The C++ compiler Inductor runs (`CXX`, else g++) by path, size and modification time: a
    compiler upgrade is a new key, since its code (and floats) may differ."""
    import shutil

    found = shutil.which(os.environ.get("CXX") or "g++")
    if found is None:
        return [None]
    stat = os.stat(os.path.realpath(found))
    return [os.path.realpath(found), stat.st_size, stat.st_mtime_ns]


def program_key(graph: torch.fx.GraphModule, inputs: list[torch.Tensor], device) -> str:
    """The key of a compiled program: everything its code depends on. The traced aten graph's
    code is the step itself (every op, every Python number the trace read, in order); with it
    the inputs' shapes, strides, dtypes and device, the thread count (Inductor's CPU code is
    written for it), the torch build, the machine (`benchmarks.hardware`: processor, vector ISA),
    the compiler, Inductor's configuration (`_config_changes`) and `PROGRAM_FORMAT`. Input values
    (data, state, the lifted LR_base and LR_meta) are not in it: they are passed at call time."""
    parts = {**_build_context(device), "code": graph.code, "inputs": [_meta(t) for t in inputs]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


def _build_context(device) -> dict:
    """What a program's code depends on besides its graph and inputs (`program_key`)."""
    from benchmarks.hardware import hardware

    return {"format": PROGRAM_FORMAT, "torch": [torch.__version__, torch.version.git_version],
            "hardware": hardware(device), "compiler": _compiler_identity(), "config": _config_changes(),
            "threads": torch.get_num_threads()}


def _meta(t: torch.Tensor) -> list:
    return [list(t.shape), list(t.stride()), str(t.dtype), str(t.device)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_entry(library: Path):
    """The AOTInductor runner of a cache entry, or None when there is none. An entry whose library
    does not match its recorded digest (truncated, overwritten, its record missing) or that does
    not load is corrupt: a warning, and None, so it is rebuilt rather than used."""
    record = library.with_suffix(".json")
    if not library.exists() and not record.exists():
        return None
    try:
        stored = json.loads(record.read_text())
        if stored.get("format") != PROGRAM_FORMAT or stored.get("sha256") != _digest(library):
            raise ValueError("its digest does not match its record")
        return torch._C._aoti.AOTIModelContainerRunnerCpu(str(library), 1)
    except (OSError, ValueError, RuntimeError) as error:  # json.JSONDecodeError is a ValueError
        warnings.warn(f"compiled program {library} is corrupt ({type(error).__name__}: {error}); recompiling",
                      stacklevel=3)
        return None


def _build_entry(graph: torch.fx.GraphModule, inputs: list[torch.Tensor], library: Path) -> None:
    """AOTInductor-compile `graph` into `library` (and its record, `.json`: format and digest).
    Built in a private folder and moved into place, the library before its record: a reader
    never loads a half-written library, and a library without its matching record is rebuilt."""
    import tempfile

    import torch._inductor

    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent, prefix=".build-") as folder:
        built = Path(torch._inductor.aot_compile(graph, tuple(inputs),
                                                 options={"aot_inductor.output_path": os.path.join(folder, "program.so")}))
        record = Path(folder) / "record.json"
        record.write_text(json.dumps({"format": PROGRAM_FORMAT, "sha256": _digest(built), "torch": torch.__version__}))
        os.replace(built, library)
        os.replace(record, library.with_suffix(".json"))


def compiled_program(graph: torch.fx.GraphModule, inputs: list[torch.Tensor], device="cpu", trace=None):
    """A CPU program for the traced `graph`: an AOTInductor library (`torch._inductor.aot_compile`,
    loaded by the runner `torch._export.aot_load` wraps), kept in `<Inductor's cache folder>/aoti/
    <program_key>.so`. Called as `graph` is (a list of tensors back; inputs it mutates, mutated).

    Why not Inductor's own caches alone (the FX graph and AOTAutograd caches, which a compile
    still goes through on CUDA): a warm hit there still imports Inductor and Dynamo (~2 s of CPU),
    re-traces the graph through AOTAutograd to compute the key (~0.9 s) and loads a Python wrapper
    (~0.5 s) before the first step; an AOTInductor library loads in milliseconds with none of it,
    so a warm compile is the make_fx trace (whose code is the key) and a load, or, with a record
    of the same trace (`traced_program`), a key and a load. The kernels are
    Inductor's, the same code either way: bitwise the floats of `torch._inductor.compile`
    (tests/test_warm_compile.py). A cold compile costs about the same as Inductor's.

    `trace`: (owner, trace key) to record which library this trace gave and where on `owner`
    its constants live (`traced_program` reads it back without tracing); no record when a
    constant is not found there."""
    graph, constants = _lift_constants(graph)
    example = [*constants, *inputs]
    library = _program_folder() / f"{program_key(graph, example, device)}.so"
    runner = _load_entry(library)
    if runner is None:
        _build_entry(graph, example, library)
        runner = _load_entry(library)
        if runner is None:
            raise RuntimeError(f"compiled program {library}: built but does not load")
    if trace is not None:
        owner, key = trace
        paths = [_path_of(owner, c) for c in constants]
        if None not in paths:
            _write_atomic(_program_folder() / f"trace-{key}.json", {
                "format": PROGRAM_FORMAT, "library": library.name,
                "constants": [[path, _meta(c)] for path, c in zip(paths, constants)]})
    return lambda *args: runner.run([*constants, *args])


def _program_folder() -> Path:
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if root is None:  # `use_compile_cache` could not make the project folder
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        root = cache_dir()
    return Path(root) / "aoti"


def _write_atomic(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def _tensors_of(owner, depth: int = 2):
    """(path, tensor) for the tensors among `owner`'s attributes, in lists and tuples of them and,
    `depth` levels down, in the attributes of the objects it holds (its optimiser)."""
    for name, value in sorted(vars(owner).items()):
        if isinstance(value, torch.Tensor):
            yield [name], value
        elif isinstance(value, (list, tuple)):
            yield from (([name, i], v) for i, v in enumerate(value) if isinstance(v, torch.Tensor))
        elif depth > 1 and hasattr(value, "__dict__") and not isinstance(value, type):
            yield from (([name, *path], v) for path, v in _tensors_of(value, depth - 1))


def _path_of(owner, constant: torch.Tensor):
    """Where on `owner` the traced constant lives (the tensor itself), or None."""
    return next((path for path, t in _tensors_of(owner) if t is constant), None)


def _follow(owner, path: list):
    for step in path:
        owner = owner[step] if isinstance(step, int) else getattr(owner, step)
    return owner


def trace_key(owner, key, inputs: list[torch.Tensor], keep: list[torch.Tensor], device) -> str:
    """A key for a trace not yet made: everything the trace of `owner`'s program `key` reads.
    The build context (`_build_context`), the caller's key, the inputs' shapes, strides and dtypes,
    torch's global settings a trace reads (default dtype, matmul precision, deterministic mode),
    `owner`'s state (`_describe`: every attribute, recursively; tensors that are state the program
    is given (`keep`) by shape, all others by value, so LR_base and LR_meta are in it) and the
    source of the project's packages a trace runs (`TRACED_PACKAGES`, wherever installed), of
    every module loaded from outside the Python installation (a checkout, plug-ins) and of the
    classes and functions its state holds. Too much in it costs a trace (~2 s);
    too little would give a stale program, hence the breadth."""
    import sys
    import sysconfig

    kept = {t.untyped_storage().data_ptr() for t in keep}
    files: set[str] = set()
    state = _describe({k: v for k, v in vars(owner).items() if k not in ("_programs", "compile_seconds")},
                      kept, files, set())
    installed = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep
                       for k in ("stdlib", "platstdlib", "purelib", "platlib")})
    for name, module in list(sys.modules.items()):
        found = getattr(module, "__file__", None)
        if found and found.endswith(".py") and (name.partition(".")[0] in TRACED_PACKAGES
                                                or not os.path.realpath(found).startswith(installed)):
            files.add(found)
    sources = hashlib.sha256()
    for name in sorted(files):
        try:
            sources.update(name.encode() + b"\0" + Path(name).read_bytes() + b"\0")
        except OSError:
            sources.update(name.encode() + b"\0unreadable\0")
    parts = {**_build_context(device), "kind": repr(key), "inputs": [_meta(t) for t in inputs],
             "class": [type(owner).__module__, type(owner).__qualname__], "state": state,
             "globals": [str(torch.get_default_dtype()), torch.get_float32_matmul_precision(),
                         torch.are_deterministic_algorithms_enabled()],
             "sources": sources.hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


def _describe(value, kept: set, files: set, seen: set):
    """A JSON-able description of `value` for `trace_key` (see there); an object it cannot
    describe by content is described by its repr, which names its address: a miss, never a hit."""
    import inspect

    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return str(value)
    if isinstance(value, torch.Tensor):
        if value.untyped_storage().data_ptr() in kept:
            return ["state", _meta(value)]
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return ["tensor", _meta(value), hashlib.sha256(data).hexdigest()]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [_describe(v, kept, files, seen) for v in value]]
    if isinstance(value, dict):
        return ["dict", sorted([repr(k), _describe(v, kept, files, seen)] for k, v in value.items())]
    if id(value) in seen:
        return "seen"
    seen.add(id(value))
    kind = value if isinstance(value, type) or inspect.isroutine(value) else type(value)
    try:
        files.add(inspect.getsourcefile(kind) or "")
    except TypeError:  # a built-in
        pass
    name = [getattr(kind, "__module__", ""), getattr(kind, "__qualname__", repr(kind))]
    if kind is value:
        return name
    if hasattr(value, "__dict__"):
        return [*name, _describe(vars(value), kept, files, seen)]
    return [*name, repr(value)]


def traced_program(owner, key: str):
    """The program `compiled_program` recorded for trace key `key`, without tracing: its library
    and its constants found again on `owner` (the same path, shape, stride and dtype). None when
    there is no record, its constants are not there, or its library is missing or corrupt (then
    the caller traces; a corrupt record or library also warns)."""
    record_path = _program_folder() / f"trace-{key}.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        if record["format"] != PROGRAM_FORMAT:
            return None
        constants = []
        for path, meta in record["constants"]:
            constant = _follow(owner, path)
            if not isinstance(constant, torch.Tensor) or _meta(constant) != meta:
                return None
            constants.append(constant)
        library = _program_folder() / record["library"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        warnings.warn(f"compiled program record {record_path} is corrupt ({type(error).__name__}: {error}); "
                      "tracing again", stacklevel=3)
        return None
    runner = _load_entry(library)
    if runner is None:
        return None
    return lambda *args: runner.run([*constants, *args])


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

    def _compile_traced(self, fn, inputs: list[torch.Tensor], keep: list[torch.Tensor], key=None):
        """`fn(*inputs)` -> tuple of tensors, traced once into an aten graph (`make_fx` on fake
        tensors) and compiled by Inductor (on CPU into an AOTInductor library, `compiled_program`;
        elsewhere `torch._inductor.compile`); called without TorchDynamo. With the caller's `key`
        (CPU), a program recorded for the same trace key (`trace_key`: everything the trace would
        read) is loaded without tracing: a warm compile then neither traces nor imports Inductor.

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

        trace = None
        if self.device.type == "cpu" and key is not None:  # a program recorded for this trace: no trace
            trace = (self, trace_key(self, key, inputs, keep, self.device))
            program = traced_program(self, trace[1])
            if program is not None:
                return program
        with torch.no_grad():
            graph = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        kept = {t.untyped_storage().data_ptr() for t in keep}
        for node in graph.graph.nodes:
            value = getattr(graph, node.target) if node.op == "get_attr" else None
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in kept:
                raise RuntimeError(f"compiled program: {node.target} is a meta-parameter or optimiser state "
                                   "baked in as a constant; pass it as an input")
        if self.device.type == "cpu":  # a library loaded in milliseconds when warm (`compiled_program`)
            return compiled_program(graph, list(inputs), self.device, trace=trace)
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
