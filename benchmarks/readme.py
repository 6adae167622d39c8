"""The result numbers README.md and the docs quote, generated from the committed CSVs under results/.

A document marks each generated block as

    <!-- generated: NAME -->
    ...what `BLOCKS[NAME]` renders from the committed CSVs...
    <!-- end generated -->

`make readme` (`python -m benchmarks.readme`) rewrites every block of every file in `DOCUMENTS`;
`--check` only says which blocks are stale (exit 1). `tests/test_readme_numbers.py` fails when a
committed block differs from what this renders, and when a decimal number or percentage sits in
a document's prose outside every block without a stated reason (its allow-list): a result is
never copied by hand, so it cannot be mis-copied (a review had found two misquoted medians and a
wrong blow-up count in the hand-copied README).

Why this shape: the sentences and tables live here, next to the lookups that fill them, and
every number is printed by the report's own formatters (`benchmarks.tables`: intervals, rates,
pooled means; `benchmarks.paper`: Table 2), so README, docs and `tables.md` print one value
the same way. Tables are rendered by `benchmarks.document.markdown_table` (pandas' `to_markdown`
needs `tabulate`, which is not a dependency). Only committed CSVs are read (no records, no
per-task arrays): the numbers are a function of files a reader can open. A CSV that is missing
or lacks a row a block needs is an error naming the file (exit 2), never a silent blank.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from functools import cache
from pathlib import Path

import pandas as pd

from benchmarks import paper, statistics
from benchmarks.ablation import ABLATIONS
from benchmarks.analysis import CELL_COLUMNS, pool_seeds
from benchmarks.config import SCHEMA, ConfigError
from benchmarks.document import markdown_table
from tasks import get_task
from benchmarks.tables import EXTRAPOLATION_NOTE, fmt_estimate, fmt_percent, fmt_pooled, fmt_rate, mark_extrapolated

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
#: the files whose generated blocks `make readme` rewrites (relative to the repository root)
DOCUMENTS = ("README.md", "docs/paper-reproduction.md", "docs/speed.md")
BLOCK = re.compile(r"<!-- generated: (?P<name>[^ ]+) -->\n(?P<body>.*?)<!-- end generated -->", re.S)
OPEN = re.compile(r"<!-- generated: (?P<name>[^ ]+) -->")
#: Finn's cell in the speed tables: S = 1, meta-batch 25
FINN_CELL = {"inner_steps": 1, "meta_batch": 25}


# ----------------------------------------------------------------------------- reading the CSVs

@cache
def _csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (a generated block reads it; run the target that writes it)")
    return pd.read_csv(path, low_memory=False)


def read(results: Path, folder: str, name: str) -> pd.DataFrame:
    return _csv(Path(results) / folder / name)


def _one(frame: pd.DataFrame, where: str, **match) -> pd.Series:
    """The one row of `frame` matching `match`; an error naming `where` if there is none or several."""
    mask = pd.Series(True, index=frame.index)
    for key, value in match.items():
        mask &= frame[key] == value
    rows = frame[mask]
    if len(rows) != 1:
        raise ConfigError(f"{where}: {len(rows)} rows match {match} (a generated block needs exactly one)")
    return rows.iloc[0]


def pooled_test(results: Path, folder: str) -> pd.DataFrame:
    """Test MSE pooled over seeds per configuration, eval K and step (`analysis.pool_seeds`, the
    numbers of the report's table (a)), from summary.csv: `ok` cells at their last iteration."""
    summary = read(results, folder, "summary.csv")
    ok = summary[summary["status"] == "ok"]
    final = ok[ok["iteration"] == ok.groupby(CELL_COLUMNS)["iteration"].transform("max")]
    return pool_seeds(final[final["split"] == "test"])


def _estimate(row, name: str) -> statistics.Estimate:
    return statistics.Estimate(row[name], row[f"{name}_low"], row[f"{name}_high"])


def _rate(value: float) -> str:
    """A blow-up rate as a point (the tables give its interval): `0` or a percentage."""
    return "0" if value == 0 else f"{fmt_percent(100 * value)}%"


def _g(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"


def _join(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]


# ----------------------------------------------------------------------------- the blocks

#: the committed folder the paper comparison and the headline read: the reference runs (reference.toml:
#: 10 seeds on independent streams, hardware recorded; `make paper-results`), not `make paper`'s quick
#: 3-seed run
PAPER_FOLDER = "reference"


def paper_glance(results: Path) -> str:
    """Finn's setup at K = 10: every algorithm's test MSE after 1 and 10 steps (the configuration
    validation chose), robust companions, and the paired share of tasks on which it beats MAML."""
    where = f"results/{PAPER_FOLDER}"
    robust = read(results, PAPER_FOLDER, "robust.csv")
    paired = read(results, PAPER_FOLDER, "paired.csv")
    k = 10
    own = robust[(robust["k_shot"] == k) & (robust["eval_k_shot"] == k)]
    rows = []
    for algorithm, group in own.groupby("algorithm", sort=False):
        row = {"algorithm": algorithm}
        for steps in (1, 10):
            stat = _one(group, f"{where}/robust.csv", eval_steps=steps)
            row["S"] = int(stat["inner_steps"])
            row[f"test MSE@{steps}"] = mark_extrapolated(fmt_estimate(_estimate(stat, "mean"), 3), stat, steps)
            row[f"median@{steps}"] = fmt_estimate(_estimate(stat, "median"), 3)
            row[f"blow-up@{steps}"] = _rate(stat["blowup"])
            if steps == 1:
                row["P(better than MAML)@1"] = "–" if algorithm == "maml" else fmt_estimate(_estimate(_one(
                    paired, f"{where}/paired.csv", reference="maml", algorithm=algorithm, k_shot=k,
                    eval_k_shot=k, eval_steps=1), "p_improvement"), 2)
        row["_order"] = _one(group, f"{where}/robust.csv", eval_steps=1)["median"]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["_order", "algorithm"]).drop(columns="_order")
    first = own.iloc[0]
    intro = (f"`{where}/`: {int(first['iterations']):,} iterations, {int(first['n_seeds'])} seeds × "
             f"{int(first['n_tasks']):,} test tasks, trained and tested at K = {k}, each algorithm at the inner steps S "
             "validation chose; test MSE after 1 and 10 steps (mean [two-way bootstrap 95% CI]; median [95% CI]; "
             "blow-up rate at that step); P(better than MAML): the share of the same test tasks on which the "
             "algorithm's error is lower than MAML's [95% CI]. Sorted by the 1-step median. " + EXTRAPOLATION_NOTE)
    return intro + "\n\n" + markdown_table(table)


def _table2(results: Path) -> pd.DataFrame:
    """paper_comparison.csv's rows with a published value; one written before the reproduction
    criterion (without its columns, `paper.JUDGED`) is an error naming the file."""
    frame = read(results, PAPER_FOLDER, "paper_comparison.csv")
    lacking = [c for c in ("published", "set_size", *paper.JUDGED) if c not in frame.columns]
    if lacking:
        raise ConfigError(f"{Path(results) / PAPER_FOLDER / 'paper_comparison.csv'}: lacks {', '.join(lacking)} (written "
                          "before the reproduction criterion; regenerate it with `make figures`)")
    return frame[frame["published"].notna()].reset_index(drop=True)


def _blown_means(frame: pd.DataFrame) -> str:
    """A sentence on the published rows whose pooled mean blow-ups decide ("" if none)."""
    blown = frame[frame["blowup"] > 0]
    if blown.empty:
        return ""
    rows = [f"{r['algorithm']} after {int(r['eval_steps'])} step{'s' if r['eval_steps'] > 1 else ''} "
            f"({fmt_pooled(r).split(' [')[0]}: {round(r['blowup'] * r['n_tasks_total']):,} of "
            f"{int(r['n_tasks_total']):,} K = {paper.EVAL_K} adaptations diverge)" for _, r in blown.iterrows()]
    return (f"The means pooled over seeds and sets are context only: those of {_join(rows)} are decided by the "
            "diverged tasks; the single-set means read every step alike.")


def paper_table2(results: Path) -> str:
    """Finn et al.'s Table 2 beside ours (the report's section (d), the rows with a published value):
    the published value against our single-model × single-set means, by the declared rule."""
    frame = _table2(results)
    table = paper.comparison_table(frame)[["algorithm", "LR_base", "steps", "paper", "single-set means", "median", "range",
                                          "paper's percentile", "verdict", "blow-up"]]
    first = frame.iloc[0]
    intro = (f"Trained at K = 10, tested at K = {paper.EVAL_K} (`results/{PAPER_FOLDER}/paper_comparison.csv`). Each published "
             f"value is one trained model's mean over one set of {paper.PAPER_SET_SIZE} test tasks, so ours are the "
             f"same statistic, one per seed × independent test set ({int(first['n_seeds'])} × "
             f"{int(first['n_single_sets']) // int(first['n_seeds'])}); `LR_base`: the adaptation step, Finn's 0.01, "
             f"pre-training's chosen on validation at K = {paper.EVAL_K} as Finn et al. tuned it. Verdict: {paper.RULE}.")
    after = _blown_means(frame)
    return intro + "\n\n" + markdown_table(table) + (f"\n{after}\n" if after else "")


def _steps(n: int) -> str:
    return f"{n} step{'s' if n > 1 else ''}"


def paper_criterion(results: Path) -> str:
    """docs/paper-reproduction.md: each published number against our single-set means, in words."""
    frame = _table2(results)
    lines = []
    for _, r in frame.iterrows():
        name = {"maml": "MAML", "pretrain": "Pre-training"}.get(r["algorithm"], r["algorithm"])
        n, published, verdict = int(r["n_single_sets"]), r["published"], r["verdict"]
        span = (f"{_g(r['single_set_low'])}–{_g(r['single_set_high'])}, median {_g(r['single_set_median'])}"
                + (f", {int(r['n_nonfinite_sets'])} non-finite" if r["n_nonfinite_sets"] else ""))
        minmax = r["range_kind"] == "min–max"
        where = "" if minmax else f"the central {paper.CENTRAL:.0%} of "
        if verdict == paper.OURS_LOWER:
            text = (f"none of the {n} single-set means reaches the paper's {published:g} (ours: {span})" if minmax else
                    f"the paper's {published:g} lies above {where}our {n} single-set means ({span})")
        elif verdict == paper.OURS_HIGHER:
            text = (f"all {n} single-set means lie above the paper's {published:g} (ours: {span})" if minmax else
                    f"the paper's {published:g} lies below {where}our {n} single-set means ({span})")
        else:
            text = (f"the paper's {published:g} lies at percentile {fmt_percent(r['published_percentile'])} of our "
                    f"{n} single-set means ({span})")
        lines.append(f"- {name}, {_steps(int(r['eval_steps']))}: {text}: **{paper.fmt_verdict(r)}**.")
    return "\n".join(lines) + "\n"


def bench_glance(results: Path) -> str:
    """The hyperparameter sweep's grid and how many of its runs diverged in training."""
    summary = read(results, "bench", "summary.csv")
    cells = summary.drop_duplicates(CELL_COLUMNS)

    def values(column, fmt=_g):
        return "{" + ", ".join(fmt(v) for v in sorted(cells[column].unique())) + "}"

    diverged = int((cells["status"] == "diverged").sum())
    iterations = "/".join(f"{int(v):,}" for v in sorted(cells["iterations"].unique()))
    return (f"`results/bench/`: {iterations} iterations, S ∈ {values('inner_steps')} × LR_base ∈ "
            f"{values('lr_base')} × LR_meta ∈ {values('lr_meta', lambda v: f'{v:g}')}, {cells['seed'].nunique()} "
            f"seeds, {cells['algorithm'].nunique()} algorithms on the `{'`, `'.join(sorted(cells['backend'].unique()))}` "
            f"backends, chosen on validation (`results/bench/tables.md` (a) and (a2), fig4 below): {diverged} of the "
            f"{len(cells)} runs diverged in training (listed in (c)).\n")


DEMOS = ("demo-tanh", "demo-sine_freq", "demo-lslr")


def demos(results: Path) -> str:
    """The extensions' demonstration folders: test MSE after one step and training speed."""
    rows = []
    for folder in DEMOS:
        summary = read(results, folder, "summary.csv")
        pooled = pooled_test(results, folder)
        ok = summary[(summary["status"] == "ok")].drop_duplicates(CELL_COLUMNS)
        for (algorithm, network, task), cells in ok.groupby(["algorithm", "network", "task"], sort=False):
            first = cells.iloc[0]
            mean = _one(pooled, f"results/{folder}/summary.csv", algorithm=algorithm, network=network, task=task,
                        eval_k_shot=first["k_shot"], eval_steps=1)
            ms = cells["sec_per_iter"] * 1e3
            speed = _g(ms.min(), 2) if _g(ms.min(), 2) == _g(ms.max(), 2) else f"{_g(ms.min(), 2)}–{_g(ms.max(), 2)}"
            rows.append({"folder": f"`{folder}/`", "task": task, "network": network, "algorithm": algorithm,
                         "S": int(first["inner_steps"]), "iterations": f"{int(first['iterations']):,}",
                         "seeds": cells["seed"].nunique(), "test MSE@1": fmt_pooled(mean, with_n=True),
                         "ms/iter": f"{speed} ({'/'.join(sorted(cells['engine'].unique()))})"})
    intro = ("Test MSE after one step (mean ± 95% CI, n = tasks × seeds) and ms per training iteration (min–max "
             "over seeds, the engine that ran; an `accelerated` ensemble trains several seeds in one program):")
    return intro + "\n\n" + markdown_table(pd.DataFrame(rows))


PEER_LABELS = {"func": "`func` eager", "func-compiled": "`func` compiled (`compile = true`)",
               "generic": "`generic` eager", "generic-compiled": "`generic` compiled", "jax": "JAX (jit + vmap + optax)",
               "compile": "`torch.compile` of a torch.func step", "l2l": "learn2learn", "higher": "higher"}


def cost(results: Path) -> str:
    """Ms per meta-iteration of every peer at Finn's cell (one run), compiled `func` against JAX in
    every cell (another run), and Finn's full run projected from the end-to-end benchmark."""
    peers = read(results, "bench", "peers.csv")
    finn = peers[(peers["inner_steps"] == FINN_CELL["inner_steps"]) & (peers["meta_batch"] == FINN_CELL["meta_batch"])]
    rows = []
    for peer in PEER_LABELS:
        second = finn[(finn["peer"] == peer) & (finn["order"] == "second")]
        first = finn[(finn["peer"] == peer) & (finn["order"] == "first")]
        if second.empty:
            continue
        l2l = _one(finn, "results/bench/peers.csv", peer="l2l", order="second")["ms_median"]
        rows.append({"peer": PEER_LABELS[peer], "second order (MAML)": _g(second["ms_median"].iloc[0]),
                     "first order (FOMAML)": _g(first["ms_median"].iloc[0]) if not first.empty else "–",
                     "learn2learn / peer": f"{l2l / second['ms_median'].iloc[0]:.3g}x"})
    compiled = read(results, "bench", "peers-compiled.csv")
    jax = compiled[compiled["peer"] == "jax"]
    ratio = jax["ratio_vs_func_compiled"]
    at_finn = _one(jax, "results/bench/peers-compiled.csv", order="second", **FINN_CELL)["ratio_vs_func_compiled"]
    speed = read(results, "bench", "speed.csv")
    end = speed[speed["kind"] == "end_to_end"]
    minutes = {b: _one(end, "results/bench/speed.csv", backend=b)["projected_70k_minutes"] for b in ("func", "l2l")}
    intro = (f"ms per meta-iteration at Finn's cell (S = {FINN_CELL['inner_steps']}, meta-batch "
             f"{FINN_CELL['meta_batch']}; `results/bench/peers.csv`: CPU, one thread, interleaved rounds on the same "
             "batch and initial weights, median):")
    after = (f"\nSide by side in all {len(jax)} cells of S × meta-batch × order (`results/bench/peers-compiled.csv`, "
             f"another run), compiled `func` is {ratio.min():.3g}–{ratio.max():.3g}x faster than JAX's jitted step "
             f"({at_finn:.3g}x at Finn's cell, second order). Finn's 70k-iteration run, task sampling included "
             f"(`results/bench/speed.csv`), projects to {minutes['func']:.2g} minutes with eager `func` and "
             f"{minutes['l2l']:.2g} with learn2learn.\n")
    return intro + "\n\n" + markdown_table(pd.DataFrame(rows)) + after


#: the end-to-end peers in table order, and their labels
E2E_LABELS = {"func-compiled-warm": "`func` compiled, warm cache", "func-compiled-cold": "`func` compiled, cold cache",
              "func": "`func` eager", "generic": "`generic` eager", "l2l": "learn2learn",
              "jax-insampling": "JAX, tasks sampled in the jitted step", "jax-scan": "JAX, the same with `lax.scan`",
              "jax": "JAX backend (torch-side sampling)"}
E2E_RUN = 70_000  # Finn's training run: the issue-24 target's length
E2E_TARGET = 1.2  # compiled `func` at least this much faster end to end than JAX with in-jit sampling


def end_to_end(results: Path) -> str:
    """What a user waits for: a whole Finn-length training run per peer and S, compile, startup and
    evaluation included (`results/bench/end_to_end.csv`, `benchmarks.speed.end_to_end`), and the
    issue-24 target against JAX's own loop stated as met or not from the same numbers."""
    frame = read(results, "bench", "end_to_end.csv")
    total, jax_ratio = f"total_s_{E2E_RUN}", f"x_vs_jax-insampling_{E2E_RUN}"
    steps = sorted(frame["inner_steps"].unique())
    rows = []
    for peer, label in E2E_LABELS.items():
        part = frame[frame["peer"] == peer].set_index("inner_steps")
        if part.empty:
            continue
        row = {f"seconds for {E2E_RUN:,} iterations (speed-up over JAX in-jit)": label}
        for s in steps:
            row[f"S = {s}"] = (f"{part.loc[s, total]:,.0f} ({1 / part.loc[s, jax_ratio]:.2f}x)" if s in part.index
                               else "–")
        rows.append(row)
    speedup = {peer: 1 / frame[frame["peer"] == peer].set_index("inner_steps")[jax_ratio]
               for peer in ("func-compiled-cold", "func-compiled-warm")}
    cold, warm = speedup["func-compiled-cold"], speedup["func-compiled-warm"]
    judged, repeated = dict(cold), ""
    if (results / "bench" / "end_to_end_rounds.csv").exists():  # where rounds exist, their median decides
        rounds = read(results, "bench", "end_to_end_rounds.csv")
        for s, part in rounds[rounds["peer"] == "func-compiled-cold"].groupby("inner_steps"):
            per_round = 1 / part.sort_values("round")[jax_ratio]
            warm_rounds = 1 / rounds[(rounds["peer"] == "func-compiled-warm") & (rounds["inner_steps"] == s)][jax_ratio]
            judged[s] = per_round.median()
            repeated += (f" At S = {int(s)}, {len(per_round)} interleaved rounds (`results/bench/end_to_end_rounds.csv`, "
                         f"the peers' order alternating) give the cold cache {', '.join(f'{x:.2f}x' for x in per_round)}: "
                         f"median {per_round.median():.2f}x"
                         + (f", the warm one median {warm_rounds.median():.2f}x" if len(warm_rounds) else "") + ".")
    met = [int(s) for s in steps if judged.get(s, 0) >= E2E_TARGET]
    missed = [int(s) for s in steps if judged.get(s, 0) < E2E_TARGET]
    first = frame.iloc[0]
    verdict = (f"Against JAX's own loop (tasks sampled inside its jitted step), compiled `func` with a cold cache is "
               f"{cold.min():.2f}–{cold.max():.2f}x faster end to end in this run, "
               f"{warm.min():.2f}–{warm.max():.2f}x with the warm cache every later cell of a sweep gets." + repeated
               + f" Target ({E2E_TARGET}x with a cold cache, on the rounds' median where there are rounds): "
               + (f"met at S = {', '.join(map(str, met))}" if met else "met nowhere")
               + (f"; **not met at S = {', '.join(map(str, missed))}**" if missed else "") + ".")
    return (f"A whole training run of MAML at Finn's cell (K = 10, meta-batch {int(first['meta_batch']) if 'meta_batch' in frame else 25}, "
            "second order): startup, compile, every iteration with its task sampling and logging, and the final evaluation; "
            f"measured over {int(first['iterations']):,} iterations per peer and projected (`results/bench/end_to_end.csv`, "
            "every peer in its own process pinned to the same core, one thread):\n\n"
            + markdown_table(pd.DataFrame(rows)) + "\n" + verdict + "\n")


# ----------------------------------------------------------------------------- docs/paper-reproduction.md

def paper_reading(results: Path) -> str:
    """The numbers of "Reading the numbers": where adaptation blows up, Reptile against pre-training
    (the reproduction verdicts are `paper_criterion`'s)."""
    where = f"results/{PAPER_FOLDER}"
    robust = read(results, PAPER_FOLDER, "robust.csv")
    pooled = pooled_test(results, PAPER_FOLDER)
    curves = read(results, PAPER_FOLDER, "curves.csv")
    metasgd5 = robust[(robust["algorithm"] == "metasgd") & (robust["eval_steps"] == 5)]["blowup"]
    anil = robust[(robust["algorithm"] == "anil") & (robust["k_shot"] == 10) & (robust["eval_k_shot"] == 5)]
    maml5 = robust[(robust["algorithm"] == "maml") & (robust["k_shot"] == 10) & (robust["eval_k_shot"] == 5)
                   & (robust["eval_steps"] > 1)]
    norms = curves[curves["k_shot"] == 10].groupby("algorithm")["grad_norm"].median()
    several = sorted({f"{a} (S = {int(s)})" for a, s in robust[robust["inner_steps"] > 1][["algorithm", "inner_steps"]]
                      .itertuples(index=False)})
    at_k10 = {"k_shot": 10, "eval_k_shot": 10, "eval_steps": 1}
    reptile1 = _one(pooled, f"{where}/summary.csv", algorithm="reptile", inner_steps=1, **at_k10)["mse"]
    pretrain = _one(pooled, f"{where}/summary.csv", algorithm="pretrain", lr_base=0.01, **at_k10)["mse"]
    chosen = _one(robust, f"{where}/robust.csv", algorithm="reptile", **at_k10)
    return "\n".join([
        "- *Adapting for more steps than trained can blow up* (`fig7_blowup_rate`). All methods here "
        + (f"but {_join(several)} " if several else "") + "were meta-trained with one inner step; the evaluation "
        "then takes 10 (the tables' †: extrapolation). Meta-SGD's learned per-parameter rates are "
        f"tuned for exactly one step: {fmt_percent(100 * metasgd5.min())}–{_rate(metasgd5.max())} of tasks are blown up "
        "at step 5 (over the trained and tested K). ANIL's learned features make the head's "
        f"K = {paper.EVAL_K} problem stiff: {_rate(_one(anil, 'robust.csv', eval_steps=5)['blowup'])} of tasks at "
        f"step 5, {_rate(_one(anil, 'robust.csv', eval_steps=10)['blowup'])} at step 10 (trained at K = 10). MAML is "
        f"at the edge: {_join([_rate(v) for v in maml5['blowup']])} of K = {paper.EVAL_K} tasks at step "
        f"{_join([str(int(s)) for s in maml5['eval_steps']])} (trained at K = 10). With one test set a mean is a "
        "lottery over whether one of them is in the set; with the blow-up rate beside it, it is not. The MAML "
        f"initialisation is sensitive by design: its initial gradient norm (`fig2`, median over training at "
        f"K = 10) sits {norms['maml'] / norms['pretrain']:.2g}x above pre-training's.",
        "- *MSL equals MAML at S = 1* (bitwise): with one inner step the multi-step loss has a single term. MSL "
        "differs from MAML only for S > 1 (see `make bench`).",
        "- *Reptile with S = 1 is pre-training*: one inner SGD step toward each task's support set, averaged, is "
        "(to first order) joint training; Reptile needs several inner steps to differ from it. Our numbers show "
        f"exactly that: at K = 10 after one step Reptile at S = 1 scores {reptile1:.4g} and pre-training (adapted at "
        f"the same LR_base 0.01) {pretrain:.4g} (means over seeds and tasks), while Reptile at S = "
        f"{int(chosen['inner_steps'])}, which validation chooses, scores {fmt_estimate(_estimate(chosen, 'mean'), 3)}.",
        "- *FOMAML* is close to MAML after 10 steps but worse and less stable across seeds after 1.",
    ]) + "\n"


# ----------------------------------------------------------------------------- docs/speed.md

SPEED_ROWS = [("second", "func-compiled"), ("second", "jax"), ("second", "generic-compiled"), ("second", "func"),
              ("second", "generic"), ("second", "l2l"), ("second", "higher"),
              ("first", "func-compiled"), ("first", "jax"), ("first", "generic-compiled"), ("first", "func"),
              ("first", "generic"), ("first", "l2l")]


def speed_side_by_side(results: Path) -> str:
    """docs/speed.md's CPU table: every compiled and eager peer in every cell (peers-compiled.csv),
    learn2learn and higher from the default suite's run (peers.csv); the fastest per column in bold."""
    compiled = read(results, "bench", "peers-compiled.csv").assign(source="compiled")
    default = read(results, "bench", "peers.csv")
    frame = pd.concat([compiled, default[default["peer"].isin(["l2l", "higher"])]], ignore_index=True)
    cells = [(s, b) for b in (25, 100) for s in (1, 5, 10)]
    rows = []
    for order, peer in SPEED_ROWS:
        part = frame[(frame["order"] == order) & (frame["peer"] == peer)]
        if part.empty:
            continue
        row = {"ms per meta-iteration": f"{PEER_LABELS[peer]}, {order} order"}
        for s, b in cells:
            found = part[(part["inner_steps"] == s) & (part["meta_batch"] == b)]["ms_median"]
            best = frame[(frame["order"] == order) & (frame["inner_steps"] == s) & (frame["meta_batch"] == b)][
                "ms_median"].min()
            value = found.iloc[0] if not found.empty else math.nan
            text = "–" if math.isnan(value) else _g(value)
            row[f"S={s}, T={b}"] = f"**{text}**" if value == best else text
        rows.append(row)
    eager = default[(default["peer"] == "func") & (default["order"] == "second")]
    eager = eager.set_index(["inner_steps", "meta_batch"])["ms_median"]
    return (markdown_table(pd.DataFrame(rows))
            + "\n(All but the learn2learn and higher rows from one run, `results/bench/peers-compiled.csv` "
            "(`SPEED_COMPILE=all SPEED_PEERS=func,func-compiled,generic,generic-compiled,jax`); learn2learn and higher "
            "from the default suite's run of the same code, `results/bench/peers.csv` (`make speed`: every peer, "
            "compiled ones at Finn's cells only), where eager `func` measured "
            f"{' / '.join(_g(eager[c]) for c in cells if c in eager.index)} ms second order.)\n")


#: block name -> renderer(results folder) -> Markdown (the text between the markers)
def classification_glance(results: Path) -> str:
    """Few-shot classification: each algorithm's chosen configuration per K, its test accuracy after
    1 and 5 steps (mean [95% bootstrap CI]), and what the numbers say about steps and chance."""
    robust = read(results, "classification", "robust.csv")
    robust = robust[robust["eval_k_shot"] == robust["k_shot"]]
    summary = read(results, "classification", "summary.csv")
    zero = summary[(summary["split"] == "test") & (summary["eval_steps"] == 0)
                   & (summary["iteration"] == summary["iterations"])]["accuracy"]
    shots = sorted(robust["k_shot"].unique())
    rows = []
    for algorithm, group in robust.groupby("algorithm", sort=False):
        row = {"algorithm": algorithm}
        for k in shots:
            for steps in (1, 5):
                stat = _one(group, "results/classification/robust.csv", k_shot=k, eval_steps=steps)
                row[f"K={k}: S, LR_base"] = f"{int(stat['inner_steps'])}, {_g(stat['lr_base'])}"
                row[f"K={k}, {_steps(steps)}"] = fmt_estimate(_estimate(stat, "mean"), 3)
        rows.append(row)
    frame = pd.DataFrame(rows)
    def span(k: int, steps: int) -> tuple[str, float]:
        means = robust[(robust["k_shot"] == k) & (robust["eval_steps"] == steps)]["mean"]
        return f"{_g(means.min(), 3)}–{_g(means.max(), 3)}", means.max() - means.min()

    lines = []
    for k in shots:
        (one, wide), (five, narrow) = span(k, 1), span(k, 5)
        lines.append(f"at K = {k} the algorithms span {one} after one step and {five} after five"
                     + (" (they differ in how fast they adapt more than in where they end)" if narrow < wide / 2 else ""))
    iterations, seeds, tasks = (int(robust[c].iloc[0]) for c in ("iterations", "n_seeds", "n_tasks"))
    chance = get_task(robust["task"].iloc[0]).problem.metric.chance
    return (f"`results/classification/` (`classification.toml`): 2-way Gaussian classes in 10 dimensions, the "
            f"10 → 64 → 2 ReLU network, cross-entropy, {iterations:,} iterations, {seeds} seeds × {tasks} test "
            f"tasks, K shots per class; each algorithm's configuration (S, LR_base) chosen on validation accuracy "
            f"after one step. Test accuracy, mean [95% bootstrap CI], higher is better; chance is {_g(chance)} (before "
            f"adaptation the cells score {_g(zero.min(), 3)}–{_g(zero.max(), 3)}):\n\n"
            + markdown_table(frame) + "\n" + "; ".join(lines)[:1].upper() + "; ".join(lines)[1:] + ".\n")


def reference_glance(results: Path) -> str:
    """docs/paper-reproduction.md: the 10-seed reference runs at Finn's K = 10, tested at K = 5 and 10 after
    one step: mean [two-way bootstrap CI] with the seed spread, and the seeds a +-5% claim needs."""
    robust = read(results, "reference", "robust.csv")
    robust = robust[robust["k_shot"] == 10]  # the transfer table; every K at its own K: `reference_own_k`
    variance = read(results, "reference", "variance.csv")
    variance = variance[variance["k_shot"] == 10]
    rows = []
    for (algorithm, steps_trained), group in robust.groupby(["algorithm", "inner_steps"], sort=False):
        row = {"algorithm": algorithm, "S": int(steps_trained),
               "LR_base": _g(_one(group, "results/reference/robust.csv", eval_k_shot=10, eval_steps=1)["lr_base"])}
        for eval_k in (5, 10):
            stat = _one(group, "results/reference/robust.csv", eval_k_shot=eval_k, eval_steps=1)
            parts = variance[(variance["algorithm"] == algorithm) & (variance["inner_steps"] == steps_trained)
                             & (variance["lr_base"] == stat["lr_base"]) & (variance["eval_k_shot"] == eval_k)
                             & (variance["eval_steps"] == 1)]
            row[f"K={eval_k}: test MSE@1"] = fmt_estimate(_estimate(stat, "mean"), 3)
            row[f"K={eval_k}: sd seed"] = _g(parts["var_seed"].iloc[0] ** 0.5) if len(parts) else "–"
            row[f"K={eval_k}: seeds for ±5%"] = (_g(parts["seeds_for_5pct"].iloc[0]) if len(parts) else "–")
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = robust.iloc[0]
    return (f"`results/reference/` (`reference.toml`): Finn's setting trained at K = 10, "
            f"{int(first['iterations']):,} iterations, {int(first['n_seeds'])} seeds on independent random streams "
            f"× {int(first['n_tasks']):,} test tasks, every algorithm at Finn's hyperparameters but the two validation "
            "chose: S where two were trained (Reptile) and pre-training's test-time LR_base; tested at K = 5 and K = 10 after one step: the mean [two-way "
            "bootstrap 95% CI], the standard deviation of a model's offset (`sd seed`, table (a4)) and the seeds "
            "whose mean over as many tasks would have a 95% half-width within 5% of the mean.\n\n"
            + markdown_table(frame))


def reference_own_k(results: Path) -> str:
    """docs/paper-reproduction.md: the 10-seed reference runs, every algorithm trained and tested at its own
    K (5, 10, 20; Finn's Table 2 setting): test MSE after 1 and 10 steps, mean [two-way bootstrap CI] (one
    interval method), at 10 steps with the median and the blow-up rate at that step; the configuration
    validation chose (S, and pre-training's test-time LR_base)."""
    robust = read(results, "reference", "robust.csv")
    own = robust[robust["k_shot"] == robust["eval_k_shot"]]
    rows = []
    for algorithm, group in own.groupby("algorithm", sort=True):
        row = {"algorithm": algorithm}
        for k in sorted(own["k_shot"].unique()):
            for steps in (1, 10):
                stat = _one(group, "results/reference/robust.csv", k_shot=k, eval_steps=steps)
                text = mark_extrapolated(fmt_estimate(_estimate(stat, "mean"), 3), stat, steps)
                if steps > 1:
                    text += f", med {_g(stat['median'])}, {_rate(stat['blowup'])}"
                row[f"K={k} @{steps}"] = text
            row[f"K={k}: S, LR_base"] = f"{int(stat['inner_steps'])}, {_g(stat['lr_base'])}"
        rows.append(row)
    first = own.iloc[0]
    return (f"`results/reference/`: {int(first['n_seeds'])} seeds × {int(first['n_tasks']):,} test tasks per cell, "
            f"{int(first['iterations']):,} iterations; test MSE after 1 and 10 steps at the trained K, mean [two-way "
            "bootstrap 95% CI], at 10 steps also the median and the share of tasks blown up at that step; "
            "`S, LR_base`: the configuration validation chose (pre-training's LR_base is its test-time step, "
            "tuned on validation; every other algorithm trains and adapts at Finn's 0.01). "
            + EXTRAPOLATION_NOTE + "\n\n" + markdown_table(pd.DataFrame(rows)))


def tuned_glance(results: Path) -> str:
    """docs/paper-reproduction.md: what the tuning at the reported budget chose per algorithm (results/tuned/,
    `benchmarks.tuning`): the configuration, whether its optimum is bracketed, the candidates and budget
    behind it, its validation and test MSE after one step, and the reference's at Finn's rates beside it."""
    table = read(results, "tuned", "tuning.csv")
    robust = read(results, "tuned", "robust.csv")
    reference = read(results, PAPER_FOLDER, "robust.csv")
    last = table["rung"].max()
    rows, budgets, tuned_means = [], set(), {}
    for _, chosen in table[table["chosen"].astype(bool) & (table["rung"] == last)].iterrows():
        group = table[table["algorithm"] == chosen["algorithm"]]
        added = group[(group["rung"] == 0) & (group["extension"] > 0)]  # bracketing: outside the equal budget
        planned = group.drop(added.index)
        budgets.add(int((planned["iterations"] * planned["seeds"]).sum()))
        at = {"k_shot": chosen["k_shot"], "eval_k_shot": chosen["k_shot"], "eval_steps": 1}
        stat = _one(robust, "results/tuned/robust.csv", algorithm=chosen["algorithm"], **at)
        finn = reference[(reference["algorithm"] == chosen["algorithm"]) & (reference["inner_steps"] == chosen["inner_steps"])
                         & (reference["k_shot"] == at["k_shot"]) & (reference["eval_k_shot"] == at["eval_k_shot"])
                         & (reference["eval_steps"] == 1)]
        edge = chosen["at_edge"] if isinstance(chosen["at_edge"], str) and chosen["at_edge"] else ""
        rows.append({
            "algorithm": chosen["algorithm"], "S": int(chosen["inner_steps"]), "LR_base": _g(chosen["lr_base"]),
            "LR_meta": _g(chosen["lr_meta"]), "bracketed": f"no: {edge.replace(';', ', ')}" if edge else "yes",
            "rung-0 candidates": f"{len(group[group['rung'] == 0])}"
                                 + (f" ({len(added)} added, {int((added['iterations'] * added['seeds']).sum()):,} it.)"
                                    if len(added) else ""),
            "val MSE@1": _g(chosen[next(c for c in table.columns if c.startswith("val_"))]),
            "test MSE@1": fmt_estimate(_estimate(stat, "mean"), 3),
            "reference test MSE@1": (fmt_estimate(_estimate(finn.iloc[0], "mean"), 3)
                                     + (f" (LR_base {_g(finn.iloc[0]['lr_base'])})" if finn.iloc[0]["lr_base"] != paper.SETUP["lr_base"] else "")
                                     if len(finn) == 1 else "–")})
        tuned_means[chosen["algorithm"]] = (stat["mean"], finn.iloc[0]["mean"] if len(finn) == 1 else float("nan"))
    first = robust.iloc[0]
    budget = (f"{budgets.pop():,} iterations of planned tuning per algorithm (the same for every one)" if len(budgets) == 1
              else f"planned tuning per algorithm, unequal: {'; '.join(f'{b:,}' for b in sorted(budgets))} iterations")
    return (f"`results/tuned/` (`benchmarks/configs/tuned.toml`, `python -m benchmarks tune`): successive halving on "
            f"validation MSE after one step at K = {int(first['k_shot'])}, the last rung at the reported "
            f"{int(first['iterations']):,} iterations; {budget}, plus the bracketing rounds' added candidates where a winner sat on the grid's edge. "
            f"Test MSE after one step: mean [two-way bootstrap 95% CI] over {int(first['n_seeds'])} seeds × "
            f"{int(first['n_tasks']):,} test tasks, and the reference's cell at Finn's rates (LR_base 0.01, LR_meta "
            f"0.001; {PAPER_FOLDER}, 10 seeds; pre-training at the test-time LR_base its validation chose) at the same S "
            "beside it.\n\n" + markdown_table(pd.DataFrame(rows)) + "\n" + _tuned_reading(tuned_means) + "\n")


def _tuned_reading(means: dict[str, tuple[float, float]]) -> str:
    """The tuned table in one sentence: the ranking tuned and at Finn's rates, and the change of each mean."""
    frame = pd.DataFrame(means, index=["tuned", "reference"]).T.dropna()
    order = {name: " < ".join(frame[name].sort_values(kind="stable").index) for name in frame.columns}
    change = 100 * (frame["tuned"] / frame["reference"] - 1)
    same = "the same" if order["tuned"] == order["reference"] else "a different"
    return (f"Ranking by mean test MSE@1, tuned: {order['tuned']}; at Finn's rates: {order['reference']} ({same} order). "
            f"Tuned minus reference: {change.min():+.0f}% to {change.max():+.0f}% of the reference's mean.")


#: the committed results folders whose cost docs/paper-reproduction.md states: name -> its subfolders
#: with a summary.csv (the ablations keep one folder per ablation; a tuning one per rung below the last)
COMPUTE_FOLDERS = {"reference": ("",), "ablations": tuple(ABLATIONS), "tuned": ("rungs/0", "rungs/1", ""),
                   "classification": ("",), "bench": ("",)}


def _cells(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of a summary.csv (it has one per evaluation row)."""
    return summary.drop_duplicates(subset=[c for c in CELL_COLUMNS if c in summary.columns])


def results_compute(results: Path) -> str:
    """What each committed results folder cost to train, from its summary.csv: its cells, its trainings
    (cells that share another's training, `shares_training_with`, are not trainings) and the time of
    their training steps (`sec_per_iter_member` x iterations + `compile_seconds`, per training: one
    worker's seconds, an ensemble's divided among its members), in core-hours of the machine its
    records name. Evaluations, startup and reports are not in it."""
    rows = []
    for folder, parts in COMPUTE_FOLDERS.items():
        cells = pd.concat([_cells(read(results, f"{folder}/{part}".rstrip("/"), "summary.csv")) for part in parts])
        trained = cells[cells["shares_training_with"].isna()]
        seconds = (trained["sec_per_iter_member"] * trained["iterations"] + trained["compile_seconds"].fillna(0)).sum()
        rows.append({"folder": f"results/{folder}/", "cells": len(cells), "trainings": len(trained),
                     "iterations (millions)": _g(trained["iterations"].sum() / 1e6),
                     "training steps (core-hours)": f"{seconds / 3600:.2f}"})
    return ("Training compute of each committed results folder (`benchmarks.readme.results_compute`, from its "
            "`summary.csv`): trainings are the cells that trained (pre-training's LR_base variants share one), "
            "the time is their training steps on one core each, evaluation and reports excluded.\n\n"
            + markdown_table(pd.DataFrame(rows)))


def ablation_table(results: Path) -> str:
    """docs/paper-reproduction.md: each fidelity ablation's one-step K = 5 test mean against the reference,
    paired by seed and task (results/ablations/ablations.csv, `benchmarks.ablation`)."""
    frame = read(results, "ablations", "ablations.csv")

    def ci(row, name: str, base: str | None = None) -> str:
        base = base or name
        if pd.isna(row[base]):
            return "–"
        return fmt_estimate(statistics.Estimate(row[base], row[f"{name}_low"], row[f"{name}_high"]), 3)

    table = pd.DataFrame({
        "ablation": frame["ablation"], "algorithm": frame["algorithm"], "backend": frame["backend"],
        "seeds": frame["n_seeds"].astype(int),
        "test MSE@1, K = 5": [ci(r, "mean") for _, r in frame.iterrows()],
        "reference": [ci(r, "baseline", "baseline_mean") for _, r in frame.iterrows()],
        "difference (paired)": [ci(r, "difference") for _, r in frame.iterrows()],
        "Finn et al.": frame["paper"].map(_g),
    })
    return ("`results/ablations/` against `results/reference/` (`python -m benchmarks.ablation`): the test MSE "
            "after one step at K = 5 of models trained at K = 10, mean [two-way bootstrap 95% CI] over seeds × "
            f"{int(frame['n_tasks'].iloc[0]):,} test tasks; the difference is the ablation minus the reference on the same seeds and tasks "
            "(negative: lower error than ours).\n\n" + markdown_table(table))


BLOCKS = {
    "classification-glance": classification_glance,
    "reference-glance": reference_glance,
    "reference-own-k": reference_own_k,
    "ablation-table": ablation_table,
    "results-compute": results_compute,
    "tuned-glance": tuned_glance,
    "paper-glance": paper_glance,
    "paper-table2": paper_table2,
    "bench-glance": bench_glance,
    "demos": demos,
    "cost": cost,
    "paper-criterion": paper_criterion,
    "paper-reading": paper_reading,
    "speed-side-by-side": speed_side_by_side,
    "end-to-end": end_to_end,
}


# ----------------------------------------------------------------------------- rewriting documents

def block_names(text: str, where: str = "document") -> list[str]:
    """The generated blocks of `text`, in order; an unknown name or an unclosed marker is an error
    naming `where`, the block and the valid names."""
    names = [m.group("name") for m in BLOCK.finditer(text)]
    opened = [m.group("name") for m in OPEN.finditer(text)]
    if opened != names:
        raise ConfigError(f"{where}: a `<!-- generated: NAME -->` marker without its `<!-- end generated -->` "
                          f"(opened {opened}, closed {names})")
    unknown = [n for n in names if n not in BLOCKS]
    if unknown:
        raise ConfigError(f"{where}: unknown generated block(s) {unknown}; valid: {', '.join(BLOCKS)}")
    return names


def rewrite(text: str, results: Path = RESULTS, where: str = "document") -> str:
    """`text` with every generated block's body rendered again from the CSVs under `results`."""
    block_names(text, where)
    return BLOCK.sub(lambda m: f"<!-- generated: {m.group('name')} -->\n{BLOCKS[m.group('name')](results).rstrip()}"
                               "\n<!-- end generated -->", text)


def stale(root: Path | None = None, results: Path | None = None) -> dict[str, str]:
    """Document path -> its text as generated now, for each document under `root` (default: this
    repository) whose blocks differ from what the CSVs under `results` (default: its results/) give."""
    root = ROOT if root is None else Path(root)
    results = root / "results" if results is None else results
    changed = {}
    for name in DOCUMENTS:
        path = Path(root) / name
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, results, name)
        if new != text:
            changed[name] = new
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    try:
        changed = stale(ROOT, RESULTS)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, text in changed.items():
        if args.check:
            print(f"stale: {name} (run `make readme`)")
        else:
            (ROOT / name).write_text(text, encoding="utf-8")
            print(f"wrote {name}")
    if not changed:
        print("every generated block is up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
