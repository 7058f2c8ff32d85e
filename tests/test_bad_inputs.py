"""Bad command lines: each one is refused in one line, exit status 2, before anything is written.

Every setting is checked when the run's config is resolved, before a run directory exists: a
mistake found after training (the 10-crop test of an unmirrored run) or after a first epoch (a NaN
learning rate) would cost the training, and a run directory left behind would need --force.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from paper_repro import cli

TRAIN = ["train", "full-mnist", "--preset", "smoke"]
REPRODUCE = ["reproduce", "--preset", "smoke"]

CASES = {
    "negative seed": ([*TRAIN, "--seed", "-1"], "seed must be a non-negative integer"),
    "seed past numpy's": ([*TRAIN, "--seed", str(2**32)], "seed must be a non-negative integer"),
    "reproduce, negative seed": ([*REPRODUCE, "--seed", "-3"], "seed must be a non-negative"),
    "10 crops unmirrored": ([*TRAIN, "--set", "test_crops=10"], "test_crops 10 adds the mirrored"),
    "10 crops, mirror off": (
        ["train", "full-cifar10", "--preset", "mini", "--set", "mirror=false"],
        "use --set test_crops=5",
    ),
    "test crops 7": ([*TRAIN, "--set", "test_crops=7"], "test_crops must be one of 1, 5, 10"),
    **{
        f"{key}={value}": ([*TRAIN, "--set", f"{key}={value}"], f"{key} must be a finite number")
        for key, values in {
            "base_lr": ("nan", "inf", "-inf", "-0.01", "0"),
            "momentum": ("nan", "1", "1.5", "-0.1"),
            "weight_decay": ("nan", "inf", "-0.0005"),
            "gamma": ("nan", "inf", "0", "-0.1"),
        }.items()
        for value in values
    },
    "target_mean on a full run": (
        [*TRAIN, "--set", "target_mean=true"],
        "already uses its own data's mean",
    ),
    "target_mean on the control": (
        ["train", "retrain-random-mnist", "--preset", "smoke", "--set", "target_mean=true"],
        "drop --set target_mean",
    ),
    "warmup_epochs negative": ([*TRAIN, "--set", "warmup_epochs=-1"], "warmup_epochs must be"),
    "warmup_epochs nan": ([*TRAIN, "--set", "warmup_epochs=nan"], "warmup_epochs must be"),
    "study, unknown cell": (["study", "nope"], "unknown study cell 'nope'; cells: baseline"),
    "study, bad seeds": (["study", "baseline", "--seeds", "0,x"], "--seeds 0,x: expected"),
    "study, base's sources missing": (
        ["study", "crop-131-control-rms-1", "fresh-fc67", "--runs-dir", "no-runs-here"],
        "retrains from the baseline cell's sources, not trained for seeds 0,1,2",
    ),
    "random_rms on a full run": ([*TRAIN, "--set", "random_rms=1"], "drop --set random_rms"),
    "reproduce, base_lr nan": ([*REPRODUCE, "--set", "base_lr=nan"], "base_lr must be a finite"),
    "dropout nan": ([*TRAIN, "--set", "dropout=nan"], "dropout must be in [0, 1)"),
    "dropout 1": ([*TRAIN, "--set", "dropout=1"], "dropout must be in [0, 1)"),
    "epochs text": ([*TRAIN, "--set", "epochs=x"], "--set epochs=x: expected int"),
    "epochs 0": ([*TRAIN, "--set", "epochs=0"], "epochs must be at least 1"),
    "batch 0": ([*TRAIN, "--set", "batch_size=0"], "batch_size must be at least 1"),
    "crop over resize": ([*TRAIN, "--set", "crop=300"], "crop 300 is larger than resize"),
    "unknown key": ([*TRAIN, "--set", "lr=0.1"], "unknown --set key 'lr'"),
    "no equals": ([*TRAIN, "--set", "base_lr"], "--set takes key=value"),
    "bool text": ([*TRAIN, "--set", "mirror=maybe"], "--set mirror=maybe: expected bool"),
    "unknown preset": (
        ["train", "full-mnist", "--preset", "huge"],
        "unknown preset 'huge'; presets: paper, mini, first-mini, study, smoke",
    ),
    "unknown experiment": (["train", "full-mnsit", "--preset", "smoke"], "did you mean full-mnist"),
    "cached full run": ([*TRAIN, "--cache-features"], "only retrain runs can use it"),
    "two schedules": (
        [*TRAIN, "--set", "drop_iterations=100"],
        "two schedules: keep one",
    ),
    "missing image folder": ([*TRAIN, "--set", "dataset=./no/such/folder"], "does not exist"),
    "missing weights": ([*TRAIN, "--weights", "no-such.keras"], "no such model file"),
    "retrain without weights": (
        ["train", "retrain-mnist", "--preset", "smoke"],
        "or pass --weights FILE.keras (for example CaffeNet from `paper-repro import-caffe`)",
    ),
}


@pytest.mark.parametrize(("name", "argv", "message"), [(k, *v) for k, v in CASES.items()])
def test_a_bad_command_line_is_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, name, argv, message
):
    monkeypatch.chdir(tmp_path)  # a relative --set dataset=./... resolves here
    runs = tmp_path / "runs"
    assert cli.main([*argv, "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
    # Weights and data are looked for once the run directory is locked (a resumed run needs no
    # weights); a refused run removes the directories it made, lock and all.
    assert not runs.exists()


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EROFS, "Read-only file system"), PermissionError(errno.EACCES, "Denied")],
)
def test_an_unwritable_run_directory_is_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, error
):
    """Root ignores permission bits, so the write probe is made to fail as a read-only mount or
    a directory of another user makes it fail."""
    write_bytes = Path.write_bytes

    def probe_fails(path: Path, data: bytes) -> int:
        if path.name.startswith(".write-test"):
            raise error
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", probe_fails)
    assert cli.main([*TRAIN, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write the run directory {tmp_path}" in err
    assert error.strerror in err and "--runs-dir" in err


def test_a_runs_dir_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main([*TRAIN, "--runs-dir", str(tmp_path / "file" / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the run directory" in err
