"""Regression check of result numbers: a candidate sweep against a committed baseline.

Compares metric by metric with the tolerances in benchmarks/configs/tolerances.toml, prints
what moved, and checks the invariants a reader relies on. Speed is not compared here
(machine-dependent); it lives in the speed benchmarks.

The compared numbers are the folders' metric (`records.folder_metric`: MSE for the sine
families, accuracy for classification) and its interval, `records.metric_columns`: `mse` and
`mse_ci95`, or `accuracy` and `accuracy_ci95`. Both folders must report the same metric (exit 2
otherwise). "Better" in the invariants follows the metric's direction, and `diverged_above` is an
MSE yardstick: for a metric without scaled blow-ups (`Metric.scaled_blowups`) only a non-finite
value is compared by class. The committed tolerances file holds the MSE's; one file may hold
several metrics' tables (the built-in ones, `tasks.problem`), and a regress reads its folders'.

Inputs are validated first (exit 2): the tolerances file must give `rtol` and `atol` for every
compared number (`compared(metric)`) and nothing unknown; both sides must be made under the same settings
(their fingerprints may differ only in torch, numerics version, device, hardware and threads:
that is what a regression check is for). A candidate without a single finished cell is a regression (exit 1):
every cell it should have produced is missing.

The baseline the "beats the baseline" invariant compares against is configuration:
`[invariants] baseline_algorithm` (default `pretrain`; any name in `algorithms.ALGORITHMS`, an
unknown one is bad input) and `beats_baseline_margin` (default 0; `beats_pretrain_margin` is its
old name, still accepted while the baseline is `pretrain`). Every meta-learner other than the
baseline itself must reach a better (lower MSE, higher accuracy) 1-step test value than the baseline's mean
by the margin in the same setting
(`SETTING`, from the cell schema: task, K, S, meta-batch, iterations and network). Decision: when
the candidate has no record of the baseline algorithm at all, the invariant is skipped with a
printed note (not a regression: a baseline cell that disappeared is already reported as a status
change); meta-learner settings without a baseline run in the same setting are counted in a note,
not checked.

Cell keys (the merge keys, the setting, the columns that name a moved number) come from the cell
schema (`benchmarks.config.SCHEMA`): a moved number is shown with the cell keys that take more than
one value among the compared cells.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from algorithms import ALGORITHMS, META_LEARNERS
from benchmarks.config import SCHEMA, ConfigError, read_config_text
from benchmarks.fingerprint import CODE_KEYS, EXECUTION_KEYS, check_poolable, differences, record_fingerprint
from benchmarks.records import RecordError, folder_metric, identity, load_records, metric_columns, stored_cell
from benchmarks.report import summary_frame
from tasks.problem import _METRIC_FUNCTIONS as BUILT_IN_METRICS  # the metric names tasks.problem computes
from tasks.problem import MSE, Metric

DEFAULT_TOLERANCES = Path(__file__).parent / "configs" / "tolerances.toml"
TOP_WITHIN = 10  # numbers that moved but stayed within tolerance, shown closest-first
KEYS = SCHEMA.names + ["iteration", "split", "eval_k_shot", "eval_steps"]  # one compared number: cell, evaluation
#: what a meta-learner and the baseline algorithm share to be compared ("the same setting"): what an
#: ensemble shares except the algorithm and backend (task, K, S, meta-batch, iterations, network)
SETTING = [k for k in SCHEMA.ensemble if k not in ("algorithm", "backend")]




def compared(metric: Metric = MSE) -> tuple[str, str]:
    """Every number compared for a folder in `metric` (its value and interval); each needs a tolerance."""
    return metric_columns(metric)


METRICS = compared(MSE)  # the sine folders' (and the committed tolerances file's)
INVARIANTS = {"diverged_above": 0.0, "beats_baseline_margin": -math.inf, "backend_agreement_rtol": 0.0}  # key: minimum
INVARIANT_ALIASES = {"beats_pretrain_margin": "beats_baseline_margin"}  # old name -> name (valid with baseline pretrain)
DEFAULT_BASELINE_ALGORITHM = "pretrain"  # `[invariants] baseline_algorithm`: what every meta-learner must beat
#: what a regression check compares across (a plug-in's code too: an edited plug-in is what it checks)
EXPECTED_TO_DIFFER = ("torch", "numerics_version", "device", *EXECUTION_KEYS, *CODE_KEYS)


def load_tolerances(path: Path = DEFAULT_TOLERANCES, metric: Metric = MSE) -> dict:
    """The tolerances file for folders in `metric`, validated (ConfigError naming the file and the
    problem): `compared(metric)` must be there; the tables of the built-in metrics may be too."""
    needed = compared(metric)
    known = sorted({column for name in BUILT_IN_METRICS for column in (name, f"{name}_ci95")} | set(needed))
    try:
        tolerances = tomllib.loads(read_config_text(Path(path)))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"malformed TOML in tolerances file {path}: {error}") from None
    except ConfigError as error:
        raise ConfigError(str(error).replace("config file", "tolerances file")) from None
    if not tolerances:
        raise ConfigError(f"tolerances file {path} is empty; it needs [{'], ['.join(needed)}] with rtol and atol")
    unknown = sorted(set(tolerances) - set(known) - {"invariants"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in tolerances file {path}; "
                          f"valid: {', '.join(known)}, invariants")
    for column in needed:
        if not isinstance(tolerances.get(column), dict):
            raise ConfigError(f"tolerances file {path} lacks [{column}] (rtol, atol): every compared metric "
                              f"({', '.join(needed)}) needs a tolerance")
    for column in (c for c in known if c in tolerances):
        table = tolerances[column]
        if not isinstance(table, dict) or set(table) != {"rtol", "atol"}:
            raise ConfigError(f"[{column}] in tolerances file {path} must have exactly rtol and atol, "
                              f"got {', '.join(sorted(table)) if isinstance(table, dict) else repr(table)}")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{column}.{key} in tolerances file {path} must be a finite number >= 0, got {value!r}")
    invariants = tolerances.get("invariants", {})
    if not isinstance(invariants, dict):
        raise ConfigError(f"invariants in tolerances file {path} must be a table, got {invariants!r}")
    baseline = invariants.get("baseline_algorithm", DEFAULT_BASELINE_ALGORITHM)
    if not isinstance(baseline, str) or baseline not in ALGORITHMS:
        raise ConfigError(f"invariants.baseline_algorithm in tolerances file {path} must be an algorithm name, got "
                          f"{baseline!r}; valid: {', '.join(ALGORITHMS)}")
    for key, value in invariants.items():
        if key == "baseline_algorithm":
            continue
        if key in INVARIANT_ALIASES:
            name = INVARIANT_ALIASES[key]
            if name in invariants:
                raise ConfigError(f"invariants.{key} in tolerances file {path} is the old name of {name}; "
                                  f"give only {name}")
            if baseline != "pretrain":
                raise ConfigError(f"invariants.{key} in tolerances file {path} is the old name of {name}, valid only "
                                  f"with baseline_algorithm = \"pretrain\" (got {baseline!r}); write {name}")
            key = name
        if key not in INVARIANTS:
            raise ConfigError(f"unknown invariant {key!r} in tolerances file {path}; "
                              f"valid: baseline_algorithm, {', '.join(INVARIANTS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < INVARIANTS[key]:
            raise ConfigError(f"invariants.{key} in tolerances file {path} must be a number >= {INVARIANTS[key]}, "
                              f"got {value!r}")
    # normalised: the aliases under their names, the baseline always present
    tolerances["invariants"] = {INVARIANT_ALIASES.get(k, k): v for k, v in invariants.items()}
    tolerances["invariants"]["baseline_algorithm"] = baseline
    return tolerances


def check_comparable(base_records: list[dict], cand_records: list[dict]) -> None:
    """Same cell on both sides must mean the same settings (ConfigError naming them otherwise)."""
    base = {identity(r): r for r in base_records}
    changed: dict[str, int] = {}
    for record in cand_records:
        other = base.get(identity(record))
        if other is None:
            continue
        cell = stored_cell(record)
        old = {k: v for k, v in record_fingerprint(other).items() if k not in EXPECTED_TO_DIFFER}
        new = {k: v for k, v in record_fingerprint(record).items() if k not in EXPECTED_TO_DIFFER}
        for line in differences(old, new, cell):
            changed[line] = changed.get(line, 0) + 1
    if changed:
        raise ConfigError("baseline and candidate were made under different settings, their numbers are not "
                          "comparable:\n" + "\n".join(f"  {line}  ({n} cells)" for line, n in changed.items()))


def compare(baseline: pd.DataFrame, candidate: pd.DataFrame, tolerances: dict, metric: Metric = MSE) -> pd.DataFrame:
    """One row per (key, compared number) with baseline, candidate, delta, tolerance and verdict."""
    merged = baseline.merge(candidate, on=KEYS, how="outer", suffixes=("_baseline", "_candidate"), indicator=True)
    rows = []
    # `diverged_above` is a multiple of an MSE: another metric's values are numbers however large
    blown_up = tolerances.get("invariants", {}).get("diverged_above", np.inf) if metric.scaled_blowups else np.inf
    value = compared(metric)[0]
    diverged = {side: ~(merged[f"{value}_{side}"].astype(float).abs() <= blown_up)
                for side in ("baseline", "candidate")}
    for column in compared(metric):
        tol = tolerances[column]
        base = merged[f"{column}_baseline"].astype(float)
        cand = merged[f"{column}_candidate"].astype(float)
        allowed = tol["atol"] + tol["rtol"] * base.abs()
        delta = cand - base
        # An adaptation that blew up (MSE above `diverged_above`, inf or NaN; another metric: inf or
        # NaN) is compared by class only: its exact value is rounding noise amplified, not a result.
        both_diverged = diverged["baseline"] & diverged["candidate"]
        moved = ~both_diverged & ~(delta.abs() <= allowed)
        frame = merged[KEYS].copy()
        frame["metric"] = column
        frame["baseline"], frame["candidate"], frame["delta"], frame["tolerance"] = base, cand, delta, allowed
        frame["by_class"] = both_diverged
        frame["verdict"] = np.where(merged["_merge"] == "left_only", "missing in candidate",
                                    np.where(merged["_merge"] == "right_only", "new in candidate",
                                             np.where(moved, "moved", "ok")))
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def status_changes(baseline: list[dict], candidate: list[dict]) -> list[str]:
    base = {r["cell_id"]: r["status"] for r in baseline}
    cand = {r["cell_id"]: r["status"] for r in candidate}
    return [f"{cid}: status {base[cid]} -> {cand.get(cid, 'missing')}" for cid in sorted(base) if base[cid] != cand.get(cid)]


def invariants(frame: pd.DataFrame, tolerances: dict, notes: list[str] | None = None,
               metric: Metric = MSE) -> list[str]:
    """Broken invariants, as messages (empty when all hold); what was not checked goes to `notes`.
    `frame`: a summary frame in `metric` (its column, its direction: "beats" is lower MSE, higher
    accuracy, by `beats_baseline_margin` either way)."""
    inv = tolerances.get("invariants", {})
    notes = [] if notes is None else notes
    final = frame[(frame.split == "test") & (frame.iteration == frame.iterations) & (frame.eval_k_shot == frame.k_shot)]
    problems = []
    one = final[final.eval_steps == 1]
    baseline = inv.get("baseline_algorithm", DEFAULT_BASELINE_ALGORITHM)
    margin = inv.get("beats_baseline_margin", inv.get("beats_pretrain_margin", 0.0))
    group = [k for k in SCHEMA.config if k != "algorithm"]  # one learner's configuration, seeds pooled
    column = compared(metric)[0]
    base = one[one.algorithm == baseline].groupby(SETTING)[column].mean()
    learners = one[one.algorithm.isin([a for a in META_LEARNERS if a != baseline])]
    if base.empty:
        notes.append(f"invariant 'every meta-learner beats {baseline}' skipped: the candidate has no finished "
                     f"{baseline} cell (baseline_algorithm = {baseline!r} in the tolerances file)")
        learners = learners.iloc[0:0]
    unmatched = 0
    for keys, sub in learners.groupby(["algorithm"] + group):
        config = dict(zip(["algorithm"] + group, keys))
        pkey = tuple(config[k] for k in SETTING)
        if pkey not in base.index:
            unmatched += 1
            continue
        mse = sub[column].mean()
        beats = mse > base[pkey] + margin if metric.higher_is_better else mse < base[pkey] - margin
        if not beats:
            direction = f" ({'higher' if metric.higher_is_better else 'lower'} is better)" if metric != MSE else ""
            problems.append(f"{config['algorithm']} ({config['backend']}) does not beat {baseline} after 1 step at "
                            f"S = {config['inner_steps']}, LR_base = {config['lr_base']}: "
                            f"{metric.label} {mse:.4f} vs {base[pkey]:.4f}{direction}")
    if unmatched:
        notes.append(f"invariant 'every meta-learner beats {baseline}': {unmatched} (algorithm, backend, setting) "
                     f"groups have no {baseline} run with the same {', '.join(SETTING)}; not checked")
    rtol = inv.get("backend_agreement_rtol", 1e-3)
    cell = [k for k in KEYS if k != "backend"]
    for keys, sub in final.groupby(cell):  # every algorithm run on several backends, MAML first of all
        values = sub[column]
        if len(sub) > 1 and (values.max() - values.min()) > rtol * values.abs().max():
            what = "second-order MAML backends" if keys[0] == "maml" else f"{keys[0]} backends"
            problems.append(f"{what} disagree at {dict(zip(cell, keys))}: "
                            + ", ".join(f"{b}={m:.6f}" for b, m in zip(sub.backend, values)))
    return problems


def _bitwise_equal(table: pd.DataFrame) -> bool:
    same = (table.baseline == table.candidate) | (table.baseline.isna() & table.candidate.isna())
    return len(table) > 0 and bool((table.verdict == "ok").all() and same.all())


def regress(baseline_dir: Path, candidate_dir: Path, tolerances_path: Path = DEFAULT_TOLERANCES,
            limits: dict | None = None) -> tuple[int, str]:
    """Return (exit code, printed report); raises ConfigError/RecordError on bad input.
    `limits`: the sizes records may have (`--limit`, default config.LIMITS), as in every command."""
    base_records, cand_records = load_records(baseline_dir, limits), load_records(candidate_dir, limits)
    metric, other = folder_metric(base_records), folder_metric(cand_records)
    if metric != other:
        raise RecordError(f"baseline {baseline_dir} reports {metric.name} and candidate {candidate_dir} reports "
                          f"{other.name}: a regression check compares one metric")
    tolerances = load_tolerances(tolerances_path, metric)
    for records in (base_records, cand_records):
        check_poolable(records)
    check_comparable(base_records, cand_records)
    if not any(r.get("evaluations") for r in base_records):
        raise ConfigError(f"baseline {baseline_dir} has no finished cell with evaluations: nothing to compare against")
    if not any(r.get("evaluations") for r in cand_records):
        statuses = pd.Series([r["status"] for r in cand_records]).value_counts().to_dict()
        first = next((r for r in cand_records if r.get("error")), None)
        lines = [f"candidate {candidate_dir} has no finished cell with evaluations "
                 f"({', '.join(f'{n} {s}' for s, n in statuses.items())}): nothing to compare"]
        if first:
            lines.append(f"first error: {first['cell_id']}: {str(first['error']).splitlines()[-1]}")
        lines.append("REGRESSION")
        return 1, "\n".join(lines)
    # every evaluated iteration, not only summary.csv's last: a change that moves mid-training numbers is caught too
    base, cand = (summary_frame(r, every_iteration=True) for r in (base_records, cand_records))
    table = compare(base, cand, tolerances, metric)
    bad = table[table.verdict != "ok"]
    lines = [f"compared {len(table)} numbers ({', '.join(compared(metric))}) "
             f"of {len(cand_records)} cells against {baseline_dir}"]
    # a moved number is named by the cell keys that tell the compared cells apart (one value everywhere says nothing)
    shown = [k for k in SCHEMA.names if table[k].nunique(dropna=False) > 1] + [
        "split", "eval_k_shot", "eval_steps", "metric", "baseline", "candidate", "delta", "tolerance", "verdict"]
    if len(bad):
        lines.append("moved beyond tolerance:")
        lines.append(bad[shown].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    within = table[(table.verdict == "ok") & ~table.by_class & (table.delta.abs() > 0)]
    if len(within):  # what moved at all, closest to its tolerance first: a reviewer sees the margin
        closest = within.assign(used=within.delta.abs() / within.tolerance).nlargest(TOP_WITHIN, "used")
        lines.append(f"moved within tolerance: {len(within)} numbers; the {len(closest)} closest to their tolerance:")
        lines.append(closest[shown].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if _bitwise_equal(table):
        lines.append("no number moved at all (bitwise equal)")
    notes: list[str] = []
    problems = status_changes(base_records, cand_records) + invariants(cand, tolerances, notes, metric)
    lines += [f"note: {n}" for n in notes]
    lines += [f"invariant broken: {p}" for p in problems]
    failed = len(bad) > 0 or len(problems) > 0
    lines.append("REGRESSION" if failed else "no regression: every number within tolerance, all invariants hold")
    return (1 if failed else 0), "\n".join(lines)
