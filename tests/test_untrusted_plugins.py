"""Untrusted folders and plug-ins (issue 20, part A): what produced a number is part of its identity.

- `re-evaluate` imports no code a results folder names: without the plug-in its records need it
  refuses (exit 2, naming the plug-in and the record), it never re-evaluates them with another rule;
- a plug-in that registers (or replaces) what a cell names enters the cell's fingerprint: a resume
  without it refuses, and the report does not pool its seeds with the built-in's;
- every plug-in file given is loaded (same file names, names of imported modules), a plug-in that
  calls sys.exit is a failed plug-in, and registered names are safe file-name parts.

In-process through `benchmarks.cli.main`; the registries are restored after each test.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

import algorithms
import tasks
from benchmarks import plugins
from benchmarks.cli import main
from benchmarks.config import Cell, Settings
from benchmarks.reevaluate import settings_from_record

ROOT = Path(__file__).resolve().parents[1]
DEMO_LSLR = ROOT / "results" / "demo-lslr"
LSLR_SOURCE = ROOT / "examples" / "plugin_lslr" / "lslr.py"
TINY = """
algorithm = "maml"
backend = "func"
iterations = 5
meta_batch = 5
seed = 0
inner_steps = 1
eval_steps = 2
n_test_tasks = 5
n_validation_tasks = 5
log_every = 5
"""
FAKE_MAML = ("from algorithms import register_algorithm\nfrom algorithms.rules import FirstOrder\n"
             "register_algorithm('maml', FirstOrder(), replace=True)  # not MAML at all\n")

pytestmark = pytest.mark.usefixtures("one_thread", "builtin_registries", "no_figures")


@pytest.fixture
def no_figures(monkeypatch):
    """The reports' tables only: figures cost seconds and are not what these tests check."""
    from benchmarks import figures

    monkeypatch.setattr(figures, "FIGURE_MAKERS", {})


def _builtins_only() -> None:
    for registry in (algorithms.ALGORITHMS, algorithms.RULES):
        for name in [n for n in registry if n not in algorithms.BUILTIN]:
            del registry[name]
    for name in [n for n in tasks.TASKS if n not in tasks.BUILTIN]:
        del tasks.TASKS[name]


@pytest.fixture
def builtin_registries():
    """Only the suite's own algorithms and tasks during the test (earlier tests may have loaded
    the LSLR plug-in); everything as it was afterwards."""
    saved = (dict(algorithms.ALGORITHMS), dict(algorithms.RULES), dict(tasks.TASKS), set(plugins._loaded),
             set(sys.modules))
    _builtins_only()
    plugins._loaded.clear()
    yield
    algorithms.ALGORITHMS.clear(), algorithms.ALGORITHMS.update(saved[0])
    algorithms.RULES.clear(), algorithms.RULES.update(saved[1])
    tasks.TASKS.clear(), tasks.TASKS.update(saved[2])
    plugins._loaded.clear(), plugins._loaded.update(saved[3])
    for name in set(sys.modules) - saved[4]:
        if name.startswith(plugins.FILE_MODULE_PREFIX):
            del sys.modules[name]


def _restore_builtin_maml() -> None:
    """What a fresh process without the fake-MAML plug-in has."""
    from algorithms.rules import InnerRule

    table = algorithms.register_algorithm("maml", InnerRule(), learners={"jax": algorithms.je.JaxMAML}, replace=True)
    algorithms.SOURCES.record("maml", table, plugins.BUILTIN_SOURCE)
    plugins._loaded.clear()


def _cell(**changes) -> Cell:
    """A cell of the committed demonstration, changed as asked."""
    record = json.loads(next((DEMO_LSLR / "runs").glob("maml-*seed0.json")).read_text())
    return dataclasses.replace(Cell(**record["cell"]), **changes)


def _copy_demo(tmp_path: Path, pattern: str = "*") -> Path:
    copy = tmp_path / "demo-lslr"
    (copy / "runs").mkdir(parents=True)
    for path in (DEMO_LSLR / "runs").glob(pattern):
        shutil.copy(path, copy / "runs" / path.name)
    return copy


def _config(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- 1: re-evaluate


def test_reevaluate_without_the_plugin_refuses_naming_it_and_the_record(tmp_path, capsys):
    """Before: exit 0, LSLR's records re-evaluated as plain SGD (3.555 instead of 2.915) under `lslr`."""
    out = tmp_path / "again"
    assert main(["re-evaluate", str(_copy_demo(tmp_path)), "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert "examples/plugin_lslr/lslr.py" in message and "lslr-func-sine-K10" in message, message
    assert "--plugin" in message and "never imports" in message, message
    assert not out.exists()
    assert "lslr" not in algorithms.ALGORITHMS, "the folder's plug-in was imported"


def test_records_from_before_sources_accept_only_the_plugin_they_name(tmp_path):
    """The committed LSLR records name `examples/plugin_lslr/lslr.py` and no code hash: `lslr`
    registered from a file of that name passes, from another file it does not."""
    from benchmarks.plugins import PluginError
    from benchmarks.records import load_records
    from benchmarks.reevaluate import check_code

    records = load_records(DEMO_LSLR)
    other = tmp_path / "other.py"
    shutil.copy(LSLR_SOURCE, other)
    plugins.load_plugins([str(other)])
    with pytest.raises(PluginError, match=r"'lslr' \(code not recorded\), but here 'lslr' is registered by other.py"):
        check_code(records)
    _builtins_only()
    plugins.load_plugins([str(LSLR_SOURCE)])
    check_code(records)


@pytest.mark.slow  # evaluates 1,200 tasks, 10 steps (about 10 s on a loaded CI machine)
def test_reevaluate_with_the_plugin_is_bitwise_on_the_committed_records(tmp_path):
    """Records from before provenance was recorded: the plug-in they name (by file name) is accepted,
    and the new records name its code."""
    out = tmp_path / "again"
    src = _copy_demo(tmp_path, "lslr-*seed0.*")  # one record: seconds, not a minute
    assert main(["re-evaluate", str(src), "--out", str(out), "--plugin", str(LSLR_SOURCE)]) == 0
    for path in sorted((src / "runs").glob("*.json")):
        before, after = json.loads(path.read_text()), json.loads((out / "runs" / path.name).read_text())
        assert after["evaluations"] == before["evaluations"], path.name
        code = after["fingerprint"].get("code.algorithm")
        assert (code is None) == (before["cell"]["algorithm"] == "maml"), code
        assert code is None or code.startswith("lslr.py sha256:"), code


def test_reevaluate_refuses_other_code_registered_under_the_records_name(tmp_path, capsys):
    """A record of the built-in MAML re-evaluated while a plug-in has replaced `maml`, and a record
    of that plug-in re-evaluated with the built-in: both refuse."""
    fake = _write(tmp_path / "fake" / "maml.py", FAKE_MAML)
    builtin, faked = tmp_path / "builtin", tmp_path / "faked"
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(builtin)]) == 0
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(faked), "--plugin", str(fake)]) == 0
    assert main(["re-evaluate", str(builtin), "--out", str(tmp_path / "x")]) == 2  # `maml` is the fake here
    assert "builtin" in capsys.readouterr().err
    _restore_builtin_maml()
    assert main(["re-evaluate", str(faked), "--out", str(tmp_path / "y")]) == 2
    message = capsys.readouterr().err
    assert "maml.py sha256:" in message and "maml-func-sine" in message, message
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["re-evaluate", str(builtin), "--out", str(tmp_path / "z")]) == 0


# ----------------------------------------------------------------------------- 2: fingerprint


def test_a_plugin_replacing_a_builtin_is_not_resumed_or_pooled_with_it(tmp_path, capsys):
    """Before: the fake's seed 0 was reused and pooled with the real MAML's seed 1 in one row."""
    fake = _write(tmp_path / "fake" / "maml.py", FAKE_MAML)
    out = tmp_path / "out"
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(out), "--plugin", str(fake)]) == 0
    _restore_builtin_maml()
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(out), "--set", "seed=[0, 1]"]) == 2
    message = capsys.readouterr().err
    assert "code.algorithm" in message and "maml.py sha256:" in message and "'builtin'" in message, message
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(out), "--set", "seed=1"]) == 2
    assert "cannot pool" in capsys.readouterr().err  # a new seed beside the fake's: refused before training
    # the seeds side by side in one folder (e.g. copied together): the report refuses to pool them
    real = tmp_path / "real"
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(real), "--set", "seed=1"]) == 0
    for path in (real / "runs").glob("*seed1*"):
        shutil.copy(path, out / "runs" / path.name)
    assert main(["report", str(out)]) == 2
    assert "cannot pool" in capsys.readouterr().err


def test_the_fingerprint_names_only_the_code_of_what_the_cell_names(tmp_path):
    """Built-in cells: no code key (committed fingerprints unchanged), whatever else is loaded.
    A plug-in's cell: its file name and source hash, the same from any folder it is loaded from."""
    from benchmarks.config import ADDED_SETTINGS
    from benchmarks.fingerprint import fingerprint

    record = json.loads(next((DEMO_LSLR / "runs").glob("maml-*seed0.json")).read_text())
    maml = _cell()
    lslr = dataclasses.replace(maml, algorithm="lslr")
    before = fingerprint(maml, Settings())
    assert not [key for key in before if key.startswith("code.")]
    # the committed record of a built-in cell has the keys a fresh fingerprint has, but for settings
    # added since (read with the value of before: `config.ADDED_SETTINGS`)
    fresh = {key for key in fingerprint(maml, settings_from_record(record))
             if key in record["fingerprint"] or key not in ADDED_SETTINGS}
    assert sorted(fresh) == sorted(record["fingerprint"])
    plugins.load_plugins([str(LSLR_SOURCE)])
    assert fingerprint(maml, Settings()) == before, "an unrelated plug-in changed a built-in cell's fingerprint"
    code = fingerprint(lslr, Settings())["code.algorithm"]
    assert code.startswith("lslr.py sha256:") and "code.task" not in fingerprint(lslr, Settings())
    _builtins_only()  # the same file copied elsewhere is the same code
    plugins._loaded.clear()
    shutil.copy(LSLR_SOURCE, tmp_path / "lslr.py")
    plugins.load_plugins([str(tmp_path / "lslr.py")])
    assert fingerprint(lslr, Settings())["code.algorithm"] == code


def test_a_task_plugin_enters_the_fingerprint_of_its_cells_only(tmp_path):
    from benchmarks.fingerprint import differences, fingerprint

    _write(tmp_path / "p" / "sine2.py", "from tasks import SineFamily, register_task\n"
                                         "register_task('sine2', SineFamily)\n")
    plugins.load_plugins([str(tmp_path / "p" / "sine2.py")])
    on_plugin = fingerprint(_cell(task="sine2"), Settings())
    assert on_plugin["code.task"].startswith("sine2.py sha256:")
    assert "code.task" not in fingerprint(_cell(), Settings())
    # a record that predates provenance: unknown code, never taken for the plug-in's
    old = {k: v for k, v in on_plugin.items() if k != "code.task"}
    assert differences(old, on_plugin) == [f"code.task: (not recorded) -> {on_plugin['code.task']!r}"]


def test_regress_compares_an_edited_plugin_against_its_baseline(tmp_path, capsys):
    """Another version of the code is what a regression check is for (like the numerics version):
    the code keys differ between the sides without making them incomparable."""
    plugin = tmp_path / "p" / "lslr.py"
    plugin.parent.mkdir()
    shutil.copy(LSLR_SOURCE, plugin)
    config = _config(tmp_path, TINY.replace('"maml"', '"lslr"'))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "base"), "--plugin", str(plugin)]) == 0
    plugin.write_text(plugin.read_text() + "# edited\n")
    _builtins_only()
    plugins._loaded.clear()
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "cand"), "--plugin", str(plugin)]) == 0
    codes = {json.loads(next((tmp_path / side / "runs").glob("*.json")).read_text())["fingerprint"]["code.algorithm"]
             for side in ("base", "cand")}
    assert len(codes) == 2, codes
    assert main(["regress", "--baseline", str(tmp_path / "base"), "--candidate", str(tmp_path / "cand")]) == 0
    assert "bitwise equal" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 12: loading


def test_two_plugin_files_with_one_file_name_are_both_loaded(tmp_path):
    for folder in ("a", "b"):
        _write(tmp_path / folder / "algo.py", "from algorithms import register_algorithm\n"
                                               "from algorithms.rules import InnerRule\n"
                                               f"register_algorithm('algo-{folder}', InnerRule())\n")
    plugins.load_plugins([str(tmp_path / "a" / "algo.py"), str(tmp_path / "b" / "algo.py")])
    assert {"algo-a", "algo-b"} <= set(algorithms.ALGORITHMS)


@pytest.mark.parametrize("file_name", ["tasks.py", "json.py", "benchmarks.py"])
def test_a_plugin_file_named_like_an_imported_module_is_loaded(tmp_path, file_name):
    plugin = _write(tmp_path / file_name, "from tasks import SineFamily, register_task\n"
                                          "register_task('shadowed', SineFamily)\n")
    plugins.load_plugins([str(plugin)])
    assert "shadowed" in tasks.TASKS
    assert sys.modules[file_name[:-3]].__name__ == file_name[:-3], "the plug-in replaced an imported module"


def test_the_same_file_named_twice_is_loaded_once(tmp_path):
    plugin = _write(tmp_path / "once.py", "from tasks import SineFamily, register_task\n"
                                          "register_task('once', SineFamily)\n")
    plugins.load_plugins([str(plugin), str(tmp_path / "." / "once.py")])  # a second import would raise


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "raise SystemExit('bye')\n"])
def test_a_plugin_that_exits_is_a_failed_plugin(tmp_path, capsys, body):
    """Before: `run` exited 0 having done nothing."""
    plugin = _write(tmp_path / "quits.py", body)
    out = tmp_path / "out"
    assert main(["run", "--config", str(_config(tmp_path)), "--out", str(out), "--plugin", str(plugin)]) == 2
    message = capsys.readouterr().err
    assert "quits.py" in message and "SystemExit" in message, message
    assert not out.exists()


@pytest.mark.parametrize("name", ["sine/v2", "..", "a..b", "../x", "Sine", "", "-x", "x" * 65, "a b", "é"])
def test_unsafe_names_are_refused_by_both_registries(name):
    from algorithms.rules import InnerRule

    with pytest.raises(ValueError, match="name must be"):
        tasks.register_task(name, tasks.SineFamily)
    with pytest.raises(ValueError, match="name must be"):
        algorithms.register_algorithm(name, InnerRule())
    assert name not in tasks.TASKS and name not in algorithms.ALGORITHMS


def test_one_name_pattern_for_both_registries():
    assert plugins.NAME.fullmatch("sine-freq") and plugins.NAME.fullmatch("x" * 64)
    assert tasks.NAME is plugins.NAME and algorithms.NAME is plugins.NAME


def test_a_plugin_registering_an_unsafe_task_name_fails_naming_the_plugin(tmp_path, capsys):
    """Before: `sine/v2` trained, wrote into a subfolder and failed with 'no run records' ever after."""
    plugin = _write(tmp_path / "v2.py", "from tasks import SineFamily, register_task\n"
                                        "register_task('sine/v2', SineFamily)\n")
    out = tmp_path / "out"
    config = _config(tmp_path, TINY + 'task = "sine/v2"\n')
    assert main(["run", "--config", str(config), "--out", str(out), "--plugin", str(plugin)]) == 2
    message = capsys.readouterr().err
    assert "v2.py" in message and "'sine/v2'" in message, message
    assert not out.exists()


def test_a_plugin_rule_keeps_its_threads_in_the_fingerprint():
    """Thread invariance is tested for the suite's own rules and MLPs only: LSLR's numbers moved at
    2 threads on the engines that are invariant for MAML, so its resume at other threads refuses."""
    from benchmarks.fingerprint import fingerprint

    plugins.load_plugins([str(LSLR_SOURCE)])
    maml = dataclasses.replace(_cell(), backend="generic")
    assert "threads" not in fingerprint(maml, Settings())
    assert "threads" in fingerprint(dataclasses.replace(maml, algorithm="lslr"), Settings())
