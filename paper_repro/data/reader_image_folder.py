"""The image-folder reader: a folder with one sub-folder of images per class.

A folder may mix sizes and modes (grey, RGBA, palette, 16-bit, a 1x1 pixel): everything is
decoded to 8-bit RGB at its native size. A file that does not decode (truncated, empty, not an
image) is refused before training, in one line naming it (``_check_images``), not skipped.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import tensorflow as tf

from paper_repro.data.source import READ_BATCH, Source, SplitInfo
from paper_repro.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def folder_source(root: Path, split: str) -> Source:
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
    return Source(dataset, info, functools.partial(np.copy, label_array))


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
    for indices, pixels in decoded.batch(READ_BATCH).as_numpy_iterator():
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
