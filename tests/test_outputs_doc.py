"""docs/outputs.md documents every column of every CSV a results folder holds.

For each CSV in results/baseline, results/bench, results/reference, results/ablations and results/tuned, the columns listed in the
Markdown table(s) under the docs heading that names the file (a backticked name or glob, e.g.
`summary.csv`, `peers-*.csv`) must be exactly the CSV's header: a column added or removed
without the doc fails here. A column whose type is marked "(optional)" is one the code writes
only in some runs; it may be absent, but no CSV column may be undocumented.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "outputs.md"
FOLDERS = ("baseline", "bench", "reference", "ablations", "tuned")
TYPES = {"int", "float", "str", "bool"}
OPTIONAL = "(optional)"


def documented() -> dict[tuple[str, ...], dict[str, str]]:
    """{file names/globs of a heading: {column: type}} from the tables under each heading naming CSVs."""
    schemas: dict[tuple[str, ...], dict[str, str]] = {}
    current: tuple[str, ...] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            names = tuple(n for n in re.findall(r"`([^`]+)`", line) if n.endswith(".csv"))
            current = names or None
            if current is not None:
                assert current not in schemas, f"two headings name {current}"
                schemas[current] = {}
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or set(cells[0]) <= set("-: ") or cells[0] == "column":
            continue
        name = cells[0].strip("`")
        assert name not in schemas[current], f"{current}: column {name!r} documented twice"
        schemas[current][name] = cells[1]
    return schemas


SCHEMAS = documented()


def schema_for(filename: str) -> dict[str, str]:
    found = [cols for names, cols in SCHEMAS.items() if any(fnmatch.fnmatchcase(filename, n) for n in names)]
    assert found, f"{filename}: no heading in {DOC.relative_to(ROOT)} names it (document its columns)"
    assert len(found) == 1, f"{filename}: more than one heading in {DOC.name} names it"
    return found[0]


CSVS = sorted(p for folder in FOLDERS for p in (ROOT / "results" / folder).glob("*.csv"))


def test_doc_has_schemas():
    assert {"summary.csv", "curves.csv", "robust.csv", "paired.csv", "variance.csv", "paper_comparison.csv", "speed.csv",
            "peers.csv"} <= {n for names in SCHEMAS for n in names}
    for names, columns in SCHEMAS.items():
        assert columns, f"{names}: heading without a column table"
        for column, kind in columns.items():
            assert kind.replace(OPTIONAL, "").strip() in TYPES, f"{names} {column}: type {kind!r} not in {TYPES}"


@pytest.mark.parametrize("path", CSVS, ids=[str(p.relative_to(ROOT / "results")) for p in CSVS])
def test_csv_columns_documented(path: Path):
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except FileNotFoundError:  # a report being regenerated replaced it meanwhile
        pytest.skip(f"{path} vanished")
    columns = schema_for(path.name)
    required = {c for c, kind in columns.items() if OPTIONAL not in kind}
    undocumented = sorted(set(header) - set(columns))
    missing = sorted(required - set(header))
    assert not undocumented, f"{path}: columns not in {DOC.name}: {undocumented}"
    assert not missing, f"{path}: {DOC.name} documents columns the CSV lacks: {missing}"
    assert len(header) == len(set(header)), f"{path}: duplicate columns"
