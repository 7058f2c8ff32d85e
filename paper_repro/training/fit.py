"""The fit of one run: its data, its network or checkpoint, its feature cache, then Keras' fit
with the paper's solver, epoch by epoch from where the run stands.

A resumed run continues from its checkpoint's optimizer iteration count (``_epochs_done``); a
cached run trains its classifier block alone on the cached pool5 values and checkpoints only that
block, so it builds its network again to resume. Distributed, every worker fits its part of each
global batch, and the checks here refuse what would make the workers train different steps.
"""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import tensorflow as tf

from paper_repro import cache, data, provenance, update_choice
from paper_repro import cluster as cluster_lib
from paper_repro import model as model_lib
from paper_repro import trainee as trainee_lib
from paper_repro.augment import AUGMENT_LAYER
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import CacheRecord, DataRecord, History, save_history
from paper_repro.model import CLASSIFIER, FEATURES
from paper_repro.runs import MODEL_NAME, RunPaths
from paper_repro.solver import paper_solver
from paper_repro.training import network as network_lib
from paper_repro.training.callbacks import RunRecorder, tensorboard
from paper_repro.training.context import Run, as_run_here, say
from paper_repro.training.finish import finish


def fit(run: Run) -> History:
    """Train the run to its last epoch and finish it; returns its finished history."""
    config, paths, verbose = run.config, run.paths, run.verbose
    with run.timer("data"):
        splits = data.load_experiment_data(
            config, data_dir=run.data_dir, seed=run.seed, download=run.download
        )
    images = images_of(splits)
    if run.previous is not None:
        check_same_images(run.previous, images, run.shared.root, "resume it")
    steps_per_epoch = data.steps_per_epoch(splits.train_examples, config.batch_size)
    _check_parts(run.cluster, splits, config.batch_size)
    with run.cluster.strategy.scope():
        network, feeds = None, splits
        if run.previous is None or config.cache_features:
            with run.timer("model"):
                network = network_lib.initial_model(config, splits, run.source, run.seed)
        if config.cache_features:
            with run.timer("cache"):
                feeds = _feature_cache(run, network, splits)
        if run.previous is not None:
            with run.timer("model"):
                trainee = _load_checkpoint(run, splits, network)
            start_epoch = _epochs_done(
                int(trainee.optimizer.iterations.numpy()), steps_per_epoch, config.max_iterations
            )
            _check_behind_history(run, start_epoch)
            history = dataclasses.replace(
                run.previous,
                epochs=run.previous.epochs[:start_epoch],
                resumes=(*(run.previous.resumes or ()), provenance.resume(start_epoch)),
            )
            say(verbose, f"{run.shared.root}: resuming after epoch {start_epoch}")
        else:
            trainee = trainee_lib.for_mode(
                network,
                trainee_lib.CACHED if config.cache_features else config.mode,
                paper_solver(config, steps_per_epoch),
                jit_compile=as_run_here(config.to_dict())["jit_compile"],
                metrics=["accuracy"],
                wrap=splits.training_model,
            )
            start_epoch = 0
            history = _new_history(run)
        # Inside the scope: under a tf.distribute strategy Keras' own update serves.
        update = update_choice.choose(
            trainee.optimizer, trainee.trainable_variables, config.batch_size
        )
    _check_same_start(run.cluster, start_epoch)
    if config.cache_features:
        _check_same_caches(run, history, feeds.record)
    if run.previous is None:
        _replace_earlier_run(paths)
    if config.cache_features and history.cache is None:
        history = dataclasses.replace(history, cache=feeds.record)
    if history.data is None:  # also a run resumed from a history that predates the record
        history = dataclasses.replace(history, data=images)
    if history.class_names is None:  # also a run resumed from a history that predates them
        history = dataclasses.replace(history, class_names=splits.train_info.class_names)
    if history.cluster != run.cluster.record():
        history = dataclasses.replace(history, cluster=run.cluster.record())
    history = dataclasses.replace(history, update=update_choice.record(update, history.update))
    save_history(history, paths.history)

    recorder = RunRecorder(paths, history, run.timer, config.max_iterations)
    callbacks = [recorder]
    if run.tensorboard:
        callbacks.append(tensorboard(paths.logs))
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
    return finish(run, trained, splits, recorder.history)


def _feature_cache(run: Run, network: keras.Model, splits: data.ExperimentData):
    """The run's feature caches, built by the chief alone: every other worker waits for the
    build at a barrier, then opens them (in a runs directory it cannot read, it builds its own)."""

    def caches() -> cache.CachedData:
        return cache.for_experiment(run.cache_root, network, splits, run.config, run.verbose)

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


def _load_checkpoint(
    run: Run, splits: data.ExperimentData, network: keras.Model | None
) -> keras.Model:
    """The run's checkpoint, once it proves to be one of this run (``_checkpoint_problem``);
    anything else is refused and left as it is."""
    path = run.shared.checkpoint
    try:
        trainee = model_lib.load_model(path, compile=True)
    except UserError:
        problem = "is corrupted"
    else:
        problem = _checkpoint_problem(trainee, run.config, splits, network)
    if problem:
        raise UserError(
            f"{path}: the checkpoint {problem}; it was left as it is: move it away to start the "
            "run from scratch, or rerun with --force"
        )
    return trainee


def _checkpoint_problem(
    trainee: keras.Model,
    config: RunConfig,
    splits: data.ExperimentData,
    network: keras.Model | None,
) -> str | None:
    """What makes a readable model no checkpoint of this run: a final model copied over it has
    no optimizer state to resume; another run's has another shape, another class count, or
    trains other layers. A cached run's is its classifier block alone (``network``'s)."""
    if getattr(trainee, "optimizer", None) is None:
        return f"holds no optimizer state to resume (a final {MODEL_NAME} copied over it?)"
    if config.cache_features:
        expected = network.get_layer(CLASSIFIER)
        if [w.shape for w in trainee.weights] != [w.shape for w in expected.weights]:
            return "is not the classifier block of this run's network"
        return None
    inner = _network(trainee)
    try:
        size = model_lib.describe(inner)["image_size"]
    except UserError:
        return "is not a paper_repro AlexNet"
    classes = int(inner.output_shape[-1])
    if (size, classes) != (config.crop, splits.num_classes):
        return (
            f"takes {size}x{size} images into {classes} classes, this run "
            f"{config.crop}x{config.crop} images into {splits.num_classes}"
        )
    if config.mode == "retrain" and inner.get_layer(FEATURES).trainable:
        return "trains its features, where this run retrains on frozen ones"
    return None


def images_of(splits: data.ExperimentData) -> DataRecord:
    return DataRecord(splits.train_info.content, splits.test_info.content)


def check_same_images(
    previous: History, images: DataRecord, root: str | os.PathLike[str], to_do: str
) -> None:
    """A run goes on (``to_do``: resumed, or skipped as finished) only on the images it started
    on: an image folder whose files changed since would mix two datasets in one run, or report
    one trained on the old images as the new ones'. Histories that predate the record pass."""
    if previous.data is None or previous.data == images:
        return
    changed = [
        split for split, old, new in (("training", previous.data.train, images.train),
                                      ("test", previous.data.test, images.test)) if old != new
    ]  # fmt: skip
    raise UserError(
        f"{root} was trained on other images: its {' and '.join(changed)} split's images "
        f"changed since it started ({previous.dataset}); restore them to {to_do}, or use "
        "--force to train it anew on the current images"
    )


def _check_same_caches(run: Run, history: History, record: CacheRecord) -> None:
    """A resumed cached run goes on from the feature caches it started on: the cache's name
    covers the images' content and the network, so another name means that the data (an image
    folder's files) or the features changed since, and the epochs to come would train on other
    features than the recorded ones."""
    if history.cache is None:  # a new run: its caches are recorded now
        return
    if (history.cache.train, history.cache.test) != (record.train, record.test):
        raise UserError(
            f"{run.shared.root} was trained on the feature caches {history.cache.train} and "
            f"{history.cache.test}, but its data now gives {record.train} and {record.test} (its "
            "images or features changed since it started): restore them to resume it, or use "
            "--force to train it anew on the current data"
        )


def _check_behind_history(run: Run, start_epoch: int) -> None:
    """The history is written before the checkpoint (``RunRecorder``), so it is never behind
    its checkpoint: a checkpoint further on than its history is another run's."""
    recorded = len(run.previous.epochs)
    if start_epoch > recorded:
        raise UserError(
            f"{run.shared.checkpoint}: the checkpoint is {start_epoch} epochs in, but its "
            f"history records {recorded}: it is another run's; it was left as it is: move it "
            "away to start the run from scratch, or rerun with --force"
        )


def _replace_earlier_run(paths: RunPaths) -> None:
    """Every check of a new run has passed: what an earlier run left (``--force``, or one
    stopped before its first checkpoint) goes now, its history replaced by the new one next,
    and not before, so that a refused ``--force`` loses nothing."""
    for stale in (paths.checkpoint, paths.model):
        stale.unlink(missing_ok=True)


def _input_device(where: cluster_lib.Cluster) -> str | None:
    """Where training batches are prefetched to: the GPU when one trains without a tf.distribute
    strategy (a distributed dataset is placed by its strategy), else nowhere beyond host memory."""
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus and not where.distributed else None


def _new_history(run: Run) -> History:
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
        start=network_lib.start(run.config, run.weights_path),
        cluster=run.cluster.record(),
    )


def _network(trainee: keras.Model) -> keras.Model:
    """The AlexNet inside a model wrapped for device augmentation (or the model itself)."""
    inner = [layer for layer in trainee.layers if isinstance(layer, keras.Model)]
    return inner[0] if AUGMENT_LAYER in {layer.name for layer in trainee.layers} else trainee


def _with_classifier(network: keras.Model, classifier: keras.Model) -> keras.Model:
    """The whole network with a (possibly resumed) cached run's trained classifier: the final
    evaluation and the saved model see images, exactly as for an uncached run."""
    network.get_layer(CLASSIFIER).set_weights(classifier.get_weights())
    return network
