"""A results folder is untrusted input (issue 20, part C): every command that reads one
(`report`, `re-evaluate`, `run`'s resume, `regress`) validates what it reads, and `re-evaluate`
is resumable.

- ids and artifact names are plain file names inside `runs/`, a record's id is the id its own
  validated cell spells, its artifacts are `<cell_id>.npz` (defect 4);
- the per-task store (`.npz`) is checked against its JSON record: structure, dtypes, shapes,
  task counts and its per-step means (defect 9);
- a record's cell and settings pass the sweep's checks and size limits; an interrupted
  `re-evaluate` says what finished, resumes, and a report of the partial folder says so (defect 10).

Bad input: exit 2, one line naming the file, no traceback, nothing written. In-process through
`benchmarks.cli.main`, on copies of two committed baseline records.
"""
from __future__ import annotations

import io
import json
import shutil
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import figures
from benchmarks import reevaluate as reevaluate_module
from benchmarks.cli import main
from benchmarks.signals import Interrupted

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baseline" / "runs"
ANIL = "anil-func-sine-K10-S1-lrb0.01-lrm0.001-B25-it400-seed0"
FOMAML = "fomaml-func-sine-K10-S1-lrb0.01-lrm0.001-B25-it400-seed0"
METASGD = "metasgd-func-sine-K10-S3-lrb0.02-lrm0.001-B25-it200-seed0"  # learned rates: r<i> are arrays
SMALL = ["--set", "n_test_tasks=20", "--set", "n_validation_tasks=20", "--set", "eval_steps=2"]
PRECIOUS = '{"precious": true}\n'


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    """No drawing (the tables are what these tests read; figures cost seconds); torch's threads restored."""
    monkeypatch.setattr(figures, "FIGURE_MAKERS", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def copy_folder(tmp_path: Path, ids=(ANIL, FOMAML), name: str = "src") -> Path:
    runs = tmp_path / name / "runs"
    runs.mkdir(parents=True)
    for cell_id in ids:
        for suffix in (".json", ".npz"):
            shutil.copy(BASELINE / f"{cell_id}{suffix}", runs)
    return tmp_path / name


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def command(name: str, folder: Path, tmp_path: Path) -> list[str]:
    """Each command that reads a results folder, reading `folder`."""
    if name == "report":
        return ["report", str(folder)]
    if name == "re-evaluate":
        return ["re-evaluate", str(folder), "--out", str(tmp_path / "dst"), *SMALL]
    if name == "regress":
        return ["regress", "--baseline", str(ROOT / "results" / "baseline"), "--candidate", str(folder)]
    config = tmp_path / "resume.toml"  # `run` resuming in the folder: one of its cells, nothing to train
    config.write_text('algorithm = "anil"\nbackend = "func"\niterations = 400\nn_validation_tasks = 200\n'
                      'log_every = 50\n')
    return ["run", "--config", str(config), "--out", str(folder), "--threads", "1"]


def refuses(argv: list[str], capsys, *names: str) -> str:
    """Exit 2, one `error:` line naming `names`, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)
    return err


def check_refused_everywhere(commands, folder, tmp_path, capsys, *names) -> None:
    argvs = {name: command(name, folder, tmp_path) for name in commands}
    before = snapshot(tmp_path)
    for name, argv in argvs.items():
        refuses(argv, capsys, *names)
        assert snapshot(tmp_path) == before, f"{name} wrote something"
        assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------- defect 4: names

ALL_COMMANDS = ("report", "re-evaluate", "run", "regress")


@pytest.mark.parametrize("bad_id", ["../../victim/settings", "a/b", ".hidden", "..", "x" * 300, "a\\b", 42,
                                    "", FOMAML, f"{ANIL} ", "a\x00b"])
def test_a_record_id_that_is_not_its_cells_plain_file_name_is_refused(tmp_path, capsys, bad_id):
    """Before: `re-evaluate` wrote DST/runs/../../victim/settings.json (exit 0)."""
    victim = tmp_path / "victim" / "settings.json"
    victim.parent.mkdir()
    victim.write_text(PRECIOUS)
    src = copy_folder(tmp_path)
    edit(src / "runs" / f"{ANIL}.json", lambda r: r.update(cell_id=bad_id))
    check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")
    assert victim.read_text() == PRECIOUS and sorted(victim.parent.iterdir()) == [victim]


@pytest.mark.parametrize("bad_name", ["../../outside.npz", "OUTSIDE", f"{FOMAML}.npz", f"./{ANIL}.npz",
                                      f"{ANIL}.json", 7, ["x"]])
def test_artifacts_that_are_not_the_records_own_npz_are_refused(tmp_path, capsys, bad_name):
    """Before: a record's `artifacts` could name (and so read) any file."""
    src = copy_folder(tmp_path)
    outside = tmp_path / "outside.npz"
    shutil.copy(BASELINE / f"{ANIL}.npz", outside)
    if bad_name == "OUTSIDE":
        bad_name = str(outside)
    edit(src / "runs" / f"{ANIL}.json", lambda r: r.update(artifacts=bad_name))
    check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")


def test_writing_a_record_under_an_unsafe_id_is_refused_too():
    from benchmarks.records import RecordError, record_path

    for bad in ("../x", "a/b", ".x", "x" * 300):
        with pytest.raises(RecordError):
            record_path(Path("out"), bad)
    assert record_path(Path("out"), ANIL) == Path("out") / "runs" / f"{ANIL}.json"


# ----------------------------------------------------------------------------- defect 9: the .npz

def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _save(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _damage(kind: str, path: Path) -> None:
    data = path.read_bytes()
    key = "test_K10"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an npz\n")
    elif kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(3))
        path.write_bytes(buffer.getvalue())
    elif kind == "flipped-byte":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        arrays = _arrays(path)
        if kind == "object-array":
            buffer = io.BytesIO()
            np.savez(buffer, **{**arrays, "p0": np.array([{"x": 1}], dtype=object)})
            path.write_bytes(buffer.getvalue())
            return
        if kind == "strings":
            arrays[f"errors_half_{key}"] = arrays[f"errors_half_{key}"].astype(str)
        elif kind == "scaled":  # a plausible store: every error twice the truth
            arrays[f"errors_half_{key}"] = arrays[f"errors_half_{key}"] * np.float16(2)
        elif kind == "one-task-changed":
            arrays[f"errors_half_{key}"][1, 0] *= np.float16(400)
        elif kind == "fewer-tasks":
            arrays[f"errors_half_{key}"] = arrays[f"errors_half_{key}"][:, :300]
        elif kind == "fewer-steps":
            arrays[f"errors_half_{key}"] = arrays[f"errors_half_{key}"][:5]
        elif kind == "missing-split":
            for part in ("half", "index", "exact"):
                del arrays[f"errors_{part}_validation_K10"]
            del arrays["zero_mse_validation_K10"]
        elif kind == "other-K":
            for part in ("half", "index", "exact"):
                arrays[f"errors_{part}_test_K5"] = arrays.pop(f"errors_{part}_{key}")
            arrays["zero_mse_test_K5"] = arrays.pop(f"zero_mse_{key}")
        elif kind == "index-out-of-range":
            arrays[f"errors_index_{key}"] = np.array([10 ** 9], dtype=np.int64)
            arrays[f"errors_exact_{key}"] = np.array([1.0], dtype=np.float32)
        elif kind == "negative-index":  # numpy would silently write the last task
            arrays[f"errors_index_{key}"] = np.array([-1], dtype=np.int64)
            arrays[f"errors_exact_{key}"] = np.array([1e9], dtype=np.float32)
        elif kind == "index-exact-mismatch":
            arrays[f"errors_index_{key}"] = np.array([0, 1], dtype=np.int64)
            arrays[f"errors_exact_{key}"] = np.array([1.0], dtype=np.float32)
        elif kind == "scalar-errors":
            arrays[f"errors_half_{key}"] = np.float16(1.0)
        elif kind == "negative-errors":
            arrays[f"errors_half_{key}"] = -arrays[f"errors_half_{key}"]
        elif kind == "huge-n-params":
            arrays["n_params"] = np.int64(10 ** 9)
        elif kind == "missing-param":
            del arrays["p3"]
        elif kind == "unknown-key":
            arrays["surprise"] = np.zeros(2)
        elif kind == "n-sets":
            arrays["n_sets_test"] = np.int64(3)
        elif kind == "complex-param":
            arrays["p0"] = arrays["p0"].astype(np.complex64)
        elif kind == "bad-split-name":
            for part in ("half", "index", "exact"):
                arrays[f"errors_{part}_test_Kten"] = arrays.pop(f"errors_{part}_{key}")
            arrays["zero_mse_test_Kten"] = arrays.pop(f"zero_mse_{key}")
        elif kind == "zero-mse-array":
            arrays[f"zero_mse_{key}"] = np.zeros(3)
        elif kind == "huge-header":  # a header claiming 8 TB: refused before anything is allocated
            _save(path, arrays)
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
            with zipfile.ZipFile(path, "a") as archive:
                archive.writestr("e0.npy", header.getvalue() + b"\0" * 64)
            return
        else:
            raise AssertionError(kind)
        _save(path, arrays)


NPZ_DAMAGE = ["truncated", "empty", "text", "npy", "flipped-byte", "object-array", "strings", "scaled",
              "one-task-changed", "fewer-tasks", "fewer-steps", "missing-split", "other-K", "index-out-of-range",
              "negative-index", "index-exact-mismatch", "scalar-errors", "negative-errors", "huge-n-params",
              "missing-param", "unknown-key", "n-sets", "complex-param", "bad-split-name", "zero-mse-array",
              "huge-header"]


@pytest.mark.parametrize("kind", NPZ_DAMAGE)
def test_a_damaged_store_is_refused_naming_it(tmp_path, capsys, kind):
    """Before: a damaged store silently changed medians, IQMs and blow-up rates (the means come
    from the JSON), or raised a traceback (exit 1) not naming the file."""
    src = copy_folder(tmp_path)
    _damage(kind, src / "runs" / f"{ANIL}.npz")
    check_refused_everywhere(("report", "re-evaluate"), src, tmp_path, capsys, f"{ANIL}.npz")


def test_a_store_whose_parameters_do_not_fit_the_network_is_refused_by_reevaluate(tmp_path, capsys):
    src = copy_folder(tmp_path, (METASGD,))
    path = src / "runs" / f"{METASGD}.npz"
    arrays = _arrays(path)
    arrays["p0"] = np.zeros((3, 1), np.float32)
    arrays["r2"] = np.float64(0.5)  # learned per-entry rates stored as one float
    _save(path, arrays)
    check_refused_everywhere(("re-evaluate",), src, tmp_path, capsys, f"{METASGD}.npz", "p0")


def test_every_committed_store_agrees_with_its_record():
    """The check admits what the suite writes (float16 rounding, exact float32 blow-ups, several sets)."""
    from benchmarks.artifacts import load_task_errors
    from benchmarks.records import load_records

    for name in ("baseline", "demo-tanh", "demo-lslr", "demo-sine_freq"):
        out = ROOT / "results" / name
        records = load_records(out)
        assert len(load_task_errors(out, records)) == sum(r["status"] == "ok" for r in records)


# ----------------------------------------------------------------------------- defect 10: cells, settings

CELL_DAMAGE = {
    "lr_base-string": lambda c: c.update(lr_base="abc"),
    "unknown-key": lambda c: c.update(evil=1),
    "missing-key": lambda c: c.pop("seed"),
    "unknown-algorithm-no-plugin": lambda c: c.update(algorithm="../x"),
    "k_shot-above-limit": lambda c: c.update(k_shot=10 ** 9),
    "bool-seed": lambda c: c.update(seed=True),
    "negative-iterations": lambda c: c.update(iterations=-1),
    "network": lambda c: c.update(network="relu-40-x"),
}


@pytest.mark.parametrize("damage", sorted(CELL_DAMAGE))
def test_a_record_with_a_bad_cell_is_refused_by_every_command(tmp_path, capsys, damage):
    """Before: `re-evaluate` crashed with a traceback (exit 1) on bad keys or types."""
    src = copy_folder(tmp_path)
    edit(src / "runs" / f"{ANIL}.json", lambda r: CELL_DAMAGE[damage](r["cell"]))
    check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")


@pytest.mark.parametrize("kind", ["fifo", "device", "deep", "folder"])
def test_a_record_file_that_cannot_be_read_as_json_is_refused_without_blocking(tmp_path, capsys, kind):
    src = copy_folder(tmp_path)
    path = src / "runs" / f"{ANIL}.json"
    path.unlink()
    if kind == "fifo":  # opening it would block for ever
        os.mkfifo(path)
    elif kind == "device":  # /dev/zero never ends
        path.symlink_to("/dev/zero")
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        path.mkdir()
    check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")


def test_a_record_that_is_not_a_table_is_refused(tmp_path, capsys):
    src = copy_folder(tmp_path)
    for text in ("[1, 2]", '"x"', '{"cell_id": "x", "cell": [], "status": "ok"}'):
        (src / "runs" / f"{ANIL}.json").write_text(text)
        check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")


def _set_everywhere(key, value):
    """A settings value changed in the settings and in the fingerprint (which must agree)."""
    def change(record):
        record["settings"][key] = value
        record["fingerprint"][key] = value
    return change


SETTINGS_DAMAGE = {
    "eval_steps-above-limit": _set_everywhere("eval_steps", 10 ** 6),
    "n_test_tasks-above-limit": _set_everywhere("n_test_tasks", 10 ** 7),
    "n_test_tasks-string": _set_everywhere("n_test_tasks", "600"),
    "eval_k_shot-strings": lambda r: r["settings"].update(eval_k_shot=["x"]),
    "unknown-key": lambda r: r["settings"].update(evil=1),
    "device": lambda r: r["settings"].update(device="tpu"),
    "not-a-table": lambda r: r.update(settings=[1]),
    "task_params": lambda r: r["settings"].update(task_params=[1]),
}


@pytest.mark.parametrize("damage", sorted(SETTINGS_DAMAGE))
def test_a_record_with_bad_settings_is_refused_by_every_command(tmp_path, capsys, damage):
    """Before: `re-evaluate` ran a record's eval_steps = 10**6 unbounded (the sweep limits unapplied)."""
    src = copy_folder(tmp_path)
    edit(src / "runs" / f"{ANIL}.json", SETTINGS_DAMAGE[damage])
    check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")


def test_reevaluate_refuses_task_parameters_the_task_does_not_take(tmp_path, capsys):
    src = copy_folder(tmp_path)
    edit(src / "runs" / f"{ANIL}.json", lambda r: r["settings"].update(task_params={"colour": 1}))
    check_refused_everywhere(("re-evaluate",), src, tmp_path, capsys, f"{ANIL}.json", "colour")


EVALUATION_DAMAGE = {
    "mse-string": lambda r: r["evaluations"][0].update(mse="x"),
    "split-number": lambda r: r["evaluations"][0].update(split=3),
    "row-not-a-table": lambda r: r["evaluations"].__setitem__(0, 5),
    "not-a-list": lambda r: r.update(evaluations={"a": 1}),
    "missing-mse": lambda r: r["evaluations"][0].pop("mse"),
}


@pytest.mark.parametrize("damage", sorted(EVALUATION_DAMAGE))
def test_a_record_with_bad_evaluation_rows_is_refused(tmp_path, capsys, damage):
    src = copy_folder(tmp_path)
    edit(src / "runs" / f"{ANIL}.json", EVALUATION_DAMAGE[damage])
    check_refused_everywhere(ALL_COMMANDS, src, tmp_path, capsys, f"{ANIL}.json")


def test_a_record_whose_mean_disagrees_with_its_store_is_refused(tmp_path, capsys):
    """The JSON side edited instead of the store: the same check."""
    src = copy_folder(tmp_path)

    def change(record):
        row = next(r for r in record["evaluations"] if r["split"] == "test" and r["eval_steps"] == 1)
        row["mse"] *= 0.5
    edit(src / "runs" / f"{ANIL}.json", change)
    check_refused_everywhere(("report", "re-evaluate"), src, tmp_path, capsys, f"{ANIL}.npz")


# ----------------------------------------------------------------------------- defect 10: resumable

def _interrupt_on_call(monkeypatch, number: int) -> list:
    """`reevaluate_record` raises SIGINT's Interrupted on its `number`-th call; returns the calls."""
    calls = []
    original = reevaluate_module.reevaluate_record

    def flaky(*args, **kwargs):
        calls.append(args[1]["cell_id"])
        if len(calls) == number:
            raise Interrupted(signal.SIGINT)
        return original(*args, **kwargs)
    monkeypatch.setattr(reevaluate_module, "reevaluate_record", flaky)
    return calls


def _no_report(monkeypatch) -> None:
    """`re-evaluate` without its closing report (seconds of analysis; `report` is tested apart)."""
    from benchmarks import report

    monkeypatch.setattr(report, "write_report", lambda out, *args: report.Report(Path(out) / "tables.md", [], {}))


def test_an_interrupted_reevaluation_says_what_finished_is_marked_partial_and_resumes(tmp_path, capsys, monkeypatch):
    """Before: 'nothing half-written is left' beside a partial folder that the rerun refused and the
    report presented as complete."""
    from benchmarks.records import PARTIAL_MARKER

    src, dst = copy_folder(tmp_path), tmp_path / "dst"
    argv = ["re-evaluate", str(src), "--out", str(dst), *SMALL]
    _interrupt_on_call(monkeypatch, 2)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "1 of 2 records re-evaluated" in err and "resume with:" in err and "re-evaluate" in err, err
    assert "nothing half-written" not in err
    assert [p.name for p in (dst / "runs").glob("*.json")] == [f"{ANIL}.json"]
    assert main(["report", str(dst)]) == 0
    assert "partial re-evaluation: 1 of 2 records" in (dst / "tables.md").read_text()
    first = (dst / "runs" / f"{ANIL}.json").read_bytes()

    _no_report(monkeypatch)
    calls = _interrupt_on_call(monkeypatch, 99)
    assert main(argv) == 0, capsys.readouterr().err
    assert calls == [FOMAML], "the finished record was re-evaluated again"
    assert (dst / "runs" / f"{ANIL}.json").read_bytes() == first
    assert not (dst / PARTIAL_MARKER).exists()
    calls.clear()
    assert main(argv) == 0 and calls == [], "a finished re-evaluation is done again"


def test_a_partial_reevaluation_resumed_with_other_settings_is_refused(tmp_path, capsys, monkeypatch):
    src, dst = copy_folder(tmp_path), tmp_path / "dst"
    _interrupt_on_call(monkeypatch, 2)
    assert main(["re-evaluate", str(src), "--out", str(dst), *SMALL]) == 130
    capsys.readouterr()
    before = snapshot(dst)
    _interrupt_on_call(monkeypatch, 99)
    refuses(["re-evaluate", str(src), "--out", str(dst), *SMALL, "--set", "n_test_sets=2"], capsys,
            f"{ANIL}.json", "n_test_sets")
    assert snapshot(dst) == before


def test_reevaluate_into_a_folder_of_other_records_is_refused(tmp_path, capsys):
    src, other = copy_folder(tmp_path), copy_folder(tmp_path, (ANIL,), name="other")
    before = snapshot(other)
    refuses(["re-evaluate", str(src), "--out", str(other), *SMALL], capsys, f"{ANIL}.json")
    assert snapshot(other) == before


def test_a_partial_marker_is_untrusted_input_too(tmp_path, capsys):
    from benchmarks.records import PARTIAL_MARKER

    src = copy_folder(tmp_path)
    for text in ("{", "[]", '{"records": "many"}', '{"records": -1}', '{"records": true}'):
        (src / PARTIAL_MARKER).write_text(text)
        check_refused_everywhere(("report",), src, tmp_path, capsys, PARTIAL_MARKER)


def test_a_sweep_run_with_a_raised_limit_resumes_and_reports(tmp_path, capsys):
    """Records are read within the limits in force: `run --limit` raises them for its own resume
    and report (before: the default limits refused the records this very command wrote)."""
    text = ('algorithm = "maml"\nbackend = "func"\niterations = 1\nmeta_batch = 2\neval_steps = 1\n'
            'n_test_tasks = 2\nlog_every = 1\n')
    config = tmp_path / "sweep.toml"
    config.write_text(text + "n_validation_tasks = 10001\n")
    argv = ["run", "--config", str(config), "--out", str(tmp_path / "out"), "--threads", "1",
            "--limit", "n_validation_tasks=10001"]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    config.write_text(text)  # the same cell under the default limits: its record is above them
    refuses(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--threads", "1"], capsys,
            ".json", "n_validation_tasks")


def test_every_command_reads_a_raised_limit_folder_with_the_same_option(tmp_path, capsys):
    """`report`, `re-evaluate` and `regress` take `--limit` like `run`: a folder made with a raised
    limit is refused without it (its records are above the default) and read with it."""
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\niterations = 1\nmeta_batch = 2\neval_steps = 1\n'
                      'n_test_tasks = 2\nlog_every = 1\nn_validation_tasks = 10001\n')
    out, limit = tmp_path / "out", ["--limit", "n_validation_tasks=10001"]
    assert main(["run", "--config", str(config), "--out", str(out), "--threads", "1", *limit]) == 0
    capsys.readouterr()
    refuses(["report", str(out)], capsys, ".json", "n_validation_tasks")
    assert main(["report", str(out), *limit]) == 0, capsys.readouterr().err
    again = tmp_path / "again"
    refuses(["re-evaluate", str(out), "--out", str(again)], capsys, ".json", "n_validation_tasks")
    assert not again.exists()
    assert main(["re-evaluate", str(out), "--out", str(again), *limit]) == 0, capsys.readouterr().err
    refuses(["regress", "--baseline", str(out), "--candidate", str(again)], capsys, ".json", "n_validation_tasks")
    assert main(["regress", "--baseline", str(out), "--candidate", str(again), *limit]) == 0, capsys.readouterr().out
