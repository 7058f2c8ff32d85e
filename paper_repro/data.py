"""Datasets for the paper: tfds or an image folder -> uint8 images -> epochs of augmented batches.

Images stay uint8 at their native size (grey copied to 3 channels, as the paper did for MNIST)
until Caffe's augmentation (``paper_repro.augment``), which runs either here, as a tf.data map on
the host, or inside the training step (``augment.CaffeAugment``, device placement).

An image folder may mix sizes and modes (grey, RGBA, palette, 16-bit, a 1x1 pixel): everything
is decoded to 8-bit RGB at its native size. A file that does not decode (truncated, empty, not an
image) is refused before training, in one line naming it (``_check_images``), not skipped.

Every example keeps its ``index`` in the whole split: it keys the class-balanced subset, the
epoch's order and the example's crops alike, so a resumed epoch equals an uninterrupted one.

Over 500 lines, for a reason: the sources (tfds, folders), the selection (class subsets, balanced
subsets), the epoch pipelines and ``ExperimentData`` share that index contract and a handful of
private helpers; split apart, each part would import the others' internals.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from paper_repro.augment import (
    AugmentConfig,
    caffe_augment,
    crop_views,
    example_keys,
    hash64,
    resize_uint8,
    with_device_augmentation,
)
from paper_repro.errors import UserError
from paper_repro.experiments import PLACEMENTS, check_seed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_TFDS_DIR = "~/tensorflow_datasets"
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
IN_MEMORY_BYTES = 2 * 1024**3
SHUFFLE_BUFFER = 16_384
_READ_BATCH = 4096


@dataclass(frozen=True)
class SplitInfo:
    """What a loaded split holds (after ``class_subset`` / ``subset_size``)."""

    name: str
    split: str
    num_classes: int
    class_names: tuple[str, ...]
    num_examples: int
    image_shape: tuple[int, int, int] | None
    """Native (height, width, 3) when every image has it; None when sizes vary."""


# --------------------------------------------------------------------------------- loading


def load_split(
    name_or_folder: str,
    split: str,
    *,
    data_dir: str | None = None,
    class_subset: Sequence[int] | None = None,
    subset_size: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> tuple[tf.data.Dataset, SplitInfo]:
    """One split of a tfds image-classification dataset or of an image folder.

    Elements are ``{"image": uint8 (H, W, 3), "label": int64, "index": int64}``, in a stable
    order; ``index`` is the example's position in the whole split, before any subset, and keys
    the example's random crops. ``class_subset`` keeps those classes, relabelled ``0..k-1`` in
    the order given; ``subset_size`` keeps a class-balanced subset of that many examples, the
    same for the same seed (and a larger subset contains a smaller one). A tfds split may be
    sliced (``train[:90%]``, ``train[90%:]``: the validation split of the selection rule in
    ``experiments``); ``index`` then counts within the slice, and subsets come from the slice.

    ``name_or_folder`` is a tfds name (``mnist``, ``cifar100``, ``imagenet2012``, ``name:1.2.3``)
    or a folder with one sub-folder of images per class (``FOLDER/SPLIT/<class>/`` when that
    exists, else ``FOLDER/<class>/`` whatever the split). ``data_dir`` defaults to
    ``$TFDS_DATA_DIR``. Nothing is downloaded unless ``download`` is true.
    """
    check_seed(seed)
    folder = Path(name_or_folder).expanduser()
    if folder.is_dir():
        source = _folder_source(folder, split)
    elif name_or_folder.startswith(("/", ".", "~")):
        raise UserError(f"image folder {name_or_folder} does not exist: check the path")
    else:
        source = _tfds_source(name_or_folder, split, _tfds_dir(data_dir), download)
    return _select(source, class_subset, subset_size, seed)


@dataclass(frozen=True)
class _Source:
    """A whole split before selection; ``labels()`` reads every label (one pass, no pixels)."""

    dataset: tf.data.Dataset
    info: SplitInfo
    labels: Callable[[], np.ndarray]


def _tfds_dir(data_dir: str | None) -> str:
    """Resolve the directory here so that TFDS_DATA_DIR is read per call, not at tfds import."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_TFDS_DIR)


def _tfds_source(name: str, split: str, data_dir: str, download: bool) -> _Source:
    builder = _builder(name, data_dir)
    image_key, label_key = _image_label_keys(builder)
    if not builder.is_prepared():
        if not download:
            raise UserError(_not_prepared_message(builder, data_dir))
        _prepare(builder, data_dir)
    # Images are read encoded and decoded by our own map: a label pass (for subsets) then decodes
    # nothing, and its labels come from the very records the pixels do (also under tfds' mocks).
    try:
        raw = builder.as_dataset(
            split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()}
        )
    except ValueError as error:
        raise UserError(f"{name}: {str(error).splitlines()[0]}") from None
    raw = raw.enumerate().map(
        lambda i, ex: {"image": ex[image_key], "label": ex[label_key], "index": i}
    )
    feature = builder.info.features[image_key]

    def decode(example: dict) -> dict:
        image = _to_rgb(feature.decode_example(example["image"]))
        return {**example, "image": image}

    height, width, _ = feature.shape
    info = SplitInfo(
        name=name,
        split=split,
        num_classes=builder.info.features[label_key].num_classes,
        class_names=tuple(builder.info.features[label_key].names),
        num_examples=int(raw.cardinality()),
        image_shape=(height, width, 3) if height and width else None,
    )
    dataset = raw.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return _Source(dataset, info, functools.partial(_read_labels, raw))


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "see `tfds.list_builders()`"
        raise UserError(
            f"unknown dataset {name!r} (not a tfds dataset nor an existing folder); {hint}"
        ) from None
    except (ValueError, AssertionError) as error:
        raise UserError(f"cannot use dataset {name!r}: {str(error).splitlines()[0]}") from None


def _image_label_keys(builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    """The (image, label) feature names: the supervised keys when they are an image classifier's."""
    features = builder.info.features
    keys = tuple(builder.info.supervised_keys or ("image", "label"))
    if len(keys) == 2 and all(isinstance(k, str) and k in features for k in keys):
        image, label = keys
        if isinstance(features[image], tfds.features.Image) and isinstance(
            features[label], tfds.features.ClassLabel
        ):
            return image, label
    raise UserError(
        f"dataset {builder.name!r} is not an image classification dataset (its features are "
        f"{', '.join(features.keys())}); use one with an image and a class label"
    )


def _manual_dir(data_dir: str) -> str:
    """tfds' default manual directory (``DownloadConfig.manual_dir`` when none is given)."""
    return os.path.join(data_dir, "downloads", "manual")


def _not_prepared_message(builder: tfds.core.DatasetBuilder, data_dir: str) -> str:
    where = f"dataset {builder.name} is not prepared in {builder.data_dir}"
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        return (
            f"{where}; {_manual_instructions(builder.name, data_dir)}, then rerun with --download"
        )
    return (
        f"{where}; prepare it on a machine with network (`tfds build {builder.name} "
        f"--data_dir {data_dir}`) and copy it there, point --data-dir (or TFDS_DATA_DIR) at a "
        f"prepared copy, or rerun with --download (needs a network"
        f"{_offline(builder, data_dir, '; offline, ')})"
    )


def _offline(builder: tfds.core.DatasetBuilder, data_dir: str, lead: str) -> str:
    """How --download works offline: tfds takes its source files from the manual directory."""
    files = [info.filename for info in (builder.url_infos or {}).values() if info.filename]
    if not files:
        return ""
    return f"{lead}put {' and '.join(sorted(files))} in {_manual_dir(data_dir)} first"


def _manual_instructions(name: str, data_dir: str) -> str:
    files = " and ".join(IMAGENET_MANUAL_FILES) if name == "imagenet2012" else "its source files"
    return f"put {files} (downloaded by hand, see the tfds catalog) in {_manual_dir(data_dir)}"


def _prepare(builder: tfds.core.DatasetBuilder, data_dir: str) -> None:
    """``download_and_prepare``, with tfds' manual-download datasets checked first."""
    manual_dir = _manual_dir(data_dir)
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        required = IMAGENET_MANUAL_FILES if builder.name == "imagenet2012" else ()
        missing = [f for f in required if not os.path.exists(os.path.join(manual_dir, f))]
        if missing or not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
            raise UserError(
                f"dataset {builder.name} needs a manual download: "
                f"{_manual_instructions(builder.name, data_dir)}"
            )
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except tfds.download.download_manager.NonMatchingChecksumError as error:
        # First line: "Artifact URL, downloaded to PATH, has wrong checksum:" (e.g. a truncated
        # file in the manual directory).
        raise UserError(
            f"{builder.name}: {str(error).splitlines()[0].rstrip(':')}, so it is not the file "
            f"tfds expects: replace it with a complete download of that URL and rerun"
        ) from None
    except OSError as error:
        raise UserError(
            f"downloading {builder.name} into {data_dir} failed ({type(error).__name__}); check "
            f"the network{_offline(builder, data_dir, ' or (offline) ')}, or prepare it "
            f"elsewhere with `tfds build {builder.name}` and copy it"
        ) from None


def _folder_source(root: Path, split: str) -> _Source:
    """A folder's split: its images listed, every one decoded once to check it (``_check_images``),
    then read again, decoded, as the pipeline consumes them."""
    if "[" in split:
        # Sliced like a tfds split, it would name no sub-folder and silently read them all.
        raise UserError(
            f"split {split!r} slices a tfds split, but {root} is an image folder, whose splits "
            f"are sub-folders: put validation images in {root}/validation/<class>/ and name the "
            "split validation"
        )
    folder = root / split if (root / split).is_dir() else root
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UserError(
            f"image folder {folder} has {len(classes)} class sub-folder(s); a classifier needs "
            f"at least 2: put each class's images in {folder}/<class name>/"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        images = sorted(
            str(p) for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise UserError(
                f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                f"add images or remove the folder"
            )
        paths += images
        labels += [label] * len(images)
    _check_images(paths)
    label_array = np.asarray(labels, np.int64)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": paths, "label": label_array, "index": np.arange(len(paths), dtype=np.int64)}
    ).map(_read_image, num_parallel_calls=tf.data.AUTOTUNE)
    info = SplitInfo(str(folder), split, len(classes), tuple(classes), len(paths), None)
    return _Source(dataset, info, functools.partial(np.copy, label_array))


def _check_images(paths: list[str]) -> None:
    """Refuse a folder holding a file that does not decode, naming it (truncated, empty, not an
    image at all), before any training: decoded in the pipeline, such a file would stop the run
    with a TensorFlow error that does not say which file it was.

    As tfds checks every example when it prepares a dataset, every image is decoded once here,
    in parallel, and dropped (``ignore_errors``); the indices that never come out are the bad
    files. The run is refused rather than the files skipped: an example's index keys its
    subset membership and its crops, so skipping would silently change the dataset. The cost is
    one extra decode of the folder per loaded split.
    """
    indexed = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths), dtype=np.int64)))
    decoded = indexed.map(
        lambda path, index: (index, tf.reduce_prod(tf.shape(_decode_file(path))[:2])),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    readable = np.zeros(len(paths), bool)
    for indices, pixels in decoded.batch(_READ_BATCH).as_numpy_iterator():
        readable[indices[pixels > 0]] = True
    bad = [paths[i] for i in np.flatnonzero(~readable)]
    if bad:
        more = f" (and {len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
        raise UserError(
            f"{bad[0]} is not a readable image (truncated, empty, or not a "
            f"{'/'.join(s.lstrip('.').upper() for s in IMAGE_SUFFIXES)} file){more}: replace or "
            "remove it"
        )


def _decode_file(path: tf.Tensor) -> tf.Tensor:
    """Decode a JPEG/PNG/BMP/GIF file to uint8 RGB at its native size: ``channels=3`` copies
    grey to 3 channels and drops alpha, palettes are expanded, 16-bit PNGs are scaled to 8 bits,
    and an animated GIF gives its first frame."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _read_image(example: dict) -> dict:
    return {**example, "image": _decode_file(example["image"])}


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grey -> 3 equal channels (as the paper did for MNIST); alpha dropped."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    return image[..., :3] if channels == 4 else image


def _read_labels(raw: tf.data.Dataset) -> np.ndarray:
    batches = raw.map(lambda ex: ex["label"]).batch(_READ_BATCH).as_numpy_iterator()
    return np.concatenate(list(batches)).astype(np.int64)


# ------------------------------------------------------------------------------- selection


def _select(
    source: _Source, class_subset: Sequence[int] | None, subset_size: int | None, seed: int
) -> tuple[tf.data.Dataset, SplitInfo]:
    """Apply class_subset (relabelled) then subset_size, as a filter on the example index."""
    info = source.info
    if class_subset is None and subset_size is None:
        return source.dataset, info
    if class_subset is None:
        relabel, names = np.arange(info.num_classes, dtype=np.int64), info.class_names
    else:
        _check_class_subset(class_subset, info)
        relabel = np.full(info.num_classes, -1, np.int64)
        relabel[list(class_subset)] = np.arange(len(class_subset))
        names = tuple(info.class_names[c] for c in class_subset)
    labels = source.labels()
    new_labels = relabel[labels]
    keep = new_labels >= 0
    if subset_size is not None:
        keep = np.zeros_like(keep)
        keep[balanced_subset(new_labels, len(names), subset_size, seed)] = True
    keep_t, relabel_t = tf.constant(keep), tf.constant(relabel)
    dataset = (
        source.dataset.filter(lambda ex: tf.gather(keep_t, ex["index"]))
        .map(lambda ex: {**ex, "label": tf.gather(relabel_t, ex["label"])})
        .apply(tf.data.experimental.assert_cardinality(int(keep.sum())))
    )
    info = SplitInfo(info.name, info.split, len(names), names, int(keep.sum()), info.image_shape)
    return dataset, info


def _check_class_subset(class_subset: Sequence[int], info: SplitInfo) -> None:
    chosen = list(class_subset)
    valid = all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in chosen)
    if not valid or any(not 0 <= c < info.num_classes for c in chosen):
        raise UserError(
            f"class_subset {chosen} must hold class numbers in 0..{info.num_classes - 1} "
            f"({info.name} has {info.num_classes} classes)"
        )
    if len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise UserError(f"class_subset {chosen} must name at least 2 different classes")


def balanced_subset(labels: np.ndarray, num_classes: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` examples, ``size // k`` per class (the first ``size % k`` get one
    more), labels ``< 0`` excluded. Within a class, examples are ranked by a hash of
    ``(seed, index)``: the choice is random-looking yet stable, and nested across sizes."""
    counts = np.bincount(labels[labels >= 0], minlength=num_classes)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < num_classes:
        raise UserError(
            f"subset_size must be an integer of at least the number of classes ({num_classes}) "
            f"so that every class is represented, got {size!r}"
        )
    quotas = size // num_classes + (np.arange(num_classes) < size % num_classes)
    short = np.flatnonzero(counts < quotas)
    if short.size:
        raise UserError(
            f"subset_size {size} needs {quotas[short[0]]} examples of class {short[0]} but it has "
            f"only {counts[short[0]]}; lower subset_size to at most {counts.min() * num_classes}"
        )
    ranks = hash64(seed, "subset", tf.range(len(labels), dtype=tf.int64)).numpy()
    chosen = [
        members[np.argsort(ranks[members], kind="stable")[:quota]]
        for members, quota in ((np.flatnonzero(labels == c), q) for c, q in enumerate(quotas))
    ]
    return np.sort(np.concatenate(chosen))


def channel_mean(dataset: tf.data.Dataset) -> tuple[float, float, float]:
    """Per-channel (RGB) mean pixel of a loaded split: the ``mean`` of a network trained on it.

    Caffe's per-channel alternative to the mean image (the 104/117/123 of ILSVRC-12, in BGR). It is
    taken at native size: bilinear resizing preserves the mean up to border effects. Sums are
    taken per image (exact integers), so images of varying size (ILSVRC-12, folders) need no resize.
    """

    def pixel_sums(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.reshape(tf.cast(example["image"], tf.int64), [-1, 3])
        return tf.reduce_sum(pixels, axis=0), tf.shape(pixels, out_type=tf.int64)[0]

    total, count = np.zeros(3, np.int64), 0
    sums = dataset.map(pixel_sums, num_parallel_calls=tf.data.AUTOTUNE).batch(_READ_BATCH)
    for image_sums, pixel_counts in sums.as_numpy_iterator():
        total += image_sums.sum(axis=0)
        count += int(pixel_counts.sum())
    if not count:
        raise UserError("cannot take the mean pixel of an empty split: check its subset options")
    return tuple(float(v) for v in total / count)


# ------------------------------------------------------------------------ seeds and placement


def default_placement() -> str:
    """Where the augmentation runs by default: the device when a GPU is visible, else the host
    (on CPU-only machines the host path is faster: tf.data overlaps it with the step)."""
    return "device" if tf.config.list_physical_devices("GPU") else "host"


def resolve_placement(placement: str) -> str:
    """``auto`` -> ``default_placement()``; ``host`` and ``device`` as given."""
    if placement not in PLACEMENTS:
        raise UserError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return default_placement() if placement == "auto" else placement


# -------------------------------------------------------------------------------- pipelines


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
    ILSVRC-12 epoch (README, "Where this differs from Caffe").
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
            return (
                tf.data.Dataset.from_tensor_slices(epoch_order(count, seed, epoch))
                .batch(batch_size)
                .map(lambda idx: {k: tf.gather(v, idx) for k, v in arrays.items()})
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
    for batch in dataset.batch(_READ_BATCH).as_numpy_iterator():
        for key, value in batch.items():
            out[key][start : start + len(value)] = value
        start += len(batch["index"])
    return out


def prefetch_to(dataset: tf.data.Dataset, device: str | None) -> tf.data.Dataset:
    """The next batches copied to ``device`` (a GPU) while the current step runs; unchanged
    for ``None``. tf.data requires this to be the pipeline's last transformation."""
    if device is None:
        return dataset
    return dataset.apply(tf.data.experimental.prefetch_to_device(device, buffer_size=2))


def finish_pipeline(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Deterministic order and prefetching: the end of every pipeline that feeds a model."""
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------- experiments


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
    batch_size, augment_on)."""
    common = dict(data_dir=data_dir, class_subset=config.classes, seed=seed, download=download)
    train, train_info = load_split(
        config.dataset, config.train_split, subset_size=config.train_subset, **common
    )
    test, test_info = load_split(
        config.dataset, config.test_split, subset_size=config.test_subset, **common
    )
    augment = AugmentConfig(config.resize, config.crop, config.mirror)
    placement = resolve_placement(config.augment_on)
    return ExperimentData(
        train, train_info, test, test_info, augment, config.batch_size, seed, placement
    )
