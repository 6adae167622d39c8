"""The one reading of a record's stored cell and settings (`records.stored_cell`,
`records.stored_settings`), shared by the fingerprint and the amplitude table; the amplitude
table's record lookup (one index, not a search per row); and the report commands' one ending
(`atomic.report_writes`), shared by `benchmarks.ablation` and `benchmarks.speed.table`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import benchmarks.fingerprint as fingerprint_module
from benchmarks import ablation, task_parameters
from benchmarks.atomic import report_writes
from benchmarks.config import ADDED_SETTINGS, Cell, ConfigError, Settings
from benchmarks.fingerprint import NOT_RECORDED, fingerprint, record_fingerprint
from benchmarks.records import RecordError, stored_cell, stored_settings
from benchmarks.speed import table

ROOT = Path(__file__).resolve().parents[1]
CELL = {"algorithm": "maml", "backend": "func", "task": "sine", "k_shot": 5, "inner_steps": 1, "lr_base": 0.3,
        "lr_meta": 0.001, "meta_batch": 5, "iterations": 20, "seed": 1, "network": "relu-40-40"}


# --- stored_cell / stored_settings -----------------------------------------------------------------

def test_stored_cell_is_the_records_cell_less_unknown_keys():
    assert stored_cell({"cell": {**CELL, "from_the_future": 1}}) == Cell(**CELL)


def test_stored_cell_of_an_old_record_without_network_is_finns_network():
    old = {k: v for k, v in CELL.items() if k != "network"}
    assert stored_cell({"cell": old}).network == "relu-40-40"


def test_a_record_without_settings_reads_the_settings_of_before_each_key():
    """No settings at all (a record from before they were stored, or a planned one), or null:
    the defaults, with every later key at the value that reproduces the records before it."""
    expected = dataclasses.replace(Settings(), **ADDED_SETTINGS)
    assert stored_settings({"cell": CELL}) == expected
    assert stored_settings({"cell": CELL, "settings": None}) == expected
    assert stored_settings({"cell": CELL, "settings": {}}) == expected
    assert expected.seed_streams == "offset" != Settings().seed_streams  # not a new sweep's default


def test_stored_settings_keeps_known_keys_and_drops_unknown_ones():
    found = stored_settings({"settings": {"eval_k_shot": [5, 10], "seed_streams": "independent",
                                          "n_test_tasks": 60, "removed_long_ago": True}})
    assert found.eval_k_shot == (5, 10)  # JSON's list, the settings' tuple
    assert found.seed_streams == "independent" and found.n_test_tasks == 60
    assert found.init == ADDED_SETTINGS["init"]


def test_the_fingerprint_reads_a_record_through_them():
    """A record from before fingerprints gets one rebuilt from exactly these two readings; the
    fingerprint module keeps no private copy of them."""
    record = {"cell_id": "x", "cell": CELL, "settings": {"n_test_tasks": 60, "compile": False},
              "environment": {"torch": "2.0.0"}}
    assert record_fingerprint(record) == fingerprint(stored_cell(record), stored_settings(record),
                                                     torch_version="2.0.0", numerics_version=NOT_RECORDED)
    assert not hasattr(fingerprint_module, "_cell") and not hasattr(fingerprint_module, "_stored_settings")


def test_an_unreadable_cell_is_still_a_record_error_naming_it():
    with pytest.raises(RecordError, match="run record x: cannot read its cell and settings"):
        record_fingerprint({"cell_id": "x", "cell": {"algorithm": "maml"}})  # no backend


def test_a_committed_record_reads_alike_through_them():
    path = next((ROOT / "results" / "baseline" / "runs").glob("*.json"))
    record = json.loads(path.read_text())
    assert stored_cell(record).cell_id == record["cell_id"]
    assert fingerprint(stored_cell(record), stored_settings(record),
                       numerics_version=record["fingerprint"]["numerics_version"])["n_query"] \
        == record["fingerprint"]["n_query"]
    assert record_fingerprint(record) is record["fingerprint"]  # agrees with its own cell and settings


# --- amplitude_frame: one index of the records ----------------------------------------------------

class CountingList(list):
    passes = 0

    def __iter__(self):
        CountingList.passes += 1
        return super().__iter__()

    def __reversed__(self):
        CountingList.passes += 1
        return super().__reversed__()


def test_amplitude_frame_indexes_the_records_once(monkeypatch):
    """Each chosen configuration finds its record through one index built once, not one search
    over every record per (configuration, K)."""
    import pandas as pd

    records = CountingList({"cell_id": f"c{i}", "cell": CELL} for i in range(4))
    configs = [({"n": i}, 5) for i in (3, 1, 2)] + [({"n": 3}, 10)]
    found = []
    monkeypatch.setattr(task_parameters, "chosen_test_ks", lambda best, pooled: configs)
    monkeypatch.setattr(task_parameters, "matching",
                        lambda cells, config: pd.DataFrame({"cell_id": [f"c{config['n']}"]}))
    monkeypatch.setattr(task_parameters, "test_parameters",
                        lambda record, eval_k, memo=None: found.append((record["cell_id"], eval_k)))
    errors = SimpleNamespace(cells=None, errors=lambda config, split, k: (None, None, None))
    a = SimpleNamespace(task_errors=errors, metric=SimpleNamespace(scaled_blowups=True), best=pd.DataFrame({"x": [1]}),
                        pooled=None, records=records)
    CountingList.passes = 0
    assert task_parameters.amplitude_frame(a).empty
    assert found == [("c3", 5), ("c1", 5), ("c2", 5), ("c3", 10)]
    assert CountingList.passes == 1


def test_a_configuration_without_its_record_is_skipped(monkeypatch):
    import pandas as pd

    monkeypatch.setattr(task_parameters, "chosen_test_ks", lambda best, pooled: [({"n": 9}, 5)])
    monkeypatch.setattr(task_parameters, "matching", lambda cells, config: pd.DataFrame({"cell_id": ["c9"]}))
    errors = SimpleNamespace(cells=None, errors=lambda *args: pytest.fail("no record: nothing to read"))
    a = SimpleNamespace(task_errors=errors, metric=SimpleNamespace(scaled_blowups=True), best=pd.DataFrame({"x": [1]}),
                        pooled=None, records=[{"cell_id": "c1", "cell": CELL}])
    assert task_parameters.amplitude_frame(a).empty


# --- report_writes: the report commands' one ending -------------------------------------------------

def test_report_writes_prints_each_written_path(capsys, tmp_path):
    assert report_writes(lambda: [tmp_path / "a.csv", tmp_path / "a.md"], (ConfigError,)) == 0
    out, err = capsys.readouterr()
    assert out == f"wrote {tmp_path / 'a.csv'}\nwrote {tmp_path / 'a.md'}\n" and err == ""


@pytest.mark.parametrize("error", [ConfigError("bad value 'x'; valid: a, b"), RecordError("corrupt run record r.json")])
def test_report_writes_turns_bad_input_into_one_line_and_exit_2(capsys, error):
    def write():
        raise error

    assert report_writes(write, (ConfigError, RecordError)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {error}\n"


def test_report_writes_passes_an_earlier_steps_exit_status_on(capsys):
    """The ablations' runs failed (the CLI has said why): their status, and nothing said to be written."""
    assert report_writes(lambda: 3, (ConfigError,)) == 3
    assert capsys.readouterr() == ("", "")


def test_report_writes_lets_other_errors_through():
    def write():
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        report_writes(write, (ConfigError,))


@pytest.mark.parametrize("module, argv, caught", [
    (ablation, ["some/folder", "--baseline", "some/baseline"], (RecordError, ConfigError)),
    (table, ["speed.json", "out"], (table.Contended,)),
])
def test_both_report_commands_end_through_it(monkeypatch, tmp_path, module, argv, caught):
    if module is table:
        (tmp_path / "speed.json").write_text("{}")
        argv = [str(tmp_path / "speed.json"), str(tmp_path / "out")]
    seen = []

    def spy(write, errors):
        seen.append(errors)
        return 7

    monkeypatch.setattr(module, "report_writes", spy)
    assert module.main(argv) == 7
    assert seen == [caught]
