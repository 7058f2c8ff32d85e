"""Audit of the feature cache: each case is a way a cache could be used though it is not what it
claims to be, or a way a run could wait forever for another's build.

- A cache is keyed by what its features depend on: the images behind a folder's path (a file
  swapped, added, removed, moved to another class), the geometry and views, the network.
- A cache is used only whole: a truncated, missing or replaced array, an unreadable or foreign
  record, an interrupted build's truncated file or lying progress record are found before use; a
  damaged cache is set aside (moved, not deleted) and built again, in one line on stderr.
- A run waiting for another's build takes it over when that builder is gone (killed: the OS
  frees its lock) and gives up in one line, naming it, when it has been stopped too long.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from paper_repro import cache, cli, data, experiments
from paper_repro.errors import UserError
from paper_repro.history import load_history
from paper_repro.model import build_alexnet
from paper_repro.runs import HISTORY_NAME, run_directory

REPO = Path(__file__).resolve().parent.parent

IMAGES_PER_CLASS = {"train": 4, "test": 2}
EXPERIMENT = "retrain-random-mnist"  # needs no pretraining; 5 views (MNIST is not mirrored)
SETTINGS = ("train_subset=null", "test_subset=null", "batch_size=4")
# A process that holds a build lock as runs.hold_lock does, until its stdin closes.
HOLDER = """
import fcntl, os, socket, sys
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0)
lock.write(f"pid {os.getpid()} on {sys.argv[2] if len(sys.argv) > 2 else socket.gethostname()}\\n")
lock.flush()
print("holding", flush=True)
sys.stdin.read()
"""


def _write_images(root: Path, seed: int = 0) -> Path:
    """``root/{train,test}/{a,b}/NNN.png``: random 12x12 images, the same for the same seed."""
    rng = np.random.default_rng(seed)
    for split, count in IMAGES_PER_CLASS.items():
        for name in "ab":
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                _write_png(root / split / name / f"{i:03d}.png", rng)
    return root


def _write_png(path: Path, rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    path.write_bytes(tf.io.encode_png(image).numpy())


def _config(folder: Path | str, *overrides: str) -> experiments.RunConfig:
    settings = [f"dataset={folder}", *SETTINGS, "cache_features=true", *overrides]
    return experiments.resolve(EXPERIMENT, "smoke", settings)


def _caches(runs: Path, folder: Path | str, network, *overrides: str, verbose: int = 0):
    """The run's train and test caches (``cache.for_experiment``), built or opened in ``runs``."""
    config = _config(folder, *overrides)
    splits = data.load_experiment_data(config)
    return cache.for_experiment(runs, network, splits, config, verbose)


def _labels(folder: Path, split: str) -> np.ndarray:
    """The labels of a folder's split, in its order: what its cache must hold."""
    dataset, _ = data.load_split(str(folder), split)
    return np.concatenate([b["label"] for b in dataset.batch(64).as_numpy_iterator()])


@pytest.fixture(scope="module")
def network():
    return build_alexnet(2, 67, init="xavier", seed=1, mean=(120.0, 110.0, 100.0))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The image folder the module's cases start from (a case that changes it takes a copy)."""
    return _write_images(tmp_path_factory.mktemp("module") / "images")


@pytest.fixture(scope="module")
def whole(tmp_path_factory, images, network):
    """The caches an uninterrupted build of ``images`` writes, as arrays."""
    built = _caches(tmp_path_factory.mktemp("whole"), images, network)
    return {
        split: {name: np.array(getattr(c, name)) for name in ("features", "labels", "indices")}
        | {"name": c.path.name}
        for split, c in (("train", built.train), ("test", built.test))
    }


@pytest.fixture
def folder(tmp_path, images) -> Path:
    """A copy of ``images`` that the case may change."""
    return Path(shutil.copytree(images, tmp_path / "images"))


def _assert_equal(built: cache.FeatureCache, expected: dict) -> None:
    assert built.path.name == expected["name"]
    for name in ("features", "labels", "indices"):
        np.testing.assert_array_equal(getattr(built, name), expected[name], err_msg=name)


# --- 1. The key covers the images, the geometry and the network --------------------------------


def _swap_bytes(folder: Path) -> None:
    _write_png(folder / "train" / "a" / "000.png", np.random.default_rng(99))


def _add(folder: Path) -> None:
    _write_png(folder / "train" / "b" / "100.png", np.random.default_rng(98))


def _remove(folder: Path) -> None:
    (folder / "train" / "a" / "001.png").unlink()


def _move(folder: Path) -> None:
    os.replace(folder / "train" / "a" / "002.png", folder / "train" / "b" / "002a.png")


def _exchange(folder: Path) -> None:
    """The same files, the same count, the same mean pixel: two images' classes exchanged."""
    a, b = folder / "train" / "a" / "000.png", folder / "train" / "b" / "000.png"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)


def _swap_test_image(folder: Path) -> None:
    _write_png(folder / "test" / "b" / "001.png", np.random.default_rng(97))


CHANGES = {
    "a training image's bytes swapped": ("train", _swap_bytes),
    "a training image added": ("train", _add),
    "a training image removed": ("train", _remove),
    "a training image moved to the other class": ("train", _move),
    "two classes' images exchanged": ("train", _exchange),
    "a test image swapped": ("test", _swap_test_image),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_folder_gets_a_new_cache_never_the_old_one(tmp_path, folder, network, change):
    split, apply = CHANGES[change]
    runs = tmp_path / "runs"
    before = getattr(_caches(runs, folder, network), split)
    old = {name: np.array(getattr(before, name)) for name in ("features", "labels")}
    apply(folder)
    after = getattr(_caches(runs, folder, network), split)
    assert not after.reused and after.path != before.path
    np.testing.assert_array_equal(after.labels, _labels(folder, split))
    changed = old["features"].shape != after.features.shape or not np.array_equal(
        old["features"], after.features
    )
    assert changed or not np.array_equal(old["labels"], after.labels)


def test_a_touched_or_rewritten_image_keeps_its_cache(tmp_path, folder, network):
    """Only what an image holds counts: a new date, or the same bytes written again, reuses."""
    runs = tmp_path / "runs"
    first = _caches(runs, folder, network)
    image = folder / "train" / "a" / "000.png"
    image.write_bytes(image.read_bytes())
    os.utime(image, (1e9, 1e9))
    again = _caches(runs, folder, network)
    assert again.train.reused and again.train.path == first.train.path


def test_one_relative_folder_path_in_two_places_keys_two_caches(tmp_path, network, monkeypatch):
    runs = tmp_path / "runs"
    for place, seed in (("one", 1), ("two", 2)):
        _write_images(tmp_path / place / "images", seed)
    monkeypatch.chdir(tmp_path / "one")
    first = _caches(runs, "images", network)
    monkeypatch.chdir(tmp_path / "two")
    second = _caches(runs, "images", network)
    assert not second.train.reused and second.train.path != first.train.path
    assert not np.array_equal(first.train.features, second.train.features)


@pytest.mark.parametrize(
    "override", ["resize=80", "cache_views=1", "cache_dtype=float16", "mirror=true"]
)
def test_other_geometry_or_views_get_a_cache_of_their_own(tmp_path, images, network, override):
    runs = tmp_path / "runs"
    first = _caches(runs, images, network)
    other = _caches(runs, images, network, override)
    assert not other.train.reused and other.train.path != first.train.path


def test_another_network_gets_a_cache_of_its_own(tmp_path, images, network):
    runs = tmp_path / "runs"
    first = _caches(runs, images, network)
    other_network = build_alexnet(2, 67, init="xavier", seed=2, mean=(120.0, 110.0, 100.0))
    other = _caches(runs, images, other_network)
    assert not other.train.reused and other.train.path != first.train.path


# --- 2. A cache is used only whole ---------------------------------------------------------------


def _truncate(file: Path) -> None:
    os.truncate(file, file.stat().st_size // 2)


def _fewer_rows(file: Path) -> None:
    np.save(file, np.load(file)[:-1])


def _other_dtype(file: Path) -> None:
    np.save(file, np.load(file).astype(np.float16))


def _folder_in_place(file: Path) -> None:
    file.unlink()
    file.mkdir()


def _other_caches_record(path: Path) -> None:
    test_cache = next(p for p in path.parent.iterdir() if "-test-" in p.name)
    shutil.copy(test_cache / "meta.json", path / "meta.json")


def _edit_record(**changes) -> Callable[[Path], None]:
    def edit(file: Path) -> None:
        file.write_text(json.dumps(json.loads(file.read_text()) | changes))

    return edit


DAMAGES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "features.npy truncated": ("features.npy", _truncate),
    "labels.npy truncated": ("labels.npy", _truncate),
    "indices.npy emptied": ("indices.npy", lambda f: f.write_bytes(b"")),
    "features.npy deleted": ("features.npy", Path.unlink),
    "features.npy of one image fewer": ("features.npy", _fewer_rows),
    "features.npy of another dtype": ("features.npy", _other_dtype),
    "features.npy a folder": ("features.npy", _folder_in_place),
    "features.npy not an array": ("features.npy", lambda f: f.write_bytes(b"garbage" * 50)),
    "meta.json garbage": ("meta.json", lambda f: f.write_bytes(b"\x00{garbage")),
    "meta.json nested too deep": ("meta.json", lambda f: f.write_text("[" * 10**5 + "]" * 10**5)),
    "meta.json of another cache": ("", _other_caches_record),
    "meta.json with a negative build time": ("meta.json", _edit_record(build_seconds=-5.0)),
    "meta.json with no spec": ("meta.json", _edit_record(spec=None)),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_is_set_aside_and_built_again(
    tmp_path, images, network, whole, damage, capsys
):
    file_name, apply = DAMAGES[damage]
    runs = tmp_path / "runs"
    path = _caches(runs, images, network).train.path
    apply(path / file_name)
    capsys.readouterr()
    again = _caches(runs, images, network)
    err = capsys.readouterr().err
    assert not again.train.reused and again.test.reused
    _assert_equal(again.train, whole["train"])
    assert err.count("\n") == 1 and "is damaged" in err and "Traceback" not in err, err
    kept = path / "damaged"
    assert str(kept) in err and os.path.lexists(kept / "meta.json")  # set aside, not deleted
    if apply is not Path.unlink:
        assert os.path.lexists(kept / (file_name or "meta.json"))
    third = _caches(runs, images, network)
    assert third.train.reused and not capsys.readouterr().err


def test_a_whole_cache_is_reused_and_nothing_is_set_aside(tmp_path, images, network, capsys):
    runs = tmp_path / "runs"
    first = _caches(runs, images, network)
    capsys.readouterr()
    again = _caches(runs, images, network, verbose=1)
    out, err = capsys.readouterr()
    assert again.train.reused and again.test.reused and not err
    assert out.count("feature cache: reusing") == 2
    assert not (first.train.path / "damaged").exists()


def _interrupted(runs: Path, folder: Path, network, monkeypatch) -> Path:
    """A train cache build stopped by Ctrl-C after its first batch (4 images): its directory."""
    real = cache.extractor

    def stopping(model):
        extract, calls = real(model), []

        def run(images):
            calls.append(1)
            if len(calls) > 5:  # a batch's 5 views
                raise KeyboardInterrupt
            return extract(images)

        return run

    with monkeypatch.context() as patch:
        patch.setattr(cache, "extractor", stopping)
        with pytest.raises(KeyboardInterrupt):
            _caches(runs, folder, network)
    path = next((runs / cache.CACHE_DIR_NAME).iterdir())
    assert json.loads((path / "progress.json").read_text())["rows"] == 4
    return path


def _progress_rows(rows) -> Callable[[Path], None]:
    def claim(path: Path) -> None:
        (path / "progress.json").write_text(json.dumps({"rows": rows, "seconds": 1.0}))

    return claim


PARTIAL_DAMAGES: dict[str, Callable[[Path], None]] = {
    "features partial truncated": lambda p: _truncate(p / "features.npy.partial"),
    "labels partial truncated": lambda p: _truncate(p / "labels.npy.partial"),
    "progress claims every row": _progress_rows(8),
    "progress claims rows past the end": _progress_rows(9),
    "progress record garbage": lambda p: (p / "progress.json").write_text("{rows"),
}


@pytest.mark.parametrize("damage", PARTIAL_DAMAGES)
def test_a_damaged_interrupted_build_starts_over_never_finishing_with_zeros(
    tmp_path, images, network, whole, damage, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    path = _interrupted(runs, images, network, monkeypatch)
    PARTIAL_DAMAGES[damage](path)
    resumed = _caches(runs, images, network)
    _assert_equal(resumed.train, whole["train"])
    assert np.all(np.abs(resumed.train.features).reshape(8, -1).sum(axis=1) > 0)
    assert "Traceback" not in capsys.readouterr().err


def test_an_interrupted_build_resumes_where_it_stopped(
    tmp_path, images, network, whole, monkeypatch
):
    """The whole partial files of an interrupted build are kept: the rerun builds only the rest."""
    runs = tmp_path / "runs"
    _interrupted(runs, images, network, monkeypatch)
    real, shapes = cache.extractor, []

    def counting(model):
        extract = real(model)

        def run(images):
            shapes.append(int(images.shape[0]))
            return extract(images)

        return run

    monkeypatch.setattr(cache, "extractor", counting)
    resumed = _caches(runs, images, network)
    _assert_equal(resumed.train, whole["train"])
    assert sum(shapes) == 5 * 4 + 1 * 4  # the train cache's last 4 images, then the test cache


# --- 3. A run waiting for another's build never waits forever -----------------------------------


@pytest.fixture
def holder():
    """Start processes that hold a build lock, as a building run does; all ended at the end."""
    started = []

    def start(lock: Path, *host: str) -> subprocess.Popen:
        lock.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock), *host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        assert process.stdout.readline() == "holding\n"
        return process

    yield start
    for process in started:
        process.kill()  # also a stopped one
        process.wait()


def _in_thread(function: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Run ``function`` in a daemon thread: a hang is seen as a thread still alive."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = function()
        except Exception as error:  # the case inspects it
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _lock(runs: Path, whole: dict) -> Path:
    return runs / cache.CACHE_DIR_NAME / whole["train"]["name"] / "build.lock"


@pytest.fixture
def short_waits(monkeypatch):
    monkeypatch.setattr(cache, "STOPPED_GRACE_SECONDS", 1.0, raising=False)
    monkeypatch.setattr(cache, "POLL_SECONDS", 0.05, raising=False)


@pytest.mark.parametrize("how", ["killed", "ended"])
def test_a_build_takes_over_from_a_builder_that_is_gone(
    tmp_path, images, network, whole, holder, short_waits, how
):
    runs = tmp_path / "runs"
    builder = holder(_lock(runs, whole))
    thread, result = _in_thread(lambda: _caches(runs, images, network))
    thread.join(timeout=3.0)
    assert thread.is_alive(), f"did not wait for the lock: {result}"
    if how == "killed":
        builder.kill()
    else:
        builder.stdin.close()
    thread.join(timeout=120)
    assert not thread.is_alive(), "hang"
    assert "error" not in result, result
    assert not result["value"].train.reused
    _assert_equal(result["value"].train, whole["train"])


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_stopped_builder_ends_the_wait_in_one_line_naming_it(
    tmp_path, images, network, whole, holder, short_waits, verbose, capsys
):
    runs = tmp_path / "runs"
    builder = holder(_lock(runs, whole))
    os.kill(builder.pid, signal.SIGSTOP)
    thread, result = _in_thread(lambda: _caches(runs, images, network, verbose=verbose))
    thread.join(timeout=60)
    assert not thread.is_alive(), "hang"
    error = result.get("error")
    assert isinstance(error, UserError), result
    message = str(error)
    assert "\n" not in message and f"pid {builder.pid}" in message
    assert f"kill -CONT {builder.pid}" in message and "stopped" in message
    out = capsys.readouterr().out
    if verbose:
        assert f"waiting for pid {builder.pid}" in out and "is stopped" in out
    else:
        assert not out


def test_a_builder_stopped_briefly_is_waited_for(
    tmp_path, images, network, whole, holder, short_waits
):
    runs = tmp_path / "runs"
    builder = holder(_lock(runs, whole))
    thread, result = _in_thread(lambda: _caches(runs, images, network))
    os.kill(builder.pid, signal.SIGSTOP)
    time.sleep(0.5)
    os.kill(builder.pid, signal.SIGCONT)
    time.sleep(1.5)  # past the grace, counted only while stopped
    assert thread.is_alive(), result
    builder.stdin.close()
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in result, result
    _assert_equal(result["value"].train, whole["train"])


def test_a_builder_on_another_host_is_waited_for_while_it_holds_the_lock(
    tmp_path, images, network, whole, holder, short_waits
):
    """Its state cannot be read from here: no guess, the lock alone decides."""
    runs = tmp_path / "runs"
    builder = holder(_lock(runs, whole), "elsewhere.example")
    os.kill(builder.pid, signal.SIGSTOP)
    thread, result = _in_thread(lambda: _caches(runs, images, network))
    thread.join(timeout=3.0)
    assert thread.is_alive(), result
    builder.kill()
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in result, result


def _train_argv(runs: Path, folder: Path, *extra: str) -> list[str]:
    settings = [a for s in (*SETTINGS, "epochs=1", "drop_epochs=1") for a in ("--set", s)]
    return ["train", EXPERIMENT, "--preset", "smoke", "--cache-features", "--quiet",
            "--runs-dir", str(runs), "--set", f"dataset={folder}", *settings, *extra]  # fmt: skip


def _interrupt(images: tf.Tensor) -> tf.Tensor:
    raise KeyboardInterrupt


def test_train_quiet_waiting_for_a_stopped_builder_exits_in_one_line(
    tmp_path, images, holder, short_waits, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    with monkeypatch.context() as patch:  # a first run, Ctrl-C as its build starts: the cache
        patch.setattr(cache, "extractor", lambda model: _interrupt)
        assert cli.main(_train_argv(runs, images)) == 130
    capsys.readouterr()
    path = next((runs / cache.CACHE_DIR_NAME).iterdir())
    builder = holder(path / "build.lock")
    os.kill(builder.pid, signal.SIGSTOP)
    thread, result = _in_thread(lambda: cli.main(_train_argv(runs, images)))
    thread.join(timeout=120)
    assert not thread.is_alive(), "hang"
    assert result.get("value") == 2, result
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1 and "Traceback" not in err
    assert f"pid {builder.pid}" in err and f"kill -CONT {builder.pid}" in err


# --- The command line, end to end ---------------------------------------------------------------


def _history(runs: Path):
    directory = run_directory(runs, "smoke", EXPERIMENT, 0, cached=True)
    return load_history(directory / HISTORY_NAME)


@pytest.mark.slow
def test_train_force_after_the_folder_changed_builds_a_new_cache(tmp_path, folder, capsys):
    runs = tmp_path / "runs"
    assert cli.main(_train_argv(runs, folder)) == 0
    first = _history(runs).cache
    _exchange(folder)
    capsys.readouterr()
    assert cli.main(_train_argv(runs, folder, "--force")) == 0
    out, err = capsys.readouterr()
    second = _history(runs).cache
    assert second.train != first.train and not second.reused
    assert "ran out of data" not in out + err and "Traceback" not in err
    labels = np.load(runs / cache.CACHE_DIR_NAME / second.train / "labels.npy")
    np.testing.assert_array_equal(labels, _labels(folder, "train"))


@pytest.mark.slow
@pytest.mark.parametrize("force", [True, False], ids=["--force", "a new run"])
def test_train_gets_past_a_damaged_cache(tmp_path, images, force, capsys):
    runs = tmp_path / "runs"
    assert cli.main(_train_argv(runs, images)) == 0
    path = runs / cache.CACHE_DIR_NAME / _history(runs).cache.train
    whole = np.load(path / "features.npy")
    _truncate(path / "features.npy")
    if not force:
        shutil.rmtree(run_directory(runs, "smoke", EXPERIMENT, 0, cached=True))
    capsys.readouterr()
    assert cli.main(_train_argv(runs, images, *["--force"] * force)) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and "Traceback" not in err, err
    history = _history(runs)
    assert history.status == "finished" and not history.cache.reused
    np.testing.assert_array_equal(np.load(path / "features.npy"), whole)


def test_a_resumed_cached_run_whose_caches_changed_is_refused(tmp_path):
    """A cached run resumed after its data changed would train its remaining epochs on other
    features than its recorded ones: refused in one line, naming both caches and --force."""
    import dataclasses
    import types

    from paper_repro.history import CacheRecord
    from paper_repro.training.fit import _check_same_caches

    history = load_history(
        REPO / "figures/mini-lr-0.001/histories/mini/retrain-mnist-cached.history.json"
    )
    run = types.SimpleNamespace(shared=types.SimpleNamespace(root=tmp_path / "run"))
    same = dataclasses.replace(history.cache, build_seconds=1.0, reused=True)
    _check_same_caches(run, history, same)  # the same caches, reused: resumed
    other = CacheRecord("mnist-train-0123abcd", history.cache.test, 1.0, False)
    with pytest.raises(UserError, match=r"was trained on the feature caches .* --force") as caught:
        _check_same_caches(run, history, other)
    assert "\n" not in str(caught.value) and "mnist-train-0123abcd" in str(caught.value)
