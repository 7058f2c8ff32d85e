"""A run's life around its fit: settings resolved and checked, the run directory prepared and
locked, a finished run skipped once its model is checked, an interrupted one resumed with the
same settings and weights, or a new one started.

Nothing of an earlier run is deleted here: a new run replaces the earlier one's files only once
every check of its own has passed (``fit``), and a run refused in a directory that it made leaves
no directory behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras
import tensorflow as tf

from paper_repro import cluster as cluster_lib
from paper_repro import data, evaluate, experiments, provenance
from paper_repro import model as model_lib
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import History, load_history
from paper_repro.runs import (
    HISTORY_NAME,
    LOCK_NAME,
    MODEL_NAME,
    RunPaths,
    disk_fix,
    lock_run,
    model_problem,
    run_directory,
    train_again,
)
from paper_repro.training import network as network_lib
from paper_repro.training.callbacks import PhaseTimer, diverged
from paper_repro.training.context import Run, as_run_here, say
from paper_repro.training.fit import check_same_images, fit, images_of


def train(
    experiment: str,
    preset: str = "paper",
    *,
    weights: str | None = None,
    data_dir: str | None = None,
    runs_dir: str | os.PathLike = "runs",
    seed: int = 0,
    overrides: Iterable[str] = (),
    force: bool = False,
    strategy: str = "default",
    tensorboard: bool = False,
    download: bool = False,
    verbose: int = 1,
    join_timeout: float = experiments.JOIN_TIMEOUT,
    cache_root: str | os.PathLike | None = None,
) -> History:
    """Run (or resume, or skip when finished) one experiment; returns its history.

    ``download`` lets tfds download and prepare a dataset that is not in the data directory.
    The settings and the seed are checked before anything is written, and the run directory is
    locked for the whole run (``runs.lock_run``): a second process on it is refused at once.
    ``strategy`` names a ``paper_repro.cluster`` strategy; ``multi-worker`` first waits up to
    ``join_timeout`` seconds for every worker of ``TF_CONFIG``. Feature caches go under
    ``cache_root`` (default: ``runs_dir``); they are keyed by content, so runs in several runs
    directories (the study's cells) can share one.
    """
    provenance.git_commit()  # read once, when the first run of this process starts
    timer = PhaseTimer()
    config = experiments.resolve(experiment, preset, overrides)
    experiments.check_seed(seed)
    where = cluster_lib.connect(strategy, join_timeout)
    shared = RunPaths(run_directory(runs_dir, preset, experiment, seed, config.cache_features))
    with _run_directory(shared.root), _workspace(shared, where) as paths:
        previous = _previous_history(shared, config, seed, force)
        if previous is not None and previous.status == "finished":
            again = train_again(experiment, preset, seed, config.cache_features)
            _check_finished_model(shared, previous, again)
            _check_finished_images(shared.root, previous, config, data_dir, seed)
            say(verbose, f"{shared.root}: already finished (use --force to train it again)")
            return previous
        if previous is not None and previous.status == "diverged":
            # Runs are deterministic: resumed, it would diverge at the same step again.
            raise diverged(f"{shared.root} diverged before ({previous.diverged})", shared)
        resuming = previous is not None and shared.checkpoint.exists()
        if resuming:
            timer.carry(previous.phases)
        weights_path = _start_weights(
            config, weights, runs_dir, preset, seed, previous if resuming else None
        )
        source = network_lib.source_model(weights_path, config) if weights_path else None

        keras.utils.set_random_seed(seed)
        if not tf.config.list_physical_devices("GPU"):
            tf.config.experimental.enable_op_determinism()
            if config.jit_compile:
                # Keras itself turns XLA off under op determinism; say so rather than warn
                # obscurely.
                say(verbose, "jit_compile: XLA stays off on the CPU, where runs are deterministic")
        keras.mixed_precision.set_dtype_policy(config.precision)
        try:
            return fit(
                Run(
                    experiment=experiment,
                    preset=preset,
                    config=config,
                    paths=paths,
                    shared=shared,
                    seed=seed,
                    cache_root=runs_dir if cache_root is None else cache_root,
                    data_dir=data_dir,
                    weights_path=weights_path,
                    source=source,
                    previous=previous if resuming else None,
                    timer=timer,
                    cluster=where,
                    tensorboard=tensorboard,
                    download=download,
                    verbose=verbose,
                )
            )
        finally:
            keras.mixed_precision.set_dtype_policy("float32")


@contextlib.contextmanager
def _workspace(shared: RunPaths, where: cluster_lib.Cluster) -> Iterator[RunPaths]:
    """Where this process writes, held for the run: the chief locks the run directory
    (``runs.lock_run``); any other worker writes to a temporary directory, removed at the end."""
    if where.is_chief:
        with lock_run(shared):
            yield shared
        return
    with tempfile.TemporaryDirectory(prefix=f"paper-repro-worker{where.worker}-") as own:
        yield RunPaths(Path(own))


@contextlib.contextmanager
def _run_directory(root: Path) -> Iterator[None]:
    """The run directory, created and proved writable for the block (``_prepare_directory``).

    A run refused before it wrote anything (a missing weights file, a subset larger than its
    split, Ctrl-C) removes the directories this process created for it, so that a mistake leaves
    no directory holding only its lock; a directory that existed before, or that holds anything
    else, stays.
    """
    created = []
    for directory in (root, *root.parents):
        if directory.exists():
            break
        created.append(directory)
    try:
        _prepare_directory(root)
        yield
    except BaseException:
        if created and root.is_dir() and {p.name for p in root.iterdir()} <= {LOCK_NAME}:
            with contextlib.suppress(OSError):  # another process may have come meanwhile
                (root / LOCK_NAME).unlink(missing_ok=True)
                for directory in created:
                    directory.rmdir()
        raise


def _prepare_directory(root: Path) -> None:
    """Create the run directory and prove it writable before any work (a per-process probe
    name: two runs started together must not delete each other's probe)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write the run directory {root}: {error.strerror}; "
            f"{disk_fix(error, root, 'use another --runs-dir')}"
        ) from None


def _previous_history(paths: RunPaths, config: RunConfig, seed: int, force: bool) -> History | None:
    """The run's history to resume, None to start anew (``--force``, or a new run).

    Nothing is removed here: a new run replaces the earlier files once all its checks have
    passed (``fit``). A checkpoint or model without the history that says what it was trained
    with is refused rather than silently replaced: only ``--force`` replaces it.
    """
    if force:
        return None
    if not paths.history.exists():
        orphans = [path.name for path in (paths.checkpoint, paths.model) if path.exists()]
        if orphans:
            raise UserError(
                f"{paths.root} holds {' and '.join(orphans)} but no {HISTORY_NAME}, the record "
                "of what it was trained with, so it cannot be resumed: move them away to keep "
                "them, or use --force to train the run anew (replacing them)"
            )
        return None
    previous = load_history(paths.history)
    changed = settings_changed(previous, config, seed)
    if changed:
        raise UserError(
            f"{paths.root} was started with other settings ({changed}); "
            "use --force to start it again, or another --runs-dir"
        )
    return previous


def settings_changed(previous: History, config: RunConfig, seed: int) -> str | None:
    """What differs between the settings a history was trained with and ``config`` with
    ``seed`` (``key: old -> new``, or ``seed``); None when it is the same run.

    Both sides are compared as this machine runs them (``context.as_run_here``): ``augment_on``
    auto and host are one run on a CPU, and XLA asked for on a CPU is no XLA.
    """
    recorded = as_run_here(
        experiments.recorded_settings(previous.config, config.dataset, config.mode)
    )
    asked = as_run_here(config.to_dict())
    changed = {key: (recorded[key], new) for key, new in asked.items() if recorded[key] != new}
    if not changed and previous.seed == seed:
        return None
    what = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
    return what or "seed"


def _check_finished_model(paths: RunPaths, history: History, again: str) -> None:
    """A finished run is skipped only while its model is whole and its own: a missing,
    truncated or foreign ``model.keras`` would otherwise be reported finished forever, and a
    retraining from it would fail. The check reads the archive, not the model (a fraction of a
    load's seconds); a model written with its record (``model.save_model``) must carry this
    run's. ``again`` says how to train the run again."""
    problem = model_problem(paths.model)
    if problem is None:
        record = _model_record(paths.model)
        expected = evaluate.trained_on(history.config, history.seed, history.class_names)
        if record is None or (record and record != expected):
            problem = "is not this run's model (its record names another run)"
    if problem:
        raise UserError(f"{paths.root} has finished, but its {MODEL_NAME} {problem}: {again}")


def _check_finished_images(
    root: Path, previous: History, config: RunConfig, data_dir: str | None, seed: int
) -> None:
    """An image folder's finished run is skipped only while the folder holds the images it
    trained on, read again as training reads them (every file checked). A tfds dataset's images
    are named by its version, and a folder no longer there has nothing to compare: both skip."""
    if previous.data is None or not data.is_image_folder(config.dataset):
        return
    splits = data.load_experiment_data(config, data_dir=data_dir, seed=seed)
    check_same_images(previous, images_of(splits), root, "keep its results")


def _model_record(path: Path) -> dict | None:
    """The record inside a model file, ``{}`` where it has none, None where it is unreadable."""
    try:
        return model_lib.model_record(path)
    except (OSError, UserError):  # unreadable, or a record model_record refuses as damaged
        return None


def _start_weights(
    config: RunConfig,
    weights: str | None,
    runs_dir: str | os.PathLike,
    preset: str,
    seed: int,
    resumed: History | None,
) -> Path | None:
    """The pretrained model the run starts from, None when it reads none.

    A resumed run (``resumed``, its history) must start from the weights it started from, as it
    was asked then: ``--weights`` given or left out is compared with what the history recorded,
    also for a run that no longer reads them. Only a cached run reads them again (its
    checkpoint holds its classifier alone); another resumed run reads its checkpoint, so a
    source run's model since removed does not stop it.
    """
    reads_source = resumed is None or config.cache_features
    try:
        path = network_lib.weights_path(config, weights, runs_dir, preset, seed)
    except UserError:
        if reads_source or weights:
            raise
        return None
    if resumed is not None:
        _check_same_weights(resumed, path)
    return path if reads_source else None


def _check_same_weights(previous: History, weights_path: Path | None) -> None:
    """A resume continues from the weights the run started from (by content), or is refused."""
    recorded = previous.provenance.weights
    if recorded is None and weights_path is None:
        return
    if recorded is None:
        raise UserError(
            f"this run started without pretrained weights, not from {weights_path}: drop "
            "--weights to resume it, or use --force to start it again from them"
        )
    if weights_path is None:
        raise UserError(
            f"this run started from {recorded.path}: pass --weights {recorded.path} again to "
            "resume it, or use --force to start it again"
        )
    if recorded.sha256 != provenance.sha256(weights_path):
        was = "changed since" if str(weights_path) == recorded.path else "is not what"
        raise UserError(
            f"{weights_path} {was} this run started from ({recorded.path}): resume it with "
            "those weights, or use --force to start the run again"
        )
