"""Warm compiles of the accelerated engine's programs on CPU (`algorithms.base.compiled_program`):
an AOTInductor library per program key, bitwise the floats of `torch._inductor.compile`, and a
record per trace key (`trace_key`), so a warm compile neither traces nor imports Inductor; a
changed key traces or compiles anew, a corrupt entry is rebuilt, never used.

The key and entry tests use a stand-in compiler and loader (a compile takes 15-40 s); the tests
that compile for real are marked slow where they must compile cold."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import algorithms.base as base
from algorithms import HyperParams, get_algorithm
from tasks import TaskBatch, get_task

ROOT = Path(__file__).resolve().parents[1]
FAMILY = get_task("sine")


class _Compiler:
    """Stands in for `torch._inductor.aot_compile` and the AOTI runner: a 'library' is the
    graph's code in a file, run by the graph itself; loading one that does not start like it
    fails as dlopen would."""

    def __init__(self, monkeypatch):
        import torch._inductor

        self.builds, self.loaded, self.graphs = [], [], {}
        monkeypatch.setattr(torch._inductor, "aot_compile", self.compile)
        monkeypatch.setattr(torch._C._aoti, "AOTIModelContainerRunnerCpu", self.runner)

    def compile(self, graph, args, options):
        self.builds.append(graph.code)
        self.graphs[graph.code] = graph
        path = options["aot_inductor.output_path"]
        Path(path).write_bytes(b"library:" + graph.code.encode())
        (Path(path).parent / "program.wrapper.cpp").write_text("// a build's by-product")
        return path

    def runner(self, path, models):
        content = Path(path).read_bytes()
        if not content.startswith(b"library:"):
            raise RuntimeError(f"{path}: invalid ELF header")
        self.loaded.append(path)
        graph = self.graphs.get(content[len(b"library:"):].decode(), None)

        class Runner:
            def run(self, inputs):
                return list(graph(*inputs))

        return Runner()


def _traced(rate, shape=(3,)):
    """A tiny traced step reading a tensor it is not given (a constant, as LR_base is)."""
    return make_fx(lambda x: (x * rate + 1,), tracing_mode="fake", _allow_non_fake_inputs=True)(torch.ones(shape)), \
        [torch.ones(shape)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    return tmp_path / "aoti"


def test_a_program_is_built_once_then_loaded_and_gets_its_constants_at_call_time(cache, monkeypatch):
    compiler = _Compiler(monkeypatch)
    rate = torch.tensor([0.5])
    program = base.compiled_program(*_traced(rate))
    assert len(compiler.builds) == 1 and [p.suffix for p in sorted(cache.iterdir())] == [".json", ".so"]
    out, = program(torch.full((3,), 2.0))
    assert torch.equal(out, torch.full((3,), 2.0))  # 0.5 * 2 + 1: the rate came in as the first input
    other = torch.tensor([0.25])  # another rate, the same program (rates are inputs, not code)
    again = base.compiled_program(*_traced(other))
    assert len(compiler.builds) == 1 and len(compiler.loaded) == 2
    assert torch.equal(again(torch.full((3,), 2.0))[0], torch.full((3,), 1.5))
    record = json.loads(next(cache.glob("*.json")).read_text())
    assert record["format"] == base.PROGRAM_FORMAT and len(record["sha256"]) == 64
    assert not list(cache.glob(".build-*"))  # the build's folder and by-products are gone


@pytest.mark.parametrize("change", ["shape", "code", "threads", "environment", "config", "torch", "hardware",
                                    "compiler", "format"])
def test_a_changed_key_compiles_anew(cache, monkeypatch, change):
    compiler = _Compiler(monkeypatch)
    base.compiled_program(*_traced(torch.tensor([0.5])))
    traced = _traced(torch.tensor([0.5]))
    if change == "shape":
        traced = _traced(torch.tensor([0.5]), shape=(4,))
    elif change == "code":
        traced = make_fx(lambda x: (x * 2 + 1,), tracing_mode="fake")(torch.ones(3)), [torch.ones(3)]
    elif change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    elif change == "environment":
        monkeypatch.setenv("TORCHINDUCTOR_MAX_AUTOTUNE", "1")
    elif change == "config":  # a setting changed in this process (undone when the context ends)
        import importlib

        with importlib.import_module("torch._inductor.config").patch(max_fusion_size=7):
            base.compiled_program(*traced)
        assert len(compiler.builds) == 2
        return
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "hardware":
        import benchmarks.hardware

        monkeypatch.setattr(benchmarks.hardware, "hardware", lambda device="cpu": "another processor [AVX2]")
    elif change == "compiler":
        monkeypatch.setattr(base, "_compiler_identity", lambda: ["/usr/bin/g++", 1, 2])
    elif change == "format":
        monkeypatch.setattr(base, "PROGRAM_FORMAT", "aoti-cpu-0")
    base.compiled_program(*traced)
    assert len(compiler.builds) == 2 and len(list(cache.glob("*.so"))) == 2


def test_what_only_configures_the_build_is_no_part_of_the_key(cache, monkeypatch):
    """The cache folder and Inductor's compile-worker count change how, not what, it builds."""
    compiler = _Compiler(monkeypatch)
    base.compiled_program(*_traced(torch.tensor([0.5])))
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    base.compiled_program(*_traced(torch.tensor([0.5])))
    assert len(compiler.builds) == 1


def test_settings_a_compile_writes_or_leaves_at_their_default_are_no_part_of_the_key(cache, monkeypatch):
    """AOTInductor writes the platform it built for into `aot_inductor.metadata`, and torch marks
    some settings overridden with their default value: neither may make a second compile in the
    process miss the first's programs (seen: another LR_base compiled anew in a sweep's worker)."""
    import importlib

    compiler = _Compiler(monkeypatch)
    base.compiled_program(*_traced(torch.tensor([0.5])))
    inductor, functorch = (importlib.import_module(f"torch.{name}.config") for name in ("_inductor", "_functorch"))
    with inductor.patch({"aot_inductor.metadata": {"AOTI_CPU_ISA": "AVX2"}}), \
            functorch.patch(functionalize_rng_ops=functorch.functionalize_rng_ops):
        base.compiled_program(*_traced(torch.tensor([0.5])))
    assert len(compiler.builds) == 1


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "record missing", "record garbled",
                                    "library missing", "does not load"])
def test_a_corrupt_entry_is_rebuilt_with_a_warning_never_used(cache, monkeypatch, damage):
    compiler = _Compiler(monkeypatch)
    base.compiled_program(*_traced(torch.tensor([0.5])))
    library = next(cache.glob("*.so"))
    record = library.with_suffix(".json")
    content = library.read_bytes()
    if damage == "flipped byte":
        library.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    elif damage == "truncated":
        library.write_bytes(content[: len(content) // 2])
    elif damage == "record missing":
        record.unlink()
    elif damage == "record garbled":
        record.write_text("{not json")
    elif damage == "library missing":
        library.unlink()
    else:  # a library that matches its record yet fails to load (e.g. built for another processor)
        library.write_bytes(b"\x7fELF-broken")
        record.write_text(json.dumps({"format": base.PROGRAM_FORMAT, "sha256": base._digest(library)}))
    loaded = len(compiler.loaded)
    with pytest.warns(UserWarning, match="is corrupt.*recompiling"):
        program = base.compiled_program(*_traced(torch.tensor([0.5])))
    assert len(compiler.builds) == 2 and len(compiler.loaded) == loaded + 1  # the rebuilt one only
    assert library.read_bytes() == content and torch.equal(program(torch.ones(3))[0], torch.full((3,), 1.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base.compiled_program(*_traced(torch.tensor([0.5])))  # repaired: loads, no warning
    assert len(compiler.builds) == 2


def test_a_program_that_builds_but_does_not_load_raises(cache, monkeypatch):
    _Compiler(monkeypatch)

    def refuse(path, models):
        raise RuntimeError("undefined symbol")

    monkeypatch.setattr(torch._C._aoti, "AOTIModelContainerRunnerCpu", refuse)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="built but does not load"):
        base.compiled_program(*_traced(torch.tensor([0.5])))


def test_lifting_the_constants_keeps_the_graph_and_its_order():
    rate, bias = torch.tensor([0.5]), torch.tensor([2.0])
    graph = make_fx(lambda x: (x * rate + bias,), tracing_mode="fake", _allow_non_fake_inputs=True)(torch.ones(3))
    lifted, constants = base._lift_constants(graph)
    assert [c is t for c, t in zip(constants, (rate, bias))] == [True, True]
    assert not [n for n in lifted.graph.nodes if n.op == "get_attr"]
    assert torch.equal(lifted(rate, bias, torch.full((3,), 4.0))[0], torch.full((3,), 4.0))


# ------------------------------------------------------------------- a recorded trace: no trace at all

def _probe(learner, make_fx_calls, key=("probe",)):
    """A traced program of `learner` reading its LR_base (a constant), as its step does."""
    state = [learner.meta_parameters[0].detach()]
    return learner._compile_traced(lambda x, p: (x * learner.lr_base.float() + p.sum(),), [torch.ones(3), *state],
                                   keep=state, key=key)


@pytest.fixture
def counted_traces(monkeypatch):
    import torch.fx.experimental.proxy_tensor as proxy_tensor

    calls, make_fx_ = [], proxy_tensor.make_fx
    monkeypatch.setattr(proxy_tensor, "make_fx", lambda *a, **k: calls.append(1) or make_fx_(*a, **k))
    return calls


def _learner(**hp):
    return get_algorithm("maml", "func", HyperParams(meta_batch=2, **hp), torch.Generator().manual_seed(0),
                         compile=True)


def test_a_recorded_trace_is_loaded_without_tracing_with_the_new_learners_constants(cache, monkeypatch,
                                                                                  counted_traces):
    compiler = _Compiler(monkeypatch)
    _probe(_learner(), counted_traces)
    assert len(counted_traces) == 1 and len(compiler.builds) == 1 and len(list(cache.glob("trace-*.json"))) == 1
    other_seed = get_algorithm("maml", "func", HyperParams(meta_batch=2), torch.Generator().manual_seed(9),
                               compile=True)  # another seed: other values of the same state
    program = _probe(other_seed, counted_traces)
    assert len(counted_traces) == 1 and len(compiler.builds) == 1 and len(compiler.loaded) == 2
    assert compiler.loaded[-1] == compiler.loaded[0]
    state = other_seed.meta_parameters[0].detach()
    out, = program(torch.full((3,), 2.0), state)  # its own LR_base came in, its state is the input
    assert torch.equal(out, torch.full((3,), 2.0) * other_seed.lr_base.float() + state.sum())


@pytest.mark.parametrize("change", ["rate", "attribute", "source", "key", "shape"])
def test_what_a_trace_reads_changing_traces_again(cache, monkeypatch, counted_traces, tmp_path, change):
    """Another LR_base (a value the trace reads), another attribute, another source file loaded,
    another program key or input shape: traced again; a rate alone needs no new build."""
    compiler = _Compiler(monkeypatch)
    _probe(_learner(), counted_traces)
    learner, key = _learner(), ("probe",)
    if change == "rate":
        learner = _learner(lr_base=0.5)
    elif change == "attribute":
        learner.segment = 3
    elif change == "source":
        module = tmp_path / "plugin_for_trace_key.py"
        module.write_text("X = 1\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        __import__("plugin_for_trace_key")
        monkeypatch.delitem(sys.modules, "plugin_for_trace_key")
        monkeypatch.setitem(sys.modules, "plugin_for_trace_key", __import__("plugin_for_trace_key"))
    elif change == "key":
        key = ("probe", 2)
    if change == "shape":
        learner = get_algorithm("maml", "func", HyperParams(meta_batch=3), torch.Generator().manual_seed(0),
                                compile=True)
        state = [learner.meta_parameters[0].detach()]
        learner._compile_traced(lambda x, p: (x * learner.lr_base.float() + p.sum(),), [torch.ones(4), *state],
                                keep=state, key=key)
    else:
        _probe(learner, counted_traces, key)
    assert len(counted_traces) == 2
    assert len(compiler.builds) == (2 if change == "shape" else 1)


def test_a_corrupt_or_mismatched_trace_record_traces_again(cache, monkeypatch, counted_traces):
    compiler = _Compiler(monkeypatch)
    _probe(_learner(), counted_traces)
    record = next(cache.glob("trace-*.json"))
    content = json.loads(record.read_text())
    record.write_text("{garbled")
    with pytest.warns(UserWarning, match="record .* is corrupt"):
        _probe(_learner(), counted_traces)
    assert len(counted_traces) == 2 and json.loads(record.read_text()) == content  # rewritten
    content["constants"][0][1][0] = [7]  # the constant found there has another shape: not used
    record.write_text(json.dumps(content))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _probe(_learner(), counted_traces)
    assert len(counted_traces) == 3 and len(compiler.builds) == 1
    next(cache.glob("*.so")).write_bytes(b"library:damaged")  # the library it names is corrupt: rebuilt
    with pytest.warns(UserWarning, match="is corrupt.*recompiling"):
        _probe(_learner(), counted_traces)
    assert len(counted_traces) == 4 and len(compiler.builds) == 2


_SNIPPET = """
import os, sys
os.environ["TORCHINDUCTOR_CACHE_DIR"] = sys.argv[1]
import algorithms.base as base
base.use_compile_cache("cpu")
print(os.environ["TORCHINDUCTOR_CACHE_DIR"] == sys.argv[1], "torch._inductor" in sys.modules)
"""


def test_pointing_at_a_cache_folder_imports_no_inductor(tmp_path):
    """A folder not named like Inductor's default is kept without importing Inductor (~2 s)."""
    done = subprocess.run([sys.executable, "-c", _SNIPPET, str(tmp_path / "e2e-inductor-x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=True)
    assert done.stdout.split() == ["True", "False"]


# ------------------------------------------------------------------------------------------- real compiles

def _train(steps: int = 10, **hp) -> torch.Tensor:
    learner = get_algorithm(hp.pop("algorithm", "maml"), "func", HyperParams(meta_batch=5, **hp),
                            torch.Generator().manual_seed(1), compile=True)
    generator = torch.Generator().manual_seed(3)
    for iteration in range(steps):
        learner.step(TaskBatch.stack([FAMILY.sample(5, generator)]), iteration)
    return torch.cat([p.flatten() for p in learner.meta_parameters])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("hp", [{"inner_steps": 3, "lr_base": 0.3}, {"algorithm": "metasgd", "inner_steps": 2}],
                         ids=["maml-S3", "metasgd-S2"])
def test_the_library_is_bitwise_inductors_own_compile(monkeypatch, hp):
    """10 Adam steps end on bitwise the same weights through the AOTInductor library and through
    `torch._inductor.compile` (its C++ and Python wrappers: what the CPU path was before).
    Compiled into the project's cache: cold the first time only."""
    import torch._inductor

    aoti = _train(**dict(hp))
    monkeypatch.setattr(base, "traced_program", lambda owner, key: None)  # no recorded trace: Inductor's
    for options in ({"cpp_wrapper": True}, None):
        monkeypatch.setattr(base, "compiled_program", lambda graph, inputs, device, trace=None, options=options:
                            torch._inductor.compile(graph, inputs, options=options))
        assert aoti.isfinite().all() and torch.equal(aoti, _train(**dict(hp))), options


_RUN = """
import json, sys, time
started = time.process_time()
import torch
torch.set_num_threads(1)
from algorithms import HyperParams, get_algorithm
from tasks import TaskBatch, get_task
hp = HyperParams(inner_steps=2, meta_batch=5, iterations=3)
learner = get_algorithm("maml", "func", hp, torch.Generator().manual_seed(0), compile=True)
family = get_task("sine")
for i in range(3):
    learner.step(TaskBatch.stack([family.sample(5, torch.Generator().manual_seed(i))]), i)
print(json.dumps({"params": torch.cat([p.detach().flatten() for p in learner.meta_parameters]).tolist(),
                  "compile_seconds": learner.compile_seconds,
                  "imported": sorted(m for m in ("torch._inductor", "torch._dynamo") if m in sys.modules)}))
"""


@pytest.mark.slow
def test_a_warm_compile_is_a_trace_and_a_load(tmp_path):
    """Fresh processes on one empty folder: cold, then warm. The warm one imports neither
    Inductor nor Dynamo, ends bitwise on the cold one's weights and compiles in under a tenth
    of its time (measured ~3%)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def run():
        done = subprocess.run([sys.executable, "-c", _RUN], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=600, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold["imported"] == ["torch._dynamo", "torch._inductor"] and warm["imported"] == []
    assert warm["params"] == cold["params"]
    assert warm["compile_seconds"] < 0.1 * cold["compile_seconds"], (cold["compile_seconds"], warm["compile_seconds"])
