"""Cached frozen features: retraining's classifier trained on pool5 outputs computed once.

With ``features`` frozen, an epoch of retraining spends most of its time recomputing conv1 ..
pool5 for crops it has seen before. Caching needs a finite set of crops, so each image keeps a
fixed set of augmented views, Caffe's standard ones (4 corners + centre, and their mirrors when
the run mirrors), and every epoch draws one view per image from a key of ``(seed, epoch,
index)``: the augmentation survives, with 10 (or 5) positions instead of every offset.

The store is a memory-mapped ``.npy`` array ``(images, views, *pool5 shape)`` on disk, float16
when asked, read one batch at a time, so RAM use is bounded by a batch, not by the split. It is
written by this module rather than tf.data's ``cache`` or ``snapshot``, which replay a stream in
order: an epoch here needs random access to one of several views per image. A cache is keyed by
the preprocess + features weights, the dataset, split, class subset, example subset and view
settings, lives under ``RUNS_DIR/feature-cache/``, and is reused by every run that asks for the
same key. Its build is resumable: the rows done are recorded after every batch, and Ctrl-C
stops the build only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from paper_repro import data
from paper_repro.augment import AugmentConfig, crop_views, example_keys, view_offsets
from paper_repro.history import CacheRecord
from paper_repro.model import FEATURES, PREPROCESS
from paper_repro.runs import deferred_interrupt, hold_lock, write_atomic

CACHE_DIR_NAME = "feature-cache"
_FILES = ("features", "labels", "indices")
_META = "meta.json"
_PROGRESS = "progress.json"
_LOCK = "build.lock"


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """Everything a cache's contents depend on; its hash names the cache directory."""

    dataset: str
    split: str
    classes: tuple[int, ...] | None
    subset: int | None
    subset_seed: int | None
    resize: int
    crop: int
    views: tuple[tuple[int, int, bool], ...]
    dtype: str
    weights: str
    """sha256 of the preprocess and features weights (and the preprocess config)."""

    @property
    def name(self) -> str:
        """A directory name a person can read, ending in the key that makes it unique."""
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self)).encode()).hexdigest()
        dataset = self.dataset.replace("/", "_").replace(os.sep, "_")
        split = re.sub(r"[^\w.-]+", "_", self.split)  # a sliced split: train[:90%] -> train_90_
        return f"{dataset}-{split}-{self.crop}px-{len(self.views)}views-{self.dtype}-{digest[:12]}"


def training_views(augment: AugmentConfig, views: int) -> tuple[tuple[int, int, bool], ...]:
    """The first ``views`` of Caffe's 10 test views, without the mirrored ones when the run
    does not mirror (MNIST): a cached run never sees a crop that uncached training could not."""
    offsets = view_offsets(augment, views)
    return tuple(view for view in offsets if augment.mirror or not view[2])


def features_digest(network: keras.Model) -> str:
    """sha256 of what the cached values depend on in the model: preprocess + features."""
    digest = hashlib.sha256()
    preprocess = network.get_layer(PREPROCESS)
    digest.update(json.dumps(preprocess.get_config(), sort_keys=True, default=str).encode())
    for weight in [*preprocess.get_weights(), *network.get_layer(FEATURES).get_weights()]:
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """A built cache: memory-mapped pool5 features of one split, and how long the build took."""

    path: Path
    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    build_seconds: float
    reused: bool

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def num_views(self) -> int:
        return self.features.shape[1]

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        first_epoch: int,
        end_epoch: int,
        shard: data.Shard | None = None,
    ) -> tf.data.Dataset:
        """Epochs ``first_epoch .. end_epoch - 1``: ``(features, label)`` batches, each epoch in
        the order of uncached training's in-memory path, one keyed view per image; ``shard``:
        this worker's parts of each batch (``data.shard_batches``), only they are read."""
        indices = tf.constant(self.indices)
        epochs = [
            self._epoch(indices, batch_size, seed, e, shard) for e in range(first_epoch, end_epoch)
        ]
        return data.finish_pipeline(functools.reduce(tf.data.Dataset.concatenate, epochs))

    def validation_batches(
        self, batch_size: int, shard: data.Shard | None = None
    ) -> tf.data.Dataset:
        """Every image's first view in order: the centre crop of a test cache built with 1 view."""
        positions = tf.data.Dataset.range(self.num_examples).batch(batch_size)
        return data.finish_pipeline(
            data.shard_batches(positions, shard).map(
                lambda rows: self._read(rows, tf.zeros_like(rows))
            )
        )

    def _epoch(
        self, indices: tf.Tensor, batch_size: int, seed: int, epoch: int, shard: data.Shard | None
    ) -> tf.data.Dataset:
        order = data.epoch_order(self.num_examples, seed, epoch)

        def read(rows: tf.Tensor):
            keys = example_keys(seed, epoch, tf.gather(indices, rows))
            return self._read(rows, tf.math.floormod(keys, self.num_views))

        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return data.shard_batches(batches, shard).map(read)

    def _read(self, rows: tf.Tensor, views: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def gather(rows: np.ndarray, views: np.ndarray):
            # Fancy indexing reads only these rows from the memory map; float32 stays uncopied.
            return np.asarray(self.features[rows, views], np.float32), self.labels[rows]

        features, labels = tf.numpy_function(
            gather, [rows, views], (tf.float32, tf.int64), stateful=False
        )
        features.set_shape((None, *self.features.shape[2:]))
        labels.set_shape((None,))
        return features, labels


def open_or_build(
    root: str | os.PathLike,
    spec: CacheSpec,
    network: keras.Model,
    split: tf.data.Dataset,
    augment: AugmentConfig,
    *,
    batch_size: int,
    verbose: int = 1,
) -> FeatureCache:
    """The cache for ``spec`` under ``root``: opened when built, else built (or its interrupted
    build continued) from ``split`` with ``network``'s preprocess and features."""
    path = Path(root) / CACHE_DIR_NAME / spec.name
    reused = (path / _META).is_file()
    if not reused:
        with _build_lock(path, verbose):
            # Another run may have built it while this one waited for the lock.
            reused = (path / _META).is_file()
            if not reused:
                _build(path, spec, network, split, augment, batch_size, verbose)
    if reused and verbose:
        print(f"feature cache: reusing {path}", flush=True)
    return _open(path, reused)


def _build_lock(path: Path, verbose: int) -> contextlib.AbstractContextManager[None]:
    """One build per cache at a time: runs started together (other seeds, say) share the cache
    instead of writing the same files; a later one waits for the first's build, then reuses it."""
    path.mkdir(parents=True, exist_ok=True)

    def wait(holder: str) -> None:
        if verbose:
            print(f"feature cache: waiting for {holder} building {path}", flush=True)

    return hold_lock(path / _LOCK, wait)


def _open(path: Path, reused: bool) -> FeatureCache:
    meta = json.loads((path / _META).read_text())
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in _FILES}
    return FeatureCache(path, **arrays, build_seconds=meta["build_seconds"], reused=reused)


def _build(path, spec, network, split, augment, batch_size, verbose) -> None:
    """Write the cache's files, continuing an interrupted build. Ctrl-C takes effect between two
    batches, once the rows done are recorded, or once the cache is whole, never inside
    TensorFlow's calls (``runs.deferred_interrupt``)."""
    with deferred_interrupt() as stop_if_interrupted:
        count = int(split.cardinality())
        extract = extractor(network)
        shape = tuple(network.get_layer(FEATURES).output.shape[1:])
        arrays = {
            "features": _partial(path / "features", (count, len(spec.views), *shape), spec.dtype),
            "labels": _partial(path / "labels", (count,), "int64"),
            "indices": _partial(path / "indices", (count,), "int64"),
        }
        done, seconds = _progress(path)
        start = time.perf_counter() - seconds
        progress = keras.utils.Progbar(count, verbose=verbose, unit_name="image")
        progress.update(done)
        if verbose:
            print(f"feature cache: {len(spec.views)} views of {count} images -> {path}", flush=True)
        remaining = data.uniform_size(split, augment).skip(done).batch(batch_size)
        for batch in remaining.prefetch(tf.data.AUTOTUNE):
            end = done + len(batch["label"])
            for v, view in enumerate(crop_views(batch["image"], augment, spec.views)):
                arrays["features"][done:end, v] = extract(view).numpy()
            arrays["labels"][done:end] = batch["label"].numpy()
            arrays["indices"][done:end] = batch["index"].numpy()
            for array in arrays.values():
                array.flush()
            done = end
            record = {"rows": done, "seconds": time.perf_counter() - start}
            write_atomic(path / _PROGRESS, json.dumps(record).encode())
            progress.update(done)
            stop_if_interrupted()
        for name in _FILES:
            os.replace(path / f"{name}.npy.partial", path / f"{name}.npy")
        meta = {"spec": dataclasses.asdict(spec), "build_seconds": time.perf_counter() - start}
        write_atomic(path / _META, (json.dumps(meta, indent=2) + "\n").encode())
        (path / _PROGRESS).unlink(missing_ok=True)


def _progress(path: Path) -> tuple[int, float]:
    """Rows already written by an interrupted build, and the seconds it had spent."""
    try:
        record = json.loads((path / _PROGRESS).read_text())
        return int(record["rows"]), float(record["seconds"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0, 0.0


def _partial(stem: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A ``.npy.partial`` memory map of that shape: reopened when an interrupted build left one."""
    path = stem.with_name(f"{stem.name}.npy.partial")
    if path.is_file():
        existing = np.load(path, mmap_mode="r+")
        if existing.shape == shape and existing.dtype == np.dtype(dtype):
            return existing
    (stem.parent / _PROGRESS).unlink(missing_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def extractor(network: keras.Model):
    """``network``'s pool5 of a batch of crops: its preprocess then its frozen features."""
    preprocess, features = network.get_layer(PREPROCESS), network.get_layer(FEATURES)

    @tf.function(reduce_retracing=True)
    def extract(images: tf.Tensor) -> tf.Tensor:
        return features(preprocess(images), training=False)

    return extract


@dataclasses.dataclass(frozen=True)
class CachedData:
    """A run's cached splits, fed to ``model.fit`` like ``data.ExperimentData``'s batches."""

    train: FeatureCache
    test: FeatureCache
    batch_size: int
    seed: int

    def train_batches(
        self, first_epoch: int, end_epoch: int, shard: data.Shard | None = None
    ) -> tf.data.Dataset:
        return self.train.train_batches(self.batch_size, self.seed, first_epoch, end_epoch, shard)

    def validation_batches(self, shard: data.Shard | None = None) -> tf.data.Dataset:
        return self.test.validation_batches(self.batch_size, shard)

    @property
    def record(self) -> CacheRecord:
        return CacheRecord(
            train=self.train.path.name,
            test=self.test.path.name,
            build_seconds=self.train.build_seconds + self.test.build_seconds,
            reused=self.train.reused and self.test.reused,
        )


def for_experiment(
    root: str | os.PathLike, network: keras.Model, splits: data.ExperimentData, config, verbose: int
) -> CachedData:
    """The train cache (``config.cache_views`` views per image) and the test cache (centre crop,
    for the per-epoch test accuracy) of a retrain run, opened or built under ``root``."""
    weights = features_digest(network)
    caches = []
    for split, subset, dataset, views in (
        (config.train_split, config.train_subset, splits.train, config.cache_views),
        (config.test_split, config.test_subset, splits.test, 1),
    ):
        spec = CacheSpec(
            dataset=config.dataset,
            split=split,
            classes=config.classes,
            subset=subset,
            subset_seed=splits.seed if subset else None,
            resize=config.resize,
            crop=config.crop,
            views=training_views(splits.augment, views),
            dtype=config.cache_dtype,
            weights=weights,
        )
        build = functools.partial(open_or_build, batch_size=splits.batch_size, verbose=verbose)
        caches.append(build(root, spec, network, dataset, splits.augment))
    return CachedData(*caches, batch_size=splits.batch_size, seed=splits.seed)
