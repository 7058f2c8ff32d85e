"""Datasets for the paper: tfds or an image folder -> uint8 images -> epochs of augmented batches.

The modules, in the direction data flows:

- ``source``: what a reader hands on, a whole split and its ``SplitInfo``; the index contract;
- ``reader_tfds`` and ``reader_image_folder``: the two readers (tfds datasets, image folders);
- ``selection``: ``load_split``, a read split narrowed to its classes and a balanced subset;
- ``pipelines``: epochs of augmented batches on the host or the device, sharding, prefetching;
- ``experiment``: ``ExperimentData``, an experiment's splits loaded from its config.

Every example keeps its ``index`` in the whole split: it keys the class-balanced subset, the
epoch's order and the example's crops alike, so a resumed epoch equals an uninterrupted one.
The names below are the package's interface (``data.load_split``, ``data.train_dataset``, ...).
"""

from paper_repro.data.experiment import ExperimentData, load_experiment_data
from paper_repro.data.pipelines import (
    Shard,
    default_placement,
    epoch_order,
    eval_dataset,
    finish_pipeline,
    prefetch_to,
    read_batches,
    resolve_placement,
    shard_batches,
    steps_per_epoch,
    train_dataset,
    uniform_size,
)
from paper_repro.data.selection import channel_mean, is_image_folder, load_split
from paper_repro.data.source import SplitInfo

__all__ = [
    "ExperimentData",
    "Shard",
    "SplitInfo",
    "channel_mean",
    "default_placement",
    "epoch_order",
    "eval_dataset",
    "finish_pipeline",
    "is_image_folder",
    "load_experiment_data",
    "load_split",
    "prefetch_to",
    "read_batches",
    "resolve_placement",
    "shard_batches",
    "steps_per_epoch",
    "train_dataset",
    "uniform_size",
]
