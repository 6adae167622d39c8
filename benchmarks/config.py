"""Sweep configuration: a TOML file is data.

Every key holds a value or, for the keys in SWEEP_KEYS, a list of values; lists expand to
a cartesian product of cells. A single run is a sweep whose lists have one element.
Unknown keys, wrong types and invalid values fail here, before any training, naming the key.
Combinations that cannot run (an algorithm without that backend) are skipped with a reason.
Sizes beyond `LIMITS` (a typo like 10**7 iterations, a grid of millions of cells) fail fast too:
they would hang or exhaust memory, so the user raises a limit explicitly (`--limit KEY=N`).
"""
from __future__ import annotations

import copy
import difflib
import inspect
import itertools
import math
import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from algorithms import ALGORITHMS, HyperParams, get_learner_class
from algorithms.generic_engine import PRETRAIN_POINTS
from algorithms.network import DEFAULT_NETWORK, INITS, NetworkSpec, as_spec
from benchmarks.plugins import PluginError, load_plugins
from tasks import MAX_TRAIN_SEED, N_EVAL_QUERY, TASKS, get_task
from tasks.problem import problem_of


class ConfigError(ValueError):
    """A bad configuration; the message names the key, the bad value and what is allowed."""


def suggest(value, choices) -> str:
    """`value`, quoted, with " (did you mean 'x'?)" when it is a near miss of one of `choices`
    (difflib): a typo gets the right name, not only the list to search it in."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"{value!r} (did you mean {close[0]!r}?)" if close else repr(value)


# ----------------------------------------------------------------------------- the cell schema
# A cell key is declared once, as a `Cell` field whose metadata says everything a consumer needs
# (how the id spells it, how the report treats it, how a sweep validates it, its meaning in the
# sweep reference, its value in records written before it existed). Every list of cell keys in
# the project is derived from `SCHEMA`, so a new key cannot be dropped by one consumer.

def _one_of(registry: dict, what: str):
    def check(key: str, value):
        if value not in registry:  # read at call time: a plug-in may have registered more
            raise ConfigError(f"unknown {what} {suggest(value, registry)}; "
                              f"valid choices: {', '.join(sorted(registry))}")
        return value
    return check


def _backend(key: str, value):
    if not any(value in b for b in ALGORITHMS.values()):
        known = sorted({b for bs in ALGORITHMS.values() for b in bs})
        raise ConfigError(f"unknown backend {suggest(value, known)}; valid choices: {', '.join(known)}")
    return value


def _network(key: str, value):
    try:
        return as_spec(value).name  # one spelling per MLP ("ReLU-40-40" is "relu-40-40"), or a plug-in's name
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _at_least(minimum: int, name: str | None = None):
    def check(key: str, value):
        if value < minimum:
            raise ConfigError(f"{name or key} must be >= {minimum}, got {value!r}")
        return value
    return check


def _rate(key: str, value):
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    return value


def _seed(key: str, value):
    if not 0 <= value < MAX_TRAIN_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_TRAIN_SEED}) (higher seeds are reserved for evaluation sets), "
                          f"got {value!r}")
    return value


def cell_key(default=MISSING, *, help: str, check, id: str = "", label: str | None = None,
             compared: int | None = None, pooled: bool = False, ensemble_key: bool = True, timed: bool = False,
             added=MISSING):
    """A `Cell` field with its schema: how to declare a cell key (the arguments are `CellKey`'s
    fields, which say what each means). A new key needs `added`, the value that reproduces the
    records written before it existed."""
    return field(default=default, metadata={"help": help, "check": check, "id": id, "label": label,
                                            "compared": compared, "pooled": pooled, "ensemble_key": ensemble_key,
                                            "timed": timed, "added": added})


@dataclass(frozen=True)
class Cell:
    """One training run: everything that determines its numbers. Each field is a cell key,
    declared with its schema (`cell_key`, read through `SCHEMA`)."""

    algorithm: str = cell_key(
        help="meta-learning algorithm (`python -m benchmarks list`)",
        check=_one_of(ALGORITHMS, "algorithm"), compared=1, timed=True)
    backend: str = cell_key(
        help="implementation of the algorithm: `func` (hand-written vectorised engine, or the generic one where it "
             "does not cover the rule or network), `generic` (torch.func engine: any rule, any network), `l2l` "
             "(learn2learn), `higher`, `jax`, `torch` (plain per-task loop)",
        check=_backend, compared=2, timed=True)
    task: str = cell_key(
        "sine", help="task family",
        check=_one_of(TASKS, "task"), compared=0)
    k_shot: int = cell_key(
        10, help="K: support points per task, in training (and evaluation unless `eval_k_shot` adds others)",
        check=_at_least(1), id="K", label="K", compared=3)
    inner_steps: int = cell_key(
        1, help="S: inner SGD steps per task in training (0: no adaptation in training)",
        check=_at_least(0, "inner_steps (S)"), id="S", label="S", timed=True)
    lr_base: float = cell_key(
        0.01, help="LR_base: inner SGD rate (Meta-SGD: the initial value of its learned rates)",
        check=_rate, id="lrb", label="LR_base", ensemble_key=False)
    lr_meta: float = cell_key(
        1e-3, help="LR_meta: outer Adam rate",
        check=_rate, id="lrm", label="LR_meta", ensemble_key=False)
    meta_batch: int = cell_key(
        25, help="tasks per meta-batch",
        check=_at_least(1), id="B", label="B", timed=True)
    iterations: int = cell_key(
        1000, help="meta-training iterations (outer steps)",
        check=_at_least(1), id="it", label="iters")
    seed: int = cell_key(
        0, help="training seed: its training tasks and initial weights come from separate streams derived from it "
                "(`seed_streams`); must be < 1,000,000 (higher seeds are the evaluation sets')",
        check=_seed, id="seed", pooled=True, ensemble_key=False)
    network: str = cell_key(
        DEFAULT_NETWORK.name,
        help="the base network: `<activation>-<width>-<width>...` (activations `relu`, `tanh`), e.g. `relu-40-40` "
             "(Finn's) or `tanh-64-64`, or the name of a network registered with `register_network` (a plug-in "
             "`nn.Module`, self-checked against the plain loop on first use); `func` runs non-ReLU and plug-in "
             "networks on the generic engine",
        check=_network, id="net", compared=4, timed=True,
        added=DEFAULT_NETWORK.name)  # a record written before `network` existed trained Finn's ReLU 40-40

    @property
    def cell_id(self) -> str:
        """Readable and collision-free (see `Schema.cell_id`)."""
        return SCHEMA.cell_id(asdict(self))

    def hyperparams(self, msl_anneal_iters: int | None = None) -> HyperParams:
        return HyperParams(inner_steps=self.inner_steps, lr_base=self.lr_base, lr_meta=self.lr_meta,
                           meta_batch=self.meta_batch, iterations=self.iterations, msl_anneal_iters=msl_anneal_iters)


def exact_number(value: float) -> str:
    """The short `%g` spelling when it reads back as the same float (0.01, 0.0003, 1e-05: the ids of
    committed results keep their names), else `repr`, the shortest string that reads back exactly.
    Either way the text parses to exactly `value`, so distinct rates never share an id."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


@dataclass(frozen=True)
class CellKey:
    """One cell key as every consumer reads it: a `Cell` field and its metadata."""

    name: str
    type: str  # the field's annotation: "str", "int" or "float" (sweeps and records are type-checked with it)
    default: object  # the sweep's default; dataclasses.MISSING: required in a sweep
    help: str  # its meaning in the sweep reference (docs/sweep-reference.md)
    check: object  # (key, value) -> the value in its one spelling, or ConfigError naming both
    id: str  # its prefix in the cell id ("" for the bare value)
    label: str | None  # its column in the report's tables (None: the key's name)
    compared: int | None  # the report compares per this key (table (a): a best configuration per such
    #                       group; this is its column and sort position); None: selected by validation or pooled
    pooled: bool  # the report pools over it (a configuration is a cell without its pooled keys)
    ensemble_key: bool  # cells of one ensemble (one batched program) share it; False: members may differ in it
    timed: bool  # the report's speed table keeps cells apart by it (it changes a program's cost)
    added: object  # for a key added after records were first written: the value that reproduces older
    #                records (they are read with it, and the id spells the key only at another value,
    #                so committed results keep their file names); dataclasses.MISSING otherwise

    @property
    def column(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Schema:
    """The cell keys in `Cell`'s field order, and every list of them a consumer uses."""

    keys: tuple[CellKey, ...]

    @classmethod
    def of(cls, cell_class: type) -> "Schema":
        """The schema of `cell_class` (`Cell`, or in a test a dataclass with one more field)."""
        keys = []
        for f in fields(cell_class):
            if "check" not in f.metadata:
                raise TypeError(f"cell key {f.name!r} has no schema: declare it with benchmarks.config.cell_key(...)")
            keys.append(CellKey(f.name, getattr(f.type, "__name__", f.type), f.default, **f.metadata))
        return cls(tuple(keys))

    def __getitem__(self, name: str) -> CellKey:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(f"{name!r} is not a cell key; cell keys: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        """Every cell key: a sweep's keys, a record's cell, the report's and regression's cell columns."""
        return [k.name for k in self.keys]

    @property
    def pooled(self) -> list[str]:
        return [k.name for k in self.keys if k.pooled]

    @property
    def config(self) -> list[str]:
        """A configuration: a cell without its pooled keys (the seed)."""
        return [k.name for k in self.keys if not k.pooled]

    @property
    def compared(self) -> list[str]:
        """The report's groups (one best configuration each), in column order."""
        return sorted((k.name for k in self.keys if k.compared is not None), key=lambda n: self[n].compared)

    @property
    def shown(self) -> list[str]:
        """A configuration's columns in the report: its groups first, then the rest in field order."""
        return self.compared + [n for n in self.config if n not in self.compared]

    @property
    def ensemble(self) -> list[str]:
        return [k.name for k in self.keys if k.ensemble_key]

    @property
    def timed(self) -> list[str]:
        return [k.name for k in self.keys if k.timed]

    @property
    def added(self) -> dict:
        return {k.name: k.added for k in self.keys if k.added is not MISSING}

    @property
    def labels(self) -> dict[str, str]:
        return {k.name: k.column for k in self.keys}

    @property
    def types(self) -> dict[str, str]:
        return {k.name: k.type for k in self.keys}

    def cell_id(self, values: dict) -> str:
        """Readable and collision-free: each key's `id` prefix and value, in field order, joined by
        "-"; every number enters exactly (see `exact_number`). A key added after records were first
        written appears only at another value than its `added` one, so committed ids keep their names."""
        parts = []
        for key in self.keys:
            value = values[key.name]
            if key.added is not MISSING and value == key.added:
                continue
            parts.append(key.id + (exact_number(value) if isinstance(value, float) else str(value)))
        return "-".join(parts)


SCHEMA = Schema.of(Cell)
SWEEP_KEYS = SCHEMA.names
POOLED_KEYS = SCHEMA.pooled
#: cell keys added after records were first written, at the value that reproduces older records
ADDED_CELL_KEYS = SCHEMA.added


def cell_family(cell: Cell, settings: "Settings", k_shot: int | None = None):
    """The task family a cell trains on (its K unless `k_shot`), with the sweep's query size and task
    parameters: one place that says how a cell names its family, for the job, the sweep's
    grouping and re-evaluation (the family's `problem` decides which engine runs it)."""
    k_shot = k_shot or cell.k_shot
    return get_task(cell.task, k_shot=k_shot, n_query=settings.query_points(k_shot), **settings.task_params)


def ensemble_key(cell: Cell) -> tuple:
    """What cells trained as one batched program share: all but the keys an ensemble's members may
    differ in (seed, LR_base, LR_meta)."""
    return tuple(getattr(cell, name) for name in SCHEMA.ensemble)


def training_key(cell: Cell, test_time_keys: tuple[str, ...]) -> Cell:
    """What cells that share one training run share: the cell less the hyperparameters its learner's
    training never reads (`MetaLearner.test_time_keys`), those set to None."""
    return replace(cell, **{key: None for key in test_time_keys}) if test_time_keys else cell


#: Largest accepted sizes. Beyond them a value is almost surely a typo and would hang or exhaust
#: memory (10**7 iterations, K = 2**62, a grid of millions of cells); each is raised per run with
#: `--limit KEY=N` when meant. "cells" counts the cells of one sweep.
LIMITS = {
    "cells": 10_000,
    "iterations": 1_000_000,  # 14x Finn's 70,000
    "inner_steps": 1_000,
    "eval_steps": 1_000,
    "k_shot": 1_000,
    "eval_k_shot": 1_000,
    "meta_batch": 1_000,
    "n_query": 1_000,
    "n_eval_query": 10_000,  # Finn's test: K; this suite's default 100
    "n_test_tasks": 10_000,  # Finn: 600
    "n_validation_tasks": 10_000,
    "n_test_sets": 100,
    "msl_anneal_iters": 1_000_000,
    "threads": 256,  # torch threads per job (torch crashes at 10**5)
    "workers": 256,  # parallel jobs (each local worker holds ~0.5 GB)
}
MAX_CONFIG_BYTES = 1 << 20  # a sweep file is a few hundred bytes; /dev/zero must not be read forever


#: `seed_streams` values: how a cell's seed becomes its random streams (`stream_seed`)
SEED_STREAMS = ("independent", "offset")
#: What a cell draws random numbers for, each on its own stream; the number is the purpose's
#: SeedSequence spawn key ("independent") and its offset from the seed ("offset"). Evaluation,
#: probe and qualitative tasks are fixed streams shared by every seed (`tasks.evaluation_set`);
#: no learner keeps a generator past its initialisation.
STREAM_PURPOSES = {"tasks": 0, "weights": 1}
#: "independent" torch seeds lie in [2**31, 2**32): torch's CPU generator keys its Mersenne Twister
#: with a seed's low 32 bits, and every fixed seed of the suite (training seeds < MAX_TRAIN_SEED
#: under "offset", the validation and test sets' from 1,000,003 and 2,000,003) lies below 2**31,
#: so no derived stream is an evaluation stream
STREAM_FLOOR = 2 ** 31


def stream_seed(seed: int, purpose: str, streams: str) -> int:
    """The torch seed of `seed`'s stream for `purpose`. "independent": the first 32-bit word of
    `SeedSequence(seed).spawn(...)[STREAM_PURPOSES[purpose]]` (hashed, so neighbouring seeds share
    nothing), its top bit set (`STREAM_FLOOR`); "offset": `seed + STREAM_PURPOSES[purpose]`, the
    streams of before, where seed s's weights are seed s + 1's tasks."""
    import numpy as np

    if purpose not in STREAM_PURPOSES:
        raise KeyError(f"unknown stream purpose {purpose!r}; purposes: {', '.join(STREAM_PURPOSES)}")
    number = STREAM_PURPOSES[purpose]
    if streams == "offset":
        return seed + number
    if streams != "independent":
        raise ValueError(f"unknown seed_streams {streams!r}; valid choices: {', '.join(SEED_STREAMS)}")
    word = int(np.random.SeedSequence(seed, spawn_key=(number,)).generate_state(1, np.uint32)[0])
    return STREAM_FLOOR | word >> 1


def compile_setting(value):
    """The `compile` setting's value: true, false or "auto" (decided per group of cells,
    `benchmarks.compile_choice`); anything else is bad input."""
    if not (isinstance(value, bool) or (isinstance(value, str) and value == "auto")):
        raise ConfigError(f"unknown compile {suggest(value, ['true', 'false', 'auto'])}; "
                          f"valid choices: true, false, \"auto\"")
    return value


@dataclass(frozen=True)
class Settings:
    """What every cell of a sweep shares: evaluation schedule, sizes, device."""

    eval_every: int = 0  # evaluate every N iterations (0: only at the end)
    eval_steps: int = 10  # adaptation steps 0..N at evaluation
    eval_k_shot: tuple[int, ...] = ()  # evaluate at these K too (default: the training K)
    n_test_tasks: int = 600  # tasks per test set
    n_test_sets: int = 1  # independent test sets of n_test_tasks each (set j: test seed + j)
    n_validation_tasks: int = 600
    n_query: int | str = field(default=10, metadata={
        "per_k": True,
        "help": "query points per training task: an integer, or `\"k\"` for the cell's K (Finn's code: K support "
                "and K query points per task); the fingerprint holds the resolved number, so `\"k\"` at K = 10 is "
                "the default's cell"})
    log_every: int = 100  # training-loss / gradient-norm logging interval
    msl_anneal_iters: int = 0  # 0: 10% of iterations
    ensemble: bool = True  # train func cells that differ only in seed/LR as one batched program
    plugins: tuple[str, ...] = ()  # modules imported first: they register algorithms and tasks
    compile: bool | str = field(default="auto", metadata={
        "check": lambda key, value: compile_setting(value), "added": False,  # records from before "auto": false
        "help": "train compiled: `true`, `false` or `\"auto\"`. Compiled, the accelerated (`func`) engine's step "
                "(meta-gradient and Adam) is one Inductor program and the generic engine's meta-gradient goes "
                "through `torch.compile`: a one-off compile (seconds; shared by every cell of one program shape "
                "through the persistent cache `.cache/inductor/`; recorded as `compile_seconds`, not in s/iter), "
                "then fewer, fused kernels, and floats that differ from eager ones by rounding; compiled runs do "
                "not ensemble; loop and library backends ignore it. `\"auto\"` decides per group of cells that "
                "would ensemble, from their iterations, S, meta-batch, order, engine and device only (never the "
                "machine's load), by the cost model of `benchmarks/compile_choice.py` (docs/speed.md): compiled "
                "where it projects less CPU time than eager, compiles included; each record states the choice "
                "(`compile_choice`) and its fingerprint the resolved true/false; a record without the key was "
                "made with `false`"})
    device: str = "cpu"
    task_params: dict = field(default_factory=dict)  # extra task parameters (noise, ranges)
    seed_streams: str = field(default="independent", metadata={
        "choices": SEED_STREAMS, "added": "offset",  # records written before the key trained on the old streams
        "help": "how a cell's `seed` becomes its random streams: `\"independent\"`, one `numpy.random.SeedSequence` "
                "child per seed and purpose (training tasks, initial weights); `\"offset\"`, the streams of "
                "before (tasks from `seed`, weights from `seed + 1`: seed s's weights are drawn from the stream "
                "seed s + 1's tasks start with), pinned by the committed sweep files to keep their numbers; a "
                "record without the key was made with `\"offset\"`"})
    tensorboard: bool = field(default=False, metadata={
        "help": "also write live training curves for TensorBoard (`tensorboard --logdir OUT/tensorboard`): per "
                "cell, `OUT/tensorboard/<cell id>/` gets the training loss and initial-gradient norm at each log "
                "point and the metric per split after 1 and `eval_steps` steps at each evaluation; a boolean, so "
                "nothing read from a sweep file writes outside OUT; no number or fingerprint changes; needs the "
                "optional extra (`pip install 'metabench[tensorboard]'`)"})
    # The fidelity settings (issue 23): Finn et al.'s released code (`cbfinn/maml`) where it differs
    # from this suite, one setting each, so that the gap to the paper is ablated one change at a time
    # (benchmarks/configs/ablation.toml). Each default is the behaviour of before (`added`: records
    # without the key read as it). `learner_option`: handed to the learner's constructor under the
    # setting's name when away from its default (`learner_options`); `only_for`: the algorithms
    # that read it (the others' fingerprints leave it out, `fingerprint.ONLY_FOR`).
    init: str = field(default=INITS[0], metadata={
        "choices": INITS, "added": INITS[0], "learner_option": True,
        "help": "initial weights of the suite's MLPs, drawn from the cell's weights stream: `\"torch\"`, "
                "`nn.Linear`'s default; `\"finn\"`, Finn et al.'s released code (`maml.py`, "
                "`construct_fc_weights`): weights from a normal of standard deviation 0.01 truncated at 2 "
                "standard deviations (`tf.truncated_normal`), biases zero; every built-in backend honours it, and "
                "a sweep is refused where a cell's learner or plug-in network cannot"})
    n_eval_query: int | str = field(default=N_EVAL_QUERY, metadata={
        "per_k": True, "added": N_EVAL_QUERY,
        "help": "query points per validation and test task (each task's error is its mean over them): an "
                "integer, or `\"k\"` for the evaluated K (Finn's test: K); the probe and qualitative tasks keep "
                "their own"})
    pretrain_points: str = field(default=PRETRAIN_POINTS[0], metadata={
        "choices": PRETRAIN_POINTS, "added": PRETRAIN_POINTS[0], "learner_option": True, "only_for": ("pretrain",),
        "help": "the points the `pretrain` baseline fits per training task: `\"support+query\"` (all of them), "
                "or `\"support\"`, the K support points only (Finn's `pretrain_op`); other algorithms ignore it"})

    def generator(self, seed: int, purpose: str):
        """The torch generator of `seed`'s stream for `purpose` (a key of `STREAM_PURPOSES`)."""
        import torch

        return torch.Generator().manual_seed(stream_seed(seed, purpose, self.seed_streams))

    def evaluation_iterations(self, iterations: int) -> set[int]:
        """The iterations a run of `iterations` is evaluated at: every `eval_every` and the last."""
        every = set(range(self.eval_every, iterations + 1, self.eval_every)) if self.eval_every else set()
        return {iterations} | every

    def query_points(self, k_shot: int) -> int:
        """Query points per training task of a cell trained at `k_shot` (`n_query`; "k": K)."""
        return k_shot if self.n_query == "k" else self.n_query

    def eval_query_points(self, k_shot: int) -> int:
        """Query points per validation/test task evaluated at `k_shot` (`n_eval_query`; "k": K)."""
        return k_shot if self.n_eval_query == "k" else self.n_eval_query


#: The folder under OUT where `tensorboard = true` writes one folder of event files per cell.
TENSORBOARD_FOLDER = "tensorboard"


def check_tensorboard_installed(settings: Settings) -> None:
    """`tensorboard = true` without the package is bad input, found when a sweep is parsed (before
    anything is written), not when a job starts. Only a sweep asks: reading a folder's records
    made with it on needs no tensorboard."""
    import importlib.util

    if settings.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("tensorboard = true needs the tensorboard package: pip install 'metabench[tensorboard]' "
                          "(or set tensorboard = false)")


#: settings whose sweep default is not what records written before them did: the value that
#: reproduces those records (declared with the field, `added`; a record without the key reads it)
ADDED_SETTINGS = {f.name: f.metadata["added"] for f in fields(Settings) if "added" in f.metadata}


@dataclass
class Sweep:
    cells: list[Cell]
    skipped: list[tuple[dict, str]]
    settings: Settings
    limits: dict = field(default_factory=lambda: dict(LIMITS))  # in force: the folder's records are read within them


_CHECK = {"int": int, "float": (int, float), "str": str}


def _check_type(key: str, value, expected: str):
    """`expected` is the Cell field's annotation: "str", "int" or "float"."""
    if isinstance(value, bool) or not isinstance(value, _CHECK[expected]):
        raise ConfigError(f"{key} must be of type {expected}, got {value!r} ({type(value).__name__})")
    return float(value) if expected == "float" else value


def _check_limit(key: str, value, limits: dict) -> None:
    if key in limits and value > limits[key]:
        raise ConfigError(f"{key} = {value!r} is above the limit of {limits[key]:,} (a typo? "
                          f"if meant, raise it with --limit {key}=N)")


def _check_value(key: str, value, limits: dict):
    """One cell key's value, type-checked, validated and limited; back in its one spelling."""
    schema = SCHEMA[key]
    value = schema.check(key, _check_type(key, value, schema.type))
    _check_limit(key, value, limits)
    return value


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _settings(raw: dict, limits: dict) -> Settings:
    defaults = Settings()
    values = {}
    for f in fields(Settings):
        if f.name not in raw:
            continue
        value = raw[f.name]
        default = getattr(defaults, f.name)
        if f.name == "eval_k_shot":
            value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise ConfigError(f"eval_k_shot must be an integer >= 1 or a list of them, got {raw[f.name]!r}")
            value = tuple(value)
        elif f.name == "plugins":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"plugins must be a module name or a list of them, got {raw[f.name]!r}")
            value = tuple(dict.fromkeys(value))
        elif f.metadata.get("per_k"):  # a number of points, or "k": as many as the K in question
            value = value.lower() if isinstance(value, str) else value
            if value != "k" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{f.name} must be an integer >= 1 or \"k\" (= K), got {raw[f.name]!r}")
        elif "check" in f.metadata:  # a setting with its own validation (`compile`)
            value = f.metadata["check"](f.name, value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{f.name} must be an integer >= 0, got {value!r}")
        elif "choices" in f.metadata:
            if not (isinstance(value, str) and value in f.metadata["choices"]):
                raise ConfigError(f"unknown {f.name} {suggest(value, f.metadata['choices'])}; "
                                  f"valid choices: {', '.join(f.metadata['choices'])}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{f.name} must be a string, got {value!r}")
        elif isinstance(default, dict) and not isinstance(value, dict):
            raise ConfigError(f"{f.name} must be a table, got {value!r}")
        values[f.name] = value
    settings = replace(defaults, **values)
    for name in ("n_test_tasks", "n_test_sets", "n_validation_tasks", "log_every"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(settings, name)!r}")
    for name in limits:
        value = getattr(settings, name, None)
        for v in value if isinstance(value, tuple) else [value]:
            if isinstance(v, int):
                _check_limit(name, v, limits)
    if not _DEVICE.fullmatch(settings.device):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N a device index), got {settings.device!r}")
    return settings


def check_device_available(device: str) -> None:
    """A CUDA device this machine cannot use is bad input, found before anything is written."""
    import torch

    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA device on this machine "
                          f"(torch {torch.__version__}); use device = \"cpu\"")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")


def _values(key: str, value, where: str, limits: dict) -> list:
    """One key's validated values (a list expands the grid)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{key} is an empty list{where}: the grid would be empty")
    if len(values) > limits["cells"]:
        raise ConfigError(f"{key} lists {len(values):,} values{where}, more than the limit of {limits['cells']:,} "
                          f"cells per sweep (if meant, raise it with --limit cells=N)")
    return list(dict.fromkeys(_check_value(key, v, limits) for v in values))


def cell_from_dict(values: dict, limits: dict | None = None) -> Cell:
    """The Cell a record (or any untrusted table) describes, validated exactly like a sweep's cell.

    Keys added after records were first written take the value that reproduces older records
    (`ADDED_CELL_KEYS`); every other key must be present, because a default may have changed
    since the record was written. Unknown keys, missing keys, types, values (against the
    algorithms, backends and tasks registered now: load a record's plug-ins first), sizes beyond
    `LIMITS` (raised per key by `limits`), and a combination a sweep skips (an algorithm without
    that backend, a network the backend cannot build) raise ConfigError naming the key and value.
    Values come back in their one spelling ("ReLU-40-40" is "relu-40-40", an integer rate is a
    float), so compare the result, not the input, with a cell.
    """
    limits = {**LIMITS, **(limits or {})}
    if not isinstance(values, dict):
        raise ConfigError(f"a cell must be a table of {', '.join(SWEEP_KEYS)}, "
                          f"got a {type(values).__name__}: {values!r:.80}")
    unknown = sorted(set(values) - set(SWEEP_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown cell key(s) {', '.join(suggest(k, SWEEP_KEYS) for k in unknown)}; "
                          f"valid keys: {', '.join(SWEEP_KEYS)}")
    values = {**ADDED_CELL_KEYS, **values}
    missing = [key for key in SWEEP_KEYS if key not in values]
    if missing:
        raise ConfigError(f"missing cell key(s) {', '.join(map(repr, missing))}")
    checked = {key: _check_value(key, values[key], limits) for key in SWEEP_KEYS}
    try:
        get_learner_class(checked["algorithm"], checked["backend"], checked["network"])
    except KeyError as error:  # a combination a sweep skips: a backend the algorithm lacks, a network it cannot build
        raise ConfigError(f"backend = {checked['backend']!r}: {error.args[0]}") from None
    return Cell(**checked)


def _expand_grid(raw: dict, where: str, limits: dict) -> dict[str, list]:
    """Validated value lists for every Cell key of one grid table."""
    for key in SCHEMA.keys:
        if key.default is MISSING and key.name not in raw:
            raise ConfigError(f"missing required key {key.name!r}{where}")
    grid = {key.name: _values(key.name, raw.get(key.name, key.default), where, limits) for key in SCHEMA.keys}
    size = math.prod(len(v) for v in grid.values())
    if size > limits["cells"]:
        raise ConfigError(f"the grid{where} has {size:,} cells, more than the limit of {limits['cells']:,} "
                          f"per sweep (if meant, raise it with --limit cells=N)")
    return grid


def parse_sweep(raw: dict, limits: dict | None = None) -> Sweep:
    """Validate a raw TOML table and expand it into cells.

    Cell keys may sit at the top level (one grid) or in `[[grid]]` tables (the union of
    several grids; top-level cell keys are their defaults) — e.g. a cheap cross-backend
    grid beside a wide single-backend one. A top-level value is validated even where every
    table overrides it: a bad value in the file is bad input wherever it sits.
    """
    limits = {**LIMITS, **(limits or {})}
    plugins = raw.get("plugins", [])
    try:  # first: a plug-in's algorithms and tasks are valid names below
        load_plugins([plugins] if isinstance(plugins, str) else plugins if isinstance(plugins, list) else [])
    except PluginError as error:
        raise ConfigError(str(error)) from None
    if TUNING_TABLE in raw:  # `tune` takes it out first (benchmarks/tuning.py)
        raise ConfigError(f"[{TUNING_TABLE}] is read by `python -m benchmarks tune` (successive halving on "
                          f"validation, docs/tuning.md); `run` would train every candidate at the full budget: "
                          f"use `tune`, or remove the [{TUNING_TABLE}] table to run the whole grid")
    known = set(SWEEP_KEYS) | {f.name for f in fields(Settings)} | {"grid"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(suggest(k, known) for k in unknown)}; "
                          f"valid keys: {', '.join(sorted(known))}")
    tables = raw.get("grid", [{}])
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("grid must be a non-empty array of tables ([[grid]])")
    for i, table in enumerate(tables):
        bad = sorted(set(table) - set(SWEEP_KEYS))
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join(suggest(k, SWEEP_KEYS) for k in bad)} in [[grid]] #{i + 1}; "
                              f"valid keys there: {', '.join(SWEEP_KEYS)}")
    top = {k: v for k, v in raw.items() if k in SWEEP_KEYS}
    for key, value in top.items():
        _values(key, value, "", limits)
    grids = [_expand_grid({**top, **table}, f" in [[grid]] #{i + 1}" if "grid" in raw else "", limits)
             for i, table in enumerate(tables)]
    settings = _settings(raw, limits)
    check_tensorboard_installed(settings)
    metrics, problems = {}, {}
    for grid in grids:  # task parameters checked once per task, before any training
        for task, k in itertools.product(grid["task"], grid["k_shot"]):
            try:
                family = get_task(task, k_shot=k, n_query=settings.query_points(k), **settings.task_params)
                problems[task] = problem_of(family)
                metrics[task] = problems[task].metric
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigError(f"task {task!r} with task_params {settings.task_params}: {error}") from None
    _check_one_metric(metrics)
    cells, skipped = [], []
    for grid in grids:
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo))
            try:  # a backend the algorithm lacks (and why, where the registry knows), a network it cannot run
                get_learner_class(values["algorithm"], values["backend"], values.get("network"),
                                  problems[values["task"]])
            except KeyError as error:
                skipped.append((values, str(error).strip("'\"")))
                continue
            cells.append(Cell(**values))
    cells = list(dict.fromkeys(cells))
    if len(cells) > limits["cells"]:
        raise ConfigError(f"the sweep has {len(cells):,} cells, more than the limit of {limits['cells']:,} "
                          f"(if meant, raise it with --limit cells=N)")
    if not cells:
        raise ConfigError("the grid is empty: every combination was skipped"
                          + "".join(f"\n  - {reason}" for _, reason in skipped[:5]))
    _check_learner_options(cells, settings, problems)
    return Sweep(cells, skipped, settings, limits)


def learner_options(algorithm: str, settings: Settings) -> dict:
    """The options the settings hand to a cell's learner (the `learner_option` settings: `init`,
    `pretrain_points`), by their names: only those away from their defaults and read by `algorithm`
    (`only_for`), so a learner written before them (a plug-in's) is built exactly as always."""
    return {f.name: getattr(settings, f.name) for f in fields(Settings)
            if f.metadata.get("learner_option") and getattr(settings, f.name) != f.default
            and algorithm in f.metadata.get("only_for", (algorithm,))}


def _accepts(cls: type, option: str) -> bool:
    """Whether `cls`'s constructor takes keyword `option`: named by the first `__init__` along the
    MRO, or by a base one that a `**kwargs` constructor passes on to."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        if option in parameters:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def _check_learner_options(cells: list[Cell], settings: Settings, problems: dict) -> None:
    """Refuse a sweep in which a cell's learner cannot honour a learner option (`learner_options`):
    its constructor does not take it (a plug-in learner that builds its own network), or, for
    `init`, its network is a plug-in (it initialises itself). Never a silent fallback to the
    default: the record would claim a setting its numbers do not have."""
    for cell in cells:
        options = learner_options(cell.algorithm, settings)
        if not options:
            continue
        cls = get_learner_class(cell.algorithm, cell.backend, cell.network, problems[cell.task])
        for name, value in options.items():
            default = Settings.__dataclass_fields__[name].default
            where = f"{name} = {value!r}: algorithm {cell.algorithm!r} on backend {cell.backend!r}"
            if name == "init" and not isinstance(as_spec(cell.network), NetworkSpec):
                raise ConfigError(f"{where}: it draws the suite's MLPs' weights, but plug-in network "
                                  f"{cell.network!r} has its own initialisation (its factory's); valid there: "
                                  f"\"{default}\"")
            if not _accepts(cls, name):
                raise ConfigError(f"{where} runs {cls.__name__}, whose constructor takes no {name!r} option (it "
                                  f"builds its own network or data), so it cannot honour it; "
                                  f"valid there: \"{default}\"")


def _check_one_metric(metrics: dict) -> None:
    """Refuse a sweep whose tasks report different metrics: a results folder's tables, selection
    and figures compare configurations on one metric (its name is their column, its direction
    decides "best"), so MSE and accuracy cannot share a folder. `metrics`: task -> Metric."""
    if len({m.declaration()["name"] for m in metrics.values()}) > 1 or len(set(metrics.values())) > 1:
        listed = ", ".join(f"{task!r} reports {m.name} ({'higher' if m.higher_is_better else 'lower'} is better)"
                           for task, m in metrics.items())
        raise ConfigError(f"a sweep's tasks must report one metric (a results folder compares on one): {listed}; "
                          f"run them as separate sweeps")


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` where value is TOML (`lr_base=[0.01,0.1]`, `device="cuda"`); bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def parse_limit(text: str) -> tuple[str, int]:
    """`--limit KEY=N`: raise (or lower) one of `LIMITS` for this run."""
    key, _, value = text.partition("=")
    key = key.strip()
    if key not in LIMITS:
        raise ConfigError(f"--limit: unknown limit {suggest(key, LIMITS)}; valid limits: {', '.join(LIMITS)}")
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"--limit expects {key}=N with N an integer >= 1, got {text!r}")
    return key, number


def read_config_text(path: Path) -> str:
    """The file's text, read at most MAX_CONFIG_BYTES + 1 bytes deep (a device or a huge file fails fast)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES // 2 ** 10} KiB: "
                          f"not a sweep file")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark from some editors
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from None


def apply_override(raw: dict, key: str, value) -> None:
    """`--set` wins everywhere: a cell key is removed from every `[[grid]]` table that sets it, so
    the top-level value applies to all of them (`--set iterations=50` shortens every grid)."""
    if key == "grid":
        raise ConfigError("--set cannot replace the [[grid]] tables; edit the sweep file")
    raw[key] = value
    if key in SWEEP_KEYS and isinstance(raw.get("grid"), list):
        for table in raw["grid"]:
            if isinstance(table, dict):
                table.pop(key, None)


def load_sweep(path: str | Path | dict, overrides: list = (), limits: dict | None = None) -> Sweep:
    """Read, override (`--set`), then validate everything: overridden values are checked like the file's.
    `path` may also be a table already in memory (the Python API's dict), `overrides` (key, value) pairs."""
    return parse_sweep(read_sweep_table(path, overrides), limits)


#: the sweep table that `tune` reads (`benchmarks.tuning.Tuning`) and `run` refuses
TUNING_TABLE = "tuning"


def read_sweep_table(path: str | Path | dict, overrides: list = ()) -> dict:
    """`load_sweep`'s table before validation: read (or copied) and overridden (`--set`); `tune`
    takes its [tuning] table out of it before `parse_sweep`."""
    if isinstance(path, dict):
        raw = copy.deepcopy(path)
    else:
        path = Path(path)
        try:
            raw = tomllib.loads(read_config_text(path))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"malformed TOML in {path}: {error}") from None
    for text in overrides:
        apply_override(raw, *(parse_override(text) if isinstance(text, str) else text))
    return raw


def cell_to_dict(cell: Cell) -> dict:
    return asdict(cell)
