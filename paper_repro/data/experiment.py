"""An experiment's data: its train and test splits, loaded from its config, with the
augmentation, batching and placement that turn them into ``model.fit``'s inputs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras
import tensorflow as tf

from paper_repro.augment import AugmentConfig, with_device_augmentation
from paper_repro.data.pipelines import Shard, eval_dataset, resolve_placement, train_dataset
from paper_repro.data.selection import channel_mean, check_split, load_split
from paper_repro.data.source import SplitInfo


@dataclass(frozen=True)
class ExperimentData:
    """The train and test splits of one experiment, with its augmentation and batching."""

    train: tf.data.Dataset
    train_info: SplitInfo
    test: tf.data.Dataset
    test_info: SplitInfo
    augment: AugmentConfig
    batch_size: int
    seed: int
    placement: str

    @property
    def num_classes(self) -> int:
        return self.train_info.num_classes

    @property
    def train_examples(self) -> int:
        return self.train_info.num_examples

    @functools.cached_property
    def channel_mean(self) -> tuple[float, float, float]:
        """The training split's mean pixel (RGB), for a network trained from scratch on it."""
        return channel_mean(self.train)

    def train_batches(
        self, first_epoch: int, end_epoch: int, shard: Shard | None = None
    ) -> tf.data.Dataset:
        """Epochs ``first_epoch .. end_epoch - 1`` for ``model.fit(initial_epoch=first_epoch)``."""
        return train_dataset(
            self.train, self.augment, batch_size=self.batch_size, seed=self.seed,
            first_epoch=first_epoch, num_epochs=end_epoch - first_epoch, placement=self.placement,
            shard=shard,
        )  # fmt: skip

    def validation_batches(self, shard: Shard | None = None) -> tf.data.Dataset:
        """Centre-crop test batches for fit's per-epoch test accuracy (Figure 5)."""
        return eval_dataset(
            self.test, self.augment, batch_size=self.batch_size, placement=self.placement,
            shard=shard,
        )  # fmt: skip

    def training_model(self, model: keras.Model) -> keras.Model:
        """The model to compile and fit: ``model`` itself, or wrapped for device augmentation."""
        return (
            with_device_augmentation(model, self.augment) if self.placement == "device" else model
        )


def load_experiment_data(
    config, *, data_dir: str | None = None, seed: int = 0, download: bool = False
) -> ExperimentData:
    """Load an experiment's splits from its config (``experiments.RunConfig`` fields: dataset,
    train_split, test_split, classes, train_subset, test_subset, resize, crop, mirror,
    batch_size, augment_on).

    An image folder's splits are both checked before either is read, so that a misspelt test
    split costs no pass over the training images."""
    for field in ("train_split", "test_split"):
        split, option = getattr(config, field), f"--set {field}=NAME"
        check_split(config.dataset, split, train_split=config.train_split, split_option=option)
    common = dict(
        train_split=config.train_split,
        data_dir=data_dir,
        class_subset=config.classes,
        seed=seed,
        download=download,
    )
    train, train_info = load_split(
        config.dataset, config.train_split, subset_size=config.train_subset,
        setting_names=("--set classes", "--set train_subset"), **common,
    )  # fmt: skip
    test, test_info = load_split(
        config.dataset, config.test_split, subset_size=config.test_subset,
        setting_names=("--set classes", "--set test_subset"), **common,
    )  # fmt: skip
    augment = AugmentConfig(config.resize, config.crop, config.mirror)
    placement = resolve_placement(config.augment_on)
    return ExperimentData(
        train, train_info, test, test_info, augment, config.batch_size, seed, placement
    )
