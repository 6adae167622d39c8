"""The fidelity ablations of issue 23: how much of the gap to Finn et al. 2017's one-step number
each protocol difference of the released code (`cbfinn/maml`) accounts for.

Every ablation is the base sweep `benchmarks/configs/ablation.toml` (MAML on `func`, trained at
K = 10, evaluated at K = 5, 70,000 iterations, seeds 0-9 on independent streams, 10 test sets of
600 tasks: `reference.toml`'s MAML cells) with `--set` overrides, one change at a time, then all
together (`ABLATIONS`, the one list; `--run` runs them, `make ablations`). The report reads a
folder of them, one sub-folder per ablation (`results/ablations/<name>/`), against the baseline
folder (`results/reference/`), and writes `ablations.csv` and `ablations.md` into the folder: per
ablation and algorithm of Finn's Table 2 (`paper.PUBLISHED`), the test mean after one step at
K = 5 (`paper.EVAL_K`) with its two-way (seed x task) bootstrap 95% interval, the baseline's, their
difference with its interval, and Finn's published value.

Decisions:
- The baseline of an ablation's configuration is the baseline folder's configuration in the same
  report group less the backend (`SCHEMA.compared`: algorithm, task, K, network): the same
  configuration where the baseline has it (an evaluation-only ablation `re-evaluate`d from the
  baseline, pre-training at each tuned rate); else, the hyperparameters may differ (the inner-rate
  ablation changes LR_base), the group's one configuration, or where it holds several (the
  reference tunes pre-training's test-time LR_base) the one with the base sweep's values of the
  keys they differ in (its single-valued LR_base, LR_meta, S, B, iterations); none: no difference
  (a note says so); still several: refused (RecordError), the pairing would be a guess.
- The difference is paired by seed and test task: per seed present in both folders and per task,
  ablation minus baseline, then the mean of those [seeds, tasks] values with the same two-way
  bootstrap as every mean (`statistics.summarize`). Both folders score the same test tasks (the
  test streams are fixed; `n_eval_query` changes only each task's query points), so a task is
  compared with itself; a different number of test tasks or sets is refused.
- A non-finite error makes a mean (and its difference) infinite, never dropped (`statistics`).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import statistics
from benchmarks.artifacts import load_task_errors
from benchmarks.atomic import report_writes, write_files_atomically
from benchmarks.config import POOLED_KEYS, SCHEMA, ConfigError
from benchmarks.document import markdown_table
from benchmarks.paper import EVAL_K, PUBLISHED
from benchmarks.records import RecordError, load_records

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "ablation.toml"
#: name -> the `--set` overrides of the base sweep (one change at a time, then all together).
#: `n_query = "k"` (K query points in training, Finn's) has no run of its own: at the trained K = 10
#: it is the baseline's 10 query points, bitwise (the same fingerprint); it is part of "combined".
ABLATIONS = {
    "init": ('init="finn"',),  # Finn's initialisation: truncated normal weights, zero biases
    "eval-query": ('n_eval_query="k"',),  # K query points per test task (Finn's test), not 100
    "inner-rate": ("lr_base=0.001",),  # the released code's `update_lr` default, not the paper's rate
    "pretrain-support": ('algorithm="pretrain"', 'pretrain_points="support"'),  # Finn's `pretrain_op`
    "combined": ('algorithm=["maml", "pretrain"]', 'init="finn"', 'n_query="k"', 'n_eval_query="k"',
                 "lr_base=0.001", 'pretrain_points="support"'),
    # not a protocol difference: the same protocol in an independent implementation (the JAX backend,
    # from the same initial weights and tasks), the standing cross-check; its difference should be ~0
    "backend-jax": ('backend="jax"', 'seed=[0, 1, 2, 3, 4]'),
}
STEPS = 1  # the one-step number whose gap is studied
#: the cell keys an ablation's configuration and its baseline share: the report's groups (algorithm,
#: task, K, network; see the module doc)
#: (backend left out, so that the JAX cross-check pairs with the reference's `func` cells: a reference
#: folder holds one backend per algorithm)
PAIRED_ON = tuple(k for k in SCHEMA.compared if k != "backend")
FILES = ("ablations.csv", "ablations.md")


def _configs(folder: Path) -> dict[tuple, dict[int, tuple[np.ndarray, int]]]:
    """Configuration (the cell without its seed, as sorted items) -> seed -> (the per-task test errors
    at K = EVAL_K after STEPS steps, set-major; the number of test sets), for the folder's `ok` cells
    of Finn's algorithms that stored them."""
    records = load_records(folder)
    stores = load_task_errors(folder, records)
    found: dict[tuple, dict[int, tuple[np.ndarray, int]]] = {}
    for record in records:
        cell = record["cell"]
        store = stores.get(record["cell_id"])
        if (cell["algorithm"] not in set(PUBLISHED["algorithm"]) or store is None
                or ("test", EVAL_K) not in store.errors):
            continue
        errors = store.errors[("test", EVAL_K)]
        if errors.shape[0] <= STEPS:
            continue
        config = tuple(sorted((k, v) for k, v in cell.items() if k not in POOLED_KEYS))
        found.setdefault(config, {})[cell["seed"]] = (errors[STEPS].astype(np.float64), store.n_sets.get("test", 1))
    return found


def _stack(seeds: dict, which: list[int]) -> np.ndarray:
    return np.stack([seeds[s][0] for s in which])


def _base_values() -> dict:
    """The base sweep's single-valued cell keys outside PAIRED_ON (LR_base, LR_meta, S, B, iterations):
    what a baseline configuration has when the baseline folder holds several of one group."""
    import tomllib

    raw = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if k in SCHEMA.config and k not in PAIRED_ON
            and not isinstance(v, (list, dict))}


def _baseline_for(config: dict, baseline: dict[tuple, dict], where: Path) -> tuple | None:
    candidates = [b for b in baseline if all(dict(b).get(k) == config.get(k) for k in PAIRED_ON)]
    same = [b for b in candidates if all(dict(b).get(k) == config.get(k) for k in SCHEMA.config if k != "backend")]
    if len(same) == 1:  # the same configuration (a re-evaluation's pre-training at each tuned rate)
        return same[0]
    if len(candidates) > 1:  # e.g. pre-training's test-time rate tuned in the reference: the base sweep's one
        differ = {k for b in candidates for k, v in b if any(dict(c).get(k) != v for c in candidates)}
        base = {k: v for k, v in _base_values().items() if k in differ}
        candidates = [b for b in candidates if all(dict(b).get(k) == v for k, v in base.items())]
    if len(candidates) > 1:
        listed = "; ".join(", ".join(f"{k}={v}" for k, v in c) for c in candidates)
        raise RecordError(f"{where} holds several configurations to pair {config['algorithm']} with ({listed}): "
                          f"keep one per {', '.join(PAIRED_ON)}")
    return candidates[0] if candidates else None


def _estimate(values: np.ndarray) -> statistics.Estimate:
    return statistics.summarize(values, np.inf)["mean"]  # only the mean: a non-finite value is its blow-up


def ablation_frame(folder: Path, baseline: Path) -> pd.DataFrame:
    """One row per (ablation sub-folder of `folder`, configuration of Finn's algorithms in it)."""
    folder, baseline = Path(folder), Path(baseline)
    if not folder.is_dir():
        raise RecordError(f"no ablation folder {folder} (run `make ablations` first)")
    reference = _configs(baseline)
    known = list(ABLATIONS)
    names = sorted((p.name for p in folder.iterdir() if (p / "runs").is_dir()),
                   key=lambda n: (known.index(n) if n in known else len(known), n))
    if not names:
        raise RecordError(f"{folder} holds no ablation folders (sub-folders with runs/, e.g. {folder / 'init'})")
    rows = []
    for name in names:
        for config, seeds in _configs(folder / name).items():
            values = dict(config)
            order = sorted(seeds)
            mean = _estimate(_stack(seeds, order))
            published = PUBLISHED[(PUBLISHED["algorithm"] == values["algorithm"]) & (PUBLISHED["eval_steps"] == STEPS)]
            row = {"ablation": name, "overrides": " ".join(ABLATIONS.get(name, ())), "algorithm": values["algorithm"],
                   "backend": values["backend"], "lr_base": values["lr_base"], "n_seeds": len(order),
                   "n_tasks": len(seeds[order[0]][0]),
                   "mean": mean.value, "mean_low": mean.low, "mean_high": mean.high,
                   "paper": float(published["published"].iloc[0])}
            match = _baseline_for(values, reference, baseline)
            note = f"no {values['algorithm']} cells to pair with in {baseline}" if match is None else ""
            if match is not None:
                base = reference[match]
                common = [s for s in order if s in base]
                shapes = {(len(found[0]), found[1]) for found in [*seeds.values(), *base.values()]}
                if len(shapes) > 1:
                    raise RecordError(f"{folder / name} and {baseline} scored {values['algorithm']} on different test "
                                      f"sets (tasks, sets: {sorted(shapes)}): they cannot be paired")
                both = _estimate(_stack(base, sorted(base)))
                row.update(baseline_mean=both.value, baseline_low=both.low, baseline_high=both.high,
                           n_paired_seeds=len(common))
                if common:
                    diff = _estimate(_stack(seeds, common) - _stack(base, common))
                    row.update(difference=diff.value, difference_low=diff.low, difference_high=diff.high)
                else:
                    note = f"no seed in common with {baseline}"
            rows.append({**row, "note": note})
    columns = ["ablation", "overrides", "algorithm", "backend", "lr_base", "n_seeds", "n_tasks", "mean", "mean_low",
               "mean_high", "baseline_mean", "baseline_low", "baseline_high", "n_paired_seeds", "difference",
               "difference_low", "difference_high", "paper", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _ci(value, low, high) -> str:
    if value != value:  # NaN: not computed
        return "–"
    bounds = "" if low != low else f" [{low:.4g}, {high:.4g}]"
    return f"{value:.4g}{bounds}"


def markdown(frame: pd.DataFrame, baseline: Path) -> str:
    table = pd.DataFrame({
        "ablation": frame["ablation"],
        "`--set`": frame["overrides"].map(lambda o: f"`{o}`" if o else "–"),
        "algorithm": frame["algorithm"],
        "backend": frame["backend"],
        f"test MSE@{STEPS}, K = {EVAL_K}": [_ci(*r) for r in frame[["mean", "mean_low", "mean_high"]].to_numpy()],
        "baseline": [_ci(*r) for r in frame[["baseline_mean", "baseline_low", "baseline_high"]].to_numpy()],
        "difference (paired)": [_ci(*r) for r in frame[["difference", "difference_low", "difference_high"]].to_numpy()],
        "Finn et al.": frame["paper"].map(lambda v: f"{v:g}"),
        "note": frame["note"],
    })
    return (f"# Fidelity ablations\n\nEach ablation is `benchmarks/configs/ablation.toml` with its `--set` overrides; "
            f"the baseline is `{baseline}`'s cells of the same algorithm. Test MSE after {STEPS} step at "
            f"K = {EVAL_K}: mean over seeds x test tasks [two-way (seed x task) bootstrap 95% interval]; the "
            f"difference is the ablation minus the baseline, paired by seed and test task (negative: the ablation "
            f"scores lower). Finn et al.'s value is their Table 2's (one model, one set of 600 tasks).\n\n"
            + markdown_table(table))


def write_report(folder: Path, baseline: Path) -> list[Path]:
    """ablations.csv and ablations.md in `folder`, written together (all or none)."""
    frame = ablation_frame(folder, baseline)
    csv = io.StringIO()
    frame.to_csv(csv, index=False)
    return write_files_atomically(Path(folder), {FILES[0]: csv.getvalue(), FILES[1]: markdown(frame, baseline)})


def run(out: Path, workers: int = 1, only: list[str] | None = None) -> int:
    """Run each ablation (or `only` those) into `out/<name>/` (resumable: a rerun trains what is missing)."""
    from benchmarks.cli import main as cli

    unknown = sorted(set(only or ()) - set(ABLATIONS))
    if unknown:
        raise ConfigError(f"unknown ablation(s) {', '.join(map(repr, unknown))}; valid choices: {', '.join(ABLATIONS)}")
    for name in only or ABLATIONS:
        args = ["run", "--config", str(CONFIG), "--out", str(Path(out) / name), "--workers", str(workers),
                "--threads", "1"]
        for override in ABLATIONS[name]:
            args += ["--set", override]
        code = cli(args)
        if code:
            return code
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder of ablation sub-folders (results/ablations)")
    parser.add_argument("--baseline", type=Path, default=ROOT / "results" / "reference",
                        help="the baseline folder (default results/reference)")
    parser.add_argument("--run", action="store_true", help="first run the ablations into FOLDER/<name>/")
    parser.add_argument("--only", action="append", help="with --run: this ablation only (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="with --run: parallel jobs")
    parser.add_argument("--list", action="store_true", help="print each ablation's overrides and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, overrides in ABLATIONS.items():
            print(f"{name}: " + " ".join(f"--set '{o}'" for o in overrides))
        return 0

    def run_then_write():  # a failed run has said why: its exit status, no report
        code = run(args.folder, args.workers, args.only) if args.run else 0
        return code or write_report(args.folder, args.baseline)

    return report_writes(run_then_write, (RecordError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())
