"""The compute table (`readme.results_compute`): what each committed results folder cost to train.

Checked against the records themselves (an independent path: JSON, not summary.csv), and on a
folder where cells share a training (they are cells, not trainings, and cost nothing of their own).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import readme
from benchmarks.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| results/")]
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in (line.split("|") for line in lines)}


def _from_records(folder: Path) -> tuple[int, int, float]:
    cells, trainings, seconds = 0, 0, 0.0
    for path in folder.glob("**/runs/*.json"):
        record = json.loads(path.read_text())
        cells += 1
        if not record.get("shares_training_with"):
            trainings += 1
            seconds += record["sec_per_iter_member"] * record["cell"]["iterations"] + (record.get("compile_seconds") or 0)
    return cells, trainings, seconds


def test_the_table_is_what_the_records_say():
    rows = _rows(readme.results_compute(ROOT / "results"))
    assert list(rows) == [f"results/{name}/" for name in readme.COMPUTE_FOLDERS]
    for name in readme.COMPUTE_FOLDERS:
        cells, trainings, seconds = _from_records(ROOT / "results" / name)
        shown = rows[f"results/{name}/"]
        assert (int(shown[0]), int(shown[1])) == (cells, trainings), name
        assert float(shown[3]) == pytest.approx(seconds / 3600, abs=0.005), name


def test_cells_sharing_a_training_are_not_trainings(tmp_path):
    results = tmp_path / "results"
    for name, parts in readme.COMPUTE_FOLDERS.items():
        for part in parts:
            (results / name / part).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "results" / name / part / "summary.csv", results / name / part / "summary.csv")
    path = results / "bench" / "summary.csv"
    frame = pd.read_csv(path)
    before = _rows(readme.results_compute(results))["results/bench/"]
    keys = ["algorithm", "backend", "inner_steps", "lr_base", "lr_meta", "seed"]
    cell = frame.drop_duplicates(subset=keys).iloc[1]
    same = (frame[keys] == cell[keys]).all(axis=1)
    frame["shares_training_with"] = frame["shares_training_with"].astype(object)
    frame.loc[same, "shares_training_with"] = "another-cell"
    frame.to_csv(path, index=False)
    readme._csv.cache_clear()  # the renderer reads each CSV once
    after = _rows(readme.results_compute(results))["results/bench/"]
    assert after[0] == before[0] and int(after[1]) == int(before[1]) - 1
    own = (cell["sec_per_iter_member"] * cell["iterations"] + cell["compile_seconds"]) / 3600
    assert float(after[3]) == pytest.approx(float(before[3]) - own, abs=0.01)


def test_a_missing_summary_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="summary.csv"):
        readme.results_compute(tmp_path)
