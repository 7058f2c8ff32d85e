"""The benchmark suite's report: goals computed from the measured rates, files written as printed.

Speeds themselves are never asserted here (they are the suite's output, not a unit's behaviour);
the suite runs at the smallest size to check that every section measures and reports.
"""

import json

import pytest

import benchmarks.__main__ as suite


def test_goal_ratios_come_from_the_measured_values_and_missing_inputs_are_skipped():
    values = {"cached step": 900.0, "full step": 100.0, "frozen-features step": 200.0}
    rows = {row["ratio"]: row for row in suite.goal_rows(values)}
    assert rows["cached step / full step"] == {
        "ratio": "cached step / full step", "value": 9.0, "goal": 8.0, "met": True,
    }  # fmt: skip
    assert rows["frozen step / full step"]["value"] == 2.0
    assert not rows["frozen step / full step"]["met"]
    assert "full step / PyTorch full step" not in rows  # no torch numbers given


@pytest.mark.slow
def test_the_suite_measures_every_section_and_writes_what_it_prints(tmp_path, capsys):
    result = suite.main(["--out", str(tmp_path), "--size", "67", "--resize", "76", "--batch",
                         "8", "--steps", "1", "--repeats", "1"])  # fmt: skip
    rates = result["images_per_second"]
    for name in ("full step", "frozen-features step", "cached step", "cached step, XLA",
                 "cached step, element-wise update", "cached step, TensorFlow's momentum kernel",
                 "inference", "augmentation pipeline", "frozen, fed", "cache pipeline",
                 "cached, fed", "10-crop evaluation (source images)"):  # fmt: skip
        assert rates[name] > 0, name
    derived = result["rates"]
    for name in ("matmul GFLOP/s", "memory GB/s", "cached step GFLOP/s", "cached step ms"):
        assert derived[name] > 0, name
    assert derived["cached step ms"] == pytest.approx(8e3 / rates["cached step"])
    assert result["precision"] == "float32"
    assert json.loads((tmp_path / "benchmark.json").read_text()) == result
    table = (tmp_path / "benchmark.md").read_text()
    assert table in capsys.readouterr().out
    ratios = {row["ratio"]: row["value"] for row in result["goals"]}
    assert ratios["cached step / full step"] == pytest.approx(
        rates["cached step"] / rates["full step"]
    )
    assert f"| cached step / full step | {ratios['cached step / full step']:.2f} |" in table


def test_same_histories_ignores_timings_and_names_what_differs(tmp_path, capsys):
    from dataclasses import replace
    from pathlib import Path

    from benchmarks import same_histories
    from paper_repro.history import load_history, save_history

    fixtures = Path(__file__).parent / "fixtures" / "histories"
    run = load_history(fixtures / "full-mnist" / "history.json")
    slower = replace(run, epochs=tuple(replace(e, wall_seconds=99.0) for e in run.epochs))
    save_history(run, tmp_path / "a" / "full.history.json")
    save_history(slower, tmp_path / "b" / "full.history.json")
    assert same_histories.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out == "full.history.json: same\n"

    last = replace(run.epochs[-1], train_loss=run.epochs[-1].train_loss + 1e-7)
    changed = replace(run, epochs=(*run.epochs[:-1], last))
    save_history(changed, tmp_path / "b" / "full.history.json")
    save_history(run, tmp_path / "b" / "more.history.json")
    assert same_histories.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "full.history.json: differs in epochs" in out
    assert f"more.history.json: only in {tmp_path / 'b'}" in out
