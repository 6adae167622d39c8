"""Task registry: `list_tasks()`, `get_task(name, **params)`, `register_task`, and the fixed evaluation sets.

A task family is any object with `k_shot`, `sample(n_tasks, generator)` (a `TaskBatch`),
`with_points(k, q)` (the same family with K support and q query points) and
`function(x, params)` (the noiseless target for x [tasks, points, in] and a batch's `params`).
Optionally `sample_block(n_iterations, n_tasks, generator)`: the next `n_iterations` meta-batches
stacked along a new leading dimension, bit for bit what as many successive `sample(n_tasks,
generator)` calls give (every field and the generator's state after), which the training loop
draws in blocks (`benchmarks.training`); a family that cannot draw a block exactly returns
`tasks.batch.sequential_block` (the calls themselves), and one without the method is sampled
per iteration.
It declares what it asks of a network in `problem` (`tasks.problem.Problem`: input and output
dimensions, loss, reported metric; none declared: 1 -> 1 regression with MSE), mirrored in its
`input_dim` / `output_dim` (what the network registry sizes networks from).

Plug-ins: an installed distribution may declare entry points in the group `metabench.tasks`.
Each is loaded when `tasks` is first imported (so the config check and `python -m benchmarks list`
see its tasks): an entry point naming an object (`pkg.mod:register`) has it called with no
arguments; one naming a module (`pkg.mod`) registers by being imported. Either way the plug-in
registers its families with `register_task`; one that fails raises `TaskPluginError` naming it.

Names must match `NAME` (the one pattern of both registries, `benchmarks.plugins`), and `SOURCES`
remembers which code registered each family (`source_of(name)`; the families below are `BUILTIN`).
"""
from __future__ import annotations

import importlib.metadata
import sys
import types
from functools import partial

import torch

from benchmarks.plugins import BUILTIN_SOURCE, FAILURES, NAME, Sources, check_name, code_source
from tasks.batch import TaskBatch
from tasks.classification import GaussClassFamily
from tasks.problem import REGRESSION, Metric, Problem, problem_of, metric_from_declaration, MSE
from tasks.sine import SineFamily, SineFreqFamily

PLUGIN_GROUP = "metabench.tasks"

#: name -> factory(**params) -> family. The live registry: `register_task` writes here, and the
#: sweep-file check (benchmarks/config.py) reads it.
TASKS = {
    "sine": SineFamily,
    # Support points only on the right half of the axis; queried everywhere (Finn Fig. 3 style).
    "sine-half": partial(SineFamily, support_x_range=(0.0, 5.0)),
    # Meta-SGD's variant: a random frequency w ~ U[0.8, 1.2) as well.
    "sine-freq": SineFreqFamily,
    # N-way K-shot classification of Gaussian blobs (`tasks.classification`): cross-entropy, accuracy.
    "gauss-class": GaussClassFamily,
}
BUILTIN = tuple(TASKS)  # the suite's own families
SOURCES = Sources()  # which code registered each family (its fingerprint names it unless built in)
for _builtin in BUILTIN:
    SOURCES.record(_builtin, TASKS[_builtin], BUILTIN_SOURCE)
FAMILY_METHODS = ("sample", "with_points", "function")

# Evaluation sets are drawn from seeds no training run uses: training seeds must be below
# MAX_TRAIN_SEED, and the validation/test streams live above it.
MAX_TRAIN_SEED = 1_000_000
VALIDATION_SEED = 1_000_003
TEST_SEED = 2_000_003
N_TEST_TASKS = 600  # as in the original MAML code
N_EVAL_QUERY = 100


class TaskPluginError(RuntimeError):
    """A `metabench.tasks` entry point that could not be loaded or did not register cleanly."""


def register_task(name: str, factory, *, replace: bool = False) -> None:
    """Make `get_task(name, **params)` return `factory(**params)`.

    The factory is called with `k_shot`, `n_query` and a sweep's `task_params` as keywords.

    Registering a taken name is an error unless `replace=True`, so two plug-ins cannot
    silently shadow each other (or a built-in family); so is a name not matching `NAME`. The
    calling module is recorded as the family's source (`source_of`).
    """
    check_name("task", name)
    if not callable(factory):
        raise TypeError(f"the factory for task {name!r} must be callable, got {factory!r}")
    if name in TASKS and not replace:
        raise ValueError(f"task {name!r} is already registered; pass replace=True to replace it")
    TASKS[name] = factory
    SOURCES.record(name, factory, code_source(sys._getframe(1)))


def source_of(name: str) -> str | None:
    """The code that registered task `name` (None: not registered here)."""
    return SOURCES.of(name, TASKS[name]) if name in TASKS else None


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str, **params):
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    try:
        family = TASKS[name](**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for task {name!r}: {error}") from None
    missing = ([] if hasattr(family, "k_shot") else ["k_shot"]) + [
        m for m in FAMILY_METHODS if not callable(getattr(family, m, None))]
    if missing:  # a plug-in's mistake, named here rather than deep inside a training job
        raise TypeError(f"task {name!r} built {type(family).__name__}, which lacks {', '.join(missing)} "
                        f"(a task family needs k_shot, {', '.join(FAMILY_METHODS)})")
    return family


_loaded_plugins: set[tuple[str, str]] = set()


def load_plugins() -> list[str]:
    """Load every `metabench.tasks` entry point not loaded yet; returns their names.

    Called once at import; calling again only loads entry points installed since.
    """
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        key = (entry_point.name, entry_point.value)
        if key in _loaded_plugins:
            continue
        _loaded_plugins.add(key)  # a broken plug-in is reported once, not on every call
        try:
            target = entry_point.load()
            if not isinstance(target, types.ModuleType):
                target()
        except FAILURES as error:  # sys.exit in a plug-in included
            raise TaskPluginError(f"task plug-in {entry_point.name!r} (entry point {entry_point.value!r} in group "
                                  f"{PLUGIN_GROUP!r}) failed: {type(error).__name__}: {error}") from error
        loaded.append(entry_point.name)
    return loaded


def evaluation_set(family, split: str = "test", n_tasks: int = N_TEST_TASKS, k_shot: int | None = None,
                   n_query: int = N_EVAL_QUERY, seed_offset: int = 0) -> TaskBatch:
    """The fixed meta-validation or meta-test set: deterministic, disjoint in seed from training.

    `k_shot` defaults to the family's own K (evaluate at a different K by passing it).
    """
    seeds = {"test": TEST_SEED, "validation": VALIDATION_SEED}
    if split not in seeds:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(seeds)}")
    generator = torch.Generator().manual_seed(seeds[split] + seed_offset)
    return family.with_points(k_shot or family.k_shot, n_query).sample(n_tasks, generator)


__all__ = ["TASKS", "BUILTIN", "NAME", "SOURCES", "PLUGIN_GROUP", "TaskBatch", "TaskPluginError", "SineFamily",
           "SineFreqFamily", "GaussClassFamily", "Problem", "Metric", "REGRESSION", "problem_of", "metric_from_declaration", "MSE",
           "list_tasks", "get_task", "register_task", "source_of", "load_plugins", "evaluation_set",
           "MAX_TRAIN_SEED"]

load_plugins()
