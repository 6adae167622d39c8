"""The report's first tables (issue 22): the headline per algorithm and the best hyperparameters
per (algorithm, S) with their grid-edge flag (`benchmarks.headline`), and the speed tables' ratio
wording (`benchmarks.speed.table.fmt_time_ratio`)."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from test_render import SVG, check_html, check_latex
from test_report import make_record, stored, write_records

from benchmarks import report
from benchmarks.analysis import analyse
from benchmarks.headline import (EDGE, HEADLINE_MARK, headline_blocks, headline_configs, headline_table,
                                 hyperparameter_table)
from benchmarks.speed.table import fmt_time_ratio
from benchmarks.statistics import Estimate
from benchmarks.tables import fmt_estimate, fmt_rate, mark_extrapolated, speed_table
from tasks.problem import accuracy

# maml: l2l is better at K = 5, func at K = 10 (the headline takes the best backend per K);
# pretrain blows up on 2 of 50 test tasks from step 5 at K = 10
VALS = {("maml", "l2l", 5): 0.3, ("maml", "func", 5): 0.4, ("maml", "l2l", 10): 0.25, ("maml", "func", 10): 0.2,
        ("pretrain", "func", 5): 2.0, ("pretrain", "func", 10): 1.8}


def headline_records() -> list[dict]:
    return [make_record(a, b, seed, k_shot=k, val=v, test=v * 1.1, eval_ks=(5, 10),
                        blowups=(5, 2) if (a, k) == ("pretrain", 10) else None)
            for (a, b, k), v in VALS.items() for seed in (0, 1)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, monkeypatch_module):
    """A written report (figures stubbed: drawing them takes ~20 s, the page only embeds their SVG)."""
    first, *rest = report.FIGURES
    monkeypatch_module.setattr(report, "render_figures", lambda a: (
        {first: {fmt: SVG if fmt == "svg" else b"x" for fmt in report.OUTPUTS}}, {name: "stub" for name in rest}))
    out = write_records(tmp_path_factory.mktemp("headline"), headline_records())
    report.write_report(out)
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _md_table(text: str, heading: str) -> pd.DataFrame:
    """The Markdown table under `heading`, parsed back (cells as text)."""
    lines = text.split(heading, 1)[1].split("\n\n")[1].splitlines()
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(split[2:], columns=split[0])


def test_headline_has_one_row_per_algorithm_and_robust_csv_values(folder):
    text = (folder / "tables.md").read_text()
    table = _md_table(text, "## Headline: test MSE per algorithm (IQM [95% CI], lower is better)")
    columns = [f"K={k}, {s} step{'s' if s > 1 else ''}" for k in (5, 10) for s in (1, 5, 10)]
    assert list(table.columns) == ["algorithm"] + columns
    assert list(table["algorithm"]) == ["maml", "pretrain"]
    robust = pd.read_csv(folder / "robust.csv")
    chosen = {("maml", 5): "l2l", ("maml", 10): "func", ("pretrain", 5): "func", ("pretrain", 10): "func"}
    for (algorithm, k), backend in chosen.items():
        for s in (1, 5, 10):
            row = robust[(robust.algorithm == algorithm) & (robust.backend == backend) & (robust.k_shot == k)
                         & (robust.eval_k_shot == k) & (robust.eval_steps == s)]
            assert len(row) == 1
            row = row.iloc[0]
            cell = table.set_index("algorithm").loc[algorithm, f"K={k}, {s} step{'s' if s > 1 else ''}"]
            expected = fmt_estimate(Estimate(row.iqm, row.iqm_low, row.iqm_high), 3)
            if row.blowup > 0:
                expected += f" (blow-up {fmt_rate(Estimate(row.blowup), interval=False)})"
            expected = mark_extrapolated(expected, row, s)
            assert cell == expected, (algorithm, k, s)
            value, low, high = map(float, re.match(r"([\d.e+-]+) \[([\d.e+-]+), ([\d.e+-]+)\]", cell).groups())
            assert value == pytest.approx(row.iqm, rel=5e-3) and low <= value <= high
    pretrain = table.set_index("algorithm").loc["pretrain"]
    assert "blow-up 4%" in pretrain["K=10, 5 steps"] and "blow-up" not in pretrain["K=10, 1 step"]
    assert "blow-up" not in "".join(table.set_index("algorithm").loc["maml"])  # no blow-up: nothing said


def test_headline_tables_come_first_in_every_format(folder):
    text = (folder / "tables.md").read_text()
    assert text.index("## Headline") < text.index("## Best hyperparameters") < text.index("## (a) Best")
    latex = sorted(p.name for p in (folder / "latex").iterdir())
    assert latex[:2] == ["0_headline.tex", "0_hyperparameters.tex"]
    for name in latex[:2]:
        check_latex((folder / "latex" / name).read_text())
    headline = (folder / "latex" / "0_headline.tex").read_text()
    assert r"(blow-up 4\%)" in headline and "lower is better" in headline  # escaped; caption comment
    assert r"$\checkmark$" in (folder / "latex" / "0_hyperparameters.tex").read_text()
    page = (folder / "index.html").read_text()
    check_html(page, len(latex), sorted(p.stem for p in (folder / "figures").glob("*.svg")))
    ids = re.findall(r'<table class="data" id="([^"]+)"', page)
    assert ids[:2] == ["0_headline", "0_hyperparameters"]
    assert "The interquartile mean" not in text.split("## (a)")[0]  # long notes gathered at the end


# ----------------------------------------------------------------------------- grid edges

def edge_records() -> list[dict]:
    """maml at S = 1 is best at (0.03, 0.01): LR_meta on the high edge only; at S = 2 at (0.01,
    0.001): both on the low edge; fomaml sweeps one LR_meta (never flagged) and is best at the
    largest LR_base; anil's best LR_base 0.1 is inside the grid because 0.3 was swept (and diverged)."""
    records = []
    for s, best in ((1, (0.03, 0.01)), (2, (0.01, 0.001))):
        for lr_base in (0.01, 0.03, 0.1):
            for lr_meta in (0.001, 0.01):
                val = 0.2 if (lr_base, lr_meta) == best else 0.5 + lr_base + lr_meta
                records.append(make_record("maml", "func", 0, inner_steps=s, lr_base=lr_base, lr_meta=lr_meta,
                                           val=val, store=False))
    records += [make_record("fomaml", "func", 0, lr_base=lr, val=1.0 - lr, store=False) for lr in (0.01, 0.1)]
    records += [make_record("anil", "func", 0, lr_base=lr, val=1.0 - lr, store=False) for lr in (0.01, 0.1)]
    records.append(make_record("anil", "func", 0, lr_base=0.3, status="diverged", error="non-finite loss"))
    return records


def test_edge_flag_appears_exactly_when_the_choice_is_the_grid_min_or_max():
    frame, fixed = hyperparameter_table(analyse(edge_records()))
    frame = frame.set_index(["algorithm", "S"])
    assert frame.loc[("maml", 1), EDGE] == "LR_meta high"
    assert frame.loc[("maml", 1), ["LR_base", "LR_meta"]].tolist() == ["0.03", "0.01"]
    assert frame.loc[("maml", 2), EDGE] == "LR_base low, LR_meta low"
    assert frame.loc[("fomaml", 1), EDGE] == "LR_base high"  # one LR_meta swept: no LR_meta flag
    assert frame.loc[("anil", 1), EDGE] == ""  # 0.3 was swept (diverged), so 0.1 is inside
    assert frame.loc[("anil", 1), "configs"] == 3 and frame.loc[("maml", 1), "configs"] == 6
    assert fixed == {"task": "sine", "backend": "func", "K": "10", "network": "relu-40-40", "B": "25",
                     "iters": "100"}  # one value everywhere: stated once, not a column
    assert "B" not in frame.columns and "iters" not in frame.columns
    assert frame.loc[("maml", 1), "val MSE@1"].startswith("0.2 ±")
    assert frame.loc[("maml", 1), HEADLINE_MARK] == "✓" and frame.loc[("maml", 2), HEADLINE_MARK] == ""


def test_one_value_per_key_flags_nothing():
    frame, _ = hyperparameter_table(analyse([make_record("maml", "func", seed, store=False) for seed in (0, 1)]))
    assert frame[EDGE].tolist() == [""] and frame["configs"].tolist() == [1]


def test_no_per_task_errors_no_headline_but_hyperparameters():
    a = analyse(edge_records())
    assert headline_table(a).empty
    texts = [getattr(b, "text", "") for b in headline_blocks(a)]
    assert any(t.startswith("None: these records have no per-task errors") for t in texts)


def as_accuracy(record: dict) -> dict:
    """`record` as a classification record: its numbers read as accuracies (per-task store alike)."""
    record["metric"] = accuracy(5).declaration()
    for row in record.get("evaluations", []):
        row["accuracy"], row["accuracy_ci95"] = row.pop("mse"), row.pop("mse_ci95")
    return record


def test_another_metric_names_itself_and_its_direction():
    records = [as_accuracy(r) for r in headline_records()]
    a = analyse(records, stored(records))
    assert a.metric.name == "accuracy"
    assert headline_configs(a).set_index(["algorithm", "k_shot"]).loc[("maml", 10), "backend"] == "l2l"  # higher
    blocks = headline_blocks(a)
    titles = [b.text for b in blocks if hasattr(b, "level")]
    assert titles[0] == "Headline: test accuracy per algorithm (IQM [95% CI], higher is better)"
    assert "validation accuracy (higher is better)" in titles[1]
    tables = [b for b in blocks if hasattr(b, "frame")]
    everything = " ".join(titles + [" ".join(t.notes) for t in tables] +
                          [" ".join(map(str, t.frame.columns)) + " ".join(t.frame.astype(str).to_numpy().ravel())
                           for t in tables])
    assert "MSE" not in everything and "blow-up" not in everything


# ----------------------------------------------------------------------------- speed ratios in words

@pytest.mark.parametrize("ratio,text", [
    (0.5, "×2.0 faster"), (2.0, "×2.0 slower"), (1.0, "equal (×1.0)"), (1 / 1.3, "×1.3 faster"),
    (0.366, "×2.7 faster"),
    (1 / 27.4, "×27 faster"), (1 / 143, "×140 faster"), (1.04, "equal (×1.0)"), (1.18, "×1.2 slower"),
    (1 / 9.97, "×10 faster"), (math.nan, "–"), (math.inf, "–"), (0.0, "–"), (-1.0, "–"), (None, "–"),
])
def test_time_ratios_are_worded(ratio, text):
    assert fmt_time_ratio(ratio) == text


def test_report_speed_table_words_its_ratios():
    speed = pd.DataFrame([{"device": "cpu", "algorithm": a, "backend": b, "inner_steps": 1, "meta_batch": 25,
                           "network": "relu-40-40", "n_cells": 1, "ensemble_min": 1, "ensemble_max": 1,
                           "sec_per_iter": sec, "sec_per_iter_member": sec, "compile_seconds": 0.0,
                           "train_seconds": sec * 100, "ratio": r, "ratio_member": r}
                          for a, b, sec, r in (("maml", "l2l", 0.02, 1.0), ("maml", "func", 0.01, 0.5),
                                               ("maml", "torch", 0.04, 2.0), ("anil", "func", 0.01, math.nan))])
    table = speed_table(speed)
    ratios = [c for c in table.columns if "l2l MAML" in c]
    assert len(ratios) == 2
    assert table[ratios[0]].tolist() == ["equal (×1.0)", "×2.0 faster", "×2.0 slower", "–"]


def test_speed_md_words_its_ratios_and_speed_csv_keeps_numbers(tmp_path):
    from test_speed_table import _iterations_json

    from benchmarks.speed.table import main
    assert main([str(_iterations_json(tmp_path)), str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "speed.md").read_text()
    rows = {line.split(" | ")[0] + " " + line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith("| maml |")}
    assert "×20 faster" in rows["| maml func"]  # learn2learn MAML 20 ms, func 1 ms
    assert "×2.0 slower" in rows["| maml higher"] and "equal (×1.0)" in rows["| maml l2l"]
    end_to_end = text.split("## Finn's MAML end to end")[1]
    assert "×20 faster" in end_to_end  # 30 ms on l2l, 1.5 ms on func
    assert "faster" in text.split("(higher is faster)")[0] or "half its time" in text  # the convention in words
    csv = pd.read_csv(tmp_path / "out" / "speed.csv")
    assert pd.api.types.is_numeric_dtype(csv["ms_median"])


def test_two_tasks_get_a_task_column_and_a_missing_k_a_dash():
    records = [make_record("maml", "func", 0, k_shot=k, eval_ks=(k,)) for k in (5, 10)]
    other = make_record("pretrain", "func", 0, k_shot=10, eval_ks=(10,))
    other["cell"]["task"] = "sine-half"
    table = headline_table(analyse(records + [other], stored(records + [other])))
    assert list(table.columns[:2]) == ["task", "algorithm"]
    assert table[["task", "algorithm"]].values.tolist() == [["sine", "maml"], ["sine-half", "pretrain"]]
    assert table.set_index("algorithm").loc["pretrain", "K=5, 1 step"] == "–"
    assert table.set_index("algorithm").loc["maml", "K=5, 1 step"] != "–"
