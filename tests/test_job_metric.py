"""A job records its task family's metric (issue 21): a classification cell stores accuracy (rows,
per-task store, the record's `metric`), never an MSE; the store and re-evaluation read it back;
a record's metric declaration is untrusted input. Sine records keep their MSE columns."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from benchmarks import artifacts as store
from benchmarks.config import Cell, Settings
from benchmarks.job import _divergence, run_job
from benchmarks.records import RecordError, folder_metric, read_record, record_metric, write_record
from benchmarks.reevaluate import reevaluate_record
from tasks import N_EVAL_QUERY
from tasks.problem import MSE, REGRESSION, Problem, accuracy

SETTINGS = Settings(n_test_tasks=6, n_validation_tasks=4, log_every=5, eval_steps=2, n_query=3)


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    """One finished gauss-class cell (2-way, 10-D, 10 -> 64 -> 2), written to a folder."""
    out = tmp_path_factory.mktemp("cls")
    cell = Cell("maml", "generic", task="gauss-class", k_shot=2, lr_base=0.4, iterations=10, meta_batch=4,
                network="relu-64")
    record, = run_job([cell], SETTINGS, threads=1)
    assert record["status"] == "ok", record.get("error")
    found = record["_artifacts"]
    write_record(out, record)
    return out, record, found


def test_a_classification_record_is_in_accuracy(classification):
    _, record, _ = classification
    assert record["metric"] == accuracy(2).declaration()
    for row in record["evaluations"]:
        assert "mse" not in row and "mse_ci95" not in row
        assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["loss"])
    assert record["qualitative"] is None  # the sine-fit panel is a 1-D regression picture


def test_its_store_holds_per_task_accuracies(classification):
    _, record, found = classification
    values = found.errors[("test", 2)]
    assert values.shape == (SETTINGS.eval_steps + 1, SETTINGS.n_test_tasks)
    points = 2 * N_EVAL_QUERY  # evaluation query points per class x 2 classes: accuracies are k / points
    assert np.allclose(values * points, np.round(values * points)) and ((0 <= values) & (values <= 1)).all()
    final = [r for r in record["evaluations"] if r["split"] == "test" and r["iteration"] == 10]
    assert [r["accuracy"] for r in final] == pytest.approx(values.mean(axis=1).tolist())
    assert math.isnan(found.zero_mse[("test", 2)]) and math.isnan(found.untrained_mse)  # no MSE yardstick


def test_the_store_check_reads_the_metric_column(classification, tmp_path):
    out, record, _ = classification
    path = out / "runs" / f"{record['cell_id']}.json"
    stored = read_record(path)
    assert store.load_artifacts(out / "runs", stored) is not None
    # the per-task store must agree with the record's accuracy, not with a column called mse
    forged = json.loads(path.read_text())
    for row in forged["evaluations"]:
        row["accuracy"] = 0.123
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / path.name).write_text(json.dumps(forged))
    (folder / stored["artifacts"]).write_bytes((out / "runs" / stored["artifacts"]).read_bytes())
    with pytest.raises(RecordError, match="stored values average"):
        store.load_artifacts(folder, read_record(folder / path.name))


def test_re_evaluation_reproduces_a_classification_record(classification):
    out, record, _ = classification
    stored = read_record(out / "runs" / f"{record['cell_id']}.json")
    again = reevaluate_record(out / "runs", stored, {})
    assert again["metric"] == stored["metric"]
    assert [r["accuracy"] for r in again["evaluations"]] == [r["accuracy"] for r in stored["evaluations"]
                                                             if r["iteration"] == 10]


@pytest.mark.parametrize("declaration, message", [
    ({"name": "mse", "label": "MSE", "higher_is_better": True, "chance": None}, "lower-is-better"),
    ({"name": "../acc", "label": "x", "higher_is_better": True, "chance": None}, "lower-case identifier"),
    ({"name": "loss", "label": "x", "higher_is_better": True, "chance": None}, "lower-case identifier"),
    ({"name": "acc", "label": "x", "higher_is_better": "yes", "chance": None}, "true or false"),
    ({"name": "acc", "label": "x", "higher_is_better": True, "chance": float("nan")}, "finite"),
    ({"name": "acc", "label": "x", "higher_is_better": True}, "keys"),
    ("accuracy", "keys"),
])
def test_a_bad_metric_declaration_is_refused(classification, tmp_path, declaration, message):
    _, record, _ = classification
    bad = copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})
    bad["metric"] = declaration
    path = tmp_path / f"{record['cell_id']}.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(RecordError, match=message):
        read_record(path)


def test_a_folder_reports_one_metric(classification):
    _, record, _ = classification
    sine = {"cell_id": "s", "metric": None}
    assert folder_metric([sine]) is MSE and record_metric(sine) is MSE  # records before metrics: MSE
    assert folder_metric([record, record]) == accuracy(2)
    with pytest.raises(RecordError, match="different metrics: accuracy .*; mse"):
        folder_metric([record, sine])


def test_divergence_follows_the_loss():
    # an MSE loss far above its error scale has diverged; a cross-entropy is judged by finiteness alone
    assert _divergence(1e9, 4.0, 0.1, REGRESSION) is not None and _divergence(1.0, 4.0, 0.1, REGRESSION) is None
    cross_entropy = Problem(10, 2, "cross-entropy")
    assert _divergence(1e9, math.nan, math.nan, cross_entropy) is None
    assert _divergence(math.inf, math.nan, math.nan, cross_entropy) == "non-finite"


def test_a_sine_record_keeps_its_mse_columns():
    cell = Cell("maml", "func", k_shot=2, iterations=4, meta_batch=2)
    record, = run_job([cell], Settings(n_test_tasks=3, n_validation_tasks=3, log_every=2, eval_steps=1),
                      threads=1)
    assert record["metric"] == MSE.declaration()
    assert {"mse", "mse_ci95"} <= set(record["evaluations"][0]) and "loss" not in record["evaluations"][0]
    assert math.isfinite(record["_artifacts"].zero_mse[("test", 2)])
