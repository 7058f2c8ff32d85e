"""One trainer for every experiment: fit with the paper's solver, record, checkpoint, resume.

A run lives in a run directory (``paper_repro.runs``: its layout and atomic writer); its history
is rewritten after every epoch, then its checkpoint, and its final model once it has finished.

Distributed (``--strategy mirrored`` or ``multi-worker``, ``paper_repro.cluster``), every worker
runs this same trainer on its part of each global batch. Only the chief writes the run directory;
each other worker writes the same files to a temporary directory of its own, removed when it ends
(tf.distribute's advice: saving may take part in collectives, so every worker saves), and resumes
from the chief's checkpoint, so every worker needs to read the chief's run directory (one
``--runs-dir`` on a shared file system; on one machine, the same folder).

Resuming needs no saved random state: the augmentation, the shuffling and the dropout masks of
epoch ``e`` are all keyed by ``(seed, e)``, and the epoch to continue from is the optimizer's
iteration count in the checkpoint. So a run killed at any moment and rerun with the same command
produces the same history as one that was never interrupted (on CPU, where ops are deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras
import tensorflow as tf

from paper_repro import cache, data, evaluate, experiments, feature_activity, provenance
from paper_repro import cluster as cluster_lib
from paper_repro import model as model_lib
from paper_repro.augment import AUGMENT_LAYER
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import (
    PHASES,
    EpochRecord,
    FinalEvaluation,
    History,
    load_history,
    save_history,
)
from paper_repro.model import CLASSIFIER, FC8, FEATURES
from paper_repro.runs import (
    RunPaths,
    lock_run,
    pretrained_model,
    replace_atomic,
    run_directory,
)
from paper_repro.solver import paper_solver


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class _Run:
    """One run as ``train`` resolved it: what every step of the fit reads."""

    experiment: str
    preset: str
    config: RunConfig
    paths: RunPaths  # where this process writes: the run directory, or a worker's own
    shared: RunPaths  # the run directory, written by the chief, read by every worker
    seed: int
    runs_dir: str | os.PathLike
    data_dir: str | None
    weights_path: Path | None  # the pretrained model it starts (or restarts) from
    source: keras.Model | None  # that model, loaded
    previous: History | None  # the history to resume, None for a new run
    timer: PhaseTimer  # where the run's wall time goes (history.PHASES)
    cluster: cluster_lib.Cluster
    tensorboard: bool
    download: bool
    verbose: int


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
            _say(verbose, f"{shared.root}: already finished (use --force to train it again)")
            return previous
        resuming = previous is not None and shared.checkpoint.exists()
        if resuming:
            timer.carry(previous.phases)
        # A cached run checkpoints only its classifier: resuming it needs the features again.
        weights_path = None
        if not resuming or config.cache_features:
            weights_path = _weights_path(config, weights, runs_dir, preset, seed)
        if resuming and weights_path:
            _check_same_weights(previous, weights_path)
        source = _source_model(weights_path, config) if weights_path else None

        keras.utils.set_random_seed(seed)
        if not tf.config.list_physical_devices("GPU"):
            tf.config.experimental.enable_op_determinism()
            if config.jit_compile:
                # Keras itself turns XLA off under op determinism; say so rather than warn
                # obscurely.
                _say(verbose, "jit_compile: XLA stays off on the CPU, where runs are deterministic")
                config = dataclasses.replace(config, jit_compile=False)
        keras.mixed_precision.set_dtype_policy(config.precision)
        try:
            return _fit(
                _Run(
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


def _fit(run: _Run) -> History:
    config, paths, verbose = run.config, run.paths, run.verbose
    with run.timer("data"):
        splits = data.load_experiment_data(
            config, data_dir=run.data_dir, seed=run.seed, download=run.download
        )
    steps_per_epoch = data.steps_per_epoch(splits.train_examples, config.batch_size)
    _check_parts(run.cluster, splits, config.batch_size)
    with run.cluster.strategy.scope():
        network, feeds = None, splits
        if run.previous is None or config.cache_features:
            with run.timer("model"):
                network = _initial_model(config, splits, run.source, run.seed)
        if config.cache_features:
            with run.timer("cache"):
                feeds = _feature_cache(run, network, splits)
        if run.previous is not None:
            with run.timer("model"):
                trainee = _load_checkpoint(run.shared.checkpoint)
            start_epoch = _epochs_done(
                int(trainee.optimizer.iterations.numpy()), steps_per_epoch, config.max_iterations
            )
            history = dataclasses.replace(run.previous, epochs=run.previous.epochs[:start_epoch])
            _say(verbose, f"{run.shared.root}: resuming after epoch {start_epoch}")
        else:
            # Cached: the classifier block alone is trained, on the cached pool5 outputs.
            trainee = (
                network.get_layer(CLASSIFIER)
                if config.cache_features
                else splits.training_model(network)
            )
            trainee.compile(
                optimizer=paper_solver(
                    steps_per_epoch, config.base_lr, config.drop_epochs, config.momentum,
                    config.weight_decay, config.gamma, config.drop_iterations,
                    config.warmup_epochs,
                ),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
                jit_compile=config.jit_compile,
            )  # fmt: skip
            start_epoch = 0
            history = _new_history(run)
    _check_same_start(run.cluster, start_epoch)
    if config.cache_features and history.cache is None:
        history = dataclasses.replace(history, cache=feeds.record)
    if history.class_names is None:  # also a run resumed from a history that predates them
        history = dataclasses.replace(history, class_names=splits.train_info.class_names)
    if history.cluster != run.cluster.record():
        history = dataclasses.replace(history, cluster=run.cluster.record())
    save_history(history, paths.history)

    recorder = RunRecorder(paths, history, run.timer, config.max_iterations)
    callbacks = [recorder]
    if run.tensorboard:
        callbacks.append(_tensorboard(paths.logs))
    if start_epoch < config.epochs:
        device = _input_device(run.cluster)
        test_steps = data.steps_per_epoch(splits.test_info.num_examples, config.batch_size)

        def train_batches(shard: data.Shard | None) -> tf.data.Dataset:
            return data.prefetch_to(feeds.train_batches(start_epoch, config.epochs, shard), device)

        with cluster_lib.fit_scope(trainee, run.cluster):
            trainee.fit(
                run.cluster.distribute(train_batches),
                epochs=config.epochs,
                initial_epoch=start_epoch,
                steps_per_epoch=steps_per_epoch,
                # Not prefetched to the device: Keras reads a validation set of unknown length
                # (which prefetch_to_device makes it) to its end and warns that it ran out of data.
                validation_data=run.cluster.distribute(feeds.validation_batches),
                # A dataset distributed per worker counts elements, not steps (one element per
                # local device): Keras would read past the end and warn that it ran out of data.
                validation_steps=test_steps if run.cluster.multi_worker else None,
                callbacks=callbacks,
                shuffle=False,
                verbose=verbose,
            )
    trained = _with_classifier(network, trainee) if config.cache_features else _network(trainee)
    return _finish(run, trained, splits, recorder.history)


def _feature_cache(run: _Run, network: keras.Model, splits: data.ExperimentData):
    """The run's feature caches, built by the chief alone: every other worker waits for the
    build at a barrier, then opens them (in a runs directory it cannot read, it builds its own)."""

    def caches() -> cache.CachedData:
        return cache.for_experiment(run.runs_dir, network, splits, run.config, run.verbose)

    built = caches() if run.cluster.is_chief else None
    run.cluster.gather(0)
    return built or caches()


def _check_parts(where: cluster_lib.Cluster, splits: data.ExperimentData, batch: int) -> None:
    """Every replica needs an image of every batch (``data.shard_batches``): refuse a last batch
    smaller than the number of replicas before any work."""
    for name, count in (("train", splits.train_examples), ("test", splits.test_info.num_examples)):
        last = count % batch
        if 0 < last < where.replicas:
            raise UserError(
                f"the last {name} batch holds {last} images, fewer than the {where.replicas} "
                f"replicas that share it: change {name}_subset or batch_size so that each "
                "replica gets at least one"
            )


def _check_same_start(where: cluster_lib.Cluster, start_epoch: int) -> None:
    """Every worker must continue from the same epoch (the chief's checkpoint); one that cannot
    read the chief's run directory would start over and train other steps than the rest."""
    starts = where.gather(start_epoch)
    if len(set(starts)) > 1:
        raise UserError(
            f"the workers would start after epochs {sorted(set(starts))}: every worker must "
            "read the chief's run directory to resume from its checkpoint; give all workers "
            "one --runs-dir on a shared file system"
        )


def _epochs_done(iterations: int, steps_per_epoch: int, max_iterations: int | None) -> int:
    """Finished epochs at a checkpoint: whole epochs, or all of them once ``max_iterations`` is
    reached (its last epoch was cut short, and counts as done)."""
    if max_iterations is not None and iterations >= max_iterations:
        return math.ceil(iterations / steps_per_epoch)
    return iterations // steps_per_epoch


def _tensorboard(log_dir: Path) -> keras.callbacks.TensorBoard:
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs TensorBoard: pip install 'paper_repro[tensorboard]'")
    return keras.callbacks.TensorBoard(log_dir)


def _network(trainee: keras.Model) -> keras.Model:
    """The AlexNet inside a model wrapped for device augmentation (or the model itself)."""
    inner = [layer for layer in trainee.layers if isinstance(layer, keras.Model)]
    return inner[0] if AUGMENT_LAYER in {layer.name for layer in trainee.layers} else trainee


def _with_classifier(network: keras.Model, classifier: keras.Model) -> keras.Model:
    """The whole network with a (possibly resumed) cached run's trained classifier: the final
    evaluation and the saved model see images, exactly as for an uncached run."""
    network.get_layer(CLASSIFIER).set_weights(classifier.get_weights())
    return network


def _finish(run: _Run, model: keras.Model, splits, history: History) -> History:
    config, paths = run.config, run.paths
    start = time.perf_counter()
    scores = evaluate.evaluate(
        model, splits.test, crops=config.test_crops, augment=splits.augment, verbose=run.verbose
    )
    final = FinalEvaluation(
        crops=config.test_crops,
        top1=scores["top1"],
        top5=scores["top5"],
        wall_seconds=time.perf_counter() - start,
        center_top1=scores["center_top1"],
        center_top5=scores["center_top5"],
    )
    record = evaluate.trained_on(history.config, history.seed, history.class_names)
    with run.timer("final_save"):
        replace_atomic(
            paths.model, lambda path: model_lib.save_model(_without_optimizer(model), path, record)
        )
    history = dataclasses.replace(
        history, final=final, status="finished", phases=run.timer.record()
    )
    save_history(history, paths.history)
    paths.checkpoint.unlink(missing_ok=True)
    _say(
        run.verbose,
        f"{run.shared.root}: {config.test_crops}-crop top-1 {final.top1:.2%}, top-5 "
        f"{evaluate.top5_text(final.top5, scores['num_classes'])} (centre crop "
        f"{final.center_top1:.2%}, {evaluate.top5_text(final.center_top5, scores['num_classes'])})",
    )
    return history


class RunRecorder(keras.callbacks.Callback):
    """After every epoch: append the epoch to the history, then checkpoint, both atomically.

    The history is written before the checkpoint: a run killed between the two resumes from the
    older checkpoint and trims the history to it, then redoes that epoch identically.
    It also reseeds dropout per epoch (so a resumed epoch draws the same masks), stops the
    run at the first non-finite loss, before anything of that epoch is written, and ends training
    at ``max_iterations`` (Caffe's ``max_iter``), recording the cut-short epoch as the last one.
    """

    def __init__(
        self,
        paths: RunPaths,
        history: History,
        timer: PhaseTimer,
        max_iterations: int | None = None,
    ):
        super().__init__()
        self.paths, self.history, self.max_iterations = paths, history, max_iterations
        self.timer = timer
        self._epoch_start = self._train_seconds = 0.0
        self._lr = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        model_lib.reseed_dropout(self.model, epoch)
        self._lr = float(self.model.optimizer.learning_rate)
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            kept = (
                f"{self.paths.checkpoint} keeps the last good epoch"
                if self.paths.checkpoint.exists()
                else "no epoch had finished, so nothing was kept"
            )
            raise TrainingDiverged(
                f"the training loss became {loss} in epoch {len(self.history.epochs) + 1}, "
                f"batch {batch + 1}; {kept} (lower base_lr with --set base_lr=..., and --force "
                "to start again)"
            )
        if self.max_iterations and int(self.model.optimizer.iterations) >= self.max_iterations:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        self._train_seconds = time.perf_counter() - self._epoch_start

    def on_test_end(self, logs=None):
        self.timer.add("epoch_tests", time.perf_counter() - self._epoch_start - self._train_seconds)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        record = EpochRecord(
            epoch=epoch + 1,
            lr=self._lr,
            train_loss=float(logs["loss"]),
            train_accuracy=float(logs["accuracy"]),
            test_accuracy=float(logs["val_accuracy"]),
            wall_seconds=self._train_seconds,
        )
        epochs = (*self.history.epochs, record)
        self.history = dataclasses.replace(self.history, epochs=epochs, phases=self.timer.record())
        with self.timer("checkpoints"):
            save_history(self.history, self.paths.history)
            replace_atomic(self.paths.checkpoint, self.model.save)


class PhaseTimer:
    """Wall seconds per ``history.PHASES`` name, from this process's start of the run plus what
    the processes of a resumed run spent before (``carry``)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._start = time.perf_counter()

    def carry(self, earlier: dict[str, float] | None) -> None:
        for name, seconds in (earlier or {}).items():
            self.add(name, seconds)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def record(self) -> dict[str, float]:
        return {**self.seconds, "total": self.seconds["total"] + time.perf_counter() - self._start}


def _weights_path(
    config: RunConfig, weights: str | None, runs_dir: str | os.PathLike, preset: str, seed: int
) -> Path | None:
    """The pretrained model the run starts from; none for the random-features control, whose
    point is to start from no pretraining at all."""
    if config.features != "random":
        if config.mode == "retrain" and config.pretrained is None and not weights:
            raise UserError(
                "retraining on pretrained features needs them, and this experiment names no "
                "pretraining run: pass --weights FILE.keras"
            )
        return pretrained_model(config, weights, runs_dir, preset, seed)
    if weights:
        raise UserError(
            f"--weights {weights}: this run retrains on random, untrained features "
            "(features=random), so it takes no weights; drop --weights"
        )
    return None


def _source_model(path: Path, config: RunConfig) -> keras.Model:
    """The pretrained model, checked before any data is loaded: an AlexNet of the run's size."""
    source = model_lib.load_model(path)
    size = model_lib.describe(source)["image_size"]
    if size != config.crop:
        raise UserError(
            f"{path}: the weights take {size}x{size} images, this run crops {config.crop}: "
            f"use --set crop={size} (and a resize of at least {size})"
        )
    return source


def _initial_model(config: RunConfig, splits, source: keras.Model | None, seed: int):
    """Retrain: the source's features and a new classifier, features frozen. Full training: a
    fresh network, or the source itself when one is given (fine-tuning all layers). The
    random-features control: a fresh network (the target's own mean) with its features frozen."""
    if source is None:
        network = model_lib.build_alexnet(
            splits.num_classes,
            config.crop,
            config.groups,
            mean=splits.channel_mean,
            dropout=config.dropout,
            init=config.init,
            seed=seed,
        )
        if config.mode == "retrain":
            network.get_layer(FEATURES).trainable = False
        if config.random_rms is not None:
            _scale_to_rms(network, splits, config.random_rms)
        return network
    if config.mode != "retrain":
        fc8 = model_lib.caffe_layers(source)[FC8].kernel.shape
        if fc8[-1] != splits.num_classes:
            raise UserError(
                f"the weights' layer fc8 has shape {tuple(fc8)}, but the dataset has "
                f"{splits.num_classes} classes (expected (..., {splits.num_classes})); "
                "retrain it instead"
            )
        return source
    new = model_lib.replace_classifier(
        source,
        splits.num_classes,
        keep_fc67=config.keep_fc67,
        init=config.init,
        seed=seed,
        dropout=config.dropout,
        mean=splits.channel_mean if config.target_mean else None,
    )
    new.get_layer(FEATURES).trainable = False
    return new


# Enough images to cover every class of the target, few enough to cost seconds at any size.
RANDOM_RMS_IMAGES = 1_000


def _scale_to_rms(network: keras.Model, splits: data.ExperimentData, rms: float) -> None:
    """The control at a trained block's scale (``RunConfig.random_rms``): pool5's root mean square
    on the first RANDOM_RMS_IMAGES training images, centre crop, brought to ``rms``. Untrained,
    Xavier's pool5 is 10-30 times a source's, and the new classifier starts from a loss of 4-16."""
    images = data.eval_dataset(
        splits.train.take(RANDOM_RMS_IMAGES),
        splits.augment,
        batch_size=splits.batch_size,
        placement="host",
    )
    model_lib.scale_pool5(network, rms / feature_activity.of_batches(network, images).rms)


def _check_same_weights(previous: History, weights_path: Path) -> None:
    recorded = previous.provenance.weights
    if recorded and recorded.sha256 != provenance.sha256(weights_path):
        raise UserError(
            f"{weights_path} changed since this run started from it ({recorded.path}); "
            "use --force to start the run again"
        )


def _load_checkpoint(path: Path) -> keras.Model:
    try:
        return model_lib.load_model(path, compile=True)
    except UserError:
        raise UserError(
            f"{path}: the checkpoint is corrupted; it was left as it is: move it away to resume "
            "from scratch, or rerun with --force"
        ) from None


def _without_optimizer(model: keras.Model) -> keras.Model:
    """The same model, uncompiled: the exported file carries no momentum (half the size)."""
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    return clean


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


def _input_device(where: cluster_lib.Cluster) -> str | None:
    """Where training batches are prefetched to: the GPU when one trains without a tf.distribute
    strategy (a distributed dataset is placed by its strategy), else nowhere beyond host memory."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus and not where.distributed else None


def _new_history(run: _Run) -> History:
    return History(
        experiment=run.experiment,
        preset=run.preset,
        dataset=run.config.dataset,
        mode=run.config.mode,
        seed=run.seed,
        config=run.config.to_dict(),
        provenance=provenance.record(run.weights_path),
        epochs=(),
        final=None,
        status="running",
        start=_start(run.config, run.weights_path),
        cluster=run.cluster.record(),
    )


def _start(config: RunConfig, weights_path: Path | None) -> str:
    """What the network starts from (history.STARTS), as ``_initial_model`` builds it."""
    if config.features == "random":
        return "random-features"
    if weights_path is None:
        return "scratch"
    return "pretrained-features" if config.mode == "retrain" else "pretrained-network"


def _say(verbose: int, message: str) -> None:
    if verbose:
        print(message, flush=True)
