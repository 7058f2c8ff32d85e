"""The command line: every planned command, `reproduce --preset smoke`, evaluate and list."""

import csv
import re
import subprocess
import sys

import pytest

from paper_repro import cli
from paper_repro.history import load_history

COMMANDS = ("train", "evaluate", "list", "reproduce", "regenerate-tables", "regenerate-figures",
            "export", "import-caffe")  # fmt: skip


def test_help_lists_every_command_of_the_design():
    out = subprocess.run(
        [sys.executable, "-m", "paper_repro.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in COMMANDS:
        assert command in out


@pytest.fixture(scope="module")
def smoke_reproduction(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    code = cli.main(
        ["reproduce", "--preset", "smoke", "--runs-dir", str(root / "runs"), "--out", str(root)]
    )
    return code, root


@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_smoke_puts_its_runs_in_the_table_and_figure(smoke_reproduction):
    code, root = smoke_reproduction
    assert code == 0
    kept = root / "histories" / "smoke"
    full = load_history(kept / "full-mnist.history.json")
    retrain = load_history(kept / "retrain-mnist.history.json")
    assert full.status == retrain.status == "finished"
    rows = list(csv.DictReader((root / "table3.csv").open()))
    mnist = {r["column"]: r["value"] for r in rows if r["dataset"] == "mnist"}
    assert float(mnist["Full training"]) == pytest.approx(100 * full.final.top1, abs=0.005)
    assert float(mnist["Retraining"]) == pytest.approx(100 * retrain.final.top1, abs=0.005)
    assert f"{100 * full.final.top1:.2f}" in (root / "table3.md").read_text()
    assert (root / "figure5.png").stat().st_size > 0 and (root / "figure5.pdf").exists()


@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_again_skips_finished_runs(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    before = (root / "table3.md").read_bytes()
    args = ["reproduce", "--preset", "smoke", "--runs-dir", str(root / "runs"), "--out", str(root)]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 3
    assert (root / "table3.md").read_bytes() == before


@pytest.mark.usefixtures("tfds_dir")
def test_evaluate_a_run_gives_its_recorded_multi_crop_accuracy(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    run = root / "runs" / "smoke" / "retrain-mnist"
    assert cli.main(["evaluate", str(run)]) == 0
    final = load_history(run / "history.json").final
    assert f"5-crop top-1 {final.top1:.2%}" in capsys.readouterr().out


@pytest.mark.usefixtures("tfds_dir")
def test_evaluate_on_a_dataset_of_another_class_count_names_fc8(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    run = root / "runs" / "smoke" / "pretrain-imagenet"  # 5 classes (CIFAR-10's 0-4)
    assert cli.main(["evaluate", str(run / "model.keras"), "--dataset", "mnist"]) == 2
    assert "layer fc8 has shape (4096, 5) but mnist has 10 classes" in capsys.readouterr().err


@pytest.mark.usefixtures("tfds_dir")
def test_list_shows_presets_and_runs(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    assert cli.main(["list", "--runs-dir", str(root / "runs")]) == 0
    out = capsys.readouterr().out
    assert "preset mini:" in out and "retrain-cifar100" in out
    assert "retrain-mnist: finished, 2 epochs, top-1" in out


def test_regenerate_without_histories_says_which_command_makes_them(tmp_path, capsys):
    assert cli.main(["regenerate-tables", "--histories", str(tmp_path)]) == 2
    assert "paper-repro reproduce --preset mini" in capsys.readouterr().err


@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_with_cache_features_adds_the_cached_retraining(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    args = ["reproduce", "--preset", "smoke", "--runs-dir", str(root / "runs"), "--out",
            str(root), "--cache-features"]  # fmt: skip
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 2  # pretrain and full
    cached = load_history(root / "histories" / "smoke" / "retrain-mnist-cached.history.json")
    assert cached.cache is not None and cached.status == "finished"
    rows = list(csv.DictReader((root / "time_to_accuracy.csv").open()))
    cell = {r["column"]: r["value"] for r in rows if r["dataset"] == "mnist"}
    # The default target is one every mode reaches: each has its seconds and epoch.
    assert re.fullmatch(r"\d+ \([12]\)", cell["Cached retraining: s (epoch)"])
    assert cell["Of which cache build (s)"] == f"{cached.cache.build_seconds:.0f}"


def test_train_and_reproduce_share_their_run_flags_with_their_own_preset_defaults():
    shared = ["--data-dir", "d", "--runs-dir", "r", "--seed", "2", "--set", "epochs=1", "--force",
              "--cache-features", "--download"]  # fmt: skip
    parser = cli.build_parser()
    train = parser.parse_args(["train", "full-mnist", *shared])
    reproduce = parser.parse_args(["reproduce", *shared])
    for args in (train, reproduce):
        assert (args.data_dir, args.runs_dir, args.seed, args.overrides) == (
            "d",
            "r",
            2,
            ["epochs=1"],
        )
        assert args.force and args.cache_features and args.download
    assert (train.preset, reproduce.preset) == ("paper", "mini")
    assert parser.parse_args(["train", "full-mnist"]).preset == "paper"
