"""One schema for a cell's keys (`benchmarks.config.SCHEMA`): every consumer's list of cell keys is
derived from the `Cell` fields' metadata, so a new key cannot be dropped by one of them."""
from __future__ import annotations

import ast
import dataclasses
import json
import math
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from benchmarks import analysis, config, fingerprint, records, regress, sweep_reference, tables
from benchmarks.cli import main
from benchmarks.config import (ADDED_CELL_KEYS, SCHEMA, SWEEP_KEYS, Cell, ConfigError, Schema, cell_from_dict, cell_key,
                               ensemble_key, parse_sweep)
from benchmarks.records import load_records, read_record
from benchmarks.sweep import group_jobs

ROOT = Path(__file__).resolve().parents[1]

TINY = """
algorithm = "maml"
backend = "func"
iterations = 5
meta_batch = 5
seed = [0, 1]
eval_steps = 1
n_test_tasks = 10
n_validation_tasks = 10
log_every = 5
"""


def _table(tables_md: str, heading: str) -> list[dict]:
    block = tables_md.split(heading)[1].split("\n\n")[1].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in block[2:]]


# ----------------------------------------------------------------------------- defect 3: network is not a seed

def test_cells_that_differ_only_in_network_are_two_rows_of_table_a_not_pooled_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.report.render_figures", lambda analysis: ({}, {}))  # tables only: fast
    config_file = tmp_path / "sweep.toml"
    config_file.write_text(TINY)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config_file), "--out", str(out), "--threads", "1",
                 "--set", 'network=["relu-40-40", "relu-16-16"]']) == 0
    text = (out / "tables.md").read_text()
    rows = _table(text, "## (a)")
    assert sorted(r["network"] for r in rows) == ["relu-16-16", "relu-40-40"], rows
    assert all(r["seeds"] == "2" and r["cells ok"] == "2/2" for r in rows), rows  # each its own two seeds
    speed = _table(text, "## (b)")
    assert sorted(r["network"] for r in speed) == ["relu-16-16", "relu-40-40"], speed  # timed apart too


def test_an_ensemble_never_mixes_networks():
    cells = parse_sweep({"algorithm": "maml", "backend": "func", "seed": [0, 1], "lr_base": [0.01, 0.1],
                         "network": ["relu-40-40", "relu-16-16"]}).cells
    jobs = group_jobs(cells, parse_sweep({"algorithm": "maml", "backend": "func"}).settings)
    assert sorted(len(job) for job in jobs) == [4, 4]
    for job in jobs:
        assert len({c.network for c in job}) == 1
        assert len({ensemble_key(c) for c in job}) == 1
    assert set(SCHEMA.names) - set(SCHEMA.ensemble) == {"seed", "lr_base", "lr_meta"}


# ----------------------------------------------------------------------------- every consumer reads the schema

def test_every_list_of_cell_keys_is_the_schemas():
    names = [f.name for f in fields(Cell)]
    assert SCHEMA.names == names == SWEEP_KEYS
    assert analysis.CELL_COLUMNS == names
    assert analysis.CONFIG_COLUMNS == [n for n in names if n != "seed"] == SCHEMA.config
    assert analysis.GROUP_COLUMNS == SCHEMA.compared == ["task", "algorithm", "backend", "k_shot", "network"]
    assert sorted(analysis.SHOWN_COLUMNS) == sorted(SCHEMA.config)
    assert analysis.SPEED_COLUMNS == ["device"] + SCHEMA.timed and "network" in SCHEMA.timed
    assert regress.KEYS[:len(names)] == names and set(regress.KEYS[len(names):]).isdisjoint(names)
    assert set(regress.SETTING) == set(SCHEMA.ensemble) - {"algorithm", "backend"}
    assert records.ADDED_CELL_KEYS is config.ADDED_CELL_KEYS == SCHEMA.added == {"network": "relu-40-40"}
    assert fingerprint.check_poolable.__defaults__ == (tuple(SCHEMA.pooled),) == (("seed",),)
    doc = sweep_reference.render()
    for key in SCHEMA.keys:  # the reference's meaning is the key's own help text
        assert f"| `{key.name}` |" in doc and key.help in doc
    assert tables.config_columns is analysis.config_columns


def test_a_new_cell_key_reaches_every_derived_list():
    """A key added to `Cell` enters every list the schema gives, and the id spells it only away
    from its `added` value (committed ids keep their names)."""
    @dataclasses.dataclass(frozen=True)
    class Wider(Cell):
        depth: int = cell_key(2, help="hidden layers", check=lambda key, value: value, id="d", label="depth",
                          compared=9, timed=True, added=2)

    schema = Schema.of(Wider)
    assert schema.names == SCHEMA.names + ["depth"]
    for derived in (schema.config, schema.compared, schema.shown, schema.ensemble, schema.timed):
        assert "depth" in derived
    assert schema.added == {**SCHEMA.added, "depth": 2} and schema.labels["depth"] == "depth"
    cell = asdict(Cell("maml", "func"))
    assert schema.cell_id({**cell, "depth": 2}) == Cell("maml", "func").cell_id
    assert schema.cell_id({**cell, "depth": 3}) == Cell("maml", "func").cell_id + "-d3"


def test_a_cell_field_without_a_schema_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Bare(Cell):
        depth: int = 2

    with pytest.raises(TypeError, match="cell key 'depth' has no schema"):
        Schema.of(Bare)


def _literal_key_lists(path: Path, keys: set[str], at_least: int = 5):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            named = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in keys]
            if len(named) >= at_least:
                yield f"{path.relative_to(ROOT)}:{node.lineno}: {named}"


def test_no_module_keeps_its_own_list_of_cell_keys():
    """A literal naming five or more cell keys is a hand-kept list that can drift (as `network` did
    from the report's columns); only the schema in config.py declares them."""
    keys = set(SCHEMA.names)
    sources = [p for folder in ("benchmarks", "algorithms", "tasks", "scripts") for p in (ROOT / folder).rglob("*.py")
               if p.name != "config.py"]
    found = [hit for path in sources for hit in _literal_key_lists(path, keys)]
    assert not found, "derive these from benchmarks.config.SCHEMA:\n" + "\n".join(found)


def test_committed_cell_ids_are_unchanged():
    """Every committed record's file name is its cell id, recomputed from its validated cell."""
    from benchmarks.plugins import load_plugins

    paths = sorted(ROOT.glob("results/*/runs/*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text())
        load_plugins(record.get("settings", {}).get("plugins", []))  # demo-lslr's algorithm
        assert cell_from_dict(record["cell"]).cell_id == record["cell_id"] == path.stem, path


# ----------------------------------------------------------------------------- migration of older records

def test_a_record_written_before_network_existed_reads_as_finns_network(tmp_path):
    source = sorted((ROOT / "results" / "baseline" / "runs").glob("maml-func-*.json"))[0]
    runs = tmp_path / "runs"
    runs.mkdir()
    record = json.loads(source.read_text())
    del record["cell"]["network"]
    record.pop("artifacts", None)
    (runs / source.name).write_text(json.dumps(record))
    read = read_record(runs / source.name)
    assert read["cell"]["network"] == "relu-40-40" == ADDED_CELL_KEYS["network"]
    assert cell_from_dict(record["cell"]).cell_id == source.stem  # the migration default, then the same id
    frame = analysis.cell_frame(load_records(tmp_path))
    assert list(frame["network"]) == ["relu-40-40"]


# ----------------------------------------------------------------------------- cell_from_dict

GOOD = asdict(Cell("maml", "func", iterations=5))


def test_cell_from_dict_accepts_what_a_sweep_makes_in_its_one_spelling():
    for cell in parse_sweep({"algorithm": ["maml", "anil"], "backend": ["func", "l2l"], "seed": [0, 3],
                             "network": ["relu-40-40", "tanh-8"], "iterations": 5}).cells:
        assert cell_from_dict(asdict(cell)) == cell
    spelled = cell_from_dict({**GOOD, "network": "ReLU-40-40", "lr_meta": 1})
    assert spelled.network == "relu-40-40" and spelled.lr_meta == 1.0 and isinstance(spelled.lr_meta, float)
    assert cell_from_dict({**GOOD, "iterations": 2_000_000}, limits={"iterations": 3_000_000}).iterations == 2_000_000


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, r"unknown cell key\(s\) 'colour'"),
    ({"k_shot": None}, r"k_shot must be of type int, got None"),
    ({"seed": True}, r"seed must be of type int, got True \(bool\)"),
    ({"lr_base": "0.01"}, r"lr_base must be of type float, got '0.01' \(str\)"),
    ({"lr_base": math.nan}, r"lr_base must be a finite number > 0, got nan"),
    ({"lr_meta": -1.0}, r"lr_meta must be a finite number > 0, got -1.0"),
    ({"inner_steps": -1}, r"inner_steps \(S\) must be >= 0, got -1"),
    ({"meta_batch": 0}, r"meta_batch must be >= 1, got 0"),
    ({"seed": 10 ** 9}, r"seed must be in \[0, 1000000\)"),
    ({"iterations": 10 ** 7}, r"iterations = 10000000 is above the limit of 1,000,000"),
    ({"algorithm": "mamal"}, r"unknown algorithm 'mamal'.*; valid choices: .*maml"),
    ({"backend": "cuda"}, r"unknown backend 'cuda'.*; valid choices: "),
    ({"task": "cosine"}, r"unknown task 'cosine'.*; valid choices: .*sine"),
    ({"network": "gelu-40"}, r"unknown activation 'gelu'"),
    ({"backend": "jax", "algorithm": "reptile"}, r"backend = 'jax': algorithm 'reptile' has no backend 'jax'"),
    ({"backend": "jax", "network": "tanh-40-40"}, r"backend = 'jax': backend 'jax' of 'maml' cannot run network"),
])
def test_cell_from_dict_names_the_bad_key_and_value(change, message):
    with pytest.raises(ConfigError, match=message):
        cell_from_dict({**GOOD, **change})


def test_cell_from_dict_refuses_missing_keys_and_non_tables():
    without = {k: v for k, v in GOOD.items() if k not in ("k_shot", "seed")}
    with pytest.raises(ConfigError, match=r"missing cell key\(s\) 'k_shot', 'seed'"):
        cell_from_dict(without)  # a record's cell has every key: a default may have changed since
    for bad in ([], "maml", None, 3):
        with pytest.raises(ConfigError, match="a cell must be a table"):
            cell_from_dict(bad)
