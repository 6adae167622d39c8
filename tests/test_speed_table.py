"""The speed tables' contention check and peer tables, on synthetic pytest-benchmark JSON
(no timing here: timings are never unit tests)."""
from __future__ import annotations

import json

import pytest

from benchmarks.speed import peers as peer_timing
from benchmarks.speed.table import main, peers_frame, targets


def _bench(name, kind, median_ms, iqr_ms, cpu_wall=1.0, **info):
    return {"name": name, "stats": {"median": median_ms / 1e3, "min": median_ms / 1e3, "iqr": iqr_ms / 1e3,
                                    "rounds": 10},
            "extra_info": {"kind": kind, "cpu_wall": cpu_wall, "device": "cpu", "threads": 1, **info}}


def _peer_rows(func_ms, jax_ms):
    return [{"peer": "func", "ms_median": func_ms, "ratio_vs_func": 1.0, "ratio_q25": 1.0, "ratio_q75": 1.0,
             "compile_s": 0.0},
            {"peer": "jax", "ms_median": jax_ms, "ratio_vs_func": jax_ms / func_ms, "ratio_q25": 0.9 * jax_ms / func_ms,
             "ratio_q75": 1.1 * jax_ms / func_ms, "compile_s": 2.0}]


def _json(tmp_path, quiet: bool):
    benchmarks = [
        _bench("test_meta_iteration[maml-func-S1-B25]", "meta_iteration", 1.0, 0.05, cpu_wall=1.0 if quiet else 0.6,
               algorithm="maml", backend="func", inner_steps=1, meta_batch=25, peak_memory_mb=1.0),
        {"name": "test_peers[second-order-S1-B25]", "stats": {"median": 1, "min": 1, "iqr": 0, "rounds": 1},
         "extra_info": {"kind": "peers", "order": "second", "algorithm": "maml", "inner_steps": 1, "meta_batch": 25,
                        "peers": _peer_rows(1.0, 1.5), "contention": [], "device": "cpu"}},
        {"name": "test_peers[first-order-S1-B25]", "stats": {"median": 1, "min": 1, "iqr": 0, "rounds": 1},
         "extra_info": {"kind": "peers", "order": "first", "algorithm": "fomaml", "inner_steps": 1, "meta_batch": 25,
                        "peers": _peer_rows(1.0, 0.8),
                        "contention": [] if quiet else ["jax: spread (IQR/median) 0.40 > 0.25"], "device": "cpu"}},
    ]
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"benchmarks": benchmarks, "datetime": "now"}))
    return path


def test_quiet_run_writes_tables_without_a_warning(tmp_path):
    path = _json(tmp_path, quiet=True)
    assert main([str(path), str(tmp_path / "out"), "--strict"]) == 0
    text = (tmp_path / "out" / "speed.md").read_text()
    assert "CONTENDED" not in text and "Peers side by side" in text
    assert "1.50 [1.35, 1.65]" in text  # jax's time over func's, with quartiles
    frame, notes = peers_frame(path)
    assert notes == [] and len(frame) == 4
    met = targets(frame).set_index("order")["func met"]
    assert met["second"] == "yes" and met["first"] == "no"  # 1.5x vs the 1.2x target; 0.8x


def test_contended_run_is_marked_or_refused(tmp_path, capsys):
    path = _json(tmp_path, quiet=False)
    assert main([str(path), str(tmp_path / "strict"), "--strict"]) == 2
    assert not (tmp_path / "strict").exists(), "--strict must write nothing"
    error = capsys.readouterr().err
    assert "CPU/wall 0.60" in error and "jax: spread" in error
    assert main([str(path), str(tmp_path / "marked")]) == 0
    text = (tmp_path / "marked" / "speed.md").read_text()
    assert text.splitlines()[2].startswith("> **CONTENDED: not for publication.**")
    assert "test_meta_iteration[maml-func-S1-B25]: CPU/wall 0.60" in text


def test_missing_json_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_interleaved_rounds_pair_the_ratios():
    """Ratios are taken round by round: a peer exactly twice as slow is 2.0 whatever the load did."""
    load = [1.0, 3.0, 1.0, 5.0, 1.0]
    func = peer_timing.Peer("func", lambda: None, times=[0.001 * x for x in load], cpu=[0.001 * x for x in load])
    slow = peer_timing.Peer("jax", lambda: None, times=[0.002 * x for x in load], cpu=[0.001 * x for x in load])
    rows, flags = peer_timing.summarize([func, slow], "cpu", threads=1, memory=False)
    assert rows[1]["ratio_vs_func"] == pytest.approx(2.0) and rows[1]["ratio_q25"] == pytest.approx(2.0)
    assert any("jax: CPU/wall 0.50" in f for f in flags)  # it waited half the time
    assert any("spread" in f for f in flags)  # the load swings the times themselves
