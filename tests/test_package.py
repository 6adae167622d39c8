"""The package as researchers install and read it (issue 25): pyproject, the `metabench` Python
API and its documented example, the command's help and messages, the licence and citation files.

`make install-check` (scripts/check_install.sh, run by CI) installs the package into fresh virtual
environments and runs the installed `metabench` command from another folder; these tests check
what can be checked in-process.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

TINY = {"algorithm": ["maml", "pretrain"], "backend": "func", "iterations": 20, "meta_batch": 5, "seed": 0,
        "eval_steps": 2, "n_test_tasks": 20, "n_validation_tasks": 20, "log_every": 10}


@pytest.fixture
def no_figures(monkeypatch):
    """Reports without drawing (seconds per report on these machines): the figures are
    test_report.py's business; here only where the report goes and what the API reads."""
    monkeypatch.setattr("benchmarks.report.render_figures",
                        lambda analysis: ({}, {"all": "not drawn in this test"}))


# ----------------------------------------------------------------------------- pyproject

def test_pyproject_declares_a_build_system_packages_data_and_the_command():
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    tool = PYPROJECT["tool"]["setuptools"]
    assert set(tool["packages"]) == {"algorithms", "benchmarks", "benchmarks.speed", "tasks", "metabench"}
    assert "benchmarks/configs/*.toml" in {f"benchmarks/{p}" for p in tool["package-data"]["benchmarks"]}
    assert PYPROJECT["project"]["scripts"] == {"metabench": "benchmarks.__main__:console"}
    assert PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]  # kept


def test_every_runtime_import_is_a_declared_dependency_with_a_compatible_range():
    """Ranges, not pins (those stay in requirements.txt); each pinned version lies inside its range."""
    from packaging.requirements import Requirement

    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    declared = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        declared += [Requirement(text) for text in extra if not text.startswith("metabench")]
    names = {r.name for r in declared}
    assert {"torch", "numpy", "scipy", "pandas", "matplotlib", "tqdm"} <= {
        Requirement(t).name for t in PYPROJECT["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        for path in (ROOT / package.replace(".", "/")).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    local = {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}
    third_party = imported - set(sys.stdlib_module_names) - local - {"__future__"}
    undeclared = {m for m in third_party if not set(distributions.get(m, [m])) & names}
    assert undeclared == {"learn2learn"}, undeclared  # learn2learn: built from source (pyproject's l2l extra)
    for requirement in declared:
        assert requirement.specifier and "==" not in str(requirement.specifier), requirement
        if requirement.name in pins:
            assert requirement.specifier.contains(pins[requirement.name]), (requirement, pins[requirement.name])


def test_the_package_folders_are_what_pyproject_lists():
    """A new package folder (with __init__.py) under the root must be listed, or it is not installed."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    top = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "results"]
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for d in top for p in d.rglob("__init__.py")}
    assert found - {"tests"} <= listed | {"examples.plugin_lslr"}, sorted(found - listed)


def test_ci_runs_the_install_check_and_the_tests_in_two_processes():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install-check:", makefile, re.M)
    assert "make install-check" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pytest .*-n \$\(TEST_WORKERS\)", makefile) and "TEST_WORKERS ?= 2" in makefile
    assert re.search(r"^pytest-xdist==", (ROOT / "requirements.txt").read_text(), re.M)


# ----------------------------------------------------------------------------- licence and citation

def test_licence_is_mit_and_the_citation_file_is_cff_1_2():
    yaml = pytest.importorskip("yaml")
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the metabench authors" in licence
    assert PYPROJECT["project"]["license"] == "MIT"
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"] == "metabench" and cff["message"]
    assert cff["type"] == "software" and cff["authors"] and cff["license"] == "MIT"
    assert str(cff["version"]) == PYPROJECT["project"]["version"]
    finn = [r for r in cff["references"] if r["authors"][0]["family-names"] == "Finn"]
    assert finn and finn[0]["year"] == 2017 and "Model-Agnostic Meta-Learning" in finn[0]["title"]


# ----------------------------------------------------------------------------- command line

def _arguments(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for inner, argument in _arguments(sub):
                    yield f"{name} {inner}", argument
        elif not isinstance(action, argparse._HelpAction):
            yield action.dest, action


def test_every_argument_of_every_command_has_help_text():
    missing = [name for name, action in _arguments(build_parser()) if not action.help]
    assert not missing, f"arguments without help text: {missing}"


def test_device_accepts_what_a_config_accepts():
    parser = build_parser()
    for device in ("cpu", "cuda", "cuda:1"):
        assert parser.parse_args(["run", "--config", "c", "--out", "o", "--device", device]).device == device


@pytest.mark.parametrize("device, message", [("gpu", "'cpu', 'cuda' or 'cuda:N'"), ("cuda:x", "'cuda:x'"),
                                             ('cu"da', "'cu\"da'")])
def test_a_bad_device_exits_2_naming_it(tmp_path, capsys, device, message):
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\n')
    with pytest.raises(SystemExit) as info:  # argparse's exit 2, as for every other malformed option
        main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--device", device])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "device" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_n_without_a_gpu_is_bad_input(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--device", "cuda:1"]) == 2
    assert "'cuda:1'" in capsys.readouterr().err


@pytest.mark.parametrize("text, suggestion", [
    ('algorithm = "maml"\nbackend = "func"\niteration = 5\n', "did you mean 'iterations'?"),
    ('algorithm = "maml"\nbackend = "func"\n[[grid]]\nk_shots = 5\n', "did you mean 'k_shot'?"),
    ('algorithm = "mamll"\nbackend = "func"\n', "did you mean 'maml'?"),
    ('algorithm = "maml"\nbackend = "l2k"\n', "did you mean 'l2l'?"),
    ('algorithm = "maml"\nbackend = "func"\ntask = "sin"\n', "did you mean 'sine'?"),
], ids=["key", "grid-key", "algorithm", "backend", "task"])
def test_a_typo_gets_a_did_you_mean(tmp_path, capsys, text, suggestion):
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert suggestion in err and "valid" in err, err


def test_a_word_like_nothing_gets_no_suggestion(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\nzzzzqqq = 5\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'zzzzqqq'" in err and "did you mean" not in err, err


def test_run_report_and_reevaluate_print_where_the_report_is(tmp_path, capsys, no_figures):
    import json

    config = tmp_path / "sweep.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY, "algorithm": "maml"}.items()))
    out, again = tmp_path / "out", tmp_path / "again"
    assert main(["run", "--config", str(config), "--out", str(out), "--threads", "1"]) == 0
    assert f"report: {out / 'tables.md'}" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert f"report: {out / 'tables.md'}" in capsys.readouterr().out
    assert main(["re-evaluate", str(out), "--out", str(again), "--set", "n_test_tasks=10"]) == 0
    assert f"report: {again / 'tables.md'}" in capsys.readouterr().out


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def test_a_learn2learn_learner_prints_no_gym_banner_outside_the_command_line(tmp_path):
    """A notebook builds the learner without the CLI's quieting: the import site itself is quiet."""
    result = _python("import torch\nfrom algorithms import HyperParams, get_algorithm\n"
                     "get_algorithm('maml', 'l2l', HyperParams(), torch.Generator())\nprint('built')", tmp_path)
    assert result.returncode == 0 and "built" in result.stdout, result.stderr
    assert "Gym" not in result.stderr and "gymnasium" not in result.stderr, result.stderr


@pytest.mark.parametrize("fails", [False, True], ids=["prints", "raises"])
def test_quieting_gym_drops_only_its_notice(tmp_path, monkeypatch, capsys, fails):
    """Anything else gym prints on import, and any error it raises, still reaches the user."""
    from algorithms import loop_backends

    loop_backends.import_gym_quietly()  # the real one first: monkeypatch puts it back afterwards
    notice = loop_backends._gym_notice()
    assert notice and "Gymnasium" in notice
    (tmp_path / "gym.py").write_text(f"import sys\nprint({notice!r}, file=sys.stderr)\n"
                                     f"print('a real warning from gym', file=sys.stderr)\n"
                                     + ("raise RuntimeError('gym is broken')\n" if fails else ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gym")
    if fails:
        with pytest.raises(RuntimeError, match="gym is broken"):
            loop_backends.import_gym_quietly()
    else:
        loop_backends.import_gym_quietly()
    assert capsys.readouterr().err.strip() == "a real warning from gym"


def test_python_m_metabench_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "metabench", "list"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "maml:" in result.stdout and not result.stderr, result


@pytest.mark.parametrize("argv0, prog", [("/venv/bin/metabench", "metabench"), ("", "metabench")])
def test_the_installed_command_names_itself_in_help_and_resume_lines(monkeypatch, capsys, argv0, prog):
    import signal

    from benchmarks.__main__ import console
    from benchmarks.cli import _resume_command

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    try:
        with pytest.raises(SystemExit):
            console()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert capsys.readouterr().out.startswith(f"usage: {prog} "), prog
    assert _resume_command(["run", "--out", "a b"], prog) == f"{prog} run --out 'a b'"


# ----------------------------------------------------------------------------- the Python API

def test_run_from_a_dict_then_load_gives_the_frames(tmp_path, one_thread, no_figures):
    import metabench

    results = metabench.run(TINY, tmp_path / "out", progress=False)
    assert isinstance(results, metabench.Results) and results.folder == tmp_path / "out"
    assert (tmp_path / "out" / "tables.md").exists()
    assert set(results.cells["algorithm"]) == {"maml", "pretrain"} and set(results.cells["status"]) == {"ok"}
    assert {"mse", "eval_steps", "split"} <= set(results.summary.columns)
    errors = results.task_errors(split="test")
    assert len(errors) == 2 * 3 * 20 and set(errors["eval_steps"]) == {0, 1, 2}  # cells x steps x tasks
    assert {"cell_id", "algorithm", "seed", "task_index", "mse"} <= set(errors.columns)
    assert {"median", "iqm", "blowup"} <= set(results.robust.columns)
    assert set(results.paired["reference"]) == {"maml", "pretrain"} and "p_improvement" in results.paired
    loaded = metabench.load(tmp_path / "out")
    pd.testing.assert_frame_equal(loaded.summary, results.summary)
    assert loaded.best.equals(results.best)


def test_run_from_a_toml_path_with_overrides_resumes(tmp_path, one_thread, no_figures):
    import metabench

    config = ROOT / "benchmarks" / "configs" / "smoke.toml"
    small = {"algorithm": "maml", "iterations": 10, "n_test_tasks": 10, "n_validation_tasks": 10,
             "eval_every": 0}
    first = metabench.run(config, tmp_path / "out", overrides=small, progress=False)
    assert len(first.cells) == 1 and first.cells["iterations"].item() == 10
    again = metabench.run(str(config), tmp_path / "out", overrides=[f"{k}={v}" for k, v in small.items()],
                          progress=False)
    assert again.cells.equals(first.cells)  # nothing retrained: the same record


@pytest.mark.parametrize("config, overrides, error, message", [
    ({**TINY, "iteration": 5}, {}, "ConfigError", "did you mean 'iterations'?"),
    (TINY, {"algorithm": "nope"}, "ConfigError", "unknown algorithm 'nope'"),
    (TINY, {"device": "gpu"}, "ConfigError", "'gpu'"),
    (["algorithm"], {}, "TypeError", "a dict or a TOML file path"),
    ("missing.toml", {}, "ConfigError", "does not exist"),
], ids=["typo", "override", "device", "list", "missing-file"])
def test_bad_input_to_run_raises_naming_it_and_writes_nothing(tmp_path, config, overrides, error, message):
    import metabench

    with pytest.raises(Exception) as raised:
        metabench.run(config, tmp_path / "out", overrides=overrides, progress=False)
    assert type(raised.value).__name__ == error and message in str(raised.value), raised.value
    assert not (tmp_path / "out").exists()


def test_load_of_a_folder_without_records_raises_record_error(tmp_path):
    import metabench

    with pytest.raises(metabench.RecordError, match="no run records"):
        metabench.load(tmp_path)


def test_the_api_re_exports_the_registries():
    import algorithms
    import metabench
    import tasks

    assert metabench.register_algorithm is algorithms.register_algorithm
    assert metabench.register_task is tasks.register_task
    assert "maml" in metabench.list_algorithms() and "sine" in metabench.list_tasks()
    for name in ("run", "load", "Results", "register_algorithm", "register_task"):
        assert getattr(metabench, name).__doc__, f"metabench.{name} has no docstring"
    for name in ("cells", "summary", "curves", "scores", "best", "robust", "paired", "speed", "task_errors"):
        assert getattr(metabench.Results, name).__doc__, f"metabench.Results.{name} has no docstring"


@pytest.mark.slow  # trains four small sweeps, one on the generic engine (about 10 s)
def test_the_api_document_runs_as_written(tmp_path, monkeypatch, one_thread, no_figures):
    """docs/api.md's ```python blocks, in order, in one namespace, in an empty folder, with tiny
    sizes (every `"iterations": N` and `"n_..._tasks": N` becomes 10)."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    text, n = re.subn(r'("(?:iterations|n_test_tasks|n_validation_tasks)"): \d+', r"\1: 10", text)
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3 and n >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)
    assert (tmp_path / "runs").is_dir()
