"""A run's life around its fit: settings resolved and checked, the run directory prepared and
locked, a finished run skipped, an interrupted one resumed, or a new one started."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras
import tensorflow as tf

from paper_repro import cluster as cluster_lib
from paper_repro import experiments, provenance
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import History, load_history
from paper_repro.runs import RunPaths, lock_run, run_directory
from paper_repro.training import network as network_lib
from paper_repro.training.callbacks import PhaseTimer
from paper_repro.training.context import Run, say
from paper_repro.training.fit import fit


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
) -> History:
    """Run (or resume, or skip when finished) one experiment; returns its history.

    ``download`` lets tfds download and prepare a dataset that is not in the data directory.
    The settings and the seed are checked before anything is written, and the run directory is
    locked for the whole run (``runs.lock_run``): a second process on it is refused at once.
    ``strategy`` names a ``paper_repro.cluster`` strategy; ``multi-worker`` first waits up to
    ``join_timeout`` seconds for every worker of ``TF_CONFIG``.
    """
    provenance.git_commit()  # read once, when the first run of this process starts
    timer = PhaseTimer()
    config = experiments.resolve(experiment, preset, overrides)
    experiments.check_seed(seed)
    where = cluster_lib.connect(strategy, join_timeout)
    shared = RunPaths(run_directory(runs_dir, preset, experiment, seed, config.cache_features))
    _prepare_directory(shared.root)
    with _workspace(shared, where) as paths:
        previous = _previous_history(shared, config, seed, force, owner=where.is_chief)
        if previous is not None and previous.status == "finished":
            say(verbose, f"{shared.root}: already finished (use --force to train it again)")
            return previous
        resuming = previous is not None and shared.checkpoint.exists()
        if resuming:
            timer.carry(previous.phases)
        # A cached run checkpoints only its classifier: resuming it needs the features again.
        weights_path = None
        if not resuming or config.cache_features:
            weights_path = network_lib.weights_path(config, weights, runs_dir, preset, seed)
        if resuming and weights_path:
            _check_same_weights(previous, weights_path)
        source = network_lib.source_model(weights_path, config) if weights_path else None

        keras.utils.set_random_seed(seed)
        if not tf.config.list_physical_devices("GPU"):
            tf.config.experimental.enable_op_determinism()
            if config.jit_compile:
                # Keras itself turns XLA off under op determinism; say so rather than warn
                # obscurely.
                say(verbose, "jit_compile: XLA stays off on the CPU, where runs are deterministic")
                config = dataclasses.replace(config, jit_compile=False)
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
                    runs_dir=runs_dir,
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
            f"cannot write the run directory {root}: {error.strerror}; fix its permissions or "
            "use another --runs-dir"
        ) from None


def _previous_history(paths: RunPaths, config: RunConfig, seed: int, force: bool, owner: bool):
    """The run's history to resume, None to start anew; the ``owner`` of the run directory (the
    one process that writes it) then removes what an earlier run left there."""
    if force or not paths.history.exists():
        for stale in (paths.history, paths.checkpoint, paths.model) if owner else ():
            stale.unlink(missing_ok=True)
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
    ``seed`` (``key: old -> new``, or ``seed``); None when it is the same run."""
    recorded = experiments.recorded_settings(previous.config, config.dataset, config.mode)
    changed = {
        key: (recorded[key], value)
        for key, value in config.to_dict().items()
        if recorded[key] != value
    }
    if not changed and previous.seed == seed:
        return None
    what = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
    return what or "seed"


def _check_same_weights(previous: History, weights_path: Path) -> None:
    recorded = previous.provenance.weights
    if recorded and recorded.sha256 != provenance.sha256(weights_path):
        raise UserError(
            f"{weights_path} changed since this run started from it ({recorded.path}); "
            "use --force to start the run again"
        )
