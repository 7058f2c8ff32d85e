"""Exports and evaluations take whole models, at rest, and an interrupted export leaves nothing.

Each case breaks the principle on purpose and asserts the clean outcome: an unfinished retraining
on cached features (its checkpoint is the classifier block alone), a run being trained right now,
``.keras`` files that are not the package's AlexNet (other Keras models, truncated, damaged or no
models at all), and exports interrupted mid-write by SIGTERM, Ctrl-C or SIGKILL. A refusal is one
line on stderr with exit status 2, and writes nothing.

The fast cases use a small whole network (67-pixel input) saved once, and run directories laid
out as training leaves them; the slow ones train a run or kill a second process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY
from test_train import REPO, USER_ENV

from paper_repro import cli, evaluate, export, runs
from paper_repro.history import History, Provenance, load_history, save_history
from paper_repro.model import CLASSIFIER, build_alexnet, model_record, save_model
from paper_repro.runs import RunPaths, lock_run, run_directory

SIZE, RESIZE = 67, 76
NAMES = ("a", "b")
# The last line of a command stopped by Ctrl-C or SIGTERM; its exit status is 128 + the signal.
STOPPED = ": rerun the same command to resume\n"
needs_flock = pytest.mark.skipif(runs.fcntl is None, reason="runs are locked with flock (POSIX)")


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An image folder of two classes, ``train/`` and ``test/``: what the runs here trained on."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in NAMES:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                image = rng.integers(0, 256, (80, 80, 3), np.uint8)
                (root / split / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


@pytest.fixture(scope="module")
def network() -> keras.Model:
    return build_alexnet(len(NAMES), SIZE, seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory, folder, network) -> dict[str, Path]:
    """Model files: the whole network with its record, its classifier block alone (what an
    unfinished cached run checkpoints, and what the export once wrote of one), other models."""
    root = tmp_path_factory.mktemp("models")
    record = evaluate.trained_on(_config(folder), 0, NAMES)
    written = {name: root / f"{name}.keras" for name in ("alexnet", "classifier", "dense", "cnn")}
    save_model(network, written["alexnet"], record)
    save_model(network.get_layer(CLASSIFIER), written["classifier"], record)
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")]).save(
        written["dense"]
    )
    cnn = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Softmax(),
        ]
    )
    cnn.save(written["cnn"])
    return written


def _config(folder: Path, cached: bool = False) -> dict:
    return {"dataset": str(folder), "resize": RESIZE, "crop": SIZE, "mirror": True,
            "test_crops": 1, "cache_features": cached}  # fmt: skip


def _make_run(root: Path, folder: Path, checkpoint: Path, cached: bool = False) -> Path:
    """An unfinished run as training leaves it after an epoch: its history and ``checkpoint``
    (the whole network, or the classifier block alone for a run on cached features)."""
    root.mkdir(parents=True)
    os.link(checkpoint, RunPaths(root).checkpoint)
    provenance = Provenance("0.1.0", {}, None, None, "cpu", "host", "2026-01-01T00:00:00+00:00")
    history = History(
        "retrain-x", "smoke", str(folder), "retrain", 0, _config(folder, cached), provenance, (),
        None, "running", class_names=NAMES,
    )  # fmt: skip
    save_history(history, RunPaths(root).history)
    return root


def refusal(argv: list[str], capsys) -> str:
    """The command's one line on stderr; it must exit 2."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


def _evaluate_argv(source: Path, folder: Path) -> list[str]:
    return ["evaluate", str(source), "--dataset", str(folder), "--quiet"]


def _export_argv(source: Path, out: Path, fmt: str = "keras", *more: str) -> list[str]:
    return ["export", str(source), "--format", fmt, "--out", str(out), "--quiet", *more]


# ---------------------------------------------- an unfinished retraining on cached features


@pytest.mark.parametrize("fmt", ["keras", "saved_model"])
def test_an_unfinished_cached_run_is_not_exported_as_its_classifier(
    fmt, tmp_path, folder, files, capsys
):
    """Once written as if it were the model: a .keras of input 1x1x256 (fc6 .. fc8 alone)."""
    run = _make_run(tmp_path / "run", folder, files["classifier"], cached=True)
    out = tmp_path / ("exported.keras" if fmt == "keras" else "serving")
    err = refusal(_export_argv(run, out, fmt), capsys)
    assert f"{run} has not finished and its checkpoint.keras is no whole network" in err
    assert "classifier block alone, fc6 .. fc8 on pool5 features of shape (1, 1, 256)" in err
    assert "rerun the `paper-repro train` command that started the run to finish it" in err
    assert not out.exists() and not _hidden(tmp_path)


def test_evaluating_an_unfinished_cached_run_is_one_line(tmp_path, folder, files, capsys):
    run = _make_run(tmp_path / "run", folder, files["classifier"], cached=True)
    err = refusal(["evaluate", str(run), "--quiet"], capsys)
    assert "has not finished and its checkpoint.keras is no whole network" in err


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_classifier_block_alone_is_not_a_model(command, tmp_path, folder, files, capsys):
    """What the export once wrote of an unfinished cached run: evaluating it was a traceback."""
    source = files["classifier"]
    argv = _evaluate_argv(source, folder)
    if command == "export":
        argv = _export_argv(source, tmp_path / "again.keras")
    err = refusal(argv, capsys)
    assert f"{source}: model 'classifier' is not a paper_repro AlexNet" in err
    assert "a classifier block alone" in err and "a finished run's model.keras" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a run being trained right now


@needs_flock
@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("cached", [False, True], ids=["whole-checkpoint", "cached-checkpoint"])
def test_a_run_being_trained_now_is_refused(command, cached, tmp_path, folder, files, capsys):
    """Its checkpoint changes every epoch: once exported (or scored) without a word."""
    checkpoint = files["classifier" if cached else "alexnet"]
    run = _make_run(tmp_path / "run", folder, checkpoint, cached)
    out = tmp_path / "exported.keras"
    argv = _export_argv(run, out) if command == "export" else ["evaluate", str(run), "--quiet"]
    with lock_run(RunPaths(run)):  # as `paper-repro train` holds it for the whole run
        holder = (run / "run.lock").read_text()
        err = refusal(argv, capsys)
        assert (run / "run.lock").read_text() == holder  # the lock file is only read
    assert f"{run} is being trained now (pid {os.getpid()} on " in err
    assert "wait for the run to finish (it then writes model.keras)" in err
    assert not out.exists()


@needs_flock
def test_an_interrupted_run_exports_its_checkpoint_and_says_so(
    tmp_path, folder, files, network, capsys
):
    """A run killed mid-training leaves its lock file, held by no one: not a run in progress.
    Its checkpoint is the whole network after its last epoch; the export says which it took."""
    run = _make_run(tmp_path / "run", folder, files["alexnet"])
    (run / "run.lock").write_text("pid 4242 on a-gone-host\n")
    out = tmp_path / "exported.keras"
    assert cli.main(_export_argv(run, out)) == 0
    assert f"{run} has not finished: using its checkpoint.keras" in capsys.readouterr().err
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), np.uint8)
    reloaded = keras.saving.load_model(out, compile=False, safe_mode=True)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), network.predict(images, verbose=0), atol=1e-6
    )


# ---------------------------------------------------------------- .keras files that are no AlexNet


def _truncated(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])


def _with_record(source: Path, target: Path, record: str) -> None:
    """``source`` with its record member replaced by ``record`` (a zip's members cannot be
    rewritten in place: every other member is copied)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            if item.filename != "paper_repro.json":
                new.writestr(item, old.read(item))
        new.writestr("paper_repro.json", record)


def _zip_of_text(target: Path) -> None:
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("notes.txt", "not a model")


NOT_ALEXNETS = {
    # kind: (how the file is made from the fixture's files, what the line says)
    "dense": (lambda files, t: t.write_bytes(files["dense"].read_bytes()),
              "is not a paper_repro AlexNet (it needs the layers preprocess, features and "
              "classifier; it has dense"),
    "small cnn on images": (lambda files, t: t.write_bytes(files["cnn"].read_bytes()),
                            "is not a paper_repro AlexNet (it needs the layers preprocess"),
    "truncated": (lambda files, t: _truncated(files["dense"], t), "not a readable Keras model"),
    "text": (lambda files, t: t.write_text("model weights\n"), "not a readable Keras model"),
    "empty": (lambda files, t: t.write_bytes(b""), "not a readable Keras model"),
    "zip of text": (lambda files, t: _zip_of_text(t), "not a readable Keras model"),
    "record not JSON": (lambda files, t: _with_record(files["alexnet"], t, "{not json"),
                        "its member paper_repro.json (what the model was trained on) is not a "
                        "JSON object; the file is damaged"),
    "record a list": (lambda files, t: _with_record(files["alexnet"], t, "[1, 2]"),
                      "is not a JSON object"),
    "record nested deep": (lambda files, t: _with_record(files["alexnet"], t, "[" * 200_000),
                           "is not a JSON object"),
    "record of wrong types": (
        lambda files, t: _with_record(
            files["alexnet"], t, json.dumps({"config": [], "seed": "0", "class_names": "ab"})
        ),
        "its member paper_repro.json is damaged (config must be an object",
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("kind", NOT_ALEXNETS)
def test_a_keras_file_that_is_not_the_packages_alexnet_is_one_line(
    kind, command, tmp_path, folder, files, capsys
):
    """An other Keras model was a KeyError ('fc8'), a damaged record a JSON traceback."""
    make, expected = NOT_ALEXNETS[kind]
    source = tmp_path / "given" / "model.keras"
    source.parent.mkdir()
    make(files, source)
    out = tmp_path / "exported.keras"
    argv = _evaluate_argv(source, folder) if command == "evaluate" else _export_argv(source, out)
    err = refusal(argv, capsys)
    assert f"{source}: " in err and expected in err
    assert not out.exists() and not _hidden(tmp_path)


def test_the_record_of_a_model_file_is_read_back_as_written(files, folder):
    """The check of the record refuses damaged records only (the refusals above could be of
    every record): the whole network's record is its run's."""
    assert model_record(files["alexnet"]) == evaluate.trained_on(_config(folder), 0, NAMES)
    loaded = evaluate.load_source(files["alexnet"])
    assert (loaded.config, loaded.seed, loaded.class_names) == (_config(folder), 0, NAMES)


# ------------------------------------------------------------------- interrupted mid-write


def _signal_mid_write(monkeypatch, signum: int) -> None:
    """The .keras writer sends ``signum`` to this process once the temporary is written."""
    real = export.save_model

    def write_then_signal(model, path, record=None):
        real(model, path, record)
        assert Path(path).exists() and ".partial" in Path(path).name
        if signal.getsignal(signum) == signal.SIG_DFL:
            # The default action would end pytest here, the temporary left behind.
            raise AssertionError(f"{signal.Signals(signum).name} would end the export at once")
        os.kill(os.getpid(), signum)

    monkeypatch.setattr(export, "save_model", write_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_export_leaves_nothing_and_the_rerun_exports(
    signum, tmp_path, files, monkeypatch, capsys
):
    out = tmp_path / "exported.keras"
    _signal_mid_write(monkeypatch, signum)
    assert cli.main(_export_argv(files["alexnet"], out)) == 128 + signum
    err = capsys.readouterr().err
    assert err.endswith(STOPPED) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # neither the target nor a hidden temporary
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    monkeypatch.undo()
    assert cli.main(_export_argv(files["alexnet"], out)) == 0
    assert evaluate.load_source(out).class_names == NAMES


def test_an_interrupted_forced_export_keeps_the_previous_one(tmp_path, files, monkeypatch, capsys):
    out = tmp_path / "exported.keras"
    out.write_bytes(files["dense"].read_bytes())  # a previous export
    _signal_mid_write(monkeypatch, signal.SIGTERM)
    assert cli.main(_export_argv(files["alexnet"], out, "keras", "--force")) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.endswith(STOPPED)
    assert out.read_bytes() == files["dense"].read_bytes() and not _hidden(tmp_path)


def _stale(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(b"half an export")
    return path


@needs_flock
def test_a_later_export_removes_what_a_killed_export_of_its_target_left(tmp_path, files, capsys):
    """SIGKILL (or a power cut) leaves the temporary: the next export of the target removes it,
    and no other target's temporary nor any other file."""
    out = tmp_path / "exported.keras"
    stale = _stale(tmp_path, ".exported.0123456789abcdef.partial.keras")
    kept = [
        _stale(tmp_path, ".other.0123456789abcdef.partial.keras"),  # another target's
        _stale(tmp_path, ".exported.0123456789abcdef.partial"),  # a SavedModel "exported"'s
        _stale(tmp_path, ".exported.notahexname.partial.keras"),
        _stale(tmp_path, "exported.keras.partial"),
    ]
    assert cli.main(_export_argv(files["alexnet"], out)) == 0
    assert f"removed {stale}, the unfinished export of exported.keras" in capsys.readouterr().err
    assert not stale.exists() and all(path.exists() for path in kept)
    assert evaluate.load_source(out).class_names == NAMES


@needs_flock
def test_the_temporary_of_an_export_still_writing_is_left_alone(
    tmp_path, files, monkeypatch, capsys
):
    """Two exports of one target at once: the second must not remove the first's temporary
    (the first then could not move it into place), and both finish."""
    out = tmp_path / "exported.keras"
    real, written, go_on = export.save_model, threading.Event(), threading.Event()
    main = threading.current_thread()

    def write(model, path, record=None):
        real(model, path, record)
        if threading.current_thread() is not main:  # the first export, in a thread, waits
            written.set()
            assert go_on.wait(300)

    monkeypatch.setattr(export, "save_model", write)
    codes = []
    argv = _export_argv(files["alexnet"], out)
    thread = threading.Thread(target=lambda: codes.append(cli.main(argv)))
    thread.start()
    assert written.wait(300)
    temporary = _hidden(tmp_path)
    assert len(temporary) == 1
    assert cli.main(argv) == 0  # the second export, while the first one writes
    assert _hidden(tmp_path) == temporary  # still there
    go_on.set()
    thread.join()
    assert codes == [0] and not _hidden(tmp_path)
    assert "removed" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ slow: for real


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_a_real_cached_run_exports_only_once_finished(tmp_path, monkeypatch, capsys):
    """A retraining on cached features stopped before its end (Ctrl-C as it finishes) leaves the
    classifier as its checkpoint: export and evaluate refuse it; finished, its model.keras is
    the whole network, and the export scores what the run recorded."""
    from paper_repro.training import fit as fit_module

    experiment = "retrain-random-mnist"  # needs no pretraining
    runs_dir = tmp_path / "runs"
    train = ["train", experiment, "--preset", "smoke", "--cache-features", "--quiet",
             "--runs-dir", str(runs_dir), *(a for s in TINY for a in ("--set", s))]  # fmt: skip
    run = run_directory(runs_dir, "smoke", experiment, 0, cached=True)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "finish", stop)
    assert cli.main(train) == cli.EXIT_INTERRUPTED
    monkeypatch.undo()
    capsys.readouterr()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.keras", "history.json", "run.lock"]
    out = tmp_path / "exported.keras"
    err = refusal(_export_argv(run, out), capsys)
    assert "(1, 1, 256), not the whole network" in err and not out.exists()
    refusal(["evaluate", str(run), "--quiet"], capsys)

    assert cli.main(train) == 0
    assert cli.main(_export_argv(run, out)) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--quiet"]) == 0
    final = load_history(run / "history.json").final
    assert f"{final.crops}-crop top-1 {final.top1:.2%}" in capsys.readouterr().out


_EXPORT = [sys.executable, "-m", "paper_repro.cli", "export", "--format", "saved_model"]


def _kill_mid_write(source: Path, out: Path, signum: int) -> subprocess.CompletedProcess:
    """Export in another process, sent ``signum`` once its temporary folder appears."""
    process = subprocess.Popen([*_EXPORT, str(source), "--out", str(out)], cwd=REPO,
                               env=USER_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    while not _hidden(out.parent):  # pytest-timeout bounds the wait
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
@needs_flock
def test_a_killed_saved_model_export_leaves_no_hidden_folder_for_long(tmp_path, files, capsys):
    """SIGTERM: the temporary folder is removed at once; SIGKILL: the next export removes it."""
    out = tmp_path / "exports" / "serving"
    out.parent.mkdir()
    terminated = _kill_mid_write(files["alexnet"], out, signal.SIGTERM)
    assert terminated.returncode == 128 + signal.SIGTERM, terminated.stderr[-2000:]
    assert terminated.stderr.endswith(STOPPED)
    assert list(out.parent.iterdir()) == []

    killed = _kill_mid_write(files["alexnet"], out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    (left,) = _hidden(out.parent)
    assert cli.main(_export_argv(files["alexnet"], out, "saved_model")) == 0
    assert f"removed {out.parent / left}" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["serving"]
    metadata = tf.saved_model.load(str(out)).signatures["metadata"]()
    assert metadata["class_names"].numpy().astype(str).tolist() == list(NAMES)
