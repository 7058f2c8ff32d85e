"""Pipelines: epochs of augmented training batches and centre-crop test batches from a split.

Images stay uint8 at their native size until Caffe's augmentation (``paper_repro.augment``), which
runs either here, as a tf.data map on the host, or inside the training step
(``augment.CaffeAugment``, device placement). An example's crops are keyed by ``(seed, epoch,
index)`` and an epoch's order is seeded by ``(seed, epoch)``, so a resumed epoch equals an
uninterrupted one. A distributed run's worker reads only its replicas' parts of every batch
(``Shard``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from paper_repro.augment import (
    AugmentConfig,
    caffe_augment,
    crop_views,
    example_keys,
    hash64,
    resize_uint8,
)
from paper_repro.data.source import READ_BATCH
from paper_repro.errors import UserError
from paper_repro.experiments import PLACEMENTS, check_seed

IN_MEMORY_BYTES = 2 * 1024**3
SHUFFLE_BUFFER = 16_384


def default_placement() -> str:
    """Where the augmentation runs by default: the device when a GPU is visible, else the host
    (on CPU-only machines the host path is faster: tf.data overlaps it with the step)."""
    return "device" if tf.config.list_physical_devices("GPU") else "host"


def resolve_placement(placement: str) -> str:
    """``auto`` -> ``default_placement()``; ``host`` and ``device`` as given."""
    if placement not in PLACEMENTS:
        raise UserError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return default_placement() if placement == "auto" else placement


@dataclass(frozen=True)
class Shard:
    """The replicas one worker feeds: ``count`` of them from replica ``first``, of ``replicas``.

    Every global batch is cut into ``replicas`` contiguous parts (``shard_batches``); a worker's
    pipeline yields its replicas' parts of each batch in turn, as
    ``distribute_datasets_from_function`` hands consecutive elements to a worker's devices.
    """

    first: int
    count: int
    replicas: int


def shard_batches(batches: tf.data.Dataset, shard: Shard | None) -> tf.data.Dataset:
    """This worker's parts of every batch (``paper_repro.cluster`` states the rule): replica ``r``
    takes ``[r n // R, (r + 1) n // R)`` of a batch of ``n``; unchanged for ``None``. Done before
    the augmentation, so a worker augments only its own images."""
    if shard is None:
        return batches

    def part(batch, replica: tf.Tensor):
        size = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]
        start = replica * size // shard.replicas
        end = (replica + 1) * size // shard.replicas
        return tf.nest.map_structure(lambda tensor: tensor[start:end], batch)

    def parts(*batch) -> tf.data.Dataset:
        batch = batch[0] if len(batch) == 1 else batch
        replicas = tf.data.Dataset.range(shard.first, shard.first + shard.count)
        return replicas.map(lambda replica: part(batch, replica))

    return batches.flat_map(parts)


def augment_on_host(
    batches: tf.data.Dataset, augment: AugmentConfig, *, seed: int, epoch: int
) -> tf.data.Dataset:
    """A tf.data map of batched loaded examples to ``(uint8 crops, label)`` pairs."""

    def transform(batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
        keys = example_keys(seed, epoch, batch["index"])
        return caffe_augment(batch["image"], keys, augment), batch["label"]

    return batches.map(transform, num_parallel_calls=tf.data.AUTOTUNE)


def _device_inputs(batches: tf.data.Dataset, seed: int, epoch: int) -> tf.data.Dataset:
    def transform(batch: dict) -> tuple[dict, tf.Tensor]:
        keys = example_keys(seed, epoch, batch["index"])
        return {"image": batch["image"], "key": keys}, batch["label"]

    return batches.map(transform, num_parallel_calls=tf.data.AUTOTUNE)


def train_dataset(
    dataset: tf.data.Dataset,
    augment: AugmentConfig,
    *,
    batch_size: int,
    seed: int = 0,
    first_epoch: int = 0,
    num_epochs: int = 1,
    placement: str = "auto",
    in_memory_bytes: int = IN_MEMORY_BYTES,
    shard: Shard | None = None,
) -> tf.data.Dataset:
    """Epochs ``first_epoch .. first_epoch + num_epochs - 1`` of shuffled, augmented batches.

    Give ``model.fit`` ``steps_per_epoch=steps_per_epoch(n, batch_size)``: each epoch is that many
    batches (the last one smaller when batch_size does not divide n). Epoch ``e``'s order and
    crops depend only on ``(seed, e)``, so ``first_epoch=e`` resumes exactly. Host placement
    yields ``(uint8 crops, label)``; device placement ``({"image", "key"}, label)`` for
    ``with_device_augmentation``. A split that fits in ``in_memory_bytes`` (all of the paper's)
    is decoded once and permuted exactly per epoch; a larger one streams through a seeded
    tf.data shuffle buffer (whose order also depends on TF's global seed). ``shard``: this
    worker's parts of each batch (``shard_batches``), for a distributed run.
    """
    _check_batching(dataset, batch_size)
    check_seed(seed)
    if first_epoch < 0 or num_epochs < 1:
        raise UserError(
            f"need first_epoch >= 0 and num_epochs >= 1, got {first_epoch}, {num_epochs}"
        )
    where = resolve_placement(placement)
    epoch_batches = _epoch_batches(
        uniform_size(dataset, augment), batch_size, seed, in_memory_bytes
    )

    def one_epoch(epoch: int) -> tf.data.Dataset:
        batches = shard_batches(epoch_batches(epoch), shard)
        if where == "host":
            return augment_on_host(batches, augment, seed=seed, epoch=epoch)
        return _device_inputs(batches, seed, epoch)

    # Epochs are chained in Python, not by flat_map over a range: tf.data's shuffle takes its seed
    # as a Python value, and chaining keeps the total number of batches known to Keras.
    epochs = [one_epoch(e) for e in range(first_epoch, first_epoch + num_epochs)]
    return finish_pipeline(functools.reduce(tf.data.Dataset.concatenate, epochs))


def eval_dataset(
    dataset: tf.data.Dataset,
    augment: AugmentConfig,
    *,
    batch_size: int,
    placement: str = "auto",
    shard: Shard | None = None,
) -> tf.data.Dataset:
    """Centre-crop test batches in order, for ``model.fit(validation_data=...)`` (Figure 5).

    Host placement: ``(uint8 centre crops, label)``; device placement: ``({"image", "key"},
    label)`` for ``with_device_augmentation``, whose layer centre-crops outside training.
    ``shard``: this worker's parts of each batch, as for ``train_dataset``.
    """
    _check_batching(dataset, batch_size)
    batches = shard_batches(uniform_size(dataset, augment).batch(batch_size), shard)
    if resolve_placement(placement) == "host":
        pairs = batches.map(
            lambda b: (crop_views(b["image"], augment, 1)[0], b["label"]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        pairs = batches.map(lambda b: ({"image": b["image"], "key": b["index"]}, b["label"]))
    return finish_pipeline(pairs)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches per epoch of ``train_dataset``: ``ceil(num_examples / batch_size)``.

    The last batch of an epoch is partial when the batch does not divide the data, where Caffe's
    data layer wraps around to the next pass and keeps every batch full: no difference for the
    paper's transfer runs (80 divides 60,000 and 50,000); 143 instead of 256 images once per
    ILSVRC-12 epoch (docs/caffe-differences.md).
    """
    return math.ceil(num_examples / batch_size)


def _check_batching(dataset: tf.data.Dataset, batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(dataset.cardinality()) < 0:
        raise UserError("the dataset must come from load_split (its number of examples is known)")


def uniform_size(dataset: tf.data.Dataset, augment: AugmentConfig) -> tf.data.Dataset:
    """Images of varying size can only be batched once resized: do Caffe's resize per image.

    Fixed-size datasets stay at their native size, so the resize happens batched (or on device).
    """
    if dataset.element_spec["image"].shape.is_fully_defined():
        return dataset

    def resize(example: dict) -> dict:
        return {**example, "image": resize_uint8(example["image"], augment.resize)}

    return dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE)


def _epoch_batches(dataset: tf.data.Dataset, batch_size: int, seed: int, in_memory_bytes: int):
    """``epoch -> batched dataset in that epoch's order``, in memory or streaming."""
    count = int(dataset.cardinality())
    if count * dataset.element_spec["image"].shape.num_elements() <= in_memory_bytes:
        arrays = {k: tf.constant(v) for k, v in _materialise(dataset, count).items()}

        def in_memory(epoch: int) -> tf.data.Dataset:
            positions = tf.data.Dataset.from_tensor_slices(epoch_order(count, seed, epoch))
            return read_batches(
                positions.batch(batch_size),
                lambda idx: {k: tf.gather(v, idx) for k, v in arrays.items()},
            )

        return in_memory

    def streamed(epoch: int) -> tf.data.Dataset:
        shuffle_seed = int(hash64(seed, "shuffle", tf.constant(epoch, tf.int64)))
        buffer = min(count, SHUFFLE_BUFFER)
        shuffled = dataset.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return shuffled.batch(batch_size)

    return streamed


def epoch_order(count: int, seed: int, epoch: int) -> tf.Tensor:
    """The positions ``0 .. count - 1`` in epoch ``epoch``'s order: a function of (seed, epoch)."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(count, dtype=tf.int64), seed=[seed, epoch], alg="philox"
    )


def _materialise(dataset: tf.data.Dataset, count: int) -> dict[str, np.ndarray]:
    """Decode a split once into arrays (uint8 images, labels, indices) without a second copy."""
    spec = dataset.element_spec
    out = {k: np.empty((count, *spec[k].shape), spec[k].dtype.as_numpy_dtype) for k in spec}
    start = 0
    for batch in dataset.batch(READ_BATCH).as_numpy_iterator():
        for key, value in batch.items():
            out[key][start : start + len(value)] = value
        start += len(batch["index"])
    return out


def read_batches(batches: tf.data.Dataset, read: Callable[..., Any]) -> tf.data.Dataset:
    """``read`` of every element of ``batches`` (a batch's positions: its images gathered from
    memory, its features from a memory-mapped cache), several at once and in order.

    How many reads run at once is tf.data's to tune (AUTOTUNE) from the times it measures, on
    whatever CPU this is: enough to keep the step fed, without taking the cores the step
    computes on; in order whatever the pipeline's options."""
    return batches.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def prefetch_to(dataset: tf.data.Dataset, device: str | None) -> tf.data.Dataset:
    """The next batches copied to ``device`` (a GPU) while the current step runs, as many as
    tf.data finds it needs; unchanged for ``None``. tf.data requires this to be the pipeline's
    last transformation."""
    if device is None:
        return dataset
    return dataset.apply(tf.data.experimental.prefetch_to_device(device))


def finish_pipeline(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Deterministic order and prefetching: the end of every pipeline that feeds a model.

    While the step trains on one batch the next ones are made (``tests/test_pipelines_feed.py``);
    how many are kept ready is tuned by tf.data (AUTOTUNE) from the producer's and the
    consumer's measured times, so no batch count is tuned to one CPU."""
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
