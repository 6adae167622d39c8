"""`benchmarks.speed.end_to_end` at a tiny size, and its projection arithmetic."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.speed import end_to_end


def test_projection_adds_the_fixed_costs_once():
    rows = pd.DataFrame([
        {"peer": "func", "startup_s": 1.0, "setup_s": 0.5, "first_iteration_s": 0.002, "sec_per_iter": 0.002,
         "evaluation_s": 0.5},
        {"peer": "func-compiled-cold", "startup_s": 1.0, "setup_s": 0.5, "first_iteration_s": 20.001,
         "sec_per_iter": 0.001, "evaluation_s": 0.5}])
    table = end_to_end.project(rows, (1_000, 100_000))
    assert table["total_s_1000"].tolist() == pytest.approx([4.0, 23.0])
    assert table["ms_per_iter_1000"].tolist() == pytest.approx([4.0, 23.0])
    assert table["x_vs_func_100000"].tolist() == pytest.approx([1.0, 122.0 / 202.0])


def test_a_tiny_run_writes_csv_and_markdown(tmp_path):
    assert end_to_end.main(["--peers", "func", "--iterations", "3", "--out", str(tmp_path), "--amortise", "10"]) == 0
    table = pd.read_csv(tmp_path / "end_to_end.csv")
    assert table["peer"].tolist() == ["func"] and table["x_vs_func_10"].tolist() == [1.0]
    assert table["sec_per_iter"].iloc[0] > 0 and table["engine"].iloc[0] == "accelerated"
    assert "| func | accelerated |" in (tmp_path / "end_to_end.md").read_text()


@pytest.mark.parametrize("argv", [["--peers", "funk"], ["--iterations", "1"], ["--amortise", "1k"],
                                  ["--core", "100000"]])
def test_bad_arguments_exit_2_naming_the_value(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        end_to_end.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and argv[1] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
