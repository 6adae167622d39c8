"""Hyperparameters tuned on validation at the reported budget: successive halving (`python -m
benchmarks tune --config SWEEP.toml --out DIR`; the design and its decisions: docs/tuning.md).

The sweep file is an ordinary sweep: its list-valued hyperparameters (every cell key but the
report's compared keys, `SCHEMA.compared`, the pooled seed and the budget `iterations`) are the
candidates, and its `[tuning]` table (`Tuning`) sets the halving. Per group of compared keys
(task, algorithm, backend, K, network: the report's groups), rung r trains every surviving
configuration for `iterations / eta^(R-1-r)` iterations (rounded half up, at least 1), from
scratch: no rung resumes another's checkpoint, so every record is an ordinary cell whose numbers
depend on its configuration alone. Rung r < R-1 is an ordinary sweep in `DIR/rungs/<r>/`
(resumable, and `report DIR/rungs/<r>` reports it); its configurations are ranked by analysis'
own selection (`analysis.ranked`: the seed-pooled validation value after `SELECT_STEPS` steps, in
the metric's direction, incomplete configurations last) and the best ceil(n/eta) go on. The last
rung trains the survivors at the full budget into `DIR/runs/`, so `report DIR` reports the tuned
configurations and selects among them by validation as always.

Decisions where the issue was silent:
- Equal budget: every group must have the same number of candidates (else ConfigError), so every
  group trains the same configurations x seeds x iterations (`TuningPlan.budget`). Bracketing
  adds rung-0 trainings to the groups whose winner sits at an edge; they are counted apart (the
  "extension" column of tuning.csv, and the printed line), and do not change how many survive
  rung 0 (ceil(n0/eta) of the original grid size n0), so the later rungs stay equal.
- Bracketing: after rung 0, each numeric candidate key at whose edge the group's winner sits gets
  one more value beyond it (a float, a rate: times the ratio of the grid's two values at that
  edge; an integer: plus their difference), for every configuration at that edge (a product grid
  stays one), trained at rung 0 too; at most `max_extensions` rounds. A value the key refuses
  (S < 0, a limit) is not tried, and said so.
- Seeds: rungs below the last train the first `seeds_per_rung` of the sweep's seeds (listed
  order); the last rung, what the report pools, trains all of them.
- Each extension round is its own sweep into `DIR/rungs/0/` (not the round's cells added to one
  sweep), so that a resume plans every sweep over the same cells as the first run did
  (`compile = "auto"` decides per sweep).
- A rung with a failed cell stops the tuning (exit 1; rerun to retrain it and go on): a ranking
  over missing cells could differ from the one a resume makes.
- The rung folders get no report of their own (figures cost seconds each; `report` makes one),
  only their `summary.csv`: what the tuning trained and what it cost is stated like any folder's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

from benchmarks.analysis import cell_frame, config_scores, final_evaluations, pool_seeds, ranked
from benchmarks.atomic import refuse_links, write_atomic
from benchmarks.config import (LIMITS, SCHEMA, TUNING_TABLE, Cell, ConfigError, Sweep, cell_from_dict,
                               check_device_available, parse_override, parse_sweep, read_sweep_table, suggest)
from benchmarks.lock import folder_lock
from benchmarks.records import folder_metric, load_records, runs_dir, scan_records, sweep_stale
from benchmarks.signals import Interrupted
from benchmarks.sweep import pending_cells, run_sweep
from tasks.problem import MSE, Metric

#: the report's groups: one tuning (and one best configuration) each
GROUP_KEYS = SCHEMA.compared
#: the keys a tuning may choose: a configuration's keys less the groups' and the budget
TUNED_KEYS = [k for k in SCHEMA.config if k not in GROUP_KEYS and k != "iterations"]
#: a configuration's identity (its cells differ in seed and, per rung, iterations)
CONFIG_KEYS = [k for k in SCHEMA.config if k != "iterations"]
RUNGS = "rungs"  # DIR/rungs/<r>/: the rungs below the last
CSV = "tuning.csv"


def _at_least(minimum: int):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"[{TUNING_TABLE}] {key} must be an integer >= {minimum}, got {value!r}")
        return value
    return check


@dataclass(frozen=True)
class Tuning:
    """The `[tuning]` table of a sweep file: each field is a key, with its meaning (`help`, the sweep
    reference's row) and its validation (`check`)."""

    eta: int = field(default=3, metadata={
        "check": _at_least(2),
        "help": "successive halving's factor: each rung keeps the best ceil(n / eta) configurations by validation, "
                "and rung r trains for `iterations` / eta^(R-1-r) iterations (R rungs; rounded, at least 1)"})
    rungs: int = field(default=0, metadata={
        "check": _at_least(0),
        "help": "R, the number of rungs, the last at the full `iterations` (into OUT/runs/); 0: as many as the "
                "candidates allow (until one survives)"})
    seeds_per_rung: int = field(default=0, metadata={
        "check": _at_least(0),
        "help": "seeds each rung below the last trains: the first N of the sweep's `seed` list (0: all); the last "
                "rung trains every seed"})
    max_extensions: int = field(default=2, metadata={
        "check": _at_least(0),
        "help": "bracketing: after rung 0, a winner at the edge of a numeric candidate's grid extends that grid "
                "one step beyond (rates by the grid's ratio, integers by its step), trained at rung 0 too; at most "
                "this many rounds (0: never)"})


def parse_tuning(table) -> Tuning:
    """The `[tuning]` table, validated like every key: unknown keys (with the near miss), types and
    values raise ConfigError naming the value and what is valid."""
    if not isinstance(table, dict):
        raise ConfigError(f"{TUNING_TABLE} must be a table ([{TUNING_TABLE}]), got {table!r}")
    names = [f.name for f in fields(Tuning)]
    unknown = sorted(set(table) - set(names), key=str)
    if unknown:
        raise ConfigError(f"unknown [{TUNING_TABLE}] key(s) {', '.join(suggest(k, names) for k in unknown)}; "
                          f"valid keys: {', '.join(names)}")
    return Tuning(**{f.name: f.metadata["check"](f.name, table[f.name]) for f in fields(Tuning) if f.name in table})


def _survivors(n: int, eta: int, rungs: int) -> list[int]:
    kept = [n]
    while len(kept) < rungs:
        kept.append(math.ceil(kept[-1] / eta))
    return kept


def _max_rungs(n: int, eta: int) -> int:
    """Rungs until one configuration survives (n = 1: one rung)."""
    rungs = 1
    while n > 1:
        n, rungs = math.ceil(n / eta), rungs + 1
    return rungs


def group_of(cell) -> tuple:
    """A cell's (or a row's) group: its values of the compared keys."""
    return tuple(_plain(_get(cell, k)) for k in GROUP_KEYS)


def config_of(cell) -> tuple:
    return tuple(_plain(_get(cell, k)) for k in CONFIG_KEYS)


def _get(item, key):
    return item[key] if isinstance(item, (dict, pd.Series)) else getattr(item, key)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def describe(group: tuple) -> str:
    return ", ".join(f"{SCHEMA.labels[k]}={v}" for k, v in zip(GROUP_KEYS, group))


@dataclass
class TuningPlan:
    """A validated tuning: the sweep (cells at the full budget), its [tuning] table, each group's
    candidate configurations (cells at the sweep's first seed) and seeds, and the rungs."""

    sweep: Sweep
    tuning: Tuning
    groups: dict[tuple, list[Cell]]
    seeds: list[int]
    rungs: int

    @property
    def final_iterations(self) -> int:
        return self.sweep.cells[0].iterations

    @property
    def kept(self) -> list[int]:
        """Configurations trained at each rung (the original grid's; extensions come on top at rung 0)."""
        return _survivors(len(next(iter(self.groups.values()))), self.tuning.eta, self.rungs)

    def iterations(self, rung: int) -> int:
        return max(1, math.floor(self.final_iterations / self.tuning.eta ** (self.rungs - 1 - rung) + 0.5))

    def seeds_at(self, rung: int) -> list[int]:
        if rung == self.rungs - 1 or not self.tuning.seeds_per_rung:
            return list(self.seeds)
        return list(self.seeds[:self.tuning.seeds_per_rung])

    def terms(self) -> list[tuple[int, int, int]]:
        return [(n, len(self.seeds_at(r)), self.iterations(r)) for r, n in enumerate(self.kept)]

    @property
    def budget(self) -> int:
        """Training iterations per group, before bracketing: the same for every group."""
        return sum(n * s * i for n, s, i in self.terms())

    def budget_line(self) -> str:
        sum_text = " + ".join(f"{n} x {s} x {i}" for n, s, i in self.terms())
        return (f"budget per group: {sum_text} = {self.budget:,} iterations "
                f"(configurations x seeds x iterations per rung)")

    def folder(self, out: Path, rung: int) -> Path:
        return Path(out) if rung == self.rungs - 1 else Path(out) / RUNGS / str(rung)

    def cells(self, configs: list[Cell], rung: int) -> list[Cell]:
        return [replace(c, iterations=self.iterations(rung), seed=s) for c in configs for s in self.seeds_at(rung)]


def plan_tuning(raw: dict, limits: dict | None = None) -> TuningPlan:
    """Validate a sweep table with its [tuning] table (ConfigError, naming the value and what is
    valid, before anything is written): the sweep as `run` would, then one budget (`iterations`
    a single value), the same grid size in every group, every configuration at every seed, and
    something to tune."""
    raw = dict(raw)
    tuning = parse_tuning(raw.pop(TUNING_TABLE, {}))
    sweep = parse_sweep(raw, limits)
    budgets = sorted({c.iterations for c in sweep.cells})
    if len(budgets) > 1:
        raise ConfigError(f"iterations = {budgets}: a tuning's budget is the last rung's iterations, so give it one "
                          f"value (the rungs derive theirs from it)")
    seeds = list(dict.fromkeys(c.seed for c in sweep.cells))
    groups: dict[tuple, dict[tuple, Cell]] = {}
    for cell in sweep.cells:
        groups.setdefault(group_of(cell), {}).setdefault(config_of(cell), replace(cell, seed=seeds[0]))
    for group, configs in groups.items():
        n_cells = sum(group_of(c) == group for c in sweep.cells)
        if n_cells != len(configs) * len(seeds):
            raise ConfigError(f"{describe(group)}: {n_cells} cells are not each of its {len(configs)} configurations "
                              f"at each of the sweep's {len(seeds)} seeds; a tuning trains every configuration "
                              f"at the same seeds")
    sizes = {group: len(configs) for group, configs in groups.items()}
    if max(sizes.values()) == 1:
        raise ConfigError(f"no hyperparameter to tune: give one of {', '.join(TUNED_KEYS)} a list of candidate "
                          f"values")
    if len(set(sizes.values())) > 1:
        listed = "; ".join(f"{describe(g)}: {n} configurations" for g, n in sizes.items())
        raise ConfigError(f"unequal grids: {listed}; valid: the same number of configurations in every group "
                          f"(an equal tuning budget per group)")
    n = next(iter(sizes.values()))
    most = _max_rungs(n, tuning.eta)
    if tuning.rungs > most:
        raise ConfigError(f"[{TUNING_TABLE}] rungs = {tuning.rungs} is more than {n} candidates allow at eta = "
                          f"{tuning.eta}; valid: 0 (as many as they allow) or 1 to {most}")
    if tuning.seeds_per_rung > len(seeds):
        raise ConfigError(f"[{TUNING_TABLE}] seeds_per_rung = {tuning.seeds_per_rung} is more than the sweep's "
                          f"{len(seeds)} seeds; valid: 0 (all) or 1 to {len(seeds)}")
    return TuningPlan(sweep, tuning, {g: list(c.values()) for g, c in groups.items()}, seeds, tuning.rungs or most)


def load_tuning(path, overrides: list = (), limits: dict | None = None) -> TuningPlan:
    """`plan_tuning` of a sweep file; `--set tuning.KEY=VALUE` sets one key of its [tuning] table."""
    parsed = [parse_override(o) if isinstance(o, str) else tuple(o) for o in overrides]
    prefix = f"{TUNING_TABLE}."
    raw = read_sweep_table(path, [o for o in parsed if not o[0].startswith(prefix)])
    for key, value in parsed:
        if key.startswith(prefix):
            table = raw.setdefault(TUNING_TABLE, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{TUNING_TABLE} must be a table ([{TUNING_TABLE}]), got {table!r}")
            table[key[len(prefix):]] = value
    return plan_tuning(raw, limits)


# ----------------------------------------------------------------------------- ranking and bracketing

def rank(records: list[dict]) -> tuple[pd.DataFrame, Metric]:
    """Configurations in selection order (`analysis.ranked`, the report's own selection) and the
    records' metric; one row per configuration, `val_<metric>` its seed-pooled validation value."""
    metric = folder_metric(records)
    scores = config_scores(cell_frame(records), pool_seeds(final_evaluations(records), metric=metric), metric)
    return ranked(scores, metric), metric


def _beyond(key: str, inner, edge):
    """One grid step past `edge` away from its neighbour `inner`: rates by their ratio (log-spaced,
    12 significant digits so 0.03 * 3 is 0.09), integers by their difference."""
    if SCHEMA[key].type == "float":
        return float(f"{edge * (edge / inner):.12g}")
    return edge + (edge - inner)


def edges(configs: list[Cell], config) -> list[tuple[str, str]]:
    """(key, "low"/"high") for each numeric candidate key with two or more values in `configs` at
    whose smallest or largest value `config` sits."""
    found = []
    for key in TUNED_KEYS:
        if SCHEMA[key].type not in ("int", "float"):
            continue
        values = sorted({getattr(c, key) for c in configs})
        if len(values) < 2:
            continue
        value = _plain(_get(config, key))
        if value in (values[0], values[-1]):
            found.append((key, "low" if value == values[0] else "high"))
    return found


def extensions(configs: list[Cell], winner: Cell, limits: dict = LIMITS) -> tuple[list[Cell], list[str]]:
    """The configurations one grid step beyond each edge the winner sits at (`edges`), for every
    configuration at that edge (the corner too, when it sits at two), and a note for each edge
    that cannot be extended (the key's check or limit refuses the value)."""
    pool, new, notes = list(configs), [], []
    for key, side in edges(configs, winner):
        values = sorted({getattr(c, key) for c in pool})
        edge, inner = (values[-1], values[-2]) if side == "high" else (values[0], values[1])
        value = _beyond(key, inner, edge)
        try:
            made = [cell_from_dict({**asdict(c), key: value}, limits) for c in pool if getattr(c, key) == edge]
        except ConfigError as error:
            notes.append(f"{key} cannot go beyond {edge:g} ({value:g}: {error})")
            continue
        pool += made
        new += made
    return new, notes


# ----------------------------------------------------------------------------- running

#: tuning.csv's columns and their meanings (docs/tuning.md lists them; a test keeps it so); the
#: group and configuration keys come first, named as in the records
COLUMNS = {
    **{k: "the group (the report's compared keys)" for k in GROUP_KEYS},
    **{k: "the configuration's value of this candidate key" for k in TUNED_KEYS},
    "rung": "the rung (0 first; the last trained into OUT/runs/)",
    "iterations": "training iterations at this rung",
    "seeds": "seeds trained at this rung",
    "val_<metric>": "seed-pooled validation value after SELECT_STEPS adaptation steps (`val_mse`, `val_accuracy`)",
    "extension": "0: the sweep's grid; k: added by the k-th bracketing round (at rung 0)",
    "survived": "kept by this rung's ranking: trained at the next rung, or at the last rung chosen",
    "chosen": "the configuration the last rung's validation chooses (what `report OUT` selects), on each of its rows",
    "at_edge": "where the configuration sits on the edge of its group's final rung-0 grid: `key=low` / `key=high`, "
               "`;`-separated; empty inside",
}


def columns(metric: Metric) -> list[str]:
    return [f"val_{metric.name}" if c == "val_<metric>" else c for c in COLUMNS]


@dataclass
class TuningResult:
    table: pd.DataFrame  # tuning.csv
    chosen: dict[tuple, Cell]  # group -> chosen configuration
    warnings: list[str]
    failed: list[dict]  # records of a rung's failed cells (the tuning stopped there)
    extra: dict[tuple, int] = field(default_factory=dict)  # group -> bracketing's extra training iterations
    report: object = None


class _Stop(Exception):
    def __init__(self, failed):
        self.failed = failed


def tune(plan: TuningPlan, out, executor: str = "local", workers: int = 1, address: str | None = None,
         threads: int = 1, progress: bool = True, report: bool = True, log=print) -> TuningResult:
    """Run (or resume) the tuning into `out`; every check that can refuse runs before anything is
    written (as `run`'s). Interrupted (SIGINT/SIGTERM): the `Interrupted` carries `rung`; every
    finished cell is kept, and the same call resumes."""
    from benchmarks.cli import check_output_path, prepare_output  # `run`'s checks (the CLI imports this module)

    out = Path(out)
    settings, limits = plan.sweep.settings, plan.sweep.limits
    if not (executor == "ray" and address):
        check_device_available(settings.device)
    check_output_path(out)
    refuse_links(out, (RUNGS,))
    first = plan.folder(out, 0)
    first_cells = plan.cells([c for configs in plan.groups.values() for c in configs], 0)
    if runs_dir(first).is_dir():  # records made under other settings refuse here, before anything is written
        check_output_path(first)
        pending_cells(Sweep(first_cells, [], settings, limits), first, executor, threads)
    _check_foreign(plan, out, None)
    if executor == "ray":
        from benchmarks.executors import start_ray

        start_ray(address, workers)
    prepare_output(out, len(first_cells))
    log(plan.budget_line())

    final_ids: set[str] = set()

    def train(cells: list[Cell], rung: int) -> list[dict]:
        """One ordinary sweep into the rung's folder (resumed: finished cells are skipped); the records
        of `cells`, or _Stop when one failed."""
        folder = plan.folder(out, rung)
        sweep = Sweep(cells, [], settings, limits)
        if folder == out:  # with one rung, bracketing trains into OUT too
            final_ids.update(c.cell_id for c in cells)
            _check_foreign(plan, out, final_ids)
        if folder != out:
            check_output_path(folder)
            if runs_dir(folder).is_dir():
                pending_cells(sweep, folder, executor, threads)
            prepare_output(folder, len(cells))
        try:
            if folder == out:
                run_sweep(sweep, folder, executor, workers, address, threads, progress)
            else:
                with folder_lock(folder):
                    sweep_stale(folder)
                    run_sweep(sweep, folder, executor, workers, address, threads, progress)
        except Interrupted as interrupt:
            interrupt.rung = rung
            raise
        ids = {c.cell_id for c in cells}
        everything = load_records(folder, limits)
        if folder != out:  # its cells and their cost, as any results folder states them (no figures)
            from benchmarks.report import write_summary

            write_summary(folder, everything)
        records = [r for r in everything if r["cell_id"] in ids]
        failed = [r for r in records if r["status"] == "failed"]
        if failed:
            raise _Stop(failed)
        return records

    rows, warnings, notes = [], [], {}
    configs = {g: list(c) for g, c in plan.groups.items()}  # each group's candidates at the current rung
    grid = {g: list(c) for g, c in plan.groups.items()}  # each group's rung-0 grid, extensions included
    added = {config_of(c): 0 for cs in configs.values() for c in cs}
    extra: dict[tuple, int] = {g: 0 for g in configs}
    metric = MSE
    with folder_lock(out):
        sweep_stale(out)
        try:
            for rung in range(plan.rungs):
                seeds, iterations = plan.seeds_at(rung), plan.iterations(rung)
                log(f"rung {rung} (of 0-{plan.rungs - 1}): {sum(map(len, configs.values()))} configurations x "
                    f"{len(seeds)} seed{'s' * (len(seeds) != 1)} x {iterations:,} iterations into "
                    f"{plan.folder(out, rung)}")
                records = train(plan.cells([c for cs in configs.values() for c in cs], rung), rung)
                order, metric = rank(records)
                for round_ in range(1, plan.tuning.max_extensions + 1 if rung == 0 else 1):
                    new = []
                    for group, candidates in configs.items():
                        winner = _first(order, group, candidates)
                        made, why = extensions(candidates, winner, limits)
                        notes[group] = why
                        for config in made:
                            added[config_of(config)] = round_
                        candidates += made
                        grid[group] += made
                        extra[group] += len(made) * len(seeds) * iterations
                        new += made
                    if not new:
                        break
                    log(f"rung 0, bracketing round {round_}: {len(new)} configurations beyond an edge")
                    records += train(plan.cells(new, rung), rung)
                    order, metric = rank(records)
                keep = plan.kept[rung + 1] if rung + 1 < plan.rungs else 1
                for group, candidates in configs.items():
                    mine = {config_of(c): c for c in candidates}
                    ordered = [mine[config_of(row)] for _, row in order.iterrows() if config_of(row) in mine]
                    values = {config_of(row): row[f"val_{metric.name}"] for _, row in order.iterrows()}
                    for position, config in enumerate(ordered):
                        rows.append({**{k: getattr(config, k) for k in GROUP_KEYS + TUNED_KEYS}, "rung": rung,
                                     "iterations": iterations, "seeds": len(seeds),
                                     f"val_{metric.name}": _plain(values[config_of(config)]),
                                     "extension": added[config_of(config)], "survived": position < keep,
                                     "_config": config_of(config)})
                    configs[group] = ordered[:keep]
        except _Stop as stop:
            return TuningResult(pd.DataFrame(), {}, warnings, stop.failed, extra)
        chosen = {group: candidates[0] for group, candidates in configs.items()}
        table = pd.DataFrame(rows)
        picked = {config_of(c) for c in chosen.values()}
        table["chosen"] = [config in picked for config in table["_config"]]
        table["at_edge"] = [";".join(f"{k}={side}" for k, side in edges(grid[group_of(row)], row))
                            for _, row in table.iterrows()]
        table = table.drop(columns="_config")[columns(metric)]
        write_atomic(out / CSV, table.to_csv(index=False))
        for group, config in chosen.items():
            at = edges(grid[group], config)
            if at:
                where = ", ".join(f"{k} = {getattr(config, k):g} ({side}est tried)" for k, side in at)
                why = f"; {'; '.join(notes[group])}" if notes.get(group) else ""
                warnings.append(f"warning: {describe(group)}: the chosen configuration is at the edge of its grid "
                                f"in {where} after {max((added[config_of(c)] for c in grid[group]), default=0)} "
                                f"bracketing round(s) at rung 0: the optimum is not bracketed; widen the grid{why}")
        result = TuningResult(table, chosen, warnings, [], extra)
        if report:
            from benchmarks.report import write_report

            result.report = write_report(out, limits)
    return result


def _check_foreign(plan: TuningPlan, out: Path, ids: set[str] | None) -> None:
    """Refuse an OUT/runs/ holding records that are not this tuning's last rung (another sweep's
    folder, or a tuning of another grid): `report OUT` would select among them too. Before anything
    is written, each record must be of a group and seed of the plan at the full budget; before the
    last rung trains, each must be one of its cells (`ids`)."""
    if not runs_dir(out).is_dir():
        return
    for path, record in scan_records(out, plan.sweep.limits).values():
        cell = record["cell"]
        fits = (group_of(cell) in plan.groups and cell["seed"] in plan.seeds
                and cell["iterations"] == plan.final_iterations) if ids is None else record["cell_id"] in ids
        if not fits:
            raise ConfigError(f"{path} is not a cell of this tuning's last rung ({record['cell_id']}): "
                              f"{runs_dir(out)} holds the tuned configurations only, and `report {out}` would "
                              f"select among it too; tune into a new --out (or move that record away)")


def _first(order: pd.DataFrame, group: tuple, candidates: list[Cell]) -> Cell:
    """The group's best configuration in `order` (`rank`), among `candidates`."""
    mine = {config_of(c): c for c in candidates}
    return next(mine[config_of(row)] for _, row in order.iterrows() if config_of(row) in mine)
