"""The per-record binary store (learned initialisation, per-task errors) and `re-evaluate`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import artifacts as store
from benchmarks.cli import main
from benchmarks.records import load_records

SWEEP = """
algorithm = ["maml", "metasgd", "anil", "pretrain"]
backend = "func"
inner_steps = 2
iterations = 40
seed = [0, 1]
eval_every = 20
log_every = 20
n_test_tasks = 30
n_test_sets = 2
n_validation_tasks = 20
eval_k_shot = [5]
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    config = root / "sweep.toml"
    config.write_text(SWEEP)
    threads = torch.get_num_threads()
    assert main(["run", "--config", str(config), "--out", str(root / "out"), "--threads", "1"]) == 0
    torch.set_num_threads(threads)
    return root


def test_round_trip_is_exact_where_promised():
    rng = np.random.default_rng(0)
    errors = rng.lognormal(0, 3, size=(11, 50)).astype(np.float32)
    errors[3, :4] = [np.inf, np.nan, 1e7, 3e-7]  # blow-ups and tiny values float16 cannot hold
    found = store.Artifacts(params=[rng.normal(size=(40, 1)).astype(np.float32)], lrs=[0.01],
                            errors={("test", 10): errors}, n_sets={"test": 2}, zero_mse={("test", 10): 4.2})
    back = store.from_bytes(store.to_bytes(found))
    assert np.array_equal(back.params[0], found.params[0]) and back.lrs == [0.01]
    assert back.n_sets == {"test": 2} and back.zero_mse == {("test", 10): 4.2}
    decoded = back.errors[("test", 10)]
    assert np.isposinf(decoded[3, 0]) and np.isnan(decoded[3, 1])
    assert decoded[3, 2] == np.float32(1e7) and decoded[3, 3] == np.float32(3e-7)  # kept exactly
    finite = np.isfinite(errors)
    relative = np.abs(decoded[finite] - errors[finite]) / errors[finite]
    assert relative.max() <= 2.0 ** -11, relative.max()  # float16: 11 significant bits


def test_records_name_artifacts_that_match_their_means(sweep):
    records = load_records(sweep / "out")
    found = store.load_task_errors(sweep / "out", records)
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and set(found) == {r["cell_id"] for r in ok}
    for record in ok:
        arts = found[record["cell_id"]]
        assert arts.n_sets == {"test": 2, "validation": 1}
        assert set(arts.errors) == {(s, k) for s in ("test", "validation") for k in (5, 10)}
        assert arts.errors[("test", 10)].shape == (11, 60) and arts.errors[("validation", 5)].shape == (11, 20)
        assert 1 < arts.zero_mse[("test", 10)] < 10  # E[A^2]/2 = 4.2 for Finn's amplitudes
        for row in record["evaluations"]:
            if row["iteration"] != record["cell"]["iterations"]:
                continue
            per_task = arts.errors[(row["split"], row["eval_k_shot"])][row["eval_steps"]]
            assert row["n_test_tasks"] == per_task.size and row["n_sets"] == arts.n_sets[row["split"]]
            if np.isfinite(row["mse"]):
                assert abs(per_task.mean() - row["mse"]) <= 3e-4 * abs(row["mse"]), (record["cell_id"], row)


def test_reevaluate_reproduces_the_final_evaluation_bitwise(sweep, tmp_path):
    assert main(["re-evaluate", str(sweep / "out"), "--out", str(tmp_path / "again")]) == 0
    before = {r["cell_id"]: r for r in load_records(sweep / "out")}
    for record in load_records(tmp_path / "again"):
        old = before[record["cell_id"]]
        final = [e for e in old["evaluations"] if e["iteration"] == old["cell"]["iterations"]]
        assert record["evaluations"] == final, record["cell_id"]
        assert record["fingerprint"]["hardware"] == old["fingerprint"]["hardware"]  # same machine: unchanged


def test_reevaluate_on_other_hardware_names_both_machines(sweep, tmp_path):
    import json
    import shutil

    from benchmarks.hardware import hardware

    src = tmp_path / "src"
    shutil.copytree(sweep / "out", src)
    for path in (src / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        record["fingerprint"]["hardware"] = "Other CPU [AVX2]"
        path.write_text(json.dumps(record))
    assert main(["re-evaluate", str(src), "--out", str(tmp_path / "again")]) == 0
    names = {r["fingerprint"]["hardware"] for r in load_records(tmp_path / "again") if r["status"] == "ok"}
    assert names == {f"trained on Other CPU [AVX2]; evaluated on {hardware()}"}, names


def test_reevaluate_with_more_test_sets_keeps_the_first_sets(sweep, tmp_path):
    assert main(["re-evaluate", str(sweep / "out"), "--out", str(tmp_path / "more"), "--set", "n_test_sets=3"]) == 0
    records = load_records(tmp_path / "more")
    old = store.load_task_errors(sweep / "out", load_records(sweep / "out"))
    new = store.load_task_errors(tmp_path / "more", records)
    for cell_id, arts in new.items():
        assert arts.n_sets["test"] == 3 and arts.errors[("test", 10)].shape == (11, 90)
        assert np.array_equal(arts.errors[("test", 10)][:, :60], old[cell_id].errors[("test", 10)], equal_nan=True)
    assert all(r["settings"]["n_test_sets"] == 3 for r in records)


@pytest.mark.parametrize("override, message", [
    ("n_query=5", "cannot change 'n_query'"),
    ("iterations=5", "cannot change 'iterations'"),
    ("n_test_sets=0", "n_test_sets must be >= 1"),
])
def test_reevaluate_rejects_training_settings_and_bad_values(sweep, tmp_path, capsys, override, message):
    out = tmp_path / "bad"
    assert main(["re-evaluate", str(sweep / "out"), "--out", str(out), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
