"""A command line that explains itself: a mistake is refused in one line, in a fraction of a
second, before TensorFlow is imported; every ``--set`` key is listed with its type, default and
meaning; ``list`` shows the runs first; ``evaluate`` refuses images of other classes; and
``reproduce`` ends with what it found and where it wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from paper_repro import cli, experiments
from paper_repro.errors import UserError
from paper_repro.experiments import MEANINGS, RunConfig

REPO = Path(__file__).resolve().parent.parent
KEYS = [field.name for field in dataclasses.fields(RunConfig)]
TRAIN = ["train", "full-mnist", "--preset", "smoke"]
# Mistakes in settings, names, seeds and flags: none needs data, so none may wait for TensorFlow.
MISTAKES = [
    [*TRAIN, "--set", "epochs=x"],
    [*TRAIN, "--set", "epoch=3"],
    [*TRAIN, "--set", "classes=a"],
    [*TRAIN, "--set", "test_crops=7"],
    [*TRAIN, "--seed", "-1"],
    ["train", "full-mnsit"],
    ["train", "full-mnist", "--preset", "huge"],
    ["reproduce", "--seeds", "0,x"],
    ["reproduce", "--seeds", "1,1"],
    ["reproduce", "--preset", "smoke", "--set", "base_lr=nan"],
    ["study", "no-such-cell"],
    ["study", "baseline", "--set", "dropout=1"],
    ["study", "baseline", "--only", "full-mnsit"],
    ["study", "baseline", "--only", ","],
    [*TRAIN, "--strategy", "bogus"],
    [*TRAIN, "--sed", "1"],
]


def test_mistakes_are_one_line_each_before_tensorflow_is_imported(tmp_path):
    """One fresh interpreter (this one has TensorFlow loaded already) runs every mistake through
    ``main`` and then checks that TensorFlow was never imported."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from paper_repro import cli
        codes = []
        for argv in json.loads(sys.argv[1]):
            try:
                codes.append(cli.main([*argv, "--runs-dir", {str(tmp_path / "runs")!r}]))
            except SystemExit as exit:
                codes.append(exit.code)
        print(json.dumps(codes))
        print("tensorflow" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(MISTAKES)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    codes, imported = done.stdout.splitlines()
    assert json.loads(codes) == [2] * len(MISTAKES), done.stderr
    assert imported == "False"
    errors = done.stderr.splitlines()
    assert len(errors) == len(MISTAKES), done.stderr
    assert all(re.match(r"paper-repro (train|reproduce|study): error: ", line) for line in errors)
    assert not (tmp_path / "runs").exists()


def test_an_argparse_refusal_is_one_line_naming_the_commands_help(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*TRAIN, "--strategy", "bogus"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1
    assert err.startswith("paper-repro train: error: argument --strategy: invalid choice")
    assert err.endswith("; see `paper-repro train --help`\n")


def test_an_unknown_flag_is_refused_by_its_command_with_the_flag_it_resembles(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--runs_dir=r"])
    assert capsys.readouterr().err == (
        "paper-repro reproduce: error: unrecognized arguments: --runs_dir=r (did you mean "
        "--runs-dir?); see `paper-repro reproduce --help`\n"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train_subset=all",
            "--set train_subset=all: expected int, such as --set train_subset=800; --set "
            "train_subset=none clears it",
        ),
        ("classes=a", "--set classes=a: expected ints, comma-separated; --set classes=none clears"),
        ("drop_epochs=x", "such as --set drop_epochs=1; --set drop_epochs= clears it"),
        ("epochs=x", "--set epochs=x: expected int, such as --set epochs=2"),
        ("lr=0.1", "unknown --set key 'lr' (did you mean base_lr?); `paper-repro settings` lists"),
        ("base_lr", "--set takes key=value, got 'base_lr': give base_lr a value, such as"),
        ("precision=bfloat16", "got 'bfloat16' (did you mean mixed_bfloat16?)"),
        ("max_iterations=0", "or --set max_iterations=none to run every epoch"),
    ],
)
def test_a_bad_setting_names_its_key_its_type_and_how_to_clear_it(override, message):
    with pytest.raises(UserError) as refused:
        experiments.resolve("full-mnist", "smoke", [override])
    assert message in str(refused.value)
    assert "subset_size" not in str(refused.value) and "class_subset" not in str(refused.value)


def test_every_setting_has_a_meaning():
    assert list(MEANINGS) == KEYS


def test_settings_lists_every_key_with_its_type_default_and_meaning(capsys):
    assert cli.main(["settings"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    assert list(lines) == KEYS
    for field in dataclasses.fields(RunConfig):
        line = lines[field.name]
        assert experiments.setting_type(field.name) in line and MEANINGS[field.name] in line
    assert re.match(r"epochs +30 +int - training epochs$", lines["epochs"])
    assert re.match(r"classes +none +ints, comma-separated, or none - ", lines["classes"])


def test_settings_of_an_experiment_shows_its_values_in_the_preset(capsys):
    assert cli.main(["settings", "retrain-cifar10", "--preset", "mini"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^key +retrain-cifar10 in preset mini +type - meaning$", out, re.M)
    assert re.search(r"^epochs +9 +int", out, re.M)
    assert re.search(r"^classes +5,6,7,8,9 +ints", out, re.M)


def test_the_training_commands_help_names_every_key_and_the_settings_command(capsys):
    for command in (["train", "x"], ["reproduce"], ["study"]):
        with pytest.raises(SystemExit):
            cli.main([*command, "--help"])
        text = "".join(capsys.readouterr().out.split())  # argparse wraps at spaces and hyphens
        said = ("`paper-repro settings` lists every key", f"--set keys: {', '.join(KEYS)}.")
        assert all("".join(words.split()) in text for words in said)


def test_the_cli_reference_lists_every_setting():
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    missing = [key for key in KEYS if f"`{key}`" not in section]
    assert not missing


def test_list_shows_the_runs_first_each_with_its_dataset_and_preset(tmp_path, capsys):
    runs = tmp_path / "runs"
    run = runs / "mini" / "full-mnist"
    run.mkdir(parents=True)
    shutil.copy(
        REPO / "figures" / "mini-lr-0.001" / "histories" / "mini" / "full-mnist.history.json",
        run / "history.json",
    )
    assert cli.main(["list", "--runs-dir", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"run directories under {runs.as_posix()}/:"
    assert re.fullmatch(
        rf"  {re.escape(str(run))}: finished, 9 epochs, top-1 \d+\.\d\d%; mnist, preset mini",
        lines[1],
    )
    assert lines[2].startswith("experiments, by preset") and lines[3] == "preset paper:"


def test_reproduce_ends_with_table_iii_and_where_it_wrote(tmp_path, monkeypatch, capsys):
    """``reproduce``'s last lines, its training stood in for by the committed mini histories."""
    from paper_repro import reports, reproduce

    kept = tmp_path / "histories" / "mini"

    def tables_of_the_committed_runs(preset, *, out, **options):
        shutil.copytree(REPO / "figures" / "mini-lr-0.001" / "histories" / "mini", kept)
        return [*reports.regenerate_tables(kept, out)]

    monkeypatch.setattr(reproduce, "reproduce", tables_of_the_committed_runs)
    assert cli.main(["reproduce", "--out", str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Table III, multi-crop test top-1 (%), {tmp_path / 'table3.md'}:"
    assert lines[1] == (
        "  MNIST (mini): full 98.68 ± 0.12 (n=3), retrain 88.74 ± 0.54 (n=3), retrain-random "
        "95.19 ± 0.30 (n=3); the paper: full 99.68, retrain 99.54"
    )
    assert lines[2].startswith("  CIFAR-10 (mini): full 86.71 ± 0.38 (n=3)")
    assert lines[3].startswith(f"wrote {tmp_path}/: table3.md, table3.tex, table3.csv")
    assert lines[4:] == [f"the histories they were made from: {kept}/"]


@pytest.fixture
def other_classes(tmp_path) -> tuple[Path, Path]:
    """A 67-pixel network whose record says it learned classes a and b, and an image folder
    of two other classes."""
    import tensorflow as tf

    from paper_repro import evaluate
    from paper_repro.model import build_alexnet, save_model

    folder = tmp_path / "images"
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (folder / split / name).mkdir(parents=True)
            image = np.zeros((80, 80, 3), np.uint8)
            (folder / split / name / "0.png").write_bytes(tf.io.encode_png(image).numpy())
    source = tmp_path / "ab.keras"
    config = {"dataset": "ab-images", "resize": 76, "crop": 67, "mirror": True, "test_crops": 10}
    save_model(build_alexnet(2, 67, seed=0), source, evaluate.trained_on(config, 0, ("a", "b")))
    return source, folder


def test_evaluate_refuses_images_of_other_classes_in_one_line(other_classes, capsys):
    source, folder = other_classes
    assert cli.main(["evaluate", str(source), "--dataset", str(folder), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"paper-repro evaluate: error: {source} was trained on 2 classes (a, b) but {folder} test "
        "has 2 classes (cat, dog); evaluate on images of the model's classes in its order, or "
        "leave --dataset out for the run's own\n"
    )


def test_list_into_a_pipe_closed_early_is_no_error(tmp_path):
    """``paper-repro list | head -1``: the reader leaving early is not a failure of list."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before list writes a line
    # Buffered, as a pipe's stdout is by default: the lines then reach the pipe at exit.
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        lister = subprocess.run(
            [sys.executable, "-m", "paper_repro.cli", "list", "--runs-dir", str(tmp_path)],
            stdout=write, stderr=subprocess.PIPE, text=True, cwd=REPO, env=buffered,
        )  # fmt: skip
    finally:
        os.close(write)
    assert lister.returncode == 0 and lister.stderr == ""


def test_the_study_table_alone_is_written_without_tensorflow(tmp_path):
    """``study`` with no cells only rewrites the table and figure from kept histories: it
    must not spend the seconds TensorFlow takes to load."""
    kept = tmp_path / "study" / "histories" / "baseline"
    shutil.copytree(REPO / "figures" / "study" / "histories" / "baseline", kept)
    script = textwrap.dedent(
        """
        import sys
        from paper_repro import cli
        code = cli.main(["study", "--out", sys.argv[1]])
        print(code, "tensorflow" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "study")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == "0 False", done.stderr
    assert "| baseline | mnist |" in (tmp_path / "study" / "table.md").read_text()
