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


def test_the_suite_measures_every_section_and_writes_what_it_prints(tmp_path, capsys):
    result = suite.main(["--out", str(tmp_path), "--size", "67", "--resize", "76", "--batch",
                         "8", "--steps", "1", "--repeats", "1"])  # fmt: skip
    rates = result["images_per_second"]
    for name in ("full step", "frozen-features step", "cached step", "cached step, XLA",
                 "cached step, element-wise update",
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
