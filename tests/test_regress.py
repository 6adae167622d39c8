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


# ----------------------------------------------------------------------------- the baseline is configuration (issue 11)

def _tolerances(tmp_path, **invariants) -> Path:
    """The committed tolerances with [invariants] replaced by `invariants` (plus diverged_above)."""
    from benchmarks.regress import DEFAULT_TOLERANCES

    text = DEFAULT_TOLERANCES.read_text().split("[invariants]")[0]
    lines = ["[invariants]", "diverged_above = 1000.0", "backend_agreement_rtol = 2e-3"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in invariants.items()]
    path = tmp_path / "tolerances.toml"
    path.write_text(text + "\n".join(lines) + "\n")
    return path


def _regress(base: Path, candidate: Path, tolerances: Path) -> int:
    return main(["regress", "--baseline", str(base), "--candidate", str(candidate), "--tolerances", str(tolerances)])


def test_committed_tolerances_name_the_baseline():
    invariants = load_tolerances()["invariants"]
    assert invariants["baseline_algorithm"] == "pretrain" and invariants["beats_baseline_margin"] == 0.0


def test_another_baseline_algorithm_is_checked_against(tmp_path, capsys):
    """With baseline_algorithm = "maml" the committed numbers fail where a meta-learner is worse than
    MAML (anil at S = 3: 2.77 vs 2.59) and pass where it is better (metasgd: 2.37)."""
    candidate = _copy(tmp_path)
    maml = _tolerances(tmp_path, baseline_algorithm="maml", beats_baseline_margin=0.0)
    assert _regress(BASELINE, candidate, maml) == 1
    out = capsys.readouterr().out
    assert "anil (func) does not beat maml after 1 step at S = 3, LR_base = 0.02: MSE 2.7650 vs 2.5908" in out, out
    assert "anil (l2l) does not beat maml after 1 step at S = 1, LR_base = 0.01: MSE 2.6202 vs 2.1031" in out, out
    assert "metasgd (func) does not beat" not in out and "does not beat pretrain" not in out, out
    assert "broken: pretrain (" not in out and "broken: maml (" not in out, out  # neither is a meta-learner to check

    # metasgd's numbers made worse on both sides (no number moves): now it fails against maml too
    base = tmp_path / "baseline"
    shutil.copytree(BASELINE / "runs", base / "runs")

    def worsen(record):
        for e in record["evaluations"]:
            e["mse"] += 0.5

    for folder in (base, candidate):
        _edit(folder, "metasgd-func-*-S3-*.json", worsen)
    assert _regress(base, candidate, maml) == 1
    assert "metasgd (func) does not beat maml after 1 step at S = 3, LR_base = 0.02: MSE 2.8723 vs 2.5908" in capsys.readouterr().out

    # a margin of -1 lets every meta-learner be up to 1.0 worse than maml
    assert _regress(BASELINE, _copy(tmp_path / "again"), _tolerances(tmp_path, baseline_algorithm="maml",
                                                                      beats_baseline_margin=-1.0)) == 0
    assert "no regression" in capsys.readouterr().out


def test_old_margin_name_is_still_honoured(tmp_path, capsys):
    candidate = _copy(tmp_path)
    assert _regress(BASELINE, candidate, _tolerances(tmp_path, beats_pretrain_margin=0.0)) == 0
    assert "no regression" in capsys.readouterr().out
    # a margin of 0.4 asks every meta-learner to beat pretrain (3.13 at S = 3) by 0.4: reptile (2.84) does not
    assert _regress(BASELINE, candidate, _tolerances(tmp_path, beats_pretrain_margin=0.4)) == 1
    out = capsys.readouterr().out
    assert "reptile (func) does not beat pretrain" in out and "metasgd (func) does not beat" not in out, out


@pytest.mark.parametrize("invariants, expected", [
    ({"baseline_algorithm": "pretrian"}, "got 'pretrian'; valid: maml, fomaml, msl, metasgd, anil, reptile, pretrain"),
    ({"baseline_algorithm": 3}, "must be an algorithm name, got 3; valid: maml"),
    ({"beats_pretrain_margin": 0.0, "beats_baseline_margin": 0.0}, "old name of beats_baseline_margin; give only"),
    ({"baseline_algorithm": "maml", "beats_pretrain_margin": 0.0}, "valid only with baseline_algorithm = \"pretrain\""),
], ids=["unknown-name", "not-a-string", "both-margins", "alias-with-other-baseline"])
def test_bad_baseline_algorithm_exits_2(tmp_path, capsys, invariants, expected):
    from algorithms import ALGORITHMS

    tolerances = _tolerances(tmp_path, **invariants)
    assert _regress(BASELINE, BASELINE, tolerances) == 2
    err = capsys.readouterr().err
    assert expected in err and str(tolerances) in err, err
    if "valid:" in expected:
        assert all(name in err for name in ALGORITHMS), err


def test_baseline_algorithm_without_records_is_skipped_with_a_note(tmp_path, capsys):
    """No pretrain cell on either side: the invariant cannot be checked, and the report says so."""
    base, candidate = tmp_path / "baseline", _copy(tmp_path)
    shutil.copytree(BASELINE / "runs", base / "runs")
    for folder in (base, candidate):
        for path in (folder / "runs").glob("pretrain-*"):
            path.unlink()
    assert _regress(base, candidate, _tolerances(tmp_path, beats_baseline_margin=5.0)) == 0
    out = capsys.readouterr().out
    assert "note: invariant 'every meta-learner beats pretrain' skipped: the candidate has no finished pretrain" \
        in out and "no regression" in out, out
