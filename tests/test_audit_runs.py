"""Audit of a run's life: each case breaks one promise on purpose, through the command line.

A finished run is skipped only while its model is whole and its own; a checkpoint is resumed only
when it is one of this run; nothing of a run is deleted before every check of the command that
replaces it has passed, and a refused command leaves no directory behind; a resume continues the
same run (same weights, same settings as this machine runs them) or is refused; a finished run's
numbers are finite; SIGTERM stops a run as Ctrl-C does; a disk error's hint fits its cause.
Every refusal is one line naming what to do, with only flags the command has.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import signal
import time
import zipfile
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from paper_repro import cli, runs
from paper_repro import model as model_lib
from paper_repro import trainee as trainee_lib
from paper_repro.errors import UserError
from paper_repro.experiments import resolve
from paper_repro.history import load_history, save_history
from paper_repro.runs import write_atomic
from paper_repro.solver import paper_solver
from paper_repro.training import callbacks

# One step an epoch, one epoch: a run of seconds.
ONE_STEP = ("train_subset=40", "test_subset=40", "batch_size=40", "epochs=1")
# How the shared finished run was asked for: XLA and host augmentation, both what a CPU runs
# anyway (XLA stays off there, and auto places the augmentation on the host).
AS_ASKED = ("jit_compile=true", "augment_on=host")
RUN = Path("smoke", "full-mnist")
FIXTURES = Path(__file__).parent / "fixtures" / "histories"
AGAIN = "paper-repro train full-mnist --preset smoke --seed 0 --force"  # trains RUN again
on_cpu = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="compares what a CPU runs"
)


def _sets(overrides) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def _train(runs_dir: Path, *extra: str, experiment: str = "full-mnist", overrides=None):
    overrides = (*ONE_STEP, *AS_ASKED) if overrides is None else overrides
    return ["train", experiment, "--preset", "smoke", "--runs-dir", str(runs_dir),
            *_sets(overrides), *extra]  # fmt: skip


def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err


def _digest(folder: Path) -> dict[str, str]:
    """Every file of a folder by content: what a refused command must leave as it was."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runs.LOCK_NAME
    }


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, tfds_dir) -> Path:
    """A runs directory holding one finished full-mnist run of one step, trained once."""
    root = tmp_path_factory.mktemp("finished") / "runs"
    assert cli.main(_train(root, "--quiet")) == 0
    return root


@pytest.fixture
def finished(finished_runs, tmp_path) -> Path:
    """A copy of the finished run's runs directory, for a test to damage."""
    return Path(shutil.copytree(finished_runs, tmp_path / "runs"))


# ---------------------------------------------------------------- 1. artifacts are what they claim


@on_cpu
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(AS_ASKED, id="identical command, XLA asked on a CPU"),
        pytest.param(("jit_compile=true", "augment_on=auto"), id="augment_on auto, host here"),
        pytest.param(("jit_compile=false", "augment_on=host"), id="XLA not asked, off here too"),
    ],
)
def test_the_same_run_as_this_machine_runs_it_is_skipped_as_finished(
    finished_runs, capsys, overrides
):
    code, out, err = _cli(capsys, _train(finished_runs, overrides=(*ONE_STEP, *overrides)))
    assert (code, err) == (0, "") and "already finished" in out


def test_a_run_with_other_settings_is_still_refused(finished_runs, capsys):
    changed = (*ONE_STEP, "jit_compile=true", "augment_on=device")
    code, _, err = _cli(capsys, _train(finished_runs, overrides=changed))
    _one_line(err)
    assert code == 2 and "other settings (augment_on: 'host' -> 'device')" in err


def _truncate(model: Path) -> None:
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def _flip_a_byte(model: Path) -> None:
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _not_keras(model: Path) -> None:
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("notes.txt", "a zip, but no model")


def _another_runs(model: Path) -> None:
    """The same network with the record of another run (seed 5): another run's model file."""
    with zipfile.ZipFile(model) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[model_lib.MODEL_RECORD] = members[model_lib.MODEL_RECORD].replace(
        b'"seed": 0', b'"seed": 5'
    )
    with zipfile.ZipFile(model, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


DAMAGES = {
    "truncated": (_truncate, "is not a whole Keras model"),
    "deleted": (lambda model: model.unlink(), "is missing"),
    "text": (lambda model: model.write_text("not a model"), "is not a whole Keras model"),
    "zip of no model": (_not_keras, "is not a Keras model"),
    "a byte flipped": (_flip_a_byte, "fails its checksum"),
    "another run's": (_another_runs, "is not this run's model"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_finished_run_whose_model_is_damaged_is_not_reported_finished(finished, capsys, damage):
    harm, problem = DAMAGES[damage]
    harm(finished / RUN / "model.keras")
    before = _digest(finished)
    code, out, err = _cli(capsys, _train(finished))
    _one_line(err)
    assert code == 2 and "already finished" not in out
    assert problem in err and f"`{AGAIN}`" in err
    assert _digest(finished) == before


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_retraining_from_a_damaged_source_names_the_command_that_retrains_it(
    finished, capsys, damage
):
    """The oracle retrains on the features of the full run of its seed. The hint it gives must
    be a command that trains that run again, not one that says it has finished (a loop)."""
    DAMAGES[damage][0](finished / RUN / "model.keras")
    oracle = _train(finished, experiment="retrain-oracle-mnist", overrides=ONE_STEP)
    code, _, err = _cli(capsys, oracle)
    _one_line(err)
    assert code == 2 and f"`{AGAIN}`" in err
    assert not (finished / "smoke" / "retrain-oracle-mnist").exists()
    code, out, err = _cli(capsys, _train(finished))  # the source's own command, without --force
    assert code == 2 and "already finished" not in out and "--force" in err


def _interrupted(runs_dir: Path, epochs: int = 1) -> Path:
    """The finished run turned into one interrupted after ``epochs`` epochs, before it wrote its
    model: its history says running. Returns the run directory (no checkpoint yet)."""
    root = runs_dir / RUN
    history = load_history(root / "history.json")
    running = dataclasses.replace(
        history, status="running", final=None, epochs=history.epochs[:epochs], converged=None
    )
    save_history(running, root / "history.json")
    return root


def _checkpoint(path: Path, classes: int, iterations: int) -> None:
    """A checkpoint as the trainer writes one (a compiled network, its optimizer built), of a
    full run on ``classes`` classes after ``iterations`` steps."""
    config = resolve("full-mnist", "smoke", ONE_STEP)
    network = model_lib.build_alexnet(classes, config.crop, init=config.init, seed=0)
    trainee = trainee_lib.for_mode(network, "full", paper_solver(config, 1), metrics=["accuracy"])
    trainee.optimizer.build(trainee.trainable_variables)
    trainee.optimizer.iterations.assign(iterations)
    trainee.save(path)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(
            lambda root: shutil.copy(root / "model.keras", root / "checkpoint.keras"),
            "holds no optimizer state",
            id="the final model copied over it",
        ),
        pytest.param(
            lambda root: _checkpoint(root / "checkpoint.keras", classes=5, iterations=1),
            "into 5 classes, this run 67x67 images into 10",
            id="another run's: 5 classes",
            marks=pytest.mark.slow,  # builds and saves a network: seconds
        ),
        pytest.param(
            lambda root: _checkpoint(root / "checkpoint.keras", classes=10, iterations=2),
            "the checkpoint is 2 epochs in, but its history records 1",
            id="another run's: ahead of its history",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_checkpoint_that_is_not_this_runs_is_refused_and_kept(finished, capsys, make, problem):
    root = _interrupted(finished)
    make(root)
    (root / "model.keras").unlink()
    before = _digest(finished)
    code, _, err = _cli(capsys, _train(finished))
    _one_line(err)
    assert code == 2 and problem in err and "move it away" in err and "--force" in err
    assert _digest(finished) == before


# ------------------------------------------------------- 2. nothing is deleted before it is checked


def _foreign_model(folder: Path) -> Path:
    other = keras.Sequential(
        [keras.Input((67, 67, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    other.save(folder / "other.keras")
    return folder / "other.keras"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        pytest.param(
            lambda tmp: ["--set", "test_subset=100000"], "--set test_subset 100000", id="subset"
        ),
        pytest.param(lambda tmp: ["--weights", str(tmp / "no.keras")], "no such", id="no weights"),
        pytest.param(
            lambda tmp: ["--weights", str(_foreign_model(tmp))],
            "not a paper_repro AlexNet",
            id="weights of another network",
        ),
        pytest.param(lambda tmp: ["--set", "drop_epochs=1,nan"], "drop_epochs", id="drop nan"),
    ],
)
def test_force_on_a_finished_run_checks_everything_before_replacing_it(
    finished, tmp_path, capsys, extra, problem
):
    before = _digest(finished)
    code, _, err = _cli(capsys, [*_train(finished), *extra(tmp_path), "--force"])
    _one_line(err)
    assert code == 2 and problem in err
    assert _digest(finished) == before and load_history(finished / RUN / "history.json").final


@pytest.mark.parametrize(
    "left", [("checkpoint.keras",), ("model.keras",), ("checkpoint.keras", "model.keras")]
)
def test_files_of_a_run_without_its_history_are_not_deleted_silently(finished, capsys, left):
    root = finished / RUN
    shutil.copy(root / "model.keras", root / "checkpoint.keras")
    for name in {"checkpoint.keras", "model.keras"} - set(left):
        (root / name).unlink()
    (root / "history.json").unlink()
    before = _digest(finished)
    code, _, err = _cli(capsys, _train(finished))
    _one_line(err)
    assert code == 2 and "but no history.json" in err and "--force" in err
    assert _digest(finished) == before


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        pytest.param(["--weights", "no-such.keras"], "no such model file", id="no weights"),
        pytest.param(["--set", "test_subset=100000"], "--set test_subset 100000", id="subset"),
        pytest.param(
            ["--set", "dataset=./no/such/folder"], "does not exist", id="no such image folder"
        ),
    ],
)
def test_a_run_refused_in_a_new_directory_leaves_no_directory(
    tmp_path, monkeypatch, capsys, tfds_dir, extra, problem
):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, [*_train(tmp_path / "runs"), *extra])
    _one_line(err)
    assert code == 2 and problem in err
    assert not (tmp_path / "runs").exists()


def test_a_refused_run_keeps_a_directory_that_existed_before(tmp_path, capsys):
    existing = tmp_path / "runs" / RUN
    existing.mkdir(parents=True)
    code, _, _ = _cli(capsys, [*_train(tmp_path / "runs"), "--weights", "no-such.keras"])
    assert code == 2 and existing.is_dir()


# ------------------------------------------------------ 3. a resume continues the same run, or not


def _started(runs_dir: Path, experiment: str, weights: Path | None, cached: bool = False) -> Path:
    """A run of ``experiment`` interrupted after one epoch, started from ``weights``: its
    history and a checkpoint (whose content the refusals below never get to read)."""
    from paper_repro import provenance

    config = resolve(experiment, "smoke", [*ONE_STEP, *(["cache_features=true"] if cached else [])])
    root = runs.run_directory(runs_dir, "smoke", experiment, 0, cached)
    history = load_history(FIXTURES / "full-mnist" / "history.json")
    started = dataclasses.replace(
        history, experiment=experiment, preset="smoke", mode=config.mode, seed=0, final=None,
        status="running", config=config.to_dict(), provenance=provenance.record(weights),
        epochs=history.epochs[:1], converged=None,
    )  # fmt: skip
    save_history(started, root / "history.json")
    (root / "checkpoint.keras").write_bytes(b"the first epoch")
    return root


@pytest.fixture
def two_weights(tmp_path) -> tuple[Path, Path]:
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    first.write_bytes(b"the first weights")
    second.write_bytes(b"other weights")
    return first, second


@pytest.mark.parametrize(
    ("experiment", "cached", "started_from", "given", "problem"),
    [
        ("retrain-mnist", False, 0, 1, "is not what this run started from"),
        ("retrain-mnist", True, 0, 1, "is not what this run started from"),
        ("full-mnist", False, None, 1, "started without pretrained weights"),
        ("full-mnist", False, 0, None, "pass --weights"),
    ],
    ids=["retraining", "cached retraining", "full, weights added", "full, weights dropped"],
)
def test_a_resume_with_other_weights_is_refused(
    tmp_path, capsys, two_weights, experiment, cached, started_from, given, problem
):
    runs_dir = tmp_path / "runs"
    start = None if started_from is None else two_weights[started_from]
    root = _started(runs_dir, experiment, start, cached)
    before = _digest(root)
    weights = [] if given is None else ["--weights", str(two_weights[given])]
    cache = ["--cache-features"] if cached else []
    code, _, err = _cli(
        capsys, [*_train(runs_dir, experiment=experiment, overrides=ONE_STEP), *weights, *cache]
    )
    _one_line(err)
    assert code == 2 and problem in err and "--force" in err
    assert _digest(root) == before


# ------------------------------------------------------------------ 4. a finished run is finite


@pytest.mark.parametrize(
    "drops",
    ["nan", "inf", "-1", "0", "2,1", "1,1", "1,nan"],
)
def test_drop_epochs_that_cannot_be_a_schedule_are_refused_at_once(tmp_path, capsys, drops):
    code, _, err = _cli(capsys, [*_train(tmp_path / "runs"), "--set", f"drop_epochs={drops}"])
    _one_line(err)
    assert code == 2 and "drop_epochs must each be a finite number of epochs > 0" in err
    assert not (tmp_path / "runs").exists()


def test_drop_iterations_out_of_order_are_refused(tmp_path, capsys):
    argv = [*_train(tmp_path / "runs"), "--set", "drop_epochs=", "--set", "drop_iterations=5,2"]
    code, _, err = _cli(capsys, argv)
    _one_line(err)
    assert code == 2 and "increasing order" in err and "--set drop_iterations=2,5" in err


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_a_run_whose_last_step_diverges_does_not_finish(tmp_path, capsys):
    """One step at a huge rate: the loss reported for it is computed before the update, so only
    the weights after it (and the test loss they give) show the divergence."""
    runs_dir = tmp_path / "runs"
    code, _, err = _cli(capsys, _train(runs_dir, overrides=(*ONE_STEP, "base_lr=1e30")))
    _one_line(err)
    assert code == 2 and "became" in err and "--set base_lr=" in err
    root = runs_dir / RUN
    assert not (root / "model.keras").exists()
    history = load_history(root / "history.json")
    assert history.status == "diverged" and "became" in history.diverged


def test_non_finite_weights_are_found_by_name():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="fc")])
    assert callbacks.non_finite_weights(model) == []
    model.layers[0].bias.assign([0.0, float("nan"), 1.0])
    assert [path.split("/", 1)[1] for path in callbacks.non_finite_weights(model)] == ["fc/bias"]


# ------------------------------------------------------- 5. signals and the disk, said as they are


def _stop_self(signum: int):
    def handler(args) -> None:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal arrives long before
        raise AssertionError("the signal did not stop the command")

    return handler


@pytest.mark.parametrize(
    ("signum", "line", "status"),
    [
        (signal.SIGTERM, "terminated (SIGTERM): rerun the same command to resume\n", 143),
        (signal.SIGINT, "interrupted: rerun the same command to resume\n", 130),
    ],
)
def test_sigterm_stops_a_command_as_ctrl_c_does(
    tmp_path, monkeypatch, capsys, signum, line, status
):
    monkeypatch.setattr(cli, "_list", _stop_self(signum))
    on_sigterm = signal.getsignal(signal.SIGTERM)
    code, _, err = _cli(capsys, ["list", "--runs-dir", str(tmp_path)])
    assert (code, err) == (status, line)
    assert signal.getsignal(signal.SIGTERM) is on_sigterm  # put back after the command


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_sigterm_during_training_keeps_the_checkpoint_and_the_rerun_resumes(
    tmp_path, monkeypatch, capsys
):
    runs_dir, overrides = tmp_path / "runs", (*ONE_STEP, "epochs=2", "drop_epochs=1")
    saved = callbacks.RunRecorder.on_epoch_end

    def end_epoch_then_terminate(self, epoch, logs=None):
        saved(self, epoch, logs)
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(callbacks.RunRecorder, "on_epoch_end", end_epoch_then_terminate)
    code, _, err = _cli(capsys, _train(runs_dir, overrides=overrides))
    assert (code, err) == (143, "terminated (SIGTERM): rerun the same command to resume\n")
    root = runs_dir / RUN
    assert (root / "checkpoint.keras").is_file()
    assert len(load_history(root / "history.json").epochs) == 1
    monkeypatch.undo()
    code, out, _ = _cli(capsys, _train(runs_dir, overrides=overrides))
    assert code == 0 and "resuming after epoch 1" in out
    assert load_history(root / "history.json").status == "finished"


def test_a_runs_dir_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = _cli(capsys, _train(tmp_path / "file" / "runs"))
    _one_line(err)
    assert code == 2 and f"{tmp_path / 'file'} is a file, not a directory" in err
    assert "--runs-dir" in err and "free some space" not in err
    assert (tmp_path / "file").read_text() == ""


HINTS = ("free some space", "fix the permissions", "read-only", "is a file", "check that")


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "free some space"),
        (PermissionError(errno.EACCES, "Permission denied"), "fix the permissions"),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        (OSError(errno.EIO, "Input/output error"), "check that"),
    ],
)
def test_a_disk_error_gives_the_hint_that_fits_it(tmp_path, monkeypatch, error, fix):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(runs, "_fsync_tree", fail)
    with pytest.raises(UserError, match=r"cannot write .*history\.json") as raised:
        write_atomic(tmp_path / "history.json", b"{}")
    assert fix in str(raised.value)
    others = [hint for hint in HINTS if hint not in fix]
    assert not [other for other in others if other in str(raised.value)]


@pytest.mark.parametrize("under", ["file", "file/deeper"], ids=["file exists", "not a directory"])
def test_writing_where_a_file_stands_for_a_directory_names_it(tmp_path, under):
    (tmp_path / "file").write_text("kept")
    with pytest.raises(UserError) as raised:
        write_atomic(tmp_path / under / "table.md", b"")
    message = str(raised.value)
    assert f"{tmp_path / 'file'} is a file, not a directory" in message
    assert "free some space" not in message and "permissions" not in message
    assert (tmp_path / "file").read_text() == "kept"


def test_list_shows_every_run_beside_a_damaged_history(finished_runs, tmp_path, capsys):
    runs_dir = Path(shutil.copytree(finished_runs / "smoke", tmp_path / "runs" / "smoke"))
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "history.json").write_text("{")
    code, out, err = _cli(capsys, ["list", "--runs-dir", str(tmp_path / "runs")])
    assert (code, err) == (0, "")
    assert f"{runs_dir / 'full-mnist'}: finished, 1 epochs" in out
    assert f"{runs_dir / 'broken'}: not listed, its history cannot be read" in out
