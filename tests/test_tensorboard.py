"""Live training curves for TensorBoard (`tensorboard = true`, an optional extra, off by default):
event files under OUT/tensorboard/<cell_id>/ that say what the record says, never a number or a
fingerprint changed, no import of tensorboard when off, and a one-line exit 2 when the package
is missing."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks.cli import main
from benchmarks.config import TENSORBOARD_FOLDER, ConfigError, load_sweep
from benchmarks.sweep import pending_cells, run_sweep

#: two seeds of one `func` configuration: one ensemble job of two members, each its own writer
SWEEP = {"algorithm": "maml", "backend": "func", "k_shot": 3, "meta_batch": 2, "iterations": 10, "seed": [0, 1],
         "n_test_tasks": 4, "n_validation_tasks": 4, "log_every": 5, "eval_every": 5, "eval_steps": 2,
         "seed_streams": "independent"}


def _run(out, **settings) -> list[dict]:
    sweep = load_sweep({**SWEEP, **settings})
    return run_sweep(sweep, out, progress=False)


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _numbers(record: dict) -> str:
    return json.dumps([record["curve"], record["evaluations"]])  # NaN (set_sd of one set) reads as equal


def test_event_files_hold_the_records_curves_and_evaluations(tmp_path):
    pytest.importorskip("tensorboard")
    records = _run(tmp_path, tensorboard=True)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert sorted(p.name for p in (tmp_path / TENSORBOARD_FOLDER).iterdir()) == sorted(r["cell_id"] for r in records)
    for record in records:
        scalars = _scalars(tmp_path / TENSORBOARD_FOLDER / record["cell_id"])
        f32 = lambda v: float(np.float32(v))  # noqa: E731 (event files hold float32)
        assert scalars["train/loss"] == [(p["iteration"], f32(p["loss"])) for p in record["curve"]]
        assert scalars["train/grad_norm"] == [(p["iteration"], f32(p["grad_norm"])) for p in record["curve"]]
        for split in ("test", "validation"):
            for steps in (1, 2):
                rows = [e for e in record["evaluations"] if e["split"] == split and e["eval_steps"] == steps]
                assert scalars[f"{split}/mse@{steps}"] == [(e["iteration"], f32(e["mse"])) for e in rows]
                assert [step for step, _ in scalars[f"{split}/mse@{steps}"]] == [5, 10]
        assert not any("@0" in tag for tag in scalars)  # step 1 and the last step only


def test_the_setting_changes_no_number_and_no_fingerprint_and_resumes_either_way(tmp_path):
    pytest.importorskip("tensorboard")
    on = {r["cell_id"]: r for r in _run(tmp_path / "on", tensorboard=True)}
    off = {r["cell_id"]: r for r in _run(tmp_path / "off")}
    assert on.keys() == off.keys()
    for cell_id in on:
        assert on[cell_id]["fingerprint"] == off[cell_id]["fingerprint"]
        assert _numbers(on[cell_id]) == _numbers(off[cell_id])
        assert on[cell_id]["settings"]["tensorboard"] is True and off[cell_id]["settings"]["tensorboard"] is False
    # a folder made with it on resumes with it off, and the other way round: nothing left to train
    assert pending_cells(load_sweep(SWEEP), tmp_path / "on")[0] == []
    assert pending_cells(load_sweep({**SWEEP, "tensorboard": True}), tmp_path / "off")[0] == []


def test_off_writes_no_folder_and_never_imports_tensorboard(tmp_path, monkeypatch):
    for name in ("tensorboard", "torch.utils.tensorboard"):  # any import of them would now fail the job
        monkeypatch.setitem(sys.modules, name, None)
    records = _run(tmp_path)
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert not (tmp_path / TENSORBOARD_FOLDER).exists()


def test_a_retrained_cell_replaces_its_old_event_files(tmp_path):
    """A cell is retrained only when it has no finished record: the events of that earlier attempt
    are not this record's, so they go (TensorBoard would show both runs as one)."""
    pytest.importorskip("tensorboard")
    first = _run(tmp_path, tensorboard=True, seed=0)[0]
    folder = tmp_path / TENSORBOARD_FOLDER / first["cell_id"]
    stale = folder / "events.out.tfevents.1.stale"
    stale.write_bytes((next(folder.glob("events.out.tfevents.*"))).read_bytes())
    (tmp_path / "runs" / f"{first['cell_id']}.json").unlink()
    kept = folder / "notes.txt"
    kept.write_text("mine")
    _run(tmp_path, tensorboard=True, seed=0)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1 and not stale.exists() and kept.exists()


@pytest.mark.parametrize("value", ["runs/tb", 1, "true"])
def test_the_setting_is_a_boolean(value):
    with pytest.raises(ConfigError, match="tensorboard must be true or false"):
        load_sweep({**SWEEP, "tensorboard": value})


def test_missing_package_is_one_line_exit_2_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\niterations = 2\ntensorboard = true\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tensorboard = true needs the tensorboard package: pip install 'metabench[tensorboard]'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    load_sweep({**SWEEP, "tensorboard": False})  # off: the package is not asked for


def test_records_with_the_setting_read_back_without_the_package(tmp_path, monkeypatch):
    """A folder made with it on is data: its report and resume do not need tensorboard."""
    from benchmarks.records import load_records, record_settings

    pytest.importorskip("tensorboard")
    _run(tmp_path, tensorboard=True, seed=0)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    (record,) = load_records(tmp_path)
    assert record_settings(record["settings"]).tensorboard is True


def test_a_link_where_the_event_files_go_is_refused(tmp_path, capsys):
    """OUT/tensorboard a symbolic link would write outside OUT: refused like runs/ and figures/."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    out.mkdir()
    (out / TENSORBOARD_FOLDER).symlink_to(tmp_path)
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\niterations = 2\ntensorboard = true\n')
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    assert TENSORBOARD_FOLDER in capsys.readouterr().err
