"""The command line: every planned command, `reproduce --preset smoke`, evaluate and list."""

import csv
import json
import re
import subprocess
import sys

import pytest

from paper_repro import cli, cli_options
from paper_repro.history import load_history
from paper_repro.runs import run_directory

COMMANDS = ("train", "evaluate", "list", "reproduce", "regenerate-tables", "regenerate-figures",
            "export", "import-caffe")  # fmt: skip


def _help(args: list[str], capsys) -> str:
    """A command's ``--help`` text, in-process: argparse prints it and exits 0."""
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_of_the_design(capsys):
    out = _help(["--help"], capsys)
    for command in COMMANDS:
        assert command in out


@pytest.mark.slow  # TensorFlow's C++ runtime writes the start-up lines: only a subprocess sees them
def test_verbose_lets_tensorflow_start_up_lines_through_and_errors_stay_last(tmp_path):
    """The default's silence is checked on a real training run (test_train's killed run)."""
    missing = str(tmp_path / "missing.keras")
    command = [sys.executable, "-m", "paper_repro.cli", "evaluate", missing, "--verbose"]
    err = subprocess.run(command, capture_output=True, text=True).stderr.splitlines()
    assert len(err) > 1 and any("oneDNN" in line or "absl" in line for line in err[:-1])
    assert (
        err[-1]
        == f"paper-repro evaluate: error: {missing} is neither a run directory nor a .keras file"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_smoke_puts_its_runs_in_the_table_and_figure(smoke_reproduction):
    code, root = smoke_reproduction
    assert code == 0
    kept = root / "histories" / "smoke"
    full = load_history(kept / "full-mnist.history.json")
    retrain = load_history(kept / "retrain-mnist.history.json")
    control = load_history(kept / "retrain-random-mnist.history.json")
    assert full.status == retrain.status == control.status == "finished"
    assert (retrain.start, control.start) == ("pretrained-features", "random-features")
    rows = list(csv.DictReader((root / "table3.csv").open()))
    mnist = {r["column"]: r["value"] for r in rows if r["dataset"] == "mnist"}
    assert float(mnist["Full training"]) == pytest.approx(100 * full.final.top1, abs=0.005)
    assert float(mnist["Retraining"]) == pytest.approx(100 * retrain.final.top1, abs=0.005)
    control_top1 = float(mnist["Retraining, random features (control)"])
    assert control_top1 == pytest.approx(100 * control.final.top1, abs=0.005)
    assert f"{100 * full.final.top1:.2f}" in (root / "table3.md").read_text()
    assert (root / "figure5.png").stat().st_size > 0 and (root / "figure5.pdf").exists()
    # Where the job's time went: a row per run, the training steps as the histories have them.
    phases = (root / "time_by_phase.md").read_text()
    steps = sum(e.wall_seconds for e in full.epochs)
    assert "| full-mnist, seed 0 | " in phases and f"| {steps:,.1f} |" in phases


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_again_skips_finished_runs(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    before = (root / "table3.md").read_bytes()
    args = ["reproduce", "--preset", "smoke", "--runs-dir", str(root / "runs"), "--out", str(root)]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 5
    assert (root / "table3.md").read_bytes() == before


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
@pytest.mark.parametrize("source", ["", "model.keras"])
def test_evaluate_a_run_or_its_model_file_gives_its_recorded_accuracy(
    smoke_reproduction, capsys, source
):
    """The model file alone carries its run's dataset, classes, geometry and seed: no --dataset."""
    _, root = smoke_reproduction
    run = root / "runs" / "smoke" / "retrain-mnist"
    assert cli.main(["evaluate", str(run / source), "--quiet"]) == 0
    final = load_history(run / "history.json").final
    assert f"5-crop top-1 {final.top1:.2%}" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_export_without_any_dataset_keeps_the_class_names(
    smoke_reproduction, tmp_path, monkeypatch
):
    """The pretraining's 5 CIFAR-10 classes, named from its record, with no data to read."""
    import tensorflow as tf

    _, root = smoke_reproduction
    run = root / "runs" / "smoke" / "pretrain-imagenet"
    cifar = ["airplane", "automobile", "bird", "cat", "deer"]
    assert list(load_history(run / "history.json").class_names) == cifar
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # an empty data directory
    out = tmp_path / "served"
    assert cli.main(["export", str(run / "model.keras"), "--format", "saved_model", "--out",
                     str(out)]) == 0  # fmt: skip
    signatures = tf.saved_model.load(str(out)).signatures
    metadata = signatures["metadata"]()
    assert metadata["class_names"].numpy().astype(str).tolist() == cifar
    trained_on = json.loads(metadata["trained_on"].numpy())
    assert trained_on["config"]["classes"] == [0, 1, 2, 3, 4]
    assert trained_on["config"]["dataset"] == "cifar10" and trained_on["served"]["crop"] == 67
    top5 = signatures["serving_default"](images=tf.zeros((1, 32, 32, 3), tf.uint8))
    assert sorted(top5["top5_class_names"].numpy().astype(str)[0]) == sorted(cifar)


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_evaluate_on_a_dataset_of_another_class_count_names_fc8(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    run = root / "runs" / "smoke" / "pretrain-imagenet"  # 5 classes (CIFAR-10's 0-4)
    assert cli.main(["evaluate", str(run / "model.keras"), "--dataset", "mnist"]) == 2
    assert "layer fc8 has shape (4096, 5) but mnist has 10 classes" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_list_shows_presets_and_runs(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    assert cli.main(["list", "--runs-dir", str(root / "runs")]) == 0
    out = capsys.readouterr().out
    assert "preset mini:" in out and "retrain-cifar100" in out
    assert "retrain-mnist: finished, 2 epochs, top-1" in out
    assert f"run directories under {(root / 'runs').as_posix()}/:" in out


def test_list_names_the_default_runs_directory_as_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "run directories under runs/: none"


def test_regenerate_without_histories_says_which_command_makes_them(tmp_path, capsys):
    assert cli.main(["regenerate-tables", "--histories", str(tmp_path)]) == 2
    assert "paper-repro reproduce --preset mini" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_with_cache_features_adds_the_cached_retraining(smoke_reproduction, capsys):
    _, root = smoke_reproduction
    args = ["reproduce", "--preset", "smoke", "--runs-dir", str(root / "runs"), "--out",
            str(root), "--cache-features"]  # fmt: skip
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("already finished") == 2  # pretrain and full
    control = root / "histories" / "smoke" / "retrain-random-mnist-cached.history.json"
    assert load_history(control).cache is not None
    cached = load_history(root / "histories" / "smoke" / "retrain-mnist-cached.history.json")
    assert cached.cache is not None and cached.status == "finished"
    rows = list(csv.DictReader((root / "time_to_accuracy.csv").open()))
    cell = {r["column"]: r["value"] for r in rows if r["dataset"] == "mnist"}
    # The default target is one every mode reaches: each has its seconds and epoch.
    assert re.fullmatch(r"\d+ \([12]\)", cell["Cached retraining: s (epoch)"])
    assert cell["Of which cache build (s)"] == f"{cached.cache.build_seconds:.0f}"


def test_train_and_reproduce_share_their_run_flags_with_their_own_preset_defaults(capsys):
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
    # One rule: train and reproduce default to the mini preset, and their help says so.
    assert train.preset == reproduce.preset == cli_options.DEFAULT_PRESET == "mini"
    for command in ("train", "reproduce"):
        assert "(default: mini: the CPU-sized analog" in " ".join(
            _help([command, *(["x"] if command == "train" else []), "--help"], capsys).split()
        )


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        (["--seeds", "0,1", "--seed", "2"], "--seed 2 and --seeds 0,1 both given: keep one"),
        (["--seeds", "0,x"], "--seeds 0,x: expected a comma list of seeds >= 0, such as 0,1,2"),
        (["--seeds", "1,1"], "--seeds 1,1 repeats [1]: name each once"),
    ],
)
def test_bad_seeds_are_one_line_and_exit_2(tmp_path, capsys, seeds, message):
    args = ["reproduce", "--preset", "smoke", "--runs-dir", str(tmp_path), "--out", str(tmp_path)]
    assert cli.main([*args, *seeds]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_reproduce_runs_each_seed_and_gives_weights_only_to_pretrained_retraining(
    tmp_path, monkeypatch
):
    """Which runs reproduce starts, with which weights and seed, and where their histories go."""
    from paper_repro import reproduce as reproduce_module

    calls = []

    def fake_train(name, preset, *, weights, runs_dir, seed, overrides, **_):
        calls.append((name, seed, weights))
        cached = "cache_features=true" in overrides
        history = run_directory(runs_dir, preset, name, seed, cached) / "history.json"
        history.parent.mkdir(parents=True)
        history.write_text(f"{name} {seed}")

    monkeypatch.setattr(reproduce_module, "train", fake_train)
    monkeypatch.setattr(reproduce_module.reports, "regenerate_tables", lambda *a: [])
    monkeypatch.setattr(reproduce_module.reports, "regenerate_figures", lambda *a: [])
    reproduce_module.reproduce("smoke", weights="w.keras", runs_dir=tmp_path / "runs",
                               out=tmp_path, seeds=[0, 2], verbose=0)  # fmt: skip
    assert sorted(calls) == [
        ("full-mnist", 0, None), ("full-mnist", 2, None),
        ("retrain-mnist", 0, "w.keras"), ("retrain-mnist", 2, "w.keras"),
        ("retrain-oracle-mnist", 0, None), ("retrain-oracle-mnist", 2, None),
        ("retrain-random-mnist", 0, None), ("retrain-random-mnist", 2, None),
    ]  # fmt: skip
    kept = tmp_path / "histories" / "smoke"
    assert (
        kept / "retrain-random-mnist-seed2.history.json"
    ).read_text() == "retrain-random-mnist 2"
    calls.clear()  # smoke, as mini: each seed's source, trained before its other runs
    reproduce_module.reproduce("smoke", runs_dir=tmp_path / "again", out=tmp_path / "again",
                               seeds=[1, 2], verbose=0)  # fmt: skip
    assert [(name, seed) for name, seed, _ in calls if name.startswith("pretrain")] == [
        ("pretrain-imagenet", 1), ("pretrain-imagenet", 2),
    ]  # fmt: skip
    assert [seed for _, seed, _ in calls] == [1] * 5 + [2] * 5
    calls.clear()  # paper: one source, seed 0's, for every seed
    reproduce_module.reproduce("paper", runs_dir=tmp_path / "paper", out=tmp_path / "paper",
                               seeds=[1, 2], verbose=0)  # fmt: skip
    assert calls[0] == ("pretrain-imagenet", 0, None)
    assert [call[0] for call in calls].count("pretrain-imagenet") == 1


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_reproduce_with_two_seeds_tables_their_mean_and_count(tmp_path):
    """Weights stand in for pretraining (one run fewer); the controls must not receive them:
    the oracle starts from its seed's full run."""
    from paper_repro.model import build_alexnet

    weights = tmp_path / "source.keras"
    build_alexnet(10, 67, init="xavier", seed=5).save(weights)
    tiny = ["train_subset=80", "test_subset=40", "batch_size=40", "epochs=1"]
    args = ["reproduce", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path), "--seeds", "0,1", "--weights", str(weights),
            *[a for o in tiny for a in ("--set", o)]]  # fmt: skip
    assert cli.main(args) == 0
    kept = tmp_path / "histories" / "smoke"
    names = ("full-mnist", "retrain-mnist", "retrain-random-mnist", "retrain-oracle-mnist")
    for name in names:
        assert load_history(kept / f"{name}.history.json").seed == 0
        assert load_history(kept / f"{name}-seed1.history.json").seed == 1
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        f"{name}{seed}.history.json" for name in names for seed in ("", "-seed1")
    )
    oracle = load_history(kept / "retrain-oracle-mnist-seed1.history.json")
    full = run_directory(tmp_path / "runs", "smoke", "full-mnist", 1) / "model.keras"
    assert oracle.provenance.weights.path == str(full) and oracle.start == "oracle-features"
    control = load_history(kept / "retrain-random-mnist-seed1.history.json")
    assert control.provenance.weights is None and control.start == "random-features"
    retrain = load_history(kept / "retrain-mnist-seed1.history.json")
    assert retrain.provenance.weights.path == str(weights)
    rows = list(csv.DictReader((tmp_path / "table3.csv").open()))
    mnist = {r["column"]: r for r in rows if r["dataset"] == "mnist"}
    for column in ("Full training", "Retraining", "Retraining, random features (control)",
                   "Retraining, oracle features (positive control)"):  # fmt: skip
        assert mnist[column]["seeds"] == "2" and mnist[column]["value"].endswith("(n=2)")
    assert "Seeds: 0, 1." in (tmp_path / "table3.md").read_text(encoding="utf-8")
