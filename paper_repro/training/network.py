"""The network a run starts from, assembled for its arm: which pretrained model it reads, how a
fresh or pretrained network becomes the one it trains, and what the history records of that.

Full training starts from a fresh network (or fine-tunes a whole given one); retraining keeps a
pretrained network's features, frozen, under a new classifier; the control (``features=random``)
freezes a fresh network's untrained features; the oracle (``features=oracle``) keeps the features
and mean of the same seed's full training, frozen, under a classifier drawn fresh as the
control's is. The freezing, and what each mode then fits, are ``trainee.for_mode``'s: one recipe
with the benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from paper_repro import arms, data, experiments, feature_activity
from paper_repro import model as model_lib
from paper_repro import trainee as trainee_lib
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import load_history
from paper_repro.model import FC8
from paper_repro.runs import (
    RunPaths,
    model_problem,
    pretrained_model,
    run_directory,
    train_again,
)

# Enough images to cover every class of the target, few enough to cost seconds at any size.
RANDOM_RMS_IMAGES = 1_000


def weights_path(
    config: RunConfig, weights: str | None, runs_dir: str | os.PathLike, preset: str, seed: int
) -> Path | None:
    """The trained model the run starts from (a pretraining, or the oracle's full run); none for
    the random-features control, whose point is to start from no pretraining at all."""
    if config.features != "random":
        if config.mode == "retrain" and config.pretrained is None and not weights:
            raise UserError(
                "retraining on pretrained features needs them, and this experiment names no "
                "pretraining run: pass --weights FILE.keras"
            )
        if config.mode == "retrain" and not weights:
            _check_source_run(config.pretrained, runs_dir, preset, seed)
        return pretrained_model(config, weights, runs_dir, preset, seed)
    if weights:
        raise UserError(
            f"--weights {weights}: this run retrains on random, untrained features "
            "(features=random), so it takes no weights; drop --weights"
        )
    return None


def _check_source_run(source: str, runs_dir: str | os.PathLike, preset: str, seed: int) -> None:
    """The run a retraining starts from, once it has a history: its model must be whole.

    A source run whose model was deleted or damaged after it finished reports itself finished
    when trained again without ``--force``: the hint names the command that does train it
    again, rather than one that would send the user round in a loop.
    """
    source_seed = experiments.source_seed(preset, seed, source)
    paths = RunPaths(run_directory(runs_dir, preset, source, source_seed))
    problem = model_problem(paths.model)
    if problem is None or not paths.history.is_file():
        return  # whole, or never trained: ``pretrained_model`` says which command trains it
    if paths.model.exists() or load_history(paths.history).status == "finished":
        raise UserError(
            f"this retraining starts from {paths.model}, which {problem}: "
            f"{train_again(source, preset, source_seed)}"
        )


def source_model(path: Path, config: RunConfig) -> keras.Model:
    """The pretrained model, checked before any data is loaded: an AlexNet of the run's size."""
    source = model_lib.load_model(path)
    size = model_lib.describe(source)["image_size"]
    if size != config.crop:
        raise UserError(
            f"{path}: the weights take {size}x{size} images, this run crops {config.crop}: "
            f"use --set crop={size} (and a resize of at least {size})"
        )
    return source


def initial_model(
    config: RunConfig, splits: data.ExperimentData, source: keras.Model | None, seed: int
) -> keras.Model:
    """Retrain: the source's features and a new classifier, features frozen; the source's fc6/fc7
    kept unless ``keep_fc67`` is false (the oracle's: its source is the full run, its classifier
    drawn by the filler with the run's seed, as the control's). Full training: a fresh network,
    or the source itself when one is given (fine-tuning all layers). The random-features control:
    a fresh network (the target's own mean) with its features frozen."""
    if source is None:
        network = model_lib.build_alexnet(
            splits.num_classes,
            config.crop,
            config.groups,
            mean=splits.channel_mean,
            dropout=config.dropout,
            init=config.init,
            seed=seed,
            pool5=config.features_end == "pool5",
        )
        trainee_lib.for_mode(network, config.mode)
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
        pool5=config.features_end == "pool5",
    )
    return trainee_lib.for_mode(new, config.mode)


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


def start(config: RunConfig, weights_path: Path | None) -> str:
    """What the network starts from (``arms.STARTS``), as ``initial_model`` builds it: a
    retraining's arm's start, by its frozen block; full training's, or, for full training (or
    pretraining) given weights, the whole pretrained network."""
    if config.mode == "retrain":
        return arms.retraining_on(config.features).start
    return arms.FULL.start if weights_path is None else "pretrained-network"
