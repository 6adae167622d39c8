"""The regression check can fail: perturbed numbers and broken invariants exit non-zero."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.regress import load_tolerances

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baseline"
pytestmark = pytest.mark.skipif(not (BASELINE / "runs").is_dir(), reason="no committed baseline")


def _copy(tmp_path) -> Path:
    target = tmp_path / "candidate"
    shutil.copytree(BASELINE / "runs", target / "runs")
    return target


def _edit(folder: Path, pattern: str, edit) -> None:
    (path,) = (folder / "runs").glob(pattern)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_baseline_against_itself_passes(tmp_path, capsys):
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(_copy(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "no number moved at all" in out, out


def test_number_moved_beyond_tolerance_fails(tmp_path, capsys):
    candidate = _copy(tmp_path)
    tol = load_tolerances()["mse"]

    def perturb(record):
        e = next(e for e in record["evaluations"] if e["split"] == "test" and e["eval_steps"] == 5)
        e["mse"] = e["mse"] * (1 + 3 * tol["rtol"]) + 3 * tol["atol"]

    _edit(candidate, "fomaml-func-*-S3-*.json", perturb)
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 1
    out = capsys.readouterr().out
    assert "moved" in out and "fomaml" in out and "REGRESSION" in out, out


def test_number_within_tolerance_passes(tmp_path, capsys):
    candidate = _copy(tmp_path)
    tol = load_tolerances()["mse"]

    def nudge(record):
        e = next(e for e in record["evaluations"] if e["split"] == "test" and e["eval_steps"] == 5)
        e["mse"] = e["mse"] * (1 + 0.3 * tol["rtol"])

    _edit(candidate, "fomaml-func-*-S3-*.json", nudge)
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 0
    out = capsys.readouterr().out
    assert "moved within tolerance: 1 numbers" in out and "fomaml" in out, out  # the margin is shown


def test_broken_invariants_fail(tmp_path, capsys):
    candidate = _copy(tmp_path)

    def disagree(record):
        for e in record["evaluations"]:
            e["mse"] *= 1.005  # within the per-number tolerance, beyond backend agreement

    _edit(candidate, "maml-higher-*.json", disagree)
    assert main(["regress", "--baseline", str(BASELINE), "--candidate", str(candidate)]) == 1
    assert "second-order MAML backends disagree" in capsys.readouterr().out


def test_meta_learner_not_beating_pretrain_fails(tmp_path, capsys):
    candidate = _copy(tmp_path)
    base = tmp_path / "baseline"
    shutil.copytree(BASELINE / "runs", base / "runs")

    def worsen(record):
        for e in record["evaluations"]:
            e["mse"] += 10.0

    for folder in (base, candidate):  # same numbers on both sides: only the invariant can fail
        _edit(folder, "anil-func-*-S3-*.json", worsen)
    assert main(["regress", "--baseline", str(base), "--candidate", str(candidate)]) == 1
    assert "anil (func) does not beat pretrain" in capsys.readouterr().out
