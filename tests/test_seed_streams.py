"""A cell's random streams (issue 23, item 6): independent per seed and purpose.

Before `seed_streams` a cell drew its training tasks from `manual_seed(seed)` and its initial
weights from `manual_seed(seed + 1)`: seed s's weights came from the stream seed s + 1's tasks
start with. `seed_streams = "independent"` (new sweeps' default) gives each (seed, purpose) its own
`numpy.random.SeedSequence` child; `"offset"` keeps the old streams, and every committed sweep file
pins it so its committed numbers stay; a record written before the key existed reads as "offset".
"""
from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms import get_algorithm
from algorithms.network import sized
from benchmarks.cli import main
from benchmarks.config import (SEED_STREAMS, STREAM_PURPOSES, Cell, ConfigError, Settings, cell_family, load_sweep,
                               parse_sweep, stream_seed)
from benchmarks.fingerprint import FingerprintError, check_poolable, check_resumable, differences
from benchmarks.job import run_job
from benchmarks.records import RecordError, read_record, record_settings, scan_records, write_record
from benchmarks.regress import regress
from benchmarks.training import meta_train
from tasks import MAX_TRAIN_SEED, TEST_SEED, VALIDATION_SEED

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baseline"
#: a committed baseline cell that trains in about a second (first order, 200 iterations)
BASELINE_CELL = "fomaml-func-sine-K10-S3-lrb0.02-lrm0.001-B25-it200-seed0"
#: every committed sweep file whose results are committed or compared: each pins the old streams
PINNED = ["benchmarks/configs/ci.toml", "benchmarks/configs/paper.toml", "benchmarks/configs/bench.toml",
          "benchmarks/configs/tanh.toml", "benchmarks/configs/sine_freq.toml",
          "benchmarks/configs/classification.toml", *sorted(str(p.relative_to(ROOT))
                                                            for p in ROOT.glob("examples/*/*.toml"))]
INDEPENDENT, OFFSET = Settings(seed_streams="independent"), Settings(seed_streams="offset")
TINY = Settings(n_test_tasks=4, n_validation_tasks=4, log_every=5, eval_steps=1, n_query=3)


def first_draws(settings: Settings, seed: int, purpose: str, n: int = 8) -> torch.Tensor:
    return torch.rand(n, generator=settings.generator(seed, purpose))


# ----------------------------------------------------------------------------- the streams

def test_independent_streams_do_not_overlap_across_seeds_and_offset_documents_the_old_overlap():
    for seed in range(20):
        init, next_tasks = first_draws(INDEPENDENT, seed, "weights"), first_draws(INDEPENDENT, seed + 1, "tasks")
        assert not torch.equal(init, next_tasks), seed
        # the old streams: seed s's initial weights are seed s + 1's first training tasks
        assert torch.equal(first_draws(OFFSET, seed, "weights"), first_draws(OFFSET, seed + 1, "tasks")), seed


def test_two_purposes_of_one_seed_are_independent_streams():
    for seed in (0, 1, 7, MAX_TRAIN_SEED - 1):
        tasks, weights = (torch.randn(20_000, generator=INDEPENDENT.generator(seed, p)) for p in ("tasks", "weights"))
        assert not torch.equal(tasks[:8], weights[:8])
        assert abs(float(torch.corrcoef(torch.stack([tasks, weights]))[0, 1])) < 0.03  # 4.2 standard errors


def test_derived_seeds_are_distinct_and_clear_of_every_fixed_stream():
    """Each (seed, purpose) its own torch seed, all at or above 2**31: the suite's fixed seeds
    (training seeds under "offset", the validation and test sets) lie far below, so evaluation
    tasks stay disjoint in seed from training's. SeedSequence's own `spawn` gives the same children."""
    derived = [stream_seed(seed, purpose, "independent") for seed in range(1000) for purpose in STREAM_PURPOSES]
    assert len(set(derived)) == len(derived)
    assert min(derived) >= 2 ** 31 and max(derived) < 2 ** 32  # torch's CPU generator keys on 32 bits
    assert max(MAX_TRAIN_SEED, VALIDATION_SEED, TEST_SEED + 10_000) < 2 ** 31
    for seed in (0, 5):
        children = np.random.SeedSequence(seed).spawn(len(STREAM_PURPOSES))
        for purpose, number in STREAM_PURPOSES.items():
            word = int(children[number].generate_state(1, np.uint32)[0])
            assert stream_seed(seed, purpose, "independent") == 2 ** 31 | word >> 1
    assert [stream_seed(3, p, "offset") for p in ("tasks", "weights")] == [3, 4]  # exactly the old seeds


def test_an_unknown_purpose_is_refused():
    with pytest.raises(KeyError, match="tasks, weights"):
        stream_seed(0, "noise", "independent")


# ----------------------------------------------------------------------------- the job uses them

def _trained(cell: Cell, settings: Settings, tasks: torch.Generator, weights: torch.Generator) -> list[np.ndarray]:
    """The cell trained by hand from the given streams: what the job must compute."""
    family = cell_family(cell, settings)
    learner = get_algorithm(cell.algorithm, cell.backend, cell.hyperparams(), weights,
                            network=sized(cell.network, family))
    for _ in meta_train(learner, family, [tasks], cell.iterations, set()):
        pass
    return [p.detach().cpu().numpy() for p in learner.adaptation().params]


def _params(record: dict) -> list[np.ndarray]:
    assert record["status"] == "ok", record.get("error")
    return record["_artifacts"].params


def test_offset_trains_exactly_as_the_streams_of_before():
    cell = Cell("maml", "func", k_shot=3, meta_batch=4, iterations=6, seed=2)
    settings = replace(TINY, seed_streams="offset")
    record, = run_job([cell], settings, threads=1)
    expected = _trained(cell, settings, torch.Generator().manual_seed(2), torch.Generator().manual_seed(3))
    assert all(np.array_equal(a, b) for a, b in zip(_params(record), expected, strict=True))


def test_independent_cells_and_ensemble_members_train_on_their_own_streams():
    cells = [Cell("maml", "func", k_shot=3, meta_batch=4, iterations=6, seed=s) for s in (0, 1)]
    settings = replace(TINY, seed_streams="independent")
    records = run_job(cells, settings, threads=1)  # one batched program of two members
    alone, = run_job([Cell("fomaml", "torch", k_shot=3, meta_batch=4, iterations=6, seed=1)], settings, threads=1)
    for cell, record in [*zip(cells, records), (Cell("fomaml", "torch", k_shot=3, meta_batch=4, iterations=6, seed=1),
                                                alone)]:
        expected = _trained(cell, settings, settings.generator(cell.seed, "tasks"),
                            settings.generator(cell.seed, "weights"))
        assert all(np.array_equal(a, b) for a, b in zip(_params(record), expected, strict=True)), cell.cell_id
        old = _trained(cell, settings, torch.Generator().manual_seed(cell.seed),
                       torch.Generator().manual_seed(cell.seed + 1))
        assert not np.array_equal(_params(record)[0], old[0])
    assert records[0]["settings"]["seed_streams"] == "independent"
    assert records[0]["fingerprint"]["seed_streams"] == "independent"


def test_the_committed_baseline_keeps_its_numbers_through_the_regression_check(tmp_path):
    """ci.toml pins "offset": one of its cells, rerun now, passes `regress` against its committed
    record (written before the key existed, so read as "offset"; same settings on both sides)."""
    base, cand = tmp_path / "base", tmp_path / "cand"
    (base / "runs").mkdir(parents=True)
    for suffix in (".json", ".npz"):
        shutil.copy(BASELINE / "runs" / f"{BASELINE_CELL}{suffix}", base / "runs")
    sweep = load_sweep(ROOT / "benchmarks" / "configs" / "ci.toml")
    assert sweep.settings.seed_streams == "offset"
    cell, = [c for c in sweep.cells if c.cell_id == BASELINE_CELL]
    record, = run_job([cell], sweep.settings, threads=1)
    write_record(cand, record)
    code, text = regress(base, cand)
    assert code == 0, text


# ----------------------------------------------------------------------------- older records

def _committed(name: str = BASELINE_CELL) -> dict:
    return read_record(BASELINE / "runs" / f"{name}.json")


def test_a_record_without_the_key_reads_as_offset():
    record = _committed()
    assert "seed_streams" not in record["settings"] and "seed_streams" not in record["fingerprint"]
    assert record_settings(record["settings"]).seed_streams == "offset"
    assert record_settings({}).seed_streams == "offset"
    assert record_settings({"seed_streams": "independent"}).seed_streams == "independent"
    assert Settings().seed_streams == "independent"  # while a new sweep gets the independent streams
    assert parse_sweep({"algorithm": "maml", "backend": "func"}).settings.seed_streams == "independent"


def test_an_old_fingerprint_compares_as_offset():
    old = _committed()["fingerprint"]
    cell = Cell(**_committed()["cell"])
    for on in (cell, None):  # a resume knows the cell; pooling and regress compare bare fingerprints
        assert differences(old, {**old, "seed_streams": "offset"}, on) == []
        assert differences(old, {**old, "seed_streams": "independent"}, on) == [
            "seed_streams: 'offset' -> 'independent'"]


def test_a_committed_folder_resumes_under_its_pinned_file_and_refuses_the_independent_streams(tmp_path):
    (tmp_path / "runs").mkdir()
    for suffix in (".json", ".npz"):
        shutil.copy(BASELINE / "runs" / f"{BASELINE_CELL}{suffix}", tmp_path / "runs")
    existing = scan_records(tmp_path)
    config = ROOT / "benchmarks" / "configs" / "ci.toml"
    pinned = load_sweep(config)
    check_resumable(existing, pinned.cells, pinned.settings, tmp_path, same_hardware=False)
    fresh = load_sweep(config, [("seed_streams", "independent")])
    with pytest.raises(FingerprintError, match="seed_streams: 'offset' -> 'independent'"):
        check_resumable(existing, fresh.cells, fresh.settings, tmp_path, same_hardware=False)


def test_old_and_new_offset_records_pool_and_independent_ones_do_not():
    old = _committed()

    def seed_one(streams: str) -> dict:
        new = json.loads(json.dumps({k: v for k, v in old.items() if k != "_artifacts"}))
        new["cell"]["seed"] = new["fingerprint"]["seed"] = 1
        new["cell_id"] = Cell(**new["cell"]).cell_id
        new["settings"]["seed_streams"] = new["fingerprint"]["seed_streams"] = streams
        return new

    check_poolable([old, seed_one("offset")])
    with pytest.raises(RecordError, match="seed_streams: 'offset' -> 'independent'"):
        check_poolable([old, seed_one("independent")])


# ----------------------------------------------------------------------------- bad values, sweep files

@pytest.mark.parametrize("value", ["offst", "Independent", "", 1, True, ["offset"]])
def test_a_bad_value_is_refused_with_the_valid_choices(value):
    with pytest.raises(ConfigError, match="seed_streams") as caught:
        parse_sweep({"algorithm": "maml", "backend": "func", "seed_streams": value})
    assert repr(value) in str(caught.value) and "independent, offset" in str(caught.value)
    if value == "offst":
        assert "did you mean 'offset'" in str(caught.value)


def test_a_bad_value_exits_2_and_writes_nothing(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('algorithm = "maml"\nbackend = "func"\nseed_streams = "shifted"\n')
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "'shifted'" in err and "independent, offset" in err and "Traceback" not in err
    assert not out.exists()


def test_a_record_with_a_bad_value_is_refused(tmp_path):
    record = json.loads((BASELINE / "runs" / f"{BASELINE_CELL}.json").read_text())
    record["settings"]["seed_streams"] = "sequential"
    record.pop("artifacts", None)
    path = tmp_path / "runs" / f"{BASELINE_CELL}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    with pytest.raises(RecordError, match="'sequential'.*independent, offset"):
        read_record(path)


@pytest.mark.parametrize("path", PINNED)
def test_every_committed_sweep_file_pins_the_old_streams(path):
    raw = tomllib.loads((ROOT / path).read_text())
    assert raw.get("seed_streams") == "offset", f"{path} must pin seed_streams = \"offset\" (its results are committed)"
    assert SEED_STREAMS == ("independent", "offset")
