"""The benchmark suite's report: goals computed from the measured rates, files written as printed.

Speeds themselves are never asserted here (they are the suite's output, not a unit's behaviour);
the suite runs at the smallest size to check that every section measures and reports.
"""

import json

import pytest

import benchmarks.__main__ as suite
from benchmarks import bench_model


def test_goal_ratios_come_from_the_measured_values_and_missing_inputs_are_skipped():
    values = {"cached step": 900.0, "full step": 100.0, "frozen-features step": 200.0}
    rows = {row["ratio"]: row for row in suite.goal_rows(values)}
    assert rows["cached step / full step"] == {
        "ratio": "cached step / full step", "value": 9.0, "goal": 8.0, "met": True,
    }  # fmt: skip
    assert rows["frozen step / full step"]["value"] == 2.0
    assert not rows["frozen step / full step"]["met"]
    assert "full step / PyTorch full step" not in rows  # no torch numbers given


# What the suite measured on a 2-core Intel Xeon @ 2.80 GHz (AVX-512, no AMX), alone on it: the
# values its limits read (images/s, GFLOP/s, GB/s, ms).
INTEL_XEON_2CORE = {
    "full step": 50.06326191943098,
    "frozen-features step": 132.69803889190317,
    "cached step": 336.968917662299,
    "torch full step (best layout)": 37.713449141624174,
    "augmentation pipeline": 3214.275678287234,
    "frozen, fixed batch": 132.484963989528,
    "frozen, fed": 117.30795327277293,
    "cache pipeline": 40194.768777174526,
    "cached, fixed batch": 450.00349396087205,
    "cached, fed": 353.2526914474995,
    "cached step GFLOP/s": 118.52265430014748,
    "full step GFLOP/s": 217.59700899377427,
    "matmul GFLOP/s": 289.6155482477675,
    "memory GB/s": 20.985908828470837,
    "cached step ms": 237.41062100028407,
    "cached step matmul ms (at matmul rate)": 97.15824005390536,
    "cached step update ms (at memory GB/s)": 55.87667846956165,
}


def test_on_the_intel_xeon_every_goal_missed_is_missed_above_the_bounds():
    """Its cached step would meet both its goals at the matmul rate and the memory bandwidth,
    and its pipelines are fast enough to feed their steps: the four goals it misses are lost to
    overhead, and the report says so with the numbers behind it."""
    limits = {row["ratio"]: row for row in suite.limits(INTEL_XEON_2CORE)}
    assert set(limits) == {
        "cached step / full step",
        "cached step FLOP rate / matmul FLOP rate",
        "frozen step fed by the pipeline / fixed batch",
        "cached step fed by the cache / fixed batch",
    }
    assert {row["bound"] for row in limits.values()} == {"overhead"}
    assert "153 of its 237 ms" in limits["cached step / full step"]["why"]
    assert "would be 10.44" in limits["cached step / full step"]["why"]
    assert "would be 0.63" in limits["cached step FLOP rate / matmul FLOP rate"]["why"]
    assert "allows 0.96" in limits["frozen step fed by the pipeline / fixed batch"]["why"]


def test_a_goal_out_of_the_machines_reach_names_its_bound():
    """The same machine, made slower where each bound lies: a memory-bound update, a slow
    augmentation, a slow matmul-bound full step; each missed goal names the bound it hits."""
    values = {
        **INTEL_XEON_2CORE,
        "cached step ms": 400.0,
        "cached step update ms (at memory GB/s)": 300.0,
        "augmentation pipeline": 1000.0,
        "torch full step (best layout)": 60.0,
    }
    values["cached step"] = 80 * 1e3 / values["cached step ms"]
    values["cached step GFLOP/s"] = INTEL_XEON_2CORE["cached step GFLOP/s"] * 237.41 / 400.0
    limits = {row["ratio"]: row["bound"] for row in suite.limits(values)}
    assert limits["cached step / full step"] == "memory bandwidth"
    assert limits["cached step FLOP rate / matmul FLOP rate"] == "memory bandwidth"
    assert limits["augmentation pipeline / frozen step"] == "pipeline"
    assert limits["frozen step fed by the pipeline / fixed batch"] == "pipeline"
    assert limits["full step / PyTorch full step"] == "matmul rate"  # at 0.75 of it already
    assert set(limits.values()) <= set(suite.BOUNDS)
    matmul_bound = {
        **values,
        "cached step matmul ms (at matmul rate)": 350.0,
        "cached step update ms (at memory GB/s)": 30.0,
    }
    bound = {row["ratio"]: row["bound"] for row in suite.limits(matmul_bound)}
    assert bound["cached step / full step"] == "matmul rate"


def test_every_goal_met_leaves_nothing_to_explain():
    values = {**INTEL_XEON_2CORE, "cached, fed": 450.0, "frozen, fed": 132.0}
    values["cached step ms"] = values["cached step matmul ms (at matmul rate)"] + 56.0
    values["cached step"] = 80 * 1e3 / values["cached step ms"]
    values["cached step GFLOP/s"] = 118.52 * values["cached step"] / 336.97
    assert {row["ratio"] for row in suite.limits(values)} == set()
    assert all(row["met"] for row in suite.goal_rows(values))


@pytest.mark.slow
def test_the_suite_measures_every_section_and_writes_what_it_prints(tmp_path, capsys):
    result = suite.main(["--out", str(tmp_path), "--size", "67", "--resize", "76", "--batch",
                         "8", "--steps", "1", "--repeats", "1"])  # fmt: skip
    rates = result["images_per_second"]
    for name in ("full step", "frozen-features step", "cached step", "cached step, XLA",
                 "cached step, element-wise update", "cached step, TensorFlow's momentum kernel",
                 "cached step, fused Caffe update", "inference", "augmentation pipeline",
                 "frozen, fed", "cache pipeline", "cached, fed",
                 "10-crop evaluation (source images)"):  # fmt: skip
        assert rates[name] > 0, name
    chosen = result["update_kernel"]["kernel"]
    assert rates["cached step"] == rates[suite.KERNEL_VARIANTS[chosen]]
    assert {row["ratio"] for row in result["limits"]} == {
        row["ratio"] for row in result["goals"] if not row["met"]
    }
    derived = result["rates"]
    for name in ("matmul GFLOP/s", "memory GB/s", "cached step GFLOP/s", "cached step ms"):
        assert derived[name] > 0, name
    assert derived["cached step ms"] == pytest.approx(8e3 / rates["cached step"])
    assert result["precision"] == "float32"
    assert json.loads((tmp_path / "benchmark.json").read_text()) == result
    table = (tmp_path / "benchmark.md").read_text()
    # PyTorch's version is the comparison's denominator: recorded, and named where installed.
    assert result["torch"] == bench_model.torch_version()
    assert (f", PyTorch {result['torch']}, " in table) == (result["torch"] is not None)
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
