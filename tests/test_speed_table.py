"""The speed tables' contention check and peer tables, on synthetic pytest-benchmark JSON, and
every peer of the suite running (no timing asserted here: timings are never unit tests)."""
from __future__ import annotations

import json

import pytest

from benchmarks.speed import peers as peer_timing
from benchmarks.speed.table import (end_to_end_table, load, main, meta_iteration_table, parse_yardstick, peers_frame,
                                      targets)


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


def test_a_round_times_each_peer_in_a_burst_of_back_to_back_calls():
    """A training run calls its step back to back: each peer's round is a burst of consecutive
    calls (~burst_s of them, at least one) from its restored state, recorded per call."""
    counts = {"fast": 0, "restores": 0}

    def fast():
        counts["fast"] += 1

    def restore():
        counts["restores"] += 1

    peer = peer_timing.Peer("fast", fast, restore=restore)
    rounds = peer_timing.interleave([peer], seconds=0.0, min_rounds=3, max_rounds=3, burst_s=0.002)
    assert rounds == 3 and peer.burst > 10 and len(peer.times) == 3
    assert counts["fast"] == 1 + 2 + 2 * peer.burst + 3 * peer.burst  # warm-up, sizing, estimate, rounds
    assert counts["restores"] == 1 + 2 + 2 + 3  # once per timed burst
    single = peer_timing.Peer("single", fast)
    peer_timing.interleave([single], seconds=0.0, min_rounds=2, max_rounds=2, burst_s=0.0)
    assert single.burst == 1


# ----------------------------------------------------------------------------- the yardstick is configuration (issue 11)

def _iterations_json(tmp_path):
    """Meta-iterations at S = 1, meta-batch 25: maml on l2l 20 ms, higher 40, func 1; fomaml l2l 10,
    func 0.5; reptile torch 4, func 2; and Finn's end-to-end run on l2l (30 ms) and func (1.5 ms)."""
    times = {("maml", "l2l"): 20.0, ("maml", "higher"): 40.0, ("maml", "func"): 1.0, ("fomaml", "l2l"): 10.0,
             ("fomaml", "func"): 0.5, ("reptile", "torch"): 4.0, ("reptile", "func"): 2.0}
    benchmarks = [_bench(f"test_meta_iteration[{a}-{b}-S1-B25]", "meta_iteration", ms, 0.01, algorithm=a, backend=b,
                         inner_steps=1, meta_batch=25, peak_memory_mb=1.0) for (a, b), ms in times.items()]
    benchmarks += [_bench(f"test_finn_end_to_end[{b}]", "end_to_end", ms, 0.01, algorithm="maml", backend=b,
                          inner_steps=1, meta_batch=25, members=1) for b, ms in (("l2l", 30.0), ("func", 1.5))]
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"benchmarks": benchmarks, "datetime": "now"}))
    return path


def _ratios(frame, column):
    return {(r.algorithm, r.backend): getattr(r, column) for r in frame.itertuples()}


def test_default_yardstick_is_learn2learn_maml(tmp_path):
    path = _iterations_json(tmp_path)
    assert main([str(path), str(tmp_path / "out")]) == 0
    frame, _ = load(path)
    table = meta_iteration_table(frame)
    assert "x_vs_l2l_maml" in table.columns  # the committed tables' column name
    ratios = _ratios(table, "x_vs_l2l_maml")
    assert ratios[("maml", "func")] == pytest.approx(20.0) and ratios[("fomaml", "l2l")] == pytest.approx(2.0)
    own = _ratios(table, "x_vs_own_loop_backend")  # l2l where the algorithm has it, else torch (from the registry)
    assert own[("fomaml", "func")] == pytest.approx(20.0) and own[("reptile", "func")] == pytest.approx(2.0)
    assert end_to_end_table(frame).set_index("backend")["x_vs_l2l"]["func"] == pytest.approx(20.0)
    text = (tmp_path / "out" / "speed.md").read_text()
    assert "`x_vs_l2l_maml`: learn2learn MAML's median" in text and "## func vs learn2learn, second-order MAML" in text


def test_another_yardstick_derives_its_columns_and_ratios(tmp_path, capsys):
    path = _iterations_json(tmp_path)
    assert main([str(path), str(tmp_path / "out"), "--yardstick", "maml:higher"]) == 0
    frame, _ = load(path)
    table = meta_iteration_table(frame, parse_yardstick("maml:higher"))
    assert "x_vs_higher_maml" in table.columns and "x_vs_l2l_maml" not in table.columns
    ratios = _ratios(table, "x_vs_higher_maml")  # higher's MAML (40 ms) over each
    assert ratios[("maml", "func")] == pytest.approx(40.0) and ratios[("maml", "l2l")] == pytest.approx(2.0)
    assert ratios[("reptile", "torch")] == pytest.approx(10.0) and ratios[("maml", "higher")] == pytest.approx(1.0)
    text = (tmp_path / "out" / "speed.md").read_text()
    assert "| x_vs_higher_maml |" in text and "x_vs_l2l_maml" not in text and "func vs higher" in text, text
    # first-order MAML on func as the yardstick: fomaml-func (0.5 ms) over each
    table = meta_iteration_table(frame, parse_yardstick("fomaml:func"))
    assert _ratios(table, "x_vs_func_fomaml")[("maml", "l2l")] == pytest.approx(0.025)
    end = end_to_end_table(frame, parse_yardstick("fomaml:func")).set_index("backend")["x_vs_func"]
    assert end["l2l"] == pytest.approx(0.05) and end["func"] == pytest.approx(1.0)


def test_a_yardstick_not_measured_says_so(tmp_path, capsys):
    path = _iterations_json(tmp_path)
    assert main([str(path), str(tmp_path / "out"), "--yardstick", "maml:jax"]) == 0
    err = capsys.readouterr().err
    assert "yardstick maml:jax has no meta-iteration measurement" in err and "x_vs_jax_maml" in err, err
    assert "> Note: yardstick maml:jax has no meta-iteration measurement" in (tmp_path / "out" / "speed.md").read_text()


@pytest.mark.parametrize("value", ["maml", "mmal:l2l", "reptile:l2l", "maml:l2l:x", ""])
def test_bad_yardstick_exits_2_naming_the_choices(tmp_path, capsys, value):
    path = _iterations_json(tmp_path)
    assert main([str(path), str(tmp_path / "out"), "--yardstick", value]) == 2
    err = capsys.readouterr().err
    assert f"got {value!r}; valid: " in err, err
    assert all(choice in err for choice in ("maml:l2l", "maml:higher", "reptile:torch")), err
    assert not (tmp_path / "out").exists(), "a bad yardstick must write nothing"


# ----------------------------------------------------------------------------- every peer runs (issue 13)

@pytest.mark.usefixtures("one_thread")
def test_every_peer_that_can_run_here_runs_side_by_side():
    """Each peer of the speed suite (eager, compiled, JAX, the libraries) builds and takes interleaved
    rounds on a small MAML cell; the ones that cannot run here say why (e.g. no CUDA)."""
    import torch

    from algorithms import HyperParams
    from tasks import get_task

    hp = HyperParams(inner_steps=1, meta_batch=5)
    batch = get_task("sine").sample(5, torch.Generator().manual_seed(0))
    names = [n for n in peer_timing.PEERS if peer_timing.missing(n, "maml", torch.device("cpu")) is None]
    assert {"func", "func-compiled", "generic", "generic-compiled", "compile"} <= set(names)
    assert peer_timing.missing("compile-cudagraphs", "maml", torch.device("cpu")) == "CUDA graphs need a CUDA device"
    built = [peer_timing.build(n, "maml", hp, batch, "cpu") for n in names]
    rounds = peer_timing.interleave(built, seconds=0.01, min_rounds=2, max_rounds=2)
    rows, _ = peer_timing.summarize(built, "cpu", threads=1, memory=False)
    assert rounds == 2 and [r["peer"] for r in rows] == names and all(r["ms_median"] > 0 for r in rows)
    assert all(r["calls_per_round"] >= 1 for r in rows)
    with pytest.raises(ValueError, match="unknown peer 'nope'; known peers: func, func-compiled, generic"):
        peer_timing.build("nope", "maml", hp, batch, "cpu")
