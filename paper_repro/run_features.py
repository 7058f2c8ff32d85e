"""A finished run's frozen feature block on its own images: what ``feature-activity`` and
``probe`` both read.

A run directory that ``paper-repro train`` finished holds its history, whose config and seed give
back the very images the run trained and was tested on (its splits, its class subset, and the
balanced subset its seed keys), and its final model, whose ``conv1`` .. ``pool5`` block is the
frozen feature block: the source's for a retraining, an untrained one for the control, the
trained one for full training. pool5 is read on centre crops, as the run's per-epoch test sees
its images, a batch at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from paper_repro import cache, data, experiments
from paper_repro.errors import UserError
from paper_repro.history import History, load_history
from paper_repro.runs import RunPaths


def finished_runs(
    run_dirs: Sequence[str | os.PathLike], limit: int | None
) -> list[tuple[Path, History]]:
    """Each run directory with its history, every one checked (and ``--images``) before the
    first is measured: a bad path late in a long list then costs nothing."""
    if limit is not None and limit < 1:
        raise UserError(f"--images takes a positive number of images, got {limit}")
    return [(run, finished_history(run)) for run in map(Path, run_dirs)]


def finished_history(run: Path) -> History:
    """The history of a finished run directory. A run still training (or trained again with
    ``--force``) may hold an earlier run's model: only a finished history vouches for it."""
    paths = RunPaths(run)
    if not paths.history.is_file() or not paths.model.is_file():
        raise UserError(
            f"{run}: not a finished run directory (it needs history.json and model.keras); "
            "give a directory that paper-repro train wrote"
        )
    history = load_history(paths.history)
    if history.status != "finished":
        raise UserError(
            f"{run}: not a finished run (its history says {history.status}); "
            "finish it with paper-repro train first"
        )
    return history


def run_config(history: History) -> experiments.RunConfig:
    """The run's settings as its history recorded them, those added since at their defaults."""
    settings = experiments.recorded_settings(history.config, history.dataset, history.mode)
    return experiments.RunConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    )


def centre_crops(split: tf.data.Dataset, splits: data.ExperimentData) -> tf.data.Dataset:
    """``(centre crops, labels)`` batches of a split, at the run's geometry and batch size."""
    return data.eval_dataset(split, splits.augment, batch_size=splits.batch_size, placement="host")


def pool5_batches(model: keras.Model, batches: Iterable) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``model``'s pool5 ``(batch, height, width, channels)`` of batches of ``(images, labels)``,
    with the labels."""
    extract = cache.extractor(model)
    for images, labels in batches:
        yield extract(images).numpy(), np.asarray(labels)
