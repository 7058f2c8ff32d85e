"""Selection: a split as an experiment uses it, read by a reader then narrowed to its classes and
a class-balanced subset; and the training split's mean pixel.

Both selections are filters on the example's ``index`` in the whole split (``source``), so a
subset keeps every example's crops, and a larger subset contains a smaller one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from paper_repro.augment import hash64
from paper_repro.data.reader_image_folder import folder_source, split_folder
from paper_repro.data.reader_tfds import tfds_source
from paper_repro.data.source import READ_BATCH, Source, SplitInfo
from paper_repro.errors import UserError
from paper_repro.experiments import check_seed


def load_split(
    name_or_folder: str,
    split: str,
    *,
    train_split: str = "train",
    split_option: str | None = None,
    data_dir: str | None = None,
    class_subset: Sequence[int] | None = None,
    subset_size: int | None = None,
    seed: int = 0,
    download: bool = False,
    setting_names: tuple[str, str] = ("class_subset", "subset_size"),
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
    or an image folder, ``FOLDER/SPLIT/<class>/`` (``reader_image_folder``): there the classes
    are those of ``train_split``, the split the model trains on, in every split, and a folder of
    class folders alone, ``FOLDER/<class>/``, is ``train_split`` and has no other split.
    ``split_option`` is how the user names another split (``--split NAME``), for the message that
    refuses a split the folder lacks; ``setting_names``, how the user names ``class_subset`` and
    ``subset_size`` (``classes`` and ``train_subset`` for a run's ``--set``), for the messages
    that refuse them. ``data_dir`` defaults to ``$TFDS_DATA_DIR``. Nothing is downloaded unless
    ``download`` is true.
    """
    check_seed(seed)
    folder = _image_folder(name_or_folder)
    if folder is None:
        source = tfds_source(name_or_folder, split, data_dir, download)
    else:
        source = folder_source(folder, split, train_split=train_split, split_option=split_option)
    return _select(source, class_subset, subset_size, seed, setting_names)


def check_split(
    name_or_folder: str, split: str, *, train_split: str = "train", split_option: str | None = None
) -> None:
    """Refuse a split that an image folder lacks, from its folder listings alone, so that a run's
    every split is checked before its first is read (ILSVRC-12's training images take hours to
    check); a tfds split is checked as it loads. Arguments as ``load_split``'s."""
    folder = _image_folder(name_or_folder)
    if folder is not None:
        split_folder(folder, split, train_split=train_split, split_option=split_option)


def is_image_folder(name_or_folder: str) -> bool:
    """Whether a dataset is an image folder that is there now (not a tfds name)."""
    return Path(name_or_folder).expanduser().is_dir()


def _image_folder(name_or_folder: str) -> Path | None:
    """The image folder ``name_or_folder`` names; None for a tfds name."""
    if is_image_folder(name_or_folder):
        return Path(name_or_folder).expanduser()
    if name_or_folder.startswith(("/", ".", "~")):
        raise UserError(f"image folder {name_or_folder} does not exist: check the path")
    return None


def _select(
    source: Source,
    class_subset: Sequence[int] | None,
    subset_size: int | None,
    seed: int,
    setting_names: tuple[str, str],
) -> tuple[tf.data.Dataset, SplitInfo]:
    """Apply class_subset (relabelled) then subset_size, as a filter on the example index, then
    decode what is kept."""
    info = source.info
    if class_subset is None and subset_size is None:
        return _decoded(source.encoded, source), info
    if class_subset is None:
        relabel, names = np.arange(info.num_classes, dtype=np.int64), info.class_names
    else:
        _check_class_subset(class_subset, info, setting_names[0])
        relabel = np.full(info.num_classes, -1, np.int64)
        relabel[list(class_subset)] = np.arange(len(class_subset))
        names = tuple(info.class_names[c] for c in class_subset)
    labels = source.labels()
    new_labels = relabel[labels]
    keep = new_labels >= 0
    if subset_size is not None:
        keep = np.zeros_like(keep)
        chosen = balanced_subset(new_labels, len(names), subset_size, seed, setting_names[1])
        keep[chosen] = True
    keep_t, relabel_t = tf.constant(keep), tf.constant(relabel)

    def kept_of(batch: dict) -> dict:
        kept = tf.gather(keep_t, batch["index"])
        relabelled = {**batch, "label": tf.gather(relabel_t, batch["label"])}
        return {key: tf.boolean_mask(value, kept) for key, value in relabelled.items()}

    # Filtered a batch at a time: a pass over MNIST's 60,000 records for a small subset takes
    # 0.8 s so, 3 s one example at a time.
    kept = (
        source.encoded.batch(READ_BATCH)
        .map(kept_of)
        .unbatch()
        .apply(tf.data.experimental.assert_cardinality(int(keep.sum())))
    )
    info = dataclasses.replace(
        info, num_classes=len(names), class_names=names, num_examples=int(keep.sum())
    )
    return _decoded(kept, source), info


def _decoded(encoded: tf.data.Dataset, source: Source) -> tf.data.Dataset:
    return encoded.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)


def _check_class_subset(class_subset: Sequence[int], info: SplitInfo, name: str) -> None:
    chosen = list(class_subset)
    valid = all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in chosen)
    if not valid or any(not 0 <= c < info.num_classes for c in chosen):
        raise UserError(
            f"{name} {chosen} must hold class numbers in 0..{info.num_classes - 1} "
            f"({info.name} has {info.num_classes} classes); {name}=none keeps every class"
        )
    if len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise UserError(
            f"{name} {chosen} must name at least 2 different classes; {name}=none keeps every class"
        )


def balanced_subset(
    labels: np.ndarray, num_classes: int, size: int, seed: int, name: str = "subset_size"
) -> np.ndarray:
    """Sorted indices of ``size`` examples, ``size // k`` per class (the first ``size % k`` get one
    more), labels ``< 0`` excluded. Within a class, examples are ranked by a hash of
    ``(seed, index)``: the choice is random-looking yet stable, and nested across sizes."""
    counts = np.bincount(labels[labels >= 0], minlength=num_classes)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < num_classes:
        raise UserError(
            f"{name} must be an integer of at least the number of classes ({num_classes}) "
            f"so that every class is represented, got {size!r}; {name}=none takes every image"
        )
    quotas = size // num_classes + (np.arange(num_classes) < size % num_classes)
    short = np.flatnonzero(counts < quotas)
    if short.size:
        # An image folder's test split may lack a class of its training split's.
        fix = (
            f"lower {name} to at most {counts.min() * num_classes}, or {name}=none takes every "
            "image"
            if counts.min()
            else "a class-balanced subset needs every class; take the whole split"
        )
        raise UserError(
            f"{name} {size} needs {quotas[short[0]]} examples of class {short[0]} but it has "
            f"only {counts[short[0]]}; {fix}"
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
    sums = dataset.map(pixel_sums, num_parallel_calls=tf.data.AUTOTUNE).batch(READ_BATCH)
    for image_sums, pixel_counts in sums.as_numpy_iterator():
        total += image_sums.sum(axis=0)
        count += int(pixel_counts.sum())
    if not count:
        raise UserError("cannot take the mean pixel of an empty split: check its subset options")
    return tuple(float(v) for v in total / count)
