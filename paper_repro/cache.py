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
the preprocess + features weights, the dataset and what its split holds (an image folder's files,
not its path alone), the split, class subset, example subset and view settings, lives under
``RUNS_DIR/feature-cache/``, and is reused by every run that asks for the same key, once it is
checked whole: its record and every array's shape, on disk. Its build is resumable: the rows done
are recorded after every batch, and Ctrl-C stops the build only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from paper_repro import data
from paper_repro.augment import AugmentConfig, crop_views, example_keys, view_offsets
from paper_repro.errors import UserError
from paper_repro.history import CacheRecord
from paper_repro.model import FEATURES, POOL5, PREPROCESS
from paper_repro.runs import deferred_interrupt, hold_lock, write_atomic

CACHE_DIR_NAME = "feature-cache"
_FILES = ("features", "labels", "indices")
_META = "meta.json"
_PROGRESS = "progress.json"
_LOCK = "build.lock"
_DAMAGED = "damaged"
_HOLDER = re.compile(r"pid (\d+) on (\S+)")
# A build waiting for another run's gives up once that run has been stopped this long, looking
# every POLL_SECONDS: a run suspended by mistake must not hold every other one forever.
STOPPED_GRACE_SECONDS = 60.0
POLL_SECONDS = 1.0
_Layout = tuple[tuple[int, ...], str]


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """Everything a cache's contents depend on; its hash names the cache directory."""

    dataset: str
    content: str
    """``SplitInfo.content``: what the split's images are, which a folder's path does not say."""
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
    """sha256 of what the cached values depend on in the model: preprocess + features, their
    weights and where the features end (pool5 and relu5 share their weights)."""
    digest = hashlib.sha256()
    preprocess, features = network.get_layer(PREPROCESS), network.get_layer(FEATURES)
    digest.update(json.dumps(preprocess.get_config(), sort_keys=True, default=str).encode())
    end = features.layers[-1].name
    if end != POOL5:  # pool5's caches keep the keys they had before relu5 was an end
        digest.update(end.encode())
    for weight in [*preprocess.get_weights(), *features.get_weights()]:
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
            data.read_batches(
                data.shard_batches(positions, shard),
                lambda rows: self._read(rows, tf.zeros_like(rows)),
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
        return data.read_batches(data.shard_batches(batches, shard), read)

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
    """The cache for ``spec`` under ``root``: opened when built and whole, else built (or its
    interrupted build continued) from ``split`` with ``network``'s preprocess and features. A
    damaged one is set aside and built again (``_set_aside``): a rerun always gets past it."""
    path = Path(root) / CACHE_DIR_NAME / spec.name
    layout = _layout(spec, network, int(split.cardinality()))
    try:
        cached = _whole(path, spec, layout, reused=True)
    except DamagedCache:
        cached = None  # set aside under the build lock: another run may be setting it aside
    if cached is None:
        with _build_lock(path, verbose):
            # Another run may have built it while this one waited for the lock.
            cached = _whole_or_set_aside(path, spec, layout)
            if cached is None:
                _build(path, spec, network, split, augment, batch_size, verbose)
                return _whole(path, spec, layout, reused=False)
    if verbose:
        print(f"feature cache: reusing {path}", flush=True)
    return cached


class DamagedCache(UserError):
    """A built cache that is not what its build wrote: a file truncated, missing or replaced, a
    record unreadable or another cache's. A ``UserError``: the message says what was found."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"feature cache {path} is damaged: {reason}")


def _layout(spec: CacheSpec, network: keras.Model, count: int) -> dict[str, _Layout]:
    """The shape and dtype of each array a whole cache of ``count`` images holds."""
    pool5 = tuple(network.get_layer(FEATURES).output.shape[1:])
    return {
        "features": ((count, len(spec.views), *pool5), spec.dtype),
        "labels": ((count,), "int64"),
        "indices": ((count,), "int64"),
    }


def _whole(
    path: Path, spec: CacheSpec, layout: dict[str, _Layout], reused: bool
) -> FeatureCache | None:
    """The cache at ``path`` when its build finished (its record, written last, is there), None
    when it did not; ``DamagedCache`` when it is not whole. Checked before use: an array of other
    rows would feed an epoch other images or run out of data in it, and a truncated one fails
    to map."""
    if not os.path.lexists(path / _META):
        return None
    try:
        meta = json.loads((path / _META).read_text())
        seconds = float(meta["build_seconds"])
        same = meta["spec"] == json.loads(json.dumps(dataclasses.asdict(spec)))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise DamagedCache(path, f"its {_META} is unreadable ({_reason(error)})") from None
    if not same:
        raise DamagedCache(path, f"its {_META} describes another cache")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise DamagedCache(path, f"its {_META} records a build time of {seconds} s")
    arrays = {name: _load(path, f"{name}.npy", *layout[name]) for name in _FILES}
    return FeatureCache(path, **arrays, build_seconds=seconds, reused=reused)


def _load(
    path: Path, file_name: str, shape: tuple[int, ...], dtype: str, mode: str = "r"
) -> np.ndarray:
    """The memory-mapped array in ``path / file_name``, when it is a whole one of ``shape`` and
    ``dtype``; ``DamagedCache`` otherwise. Opened read-only first: mapped ``r+``, NumPy would
    extend a truncated file with zeros, rows that read as features."""
    try:
        array = np.load(path / file_name, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise DamagedCache(path, f"{file_name} is no whole array ({_reason(error)})") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise DamagedCache(
            path,
            f"{file_name} holds {array.dtype} values of shape {array.shape}, not {dtype} of "
            f"shape {shape}",
        )
    return array if mode == "r" else np.load(path / file_name, mmap_mode=mode)


def _reason(error: BaseException) -> str:
    """An exception in a few words: its type and the first line of its message."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _whole_or_set_aside(
    path: Path, spec: CacheSpec, layout: dict[str, _Layout]
) -> FeatureCache | None:
    """``_whole``, with a damaged cache set aside (None then): its build lock is held."""
    try:
        return _whole(path, spec, layout, reused=True)
    except DamagedCache as damage:
        _set_aside(path, damage)
        return None


def _set_aside(path: Path, damage: DamagedCache) -> None:
    """Move a damaged cache's files into ``path/damaged/``, its record first, so that it is
    built again. Moved, not deleted: only a cache found damaged leaves its place, and stays there
    to look at; an earlier ``damaged/`` is replaced, as it held a damaged cache too."""
    aside = path / _DAMAGED
    try:
        if aside.exists():
            shutil.rmtree(aside)
        aside.mkdir()
        for name in (_META, *(f"{name}.npy" for name in _FILES)):
            if os.path.lexists(path / name):
                os.replace(path / name, aside / name)
    except OSError as error:
        raise UserError(
            f"{damage}, and it cannot be set aside ({_reason(error)}): move {path} away "
            "(or fix its permissions), then rerun"
        ) from None
    print(
        f"{damage}; set aside in {aside} (delete it to free the space), building it again",
        file=sys.stderr,
        flush=True,
    )


def _build_lock(path: Path, verbose: int) -> contextlib.AbstractContextManager[None]:
    """One build per cache at a time: runs started together (other seeds, say) share the cache
    instead of writing the same files; a later one waits for the first's build, then reuses it.
    A first that ended before its build did (killed, crashed) leaves the lock to the OS, which
    frees it: the later one then continues the build (``_wait_until_free``)."""
    path.mkdir(parents=True, exist_ok=True)
    lock = path / _LOCK

    def wait(holder: str) -> None:
        if verbose:
            print(f"feature cache: waiting for {holder} building {path}", flush=True)
        _wait_until_free(lock, verbose)

    return hold_lock(lock, wait)


def _wait_until_free(lock: Path, verbose: int) -> None:
    """Return once no process holds ``lock`` (``runs.hold_lock`` then takes it); a ``UserError``
    naming the holder once it has been stopped (Ctrl-Z, SIGSTOP) for ``STOPPED_GRACE_SECONDS``.

    Waiting in ``flock`` itself would never end while a stopped process holds the lock: the lock
    is tried every ``POLL_SECONDS`` instead, and the holder's state read from ``/proc`` (Linux;
    a holder on another host, or without ``/proc``, is waited for as long as it holds the lock).
    """
    import fcntl  # hold_lock waits only where there is one

    stopped_since = None
    while True:
        with open(lock, "a+") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # the lock is free; closing the file lets it go again
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "another run"
        pid = _stopped_pid(holder)
        if pid is None:
            stopped_since = None
        elif stopped_since is None:
            stopped_since = time.monotonic()
            if verbose:
                print(
                    f"feature cache: {holder} is stopped; waiting {STOPPED_GRACE_SECONDS:g} s "
                    "for it to go on",
                    flush=True,
                )
        elif time.monotonic() - stopped_since >= STOPPED_GRACE_SECONDS:
            raise UserError(
                f"feature cache {lock.parent} is being built by {holder}, which has been "
                f"stopped (Ctrl-Z or SIGSTOP) for {STOPPED_GRACE_SECONDS:g} s: let it go on "
                f"(`kill -CONT {pid}`) or end it (`kill {pid}`), then rerun this command"
            )
        time.sleep(POLL_SECONDS)


def _stopped_pid(holder: str) -> int | None:
    """The pid of a lock's holder ("pid 123 on HOST", as ``runs.hold_lock`` writes it) when it is
    a stopped process of this host (state T, or t when traced, in ``/proc/PID/stat``)."""
    match = _HOLDER.fullmatch(holder)
    if match is None or match[2] != socket.gethostname():
        return None
    try:
        stat = Path(f"/proc/{match[1]}/stat").read_text()
    except OSError:
        return None
    # The state follows the command name in parentheses, which may itself hold spaces.
    return int(match[1]) if stat.rpartition(")")[2].split()[:1] in (["T"], ["t"]) else None


def _build(path, spec, network, split, augment, batch_size, verbose) -> None:
    """Write the cache's files, continuing an interrupted build. Ctrl-C takes effect between two
    batches, once the rows done are recorded, or once the cache is whole, never inside
    TensorFlow's calls (``runs.deferred_interrupt``)."""
    with deferred_interrupt() as stop_if_interrupted:
        count = int(split.cardinality())
        extract = extractor(network)
        layout = _layout(spec, network, count)
        arrays = {name: _partial(path, name, *layout[name]) for name in _FILES}
        done, seconds = _progress(path, count, arrays["indices"])
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


def _progress(path: Path, count: int, indices: np.ndarray) -> tuple[int, float]:
    """Rows already written by an interrupted build of ``count`` rows, and the seconds it had
    spent; none when its record is unreadable or claims rows never written. A split's indices
    increase (``data.load_split``): a row the build did not write holds index 0 after a larger
    one, as the zeros do that NumPy fills a memory map with."""
    try:
        record = json.loads((path / _PROGRESS).read_text())
        rows, seconds = int(record["rows"]), float(record["seconds"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return 0, 0.0
    written = 0 <= rows <= count and bool(np.all(np.diff(indices[:rows]) > 0))
    return (rows, seconds) if written and math.isfinite(seconds) else (0, 0.0)


def _partial(path: Path, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The ``NAME.npy.partial`` memory map of that shape: an interrupted build's when it left a
    whole one (``_load``), else a new one, and the build starts over."""
    file_name = f"{name}.npy.partial"
    if os.path.lexists(path / file_name):
        try:
            return _load(path, file_name, shape, dtype, mode="r+")
        except DamagedCache as damage:
            print(f"{damage}; building it from the first image again", file=sys.stderr, flush=True)
    (path / _PROGRESS).unlink(missing_ok=True)
    return np.lib.format.open_memmap(path / file_name, mode="w+", dtype=dtype, shape=shape)


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
    for split, info, subset, views in (
        (splits.train, splits.train_info, config.train_subset, config.cache_views),
        (splits.test, splits.test_info, config.test_subset, 1),
    ):
        spec = CacheSpec(
            dataset=config.dataset,
            content=info.content,
            split=info.split,
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
        caches.append(build(root, spec, network, split, splits.augment))
    return CachedData(*caches, batch_size=splits.batch_size, seed=splits.seed)
