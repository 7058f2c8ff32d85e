"""Where a run lives and how its files are written: names, layout, discovery, atomic replacement.

A run lives in ``RUNS_DIR/PRESET/EXPERIMENT`` (``-cached`` for a retraining on cached features,
``-seedN`` for seeds other than 0)::

    history.json      the record (paper_repro.history), rewritten atomically after every epoch
    checkpoint.keras  model + optimizer state after the last finished epoch (atomic)
    model.keras       the final model, without optimizer state, once the run has finished
    logs/             TensorBoard logs, when asked for
    run.lock          locked by the process training the run (``lock_run``), its pid and host in it

One process trains a run at a time: ``train`` holds an exclusive OS lock (``flock``) on
``run.lock`` for the whole run, and a second process on the same directory is refused at once,
naming the holder. The OS releases the lock when its process dies, however it dies, so a killed
run leaves no stale lock behind and rerunning its command resumes it.

Every file this package writes (histories, checkpoints, models, exports, tables, figures, the
feature cache's records) goes through one writer, ``replace_atomic``: readers and crashes see the
old file or the new one, never a half-written one. A writer that must not be cut at an
arbitrary point by Ctrl-C (the feature cache's build) takes it between two of its steps
(``deferred_interrupt``).

Nothing here imports TensorFlow or Keras (nor the history schema, which imports this module for
its writer): the tables and figures, made without TensorFlow, find histories with
``find_histories``, and a Keras model is written by handing its ``save`` to ``replace_atomic``.
For the same reason a run's model is only located here (``model_file``); ``evaluate.load_source``
loads it with its run's record, for the evaluation and the export.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from paper_repro import experiments
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig

try:
    import fcntl
except ImportError:  # Windows: no flock; runs and cache builds are not locked against each other
    fcntl = None

HISTORY_NAME = "history.json"
# Histories copied out of their run directories (next to a table) are named RUN.history.json.
HISTORY_SUFFIX = ".history.json"
CHECKPOINT_NAME = "checkpoint.keras"
MODEL_NAME = "model.keras"
LOGS_NAME = "logs"
LOCK_NAME = "run.lock"
# Run-directory files a trained model is taken from, in order of preference.
RUN_MODEL_FILES = (MODEL_NAME, CHECKPOINT_NAME)
# The members every Keras 3 ``.keras`` archive holds.
KERAS_MEMBERS = ("metadata.json", "config.json", "model.weights.h5")

_Written = TypeVar("_Written")


@dataclass(frozen=True)
class RunPaths:
    """The files of the run directory ``root``."""

    root: Path

    @property
    def history(self) -> Path:
        return self.root / HISTORY_NAME

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_NAME

    @property
    def model(self) -> Path:
        return self.root / MODEL_NAME

    @property
    def logs(self) -> Path:
        return self.root / LOGS_NAME

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME


def run_directory(
    runs_dir: str | os.PathLike, preset: str, experiment: str, seed: int, cached: bool = False
) -> Path:
    """``RUNS/PRESET/EXPERIMENT[-cached][-seedN]``: a cached retraining is a run of its own."""
    suffix = ("-cached" if cached else "") + (f"-seed{seed}" if seed else "")
    return Path(runs_dir) / preset / f"{experiment}{suffix}"


def pretrained_model(
    config: RunConfig, weights: str | None, runs_dir: str | os.PathLike, preset: str, seed: int
) -> Path | None:
    """The pretrained model a run starts from: --weights, else its preset's run that the config
    names (``pretrained``: the pretraining, or the oracle's full run), with the seed
    ``experiments.source_seed`` gives the run's ``seed``."""
    if weights:
        path = Path(weights)
        if path.is_dir():
            path = path / MODEL_NAME
        if not path.is_file():
            raise UserError(f"--weights {weights}: no such model file (a run dir or a .keras)")
        return path
    if config.mode != "retrain":
        return None
    source = experiments.source_seed(preset, seed, config.pretrained)
    default = run_directory(runs_dir, preset, config.pretrained, source) / MODEL_NAME
    if not default.is_file():
        command = f"`paper-repro train {config.pretrained} --preset {preset} --seed {source}`"
        if not experiments.pretrains(preset, config.pretrained):
            raise UserError(
                f"retraining on {config.pretrained}'s features needs that run finished: run "
                f"{command} first (it writes {default})"
            )
        raise UserError(
            f"retraining needs pretrained weights: run {command} first (it writes {default}), or "
            "pass --weights FILE.keras (for example CaffeNet from `paper-repro import-caffe`)"
        )
    return default


def train_again(experiment: str, preset: str, seed: int, cached: bool = False) -> str:
    """The hint for a run to train again: its own ``train`` command with ``--force``, the one
    that trains it again when it says it has finished (also where ``reproduce`` trained it)."""
    flags = f" --seed {seed}" + (" --cache-features" if cached else "")
    return (
        f"train it again with `paper-repro train {experiment} --preset {preset}{flags} --force` "
        "(with the options it was trained with)"
    )


def model_file(source: str | os.PathLike) -> Path:
    """The model file of a run directory (final, else checkpoint) or a .keras file itself."""
    source = Path(source)
    if source.is_dir():
        found = [source / name for name in RUN_MODEL_FILES if (source / name).is_file()]
        if not found:
            raise UserError(
                f"{source} holds no trained model ({' or '.join(RUN_MODEL_FILES)}); pass a "
                "finished run directory or a .keras file"
            )
        return found[0]
    if source.suffix != ".keras" or not source.is_file():
        raise UserError(f"{source} is neither a run directory nor a .keras file")
    return source


def model_problem(path: Path) -> str | None:
    """What makes ``path`` no whole ``.keras`` file (missing, truncated, not Keras' archive, a
    member failing its checksum), said after the path; None when it is whole.

    Read without Keras, in a fraction of the seconds a load takes: what a finished run is
    checked with before it is skipped as finished. A truncated archive loses its central
    directory, which Python's zipfile reads first; a damaged member fails its CRC.
    """
    if not path.is_file():
        return "is missing"
    try:
        with zipfile.ZipFile(path) as archive:
            lacking = [name for name in KERAS_MEMBERS if name not in archive.namelist()]
            if lacking:
                return f"is not a Keras model (it lacks {', '.join(lacking)})"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"is not a whole Keras model ({error})"
    return f"is damaged (its {damaged} fails its checksum)" if damaged else None


def find_histories(directory: str | os.PathLike[str]) -> list[Path]:
    """All ``history.json`` and ``*.history.json`` files below a directory, in a fixed order.

    Sorted by their POSIX path relative to the directory, so tables list them the same way on
    every machine.
    """
    root = Path(directory)
    found = [
        path
        for path in root.rglob(f"*{HISTORY_NAME}")
        if path.is_file() and (path.name == HISTORY_NAME or path.name.endswith(HISTORY_SUFFIX))
    ]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


@contextlib.contextmanager
def hold_lock(path: Path, busy: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive OS lock on the file ``path`` for the block, this process's pid and host
    written in it.

    When another process holds it, ``busy(holder)`` is called with what the holder wrote ("pid
    123 on host"): it raises to give up, or returns once the lock looks free, and the lock is
    tried again, without waiting: a third process may have taken it in between, and ``busy``
    then hears of that one (a blocking wait would never end while it is stopped). ``flock`` is
    released by the OS when its process ends, even by SIGKILL, so a lock file left behind never
    blocks anyone; that is why the file is only a place to hold the lock, never deleted. Without
    ``fcntl`` (Windows) the block runs unlocked.
    """
    if fcntl is None:
        yield
        return
    # "a+", not "w": opening must not erase the holder's pid before the lock is ours.
    with open(path, "a+") as file:
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                file.seek(0)
                busy(file.read().strip() or "another run")
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@contextlib.contextmanager
def lock_run(paths: RunPaths) -> Iterator[None]:
    """The run directory's lock, held while a process trains the run; refused when taken.

    Once it is held no other process writes here, so the temporaries of a writer killed
    mid-save (``replace_atomic``'s ``.NAME.HEX.partial.SUFFIX``) are removed, as Orbax removes
    its unfinished checkpoints on restart.
    """

    def refuse(holder: str) -> None:
        raise UserError(
            f"{paths.root} is being trained by {holder} (see {paths.lock}); wait for it to end, "
            "or use another --runs-dir or --seed"
        )

    with hold_lock(paths.lock, refuse):
        for leftover in paths.root.glob(".*.partial*"):
            _remove(leftover)
        yield


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], None]]:
    """Ctrl-C (SIGINT) during the block raises ``KeyboardInterrupt`` where the block calls the
    function it is given, or when the block ends, instead of wherever the main thread is.

    Python raises ``KeyboardInterrupt`` at the next bytecode the main thread runs. In a feature
    cache build that is nearly always inside TensorFlow's bindings, which do not expect it. When
    an iterator reaches the end of its split, its end-of-sequence error is made by Python code;
    interrupted there, pybind11 fails with "MISMATCH of original and normalized active exception
    types", a ``RuntimeError``: a traceback and exit status 1 instead of the "interrupted" line.
    Elsewhere it leaves a tf.function's tracing or an iterator's making half done. Deferred, the
    interrupt lands in this package's code, after the rows done are recorded.

    The first Ctrl-C puts Python's handler back, so a second one interrupts at once, as outside
    the block: a build waiting long for its next batch can still be stopped. Outside the main
    thread, or where SIGINT has another handler than Python's own, the block runs unchanged.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: None
        return
    asked = []

    def defer(signum: int, frame: object) -> None:
        asked.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def stop_if_asked() -> None:
        if asked:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, defer)
    try:
        yield stop_if_asked
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_if_asked()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace a file by ``data`` atomically (``replace_atomic``).

    ``os.open`` with mode 0o666 keeps the umask: a temporary file from ``tempfile.mkstemp`` would
    be 0o600, unreadable by the rest of a team.
    """

    def write(temporary: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(temporary, flags, 0o666), "wb") as file:
            file.write(data)

    replace_atomic(path, write)


def replace_atomic(path: str | os.PathLike[str], write: Callable[[Path], _Written]) -> _Written:
    """Replace a file or directory by what ``write(temporary)`` writes; returns what it returns.

    ``write`` (``model.save``, an exporter, a verification after it) gets a fresh name next to
    the target with the target's suffix (Keras checks it), unique to the call, so that two
    writers never share a temporary: ``os.replace`` is atomic only within one file system.
    Anything ``write`` raises leaves the target as it was and no temporary; an ``OSError`` (a
    full disk, a read-only directory) becomes one ``UserError`` line saying so.
    The new files are fsynced before the rename, and the directory after it, so the rename cannot
    reach the disk before the data.

    A directory (a SavedModel) cannot be replaced atomically, so the old one is renamed aside
    (``.STEM.HEX.previous.SUFFIX``) just before the new one is renamed in, and removed only
    after: a failure between the two renames puts it back, and a process killed between them
    leaves it aside whole, for ``restore_previous`` to put back, instead of half removed.
    """
    target = Path(path)
    token = secrets.token_hex(8)
    temporary, aside = _sibling(target, token, PARTIAL), None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        written = write(temporary)
        _fsync_tree(temporary)
        if target.is_dir():
            aside = _sibling(target, token, PREVIOUS)
            os.rename(target, aside)
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            if aside is not None and not target.exists():
                os.rename(aside, target)
        with contextlib.suppress(OSError):
            _remove(temporary)
        if isinstance(error, OSError):
            fix = disk_fix(error, target.parent, "write elsewhere")
            raise UserError(
                f"cannot write {target} ({error.strerror or error}); the previous version, if "
                f"any, is unchanged: {fix}, then rerun the same command"
            ) from error
        raise
    _fsync_directory(target.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)  # what is left is removed by restore_previous
    return written


PARTIAL, PREVIOUS = "partial", "previous"  # replace_atomic's new version, and the old one aside


def _sibling(target: Path, token: str, kind: str) -> Path:
    return target.with_name(f".{target.stem}.{token}.{kind}{target.suffix}")


def is_temporary_of(path: Path, target: Path, kind: str = PARTIAL) -> bool:
    """Whether ``path`` is one of ``replace_atomic``'s siblings of ``kind`` for ``target``
    (``.STEM.16-HEX.KIND.SUFFIX`` beside it): no other target's, no other file."""
    name = re.escape(f".{target.stem}.") + "[0-9a-f]{16}" + re.escape(f".{kind}{target.suffix}")
    return path.parent == target.parent and re.fullmatch(name, path.name) is not None


def restore_previous(target: Path) -> list[str]:
    """Put back the old version of a directory ``target`` that ``replace_atomic`` had renamed
    aside when its process was killed before the new one was renamed in; remove old versions
    the new one had already replaced. Returns a line per change. Only for a caller that knows no
    other process replaces ``target`` now (it holds the folder's lock)."""
    said = []
    for path in sorted(target.parent.iterdir()) if target.parent.is_dir() else []:
        if not is_temporary_of(path, target, PREVIOUS):
            continue
        if target.exists():
            _remove(path)
        else:
            os.rename(path, target)
            said.append(
                f"restored {target} from {path.name}, where an interrupted replacement left it"
            )
    return said


def lock_holder(lock: Path) -> str | None:
    """Who holds a lock of ``hold_lock`` now (what its file says), None when no process does.

    A shared flock, asked without waiting and let go at once, is refused exactly while another
    process holds the exclusive one. Nothing is written, nor is a lock file made where there is
    none. Without ``fcntl`` (Windows) nothing is locked, so nothing is held.
    """
    if fcntl is None or not lock.is_file():
        return None
    try:
        with open(lock) as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return file.read().strip() or "another process"
    except OSError:  # an unreadable lock file: whoever reads the run says what is wrong
        return None
    return None


def disk_fix(error: OSError, directory: Path, elsewhere: str) -> str:
    """What to do about ``error``, met writing in ``directory``, said by its cause;
    ``elsewhere`` is how to write somewhere else instead ("use another --runs-dir").

    A full disk, a denied permission and a read-only file system each have their fix; a file
    where a directory is needed (NotADirectoryError, or FileExistsError from ``mkdir``) is
    named, since the error names only the path that could not be made.
    """
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space, or {elsewhere}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"fix the permissions, or {elsewhere}"
    if error.errno == errno.EROFS:
        return f"the file system is read-only: {elsewhere}"
    blocker = _file_in_the_way(directory)
    if error.errno in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:
        return f"{blocker} is a file, not a directory: move it away, or {elsewhere}"
    return f"check that {directory} can be written, or {elsewhere}"


def _file_in_the_way(directory: Path) -> Path | None:
    """The nearest existing one of ``directory`` and its parents when it is no directory: the
    file that stops ``directory`` being made."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory of a tree (a SavedModel)."""
    if not path.is_dir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
        return
    for directory, _, files in os.walk(path):
        for name in files:
            _fsync_tree(Path(directory, name))
        _fsync_directory(Path(directory))


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable on POSIX; Windows cannot open a directory and needs no such step."""
    if os.name == "nt":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
