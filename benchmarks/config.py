"""Sweep configuration: a TOML file is data.

Every key holds a value or, for the keys in SWEEP_KEYS, a list of values; lists expand to
a cartesian product of cells. A single run is a sweep whose lists have one element.
Unknown keys, wrong types and invalid values fail here, before any training, naming the key.
Combinations that cannot run (an algorithm without that backend) are skipped with a reason.
Sizes beyond `LIMITS` (a typo like 10**7 iterations, a grid of millions of cells) fail fast too:
they would hang or exhaust memory, so the user raises a limit explicitly (`--limit KEY=N`).
"""
from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from algorithms import ALGORITHMS, HyperParams, get_learner_class
from algorithms.network import DEFAULT_NETWORK, NetworkSpec
from benchmarks.plugins import PluginError, load_plugins
from tasks import MAX_TRAIN_SEED, TASKS, get_task


class ConfigError(ValueError):
    """A bad configuration; the message names the key, the bad value and what is allowed."""


@dataclass(frozen=True)
class Cell:
    """One training run: everything that determines its numbers."""

    algorithm: str
    backend: str
    task: str = "sine"
    k_shot: int = 10
    inner_steps: int = 1
    lr_base: float = 0.01
    lr_meta: float = 1e-3
    meta_batch: int = 25
    iterations: int = 1000
    seed: int = 0
    network: str = DEFAULT_NETWORK.name  # "<activation>-<width>-...", e.g. "tanh-64-64"

    @property
    def cell_id(self) -> str:
        """Readable and collision-free: every value enters exactly (see `exact_number`); the
        network only when it is not Finn's (the ids of committed results keep their names)."""
        network = "" if self.network == DEFAULT_NETWORK.name else f"-net{self.network}"
        return (f"{self.algorithm}-{self.backend}-{self.task}-K{self.k_shot}-S{self.inner_steps}"
                f"-lrb{exact_number(self.lr_base)}-lrm{exact_number(self.lr_meta)}-B{self.meta_batch}"
                f"-it{self.iterations}-seed{self.seed}{network}")

    def hyperparams(self, msl_anneal_iters: int | None = None) -> HyperParams:
        return HyperParams(inner_steps=self.inner_steps, lr_base=self.lr_base, lr_meta=self.lr_meta,
                           meta_batch=self.meta_batch, iterations=self.iterations, msl_anneal_iters=msl_anneal_iters)


def exact_number(value: float) -> str:
    """The short `%g` spelling when it reads back as the same float (0.01, 0.0003, 1e-05: the ids of
    committed results keep their names), else `repr`, the shortest string that reads back exactly.
    Either way the text parses to exactly `value`, so distinct rates never share an id."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


SWEEP_KEYS = [f.name for f in fields(Cell)]

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
    "n_test_tasks": 10_000,  # Finn: 600
    "n_validation_tasks": 10_000,
    "n_test_sets": 100,
    "msl_anneal_iters": 1_000_000,
    "threads": 256,  # torch threads per job (torch crashes at 10**5)
    "workers": 256,  # parallel jobs (each local worker holds ~0.5 GB)
}
MAX_CONFIG_BYTES = 1 << 20  # a sweep file is a few hundred bytes; /dev/zero must not be read forever


@dataclass(frozen=True)
class Settings:
    """What every cell of a sweep shares: evaluation schedule, sizes, device."""

    eval_every: int = 0  # evaluate every N iterations (0: only at the end)
    eval_steps: int = 10  # adaptation steps 0..N at evaluation
    eval_k_shot: tuple[int, ...] = ()  # evaluate at these K too (default: the training K)
    n_test_tasks: int = 600  # tasks per test set
    n_test_sets: int = 1  # independent test sets of n_test_tasks each (set j: test seed + j)
    n_validation_tasks: int = 600
    n_query: int = 10  # query points per training task
    log_every: int = 100  # training-loss / gradient-norm logging interval
    msl_anneal_iters: int = 0  # 0: 10% of iterations
    ensemble: bool = True  # train func cells that differ only in seed/LR as one batched program
    plugins: tuple[str, ...] = ()  # modules imported first: they register algorithms and tasks
    compile: bool = False  # the accelerated/generic engines' meta-gradient through torch.compile (others: ignored)
    device: str = "cpu"
    task_params: dict = field(default_factory=dict)  # extra task parameters (noise, ranges)

    def evaluation_iterations(self, iterations: int) -> set[int]:
        """The iterations a run of `iterations` is evaluated at: every `eval_every` and the last."""
        every = set(range(self.eval_every, iterations + 1, self.eval_every)) if self.eval_every else set()
        return {iterations} | every


@dataclass
class Sweep:
    cells: list[Cell]
    skipped: list[tuple[dict, str]]
    settings: Settings


_TYPES = {f.name: f.type for f in fields(Cell)}
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


def _validate_cell_values(key: str, value):
    if key == "algorithm" and value not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {value!r}; valid choices: {', '.join(sorted(ALGORITHMS))}")
    if key == "backend" and not any(value in b for b in ALGORITHMS.values()):
        known = sorted({b for bs in ALGORITHMS.values() for b in bs})
        raise ConfigError(f"unknown backend {value!r}; valid choices: {', '.join(known)}")
    if key == "network":
        try:
            return NetworkSpec.parse(value).name  # one spelling per network: "ReLU-40-40" is "relu-40-40"
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if key == "task" and value not in TASKS:
        raise ConfigError(f"unknown task {value!r}; valid choices: {', '.join(sorted(TASKS))}")
    if key in ("lr_base", "lr_meta") and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    if key in ("k_shot", "meta_batch", "iterations") and value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value!r}")
    if key == "inner_steps" and value < 0:
        raise ConfigError(f"inner_steps (S) must be >= 0, got {value!r}")
    if key == "seed" and not 0 <= value < MAX_TRAIN_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_TRAIN_SEED}) (higher seeds are reserved for evaluation sets), got {value!r}")


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
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{f.name} must be an integer >= 0, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{f.name} must be a string, got {value!r}")
        elif isinstance(default, dict) and not isinstance(value, dict):
            raise ConfigError(f"{f.name} must be a table, got {value!r}")
        values[f.name] = value
    settings = replace(defaults, **values)
    for name in ("n_test_tasks", "n_test_sets", "n_validation_tasks", "n_query", "log_every"):
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
    checked = []
    for v in values:
        v = _check_type(key, v, _TYPES[key])
        v = _validate_cell_values(key, v) or v
        _check_limit(key, v, limits)
        checked.append(v)
    return list(dict.fromkeys(checked))


def _expand_grid(raw: dict, where: str, limits: dict) -> dict[str, list]:
    """Validated value lists for every Cell key of one grid table."""
    for key in ("algorithm", "backend"):
        if key not in raw:
            raise ConfigError(f"missing required key {key!r}{where}")
    grid = {}
    defaults = {f.name: f.default for f in fields(Cell) if f.name not in ("algorithm", "backend")}
    for key in SWEEP_KEYS:
        grid[key] = _values(key, raw.get(key, defaults.get(key)), where, limits)
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
    known = set(SWEEP_KEYS) | {f.name for f in fields(Settings)} | {"grid"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(known))}")
    tables = raw.get("grid", [{}])
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("grid must be a non-empty array of tables ([[grid]])")
    for i, table in enumerate(tables):
        bad = sorted(set(table) - set(SWEEP_KEYS))
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, bad))} in [[grid]] #{i + 1}; "
                              f"valid keys there: {', '.join(SWEEP_KEYS)}")
    top = {k: v for k, v in raw.items() if k in SWEEP_KEYS}
    for key, value in top.items():
        _values(key, value, "", limits)
    grids = [_expand_grid({**top, **table}, f" in [[grid]] #{i + 1}" if "grid" in raw else "", limits)
             for i, table in enumerate(tables)]
    settings = _settings(raw, limits)
    for grid in grids:  # task parameters checked once per task, before any training
        for task, k in itertools.product(grid["task"], grid["k_shot"]):
            try:
                get_task(task, k_shot=k, n_query=settings.n_query, **settings.task_params)
            except (ValueError, KeyError) as error:
                raise ConfigError(f"task {task!r} with task_params {settings.task_params}: {error}") from None
    cells, skipped = [], []
    for grid in grids:
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo))
            if values["backend"] not in ALGORITHMS[values["algorithm"]]:
                skipped.append((values, f"algorithm {values['algorithm']!r} has no backend {values['backend']!r} "
                                        f"(its backends: {', '.join(sorted(ALGORITHMS[values['algorithm']]))})"))
                continue
            try:
                get_learner_class(values["algorithm"], values["backend"], values.get("network"))
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
    return Sweep(cells, skipped, settings)


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
        raise ConfigError(f"--limit: unknown limit {key!r}; valid limits: {', '.join(LIMITS)}")
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


def load_sweep(path: str | Path, overrides: list[str] = (), limits: dict | None = None) -> Sweep:
    """Read, override (`--set`), then validate everything: overridden values are checked like the file's."""
    path = Path(path)
    try:
        raw = tomllib.loads(read_config_text(path))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"malformed TOML in {path}: {error}") from None
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return parse_sweep(raw, limits)


def cell_to_dict(cell: Cell) -> dict:
    return asdict(cell)
