"""Run directories: names, discovery, the pretrained model a run starts from, atomic writes,
the lock one run holds, and what two processes or a failing disk do to them."""

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from paper_repro import cli, runs
from paper_repro.errors import UserError
from paper_repro.experiments import resolve
from paper_repro.runs import (
    MODEL_NAME,
    RunPaths,
    find_histories,
    lock_run,
    model_file,
    pretrained_model,
    replace_atomic,
    run_directory,
    write_atomic,
)

REPO = Path(__file__).resolve().parents[1]


def test_run_directories_are_named_by_preset_experiment_cache_and_seed(tmp_path):
    assert run_directory(tmp_path, "mini", "full-mnist", 0) == tmp_path / "mini" / "full-mnist"
    cached = run_directory(tmp_path, "mini", "retrain-mnist", 3, cached=True)
    assert cached == tmp_path / "mini" / "retrain-mnist-cached-seed3"
    paths = RunPaths(cached)
    assert [paths.history.name, paths.checkpoint.name, paths.model.name, paths.logs.name] == [
        "history.json", "checkpoint.keras", "model.keras", "logs",
    ]  # fmt: skip


def test_a_retraining_starts_from_its_presets_pretraining_run_or_the_given_weights(tmp_path):
    retrain, full = resolve("retrain-mnist", "smoke"), resolve("full-mnist", "smoke")
    assert pretrained_model(full, None, tmp_path, "smoke", 0) is None
    with pytest.raises(UserError, match="train pretrain-imagenet --preset smoke --seed 0"):
        pretrained_model(retrain, None, tmp_path, "smoke", 0)
    pretrained = run_directory(tmp_path, "smoke", "pretrain-imagenet", 0) / MODEL_NAME
    pretrained.parent.mkdir(parents=True)
    pretrained.write_bytes(b"")
    assert pretrained_model(retrain, None, tmp_path, "smoke", 0) == pretrained
    assert pretrained_model(full, str(pretrained.parent), tmp_path, "smoke", 0) == pretrained
    with pytest.raises(UserError, match=r"--weights nowhere\.keras: no such model file"):
        pretrained_model(retrain, "nowhere.keras", tmp_path, "smoke", 0)


def test_each_seed_retrains_from_its_own_source_in_mini_and_from_seed_0s_in_paper(tmp_path):
    for preset, seed, source in (("smoke", 2, 2), ("mini", 1, 1), ("paper", 2, 0)):
        model = run_directory(tmp_path, preset, "pretrain-imagenet", source) / MODEL_NAME
        model.parent.mkdir(parents=True)
        model.write_bytes(b"")
        retrain = resolve("retrain-mnist", preset)
        assert pretrained_model(retrain, None, tmp_path, preset, seed) == model
    with pytest.raises(UserError, match="pretrain-imagenet --preset smoke --seed 1` first"):
        pretrained_model(resolve("retrain-mnist", "smoke"), None, tmp_path, "smoke", 1)


def test_a_runs_model_is_the_final_one_else_the_checkpoint(tmp_path):
    with pytest.raises(UserError, match="holds no trained model"):
        model_file(tmp_path)
    (tmp_path / "checkpoint.keras").write_bytes(b"")
    assert model_file(tmp_path) == tmp_path / "checkpoint.keras"
    (tmp_path / "model.keras").write_bytes(b"")
    assert model_file(tmp_path) == tmp_path / "model.keras"
    assert model_file(tmp_path / "model.keras") == tmp_path / "model.keras"
    with pytest.raises(UserError, match=r"neither a run directory nor a \.keras file"):
        model_file(tmp_path / "model.h5")


def test_replace_atomic_hands_a_fresh_sibling_with_the_suffix_and_returns_its_result(tmp_path):
    target = tmp_path / "out" / "model.keras"
    seen = []

    def write(path):
        seen.append(path)
        path.write_bytes(b"new")
        return 7

    assert replace_atomic(target, write) == 7
    assert seen[0].parent == target.parent and seen[0].suffix == ".keras"
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


def test_replace_atomic_replaces_a_directory_and_cleans_up_after_a_failing_writer(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_bytes(b"old")

    def write_tree(path):
        (path / "variables").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"new")

    replace_atomic(target, write_tree)
    assert sorted(p.name for p in target.iterdir()) == ["saved_model.pb", "variables"]

    def failing(path):
        path.mkdir()
        (path / "half").write_bytes(b"")
        raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        replace_atomic(target, failing)
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]
    assert (target / "saved_model.pb").read_bytes() == b"new"


def _saved_model(path: Path, content: bytes) -> Path:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(content)
    return path


@pytest.mark.parametrize("error", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()])
def test_a_directory_whose_replacement_fails_at_the_rename_is_put_back_whole(
    tmp_path, monkeypatch, error
):
    """The old SavedModel is renamed aside, not removed, before the new one is renamed in: a
    failure (or Ctrl-C) at that rename leaves the old one where it was, whole."""
    target = _saved_model(tmp_path / "exported", b"old")

    def failing_replace(source, destination):
        assert not target.exists()  # the old one is aside now
        raise error

    monkeypatch.setattr(runs.os, "replace", failing_replace)
    with pytest.raises((UserError, KeyboardInterrupt)):
        replace_atomic(target, lambda path: _saved_model(path, b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]
    assert (target / "saved_model.pb").read_bytes() == b"old"


def test_what_a_replacement_killed_between_its_renames_left_is_put_back(tmp_path):
    """Killed after renaming the old version aside: it is put back whole (and said so); an old
    version left after the new one was in is removed; no other target's is touched."""
    target = tmp_path / "exported"
    aside = _saved_model(tmp_path / ".exported.0123456789abcdef.previous", b"old")
    others = [
        _saved_model(tmp_path / ".other.0123456789abcdef.previous", b"x"),
        _saved_model(tmp_path / ".exported.0123456789abcdef.partial", b"new"),
    ]
    said = runs.restore_previous(target)
    assert said == [
        f"restored {target} from {aside.name}, where an interrupted replacement left it"
    ]
    assert (target / "saved_model.pb").read_bytes() == b"old" and not aside.exists()
    leftover = _saved_model(tmp_path / ".exported.fedcba9876543210.previous", b"older")
    assert runs.restore_previous(target) == []
    assert not leftover.exists() and (target / "saved_model.pb").read_bytes() == b"old"
    assert all(path.exists() for path in others)


@pytest.mark.parametrize(
    ("patched", "error"),
    [
        ("replace", OSError(errno.ENOSPC, "No space left on device")),
        # A full disk often shows only when the data is flushed.
        ("_fsync_tree", OSError(errno.ENOSPC, "No space left on device")),
        ("open", OSError(errno.EROFS, "Read-only file system")),
        ("open", PermissionError(errno.EACCES, "Permission denied")),
    ],
)
def test_a_failing_disk_gives_one_line_and_leaves_the_old_file_and_no_temporary(
    tmp_path, monkeypatch, patched, error
):
    target = tmp_path / "history.json"
    write_atomic(target, b"old")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(runs if patched == "_fsync_tree" else os, patched, fail)
    with pytest.raises(UserError, match=rf"cannot write {target} \({error.strerror}\)") as raised:
        write_atomic(target, b"new")
    assert "\n" not in str(raised.value) and "previous version" in str(raised.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_write_atomic_gives_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "history.json", b"{}")
    finally:
        os.umask(previous)
    # A temporary file from tempfile.mkstemp would be 0o600, unreadable by the rest of a team.
    assert (tmp_path / "history.json").stat().st_mode & 0o777 == 0o644


def test_find_histories_finds_both_names_in_a_fixed_order(tmp_path):
    for name in [
        "b/run.history.json",
        "a/history.json",
        "nested/z/history.json",
        "c/other.json",
        "c/xhistory.json",
        "d/.history.json.1a2b3c4d.tmp",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = [p.relative_to(tmp_path).as_posix() for p in find_histories(tmp_path)]
    assert found == ["a/history.json", "b/run.history.json", "nested/z/history.json"]


# ------------------------------------------------------------------ two processes, one directory

needs_flock = pytest.mark.skipif(runs.fcntl is None, reason="the run lock is an flock (POSIX)")

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from paper_repro.runs import RunPaths, lock_run
with lock_run(RunPaths(Path(sys.argv[1]))):
    print("locked", flush=True)
    time.sleep(120)
"""


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, **kwargs)


@pytest.fixture
def locked_run(tmp_path):
    """A run directory whose lock another process holds (its Popen), with a history in it."""
    root = run_directory(tmp_path, "smoke", "full-mnist", 0)
    root.mkdir(parents=True)
    (root / "history.json").write_text("the first run's")
    holder = _python("-c", _HOLD_LOCK, str(root), stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked"
    yield root, holder
    holder.kill()
    holder.wait()


@needs_flock
def test_a_second_run_on_a_locked_directory_is_refused_at_once_naming_the_first(locked_run, capsys):
    root, holder = locked_run
    args = ["train", "full-mnist", "--preset", "smoke", "--runs-dir", str(root.parents[1])]
    assert cli.main([*args, "--force"]) == 2  # not even --force touches the first run's files
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"being trained by pid {holder.pid} on {socket.gethostname()}" in err
    assert (root / "history.json").read_text() == "the first run's"


@needs_flock
def test_a_killed_runs_lock_does_not_block_its_resume(locked_run):
    root, holder = locked_run
    (root / ".checkpoint.0123abcd.partial.keras").write_bytes(b"half a checkpoint")
    holder.send_signal(signal.SIGKILL)  # killed mid-save
    holder.wait()
    assert f"pid {holder.pid}" in (root / "run.lock").read_text()  # left behind, not held
    with lock_run(RunPaths(root)):
        assert (root / "run.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        assert sorted(p.name for p in root.iterdir()) == ["history.json", "run.lock"]


@needs_flock
def test_a_lock_is_held_until_its_block_ends(tmp_path):
    paths = RunPaths(tmp_path)
    # A second holder in this process is refused too: an flock belongs to an open file.
    with lock_run(paths), pytest.raises(UserError, match=f"pid {os.getpid()}"), lock_run(paths):
        pass
    with lock_run(paths):
        pass


@needs_flock
def test_a_lock_freed_and_taken_by_a_third_process_is_waited_for_again(tmp_path):
    """``busy`` returns once the lock looks free, but a third process takes it first: the lock is
    tried again and ``busy`` hears of the third, rather than a blocking wait that would never end
    while the third is stopped."""
    first, holders, seen = _holding(tmp_path), [], []
    holders.append(first)

    def busy(holder: str) -> None:
        seen.append(holder)
        if len(seen) == 1:  # the first lets go and a third takes the lock before this one
            first.kill()
            first.wait()
            holders.append(_holding(tmp_path))
        else:
            holders[-1].kill()
            holders[-1].wait()

    result = {}

    def take() -> None:
        with runs.hold_lock(tmp_path / "build.lock", busy):
            result["held"] = (tmp_path / "build.lock").read_text()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(timeout=60)
    try:
        assert not thread.is_alive(), "a blocking wait on the third holder"
        assert seen == [f"pid {h.pid} on {socket.gethostname()}" for h in holders]
        assert result["held"] == f"pid {os.getpid()} on {socket.gethostname()}\n"
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def _holding(folder: Path) -> subprocess.Popen:
    """A process holding ``folder/build.lock`` as ``runs.hold_lock`` does, until it is killed."""
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom paper_repro.runs import hold_lock\n"
        "with hold_lock(Path(sys.argv[1]) / 'build.lock', lambda holder: sys.exit(1)):\n"
        "    print('locked', flush=True)\n    time.sleep(120)\n"
    )
    holder = _python("-c", script, str(folder), stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked"
    return holder


_WRITE_VERSIONS = """
import sys
from paper_repro.runs import write_atomic
target, writer, versions, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for version in range(versions):
    write_atomic(target, bytes([writer * 100 + version % 50]) * size)
"""


def test_two_writers_and_a_reader_of_one_file_see_only_whole_versions(tmp_path):
    """Two processes save one file 100 times each while this one reads it: every save succeeds,
    every read is a whole version (never a mix, never short), no temporary is left."""
    target, size = tmp_path / "checkpoint.keras", 256 * 1024
    write_atomic(target, bytes([0]) * size)
    writers = [
        _python("-c", _WRITE_VERSIONS, str(target), str(w), "100", str(size)) for w in (1, 2)
    ]
    reads, torn = 0, []
    while any(w.poll() is None for w in writers) or reads < 10:
        data = target.read_bytes()
        reads += 1
        if len(data) != size or data.count(data[:1]) != size:
            torn.append(reads)
    assert [w.wait() for w in writers] == [0, 0]
    assert not torn, f"{len(torn)} of {reads} reads saw a partial file"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.keras"]


def test_writers_in_threads_never_share_a_temporary(tmp_path):
    target, failures = tmp_path / "history.json", []

    def write(n: int) -> None:
        try:
            for version in range(50):
                write_atomic(target, f"{n} {version}".encode())
        except Exception as error:  # collected, asserted below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


_SAVE_CHECKPOINTS = """
import sys
import keras
from paper_repro.runs import replace_atomic
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(64)])
model.compile(optimizer="sgd", loss="mse")
for version in range(int(sys.argv[2])):
    model.set_weights([w * 0 + version for w in model.get_weights()])
    replace_atomic(sys.argv[1], model.save)
    print(version, flush=True)
"""


@pytest.mark.slow
def test_a_keras_reader_of_the_checkpoint_during_saves_always_loads_a_whole_one(tmp_path):
    """``paper-repro evaluate RUN`` while the run saves its checkpoint: every load succeeds and
    gives one saved version, never a mix of two."""
    keras = pytest.importorskip("keras")
    target = tmp_path / "checkpoint.keras"
    writer = _python("-c", _SAVE_CHECKPOINTS, str(target), "40", stdout=subprocess.PIPE)
    assert writer.stdout.readline().strip() == "0"  # the first save is complete
    loads = []
    while writer.poll() is None:
        kernel = keras.saving.load_model(target, compile=False).get_weights()[0]
        assert np.all(kernel == kernel.flat[0]), "a load mixed two versions"
        loads.append(int(kernel.flat[0]))
    assert writer.wait() == 0 and len(loads) >= 5 and loads == sorted(loads)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.keras"]
