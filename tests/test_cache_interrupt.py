"""Ctrl-C during a feature-cache build, at any moment: the "interrupted" line and exit status 130,
never a traceback or a crash, and a rerun that finishes the build to the cache an uninterrupted
run writes. The build takes the interrupt between two batches (``runs.deferred_interrupt``)."""

import dataclasses
import filecmp
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import REPO, USER_ENV

from paper_repro import cli
from paper_repro.cache import CACHE_DIR_NAME
from paper_repro.history import load_history
from paper_repro.runs import HISTORY_NAME, deferred_interrupt, run_directory

EXPERIMENT = "retrain-random-mnist"  # needs no pretraining
# Ten batches of training images and two of test images: builds of seconds, 12 batches to stop
# between.
SETTINGS = ("train_subset=400", "test_subset=80", "batch_size=40")
INTERRUPTED = "interrupted: rerun the same command to resume\n"
ROUNDS = 6
BUILD_STARTS = re.compile(r"feature cache: \d+ views of \d+ images")
CACHE_FILES = ("features.npy", "labels.npy", "indices.npy")


def _command(runs: Path) -> list[str]:
    overrides = [a for setting in SETTINGS for a in ("--set", setting)]
    return [sys.executable, "-m", "paper_repro.cli", "train", EXPERIMENT, "--preset", "smoke",
            "--cache-features", "--runs-dir", str(runs), *overrides]  # fmt: skip


def _run(runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(runs), cwd=REPO, env=USER_ENV, capture_output=True, text=True)


def _interrupt_a_build(runs: Path, delay: float) -> tuple[bool, int, str]:
    """Run the command and press Ctrl-C ``delay`` seconds after a cache build starts: whether
    one started, the exit status and stderr (a run with nothing to build ends on its own)."""
    process = subprocess.Popen(_command(runs), cwd=REPO, env=USER_ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    built = False
    for line in process.stdout:  # pytest-timeout bounds the wait
        if BUILD_STARTS.match(line):
            built = True
            time.sleep(delay)
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate()
    return built, process.returncode, err


def _cache(runs: Path, split: str) -> Path:
    return next((runs / CACHE_DIR_NAME).glob(f"mnist-{split}-*"))


def _assert_same_caches(runs: Path, whole: Path) -> None:
    for split in ("train", "test"):
        built, expected = _cache(runs, split), _cache(whole, split)
        assert built.name == expected.name and (built / "meta.json").is_file()
        assert filecmp.cmpfiles(built, expected, CACHE_FILES, shallow=False)[0] == list(CACHE_FILES)


def _metrics(runs: Path) -> list[dict]:
    """Per-epoch numbers that must repeat exactly (wall time never does)."""
    history = load_history(run_directory(runs, "smoke", EXPERIMENT, 0, cached=True) / HISTORY_NAME)
    return [
        {k: v for k, v in dataclasses.asdict(e).items() if k != "wall_seconds"}
        for e in history.epochs
    ]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tfds_dir) -> Path:
    """The runs directory of the run never interrupted."""
    runs = tmp_path_factory.mktemp("whole")
    finished = _run(runs)
    assert finished.returncode == 0, finished.stderr
    return runs


@pytest.mark.slow
def test_builds_interrupted_at_random_moments_resume_to_the_uninterrupted_run(tmp_path, whole):
    runs, rng, interrupted = tmp_path / "runs", random.Random(0), 0
    for _ in range(ROUNDS):
        built, status, err = _interrupt_a_build(runs, rng.uniform(0.0, 1.5))
        if not built:  # the caches were whole: the run finished on its own
            assert status == 0, err
            break
        assert (status, err) == (cli.EXIT_INTERRUPTED, INTERRUPTED)
        interrupted += 1
    # Each interrupted run writes at least one batch of the 12 before it stops.
    assert interrupted >= ROUNDS // 2
    finished = _run(runs)
    assert finished.returncode == 0, finished.stderr
    _assert_same_caches(runs, whole)
    assert _metrics(runs) == _metrics(whole)


@pytest.mark.slow
def test_an_interrupt_while_the_build_reads_its_split_to_the_end_is_clean(tmp_path, whole):
    """All rows written, the files not yet renamed (as Ctrl-C just after the last batch leaves
    them): the rerun reads the split to its end. An interrupt landing in that read used to turn
    TensorFlow's end-of-sequence error into pybind11's "MISMATCH of original and normalized
    active exception types" RuntimeError: a traceback and exit status 1."""
    source = _cache(whole, "train")
    train = shutil.copytree(source, tmp_path / "runs" / CACHE_DIR_NAME / source.name)
    for name in CACHE_FILES:
        (train / name).rename(train / f"{name}.partial")
    (train / "meta.json").unlink()
    (train / "progress.json").write_text('{"rows": 400, "seconds": 1.0}')
    built, status, err = _interrupt_a_build(tmp_path / "runs", 0.5)
    assert built and (status, err) == (cli.EXIT_INTERRUPTED, INTERRUPTED)
    assert (train / "meta.json").is_file() and not (train / "progress.json").exists()
    assert filecmp.cmpfiles(train, source, CACHE_FILES, shallow=False)[0] == list(CACHE_FILES)


def test_a_deferred_ctrl_c_is_raised_where_the_block_asks():
    steps = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt() as stop_if_interrupted:
        stop_if_interrupted()  # no Ctrl-C yet: nothing to raise
        signal.raise_signal(signal.SIGINT)
        steps.append("went on")
        stop_if_interrupted()
        steps.append("never")
    assert steps == ["went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_is_raised_at_once_and_the_first_as_the_block_ends():
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
