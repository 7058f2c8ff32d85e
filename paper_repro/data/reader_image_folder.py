"""The image-folder reader: a folder of split folders, each with one sub-folder of images per class.

A split is a sub-folder, ``FOLDER/SPLIT/<class>/``, named as the run names it (``train_split``,
``test_split``), and never looked for elsewhere: a split the folder lacks is refused, naming the
splits it has, so a misspelt or missing split cannot fall back on other images. The training
split's class folders are the classes, label i the i-th in sorted order; another split's class
folders must be among them and are labelled by name, so that a test split lacking a class still
gives every image the label of the model's output for its class (a class the training split
lacks has no output: it is refused). A folder of class folders alone, with no split folder, is a
training split and nothing else: testing on it would test on the training images.

Hidden names (``.thumbnails/``, macOS' ``._photo.png``) are skipped at every depth, as hidden
class folders are, and only regular files are read: a FIFO or a folder named ``x.png`` is not an
image (reading a FIFO would wait for a writer forever).

A folder may mix sizes and modes (grey, RGBA, palette, 16-bit, a 1x1 pixel): everything is
decoded to 8-bit RGB at its native size. A file that does not decode (truncated, empty, not an
image) is refused before training, in one line naming it (``_check_images``), not skipped.
That check reads every file, and fingerprints its bytes on the way: the split's ``content``,
which keys its feature caches, changes when a file is swapped, added, removed or moved.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from paper_repro.data.source import READ_BATCH, Source, SplitInfo
from paper_repro.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Sub-folder names that make a folder's sub-folders splits rather than classes, beside the run's
# own split names: tfds' and ILSVRC-12's. Without one, a misspelt split folder (``trian/``) would
# make the folder's split folders its classes.
SPLIT_NAMES = ("train", "test", "validation", "val")


@dataclass(frozen=True)
class SplitFolder:
    """Where a split's images are, and the classes that label them."""

    folder: Path
    classes: tuple[str, ...]
    """The training split's class folders, sorted: ``classes[i]`` is label i in every split."""
    present: tuple[str, ...]
    """This split's class folders, each one of ``classes``."""


def split_folder(
    root: Path, split: str, *, train_split: str = "train", split_option: str | None = None
) -> SplitFolder:
    """The folder of ``split`` and its classes, from folder listings alone (no image is read), so
    that every split of a run can be checked before the first is read.

    ``split_option`` is how the user names another split (``--split NAME``): the message that
    refuses a split the folder lacks ends with it.
    """
    if "[" in split:
        # Sliced like a tfds split, it names no sub-folder: say what an image folder's split is.
        raise UserError(
            f"split {split!r} slices a tfds split, but {root} is an image folder, whose splits "
            f"are sub-folders: put validation images in {root}/validation/<class>/ and name the "
            "split validation"
        )
    folder = _split_path(root, split, train_split, split_option)
    train_folder = folder if split == train_split else _split_path(root, train_split, train_split)
    classes = _visible_folders(train_folder)
    if len(classes) < 2:
        raise UserError(
            f"image folder {train_folder} has {len(classes)} class sub-folder(s); a classifier "
            f"needs at least 2: put each class's images in {train_folder}/<class name>/"
        )
    present = classes if folder == train_folder else _visible_folders(folder)
    unknown = [name for name in present if name not in classes]
    if unknown:
        more = _and_more(unknown)
        raise UserError(
            f"{folder / unknown[0]} is a class folder that the training split {train_folder} "
            f"lacks{more}: the model has no output for its images; remove it, or rename it as "
            "its class is named there"
        )
    if not present:
        raise UserError(
            f"image folder {folder} has no class sub-folders: put each class's images in "
            f"{folder}/<class name>/"
        )
    return SplitFolder(folder, tuple(classes), tuple(present))


def _split_path(root: Path, split: str, train_split: str, split_option: str | None = None) -> Path:
    """``root/split``; ``root`` itself only for the training split of a folder without split
    folders. Any other split is refused: it names no images apart from the training images."""
    splits = _visible_folders(root)
    if not {*SPLIT_NAMES, split, train_split} & set(splits):
        if split == train_split:
            return root
        raise UserError(
            f"image folder {root} has no split folders, so its class folders are training "
            f"images and it has no {split!r} split apart from them: put the training images in "
            f"{root}/{train_split}/<class>/ and the {split} images in {root}/{split}/<class>/"
        )
    if split not in splits:
        training = split == train_split
        what = "training split" if training else "split"
        why = ", whose class folders are the classes" if training else ""
        choose = f" or name one of its splits with {split_option}" if split_option else ""
        raise UserError(
            f"image folder {root} has no {what} {split!r} (its splits: {', '.join(splits)}){why}: "
            f"put its images in {root}/{split}/<class>/{choose}"
        )
    return root / split


def _visible_folders(folder: Path) -> list[str]:
    """The names of ``folder``'s sub-folders, sorted, hidden ones left out."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_images(folder: Path) -> list[str]:
    """A class folder's image files, sorted: regular files with an image suffix, in it or in its
    sub-folders, no hidden name on the way."""
    return sorted(
        str(path)
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def folder_source(
    root: Path, split: str, *, train_split: str = "train", split_option: str | None = None
) -> Source:
    """A folder's split (``split_folder``): its images listed, every one decoded once to check it
    and fingerprinted (``_check_images``), then read again, decoded, as the pipeline consumes
    them."""
    located = split_folder(root, split, train_split=train_split, split_option=split_option)
    label_of = {name: label for label, name in enumerate(located.classes)}
    paths, labels = [], []
    for name in located.present:
        images = _class_images(located.folder / name)
        if not images:
            raise UserError(
                f"class folder {located.folder / name} holds no images "
                f"({', '.join(IMAGE_SUFFIXES)}): add images or remove the folder"
            )
        paths += images
        labels += [label_of[name]] * len(images)
    content = _content(located, paths, _check_images(paths))
    label_array = np.asarray(labels, np.int64)
    listed = tf.data.Dataset.from_tensor_slices(
        {"image": paths, "label": label_array, "index": np.arange(len(paths), dtype=np.int64)}
    )
    info = SplitInfo(
        str(located.folder), split, len(located.classes), located.classes, len(paths), None, content
    )
    return Source(listed, _read_image, info, functools.partial(np.copy, label_array))


def _check_images(paths: list[str]) -> np.ndarray:
    """Refuse a folder holding a file that does not decode, naming it (truncated, empty, not an
    image at all), before any training: decoded in the pipeline, such a file would stop the run
    with a TensorFlow error that does not say which file it was. Returns each file's farmhash64
    fingerprint (8 bytes a row), taken from the bytes read for the check: no second read.

    As tfds checks every example when it prepares a dataset, every image is decoded once here,
    in parallel, and dropped (``ignore_errors``); the indices that never come out are the bad
    files. The run is refused rather than the files skipped: an example's index keys its
    subset membership and its crops, so skipping would silently change the dataset. The cost is
    one extra decode of the folder per loaded split.
    """

    def check(path: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        encoded = tf.io.read_file(path)
        pixels = tf.reduce_prod(tf.shape(_decode(encoded))[:2])
        return index, pixels, tf.fingerprint(encoded[tf.newaxis])[0]

    indexed = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths), dtype=np.int64)))
    decoded = indexed.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    readable = np.zeros(len(paths), bool)
    fingerprints = np.zeros((len(paths), 8), np.uint8)
    for indices, pixels, prints in decoded.batch(READ_BATCH).as_numpy_iterator():
        readable[indices[pixels > 0]] = True
        fingerprints[indices] = prints
    bad = [paths[i] for i in np.flatnonzero(~readable)]
    if bad:
        more = _and_more(bad, " unreadable files")
        raise UserError(
            f"{bad[0]} is not a readable image (truncated, empty, or not a "
            f"{'/'.join(s.lstrip('.').upper() for s in IMAGE_SUFFIXES)} file){more}: replace or "
            "remove it"
        )
    return fingerprints


def _content(located: SplitFolder, paths: list[str], fingerprints: np.ndarray) -> str:
    """``SplitInfo.content`` of a folder's split: a hash of the classes (which number the labels)
    and of each image's path in the split folder (which names its class) with its bytes'
    fingerprint. Dates are left out: a file touched, or restored from a backup, changes nothing."""
    digest = hashlib.sha256(json.dumps(located.classes).encode())
    for path, fingerprint in zip(paths, fingerprints, strict=True):
        digest.update(os.path.relpath(path, located.folder).encode() + b"\0")
        digest.update(fingerprint.tobytes())
    return f"image folder {digest.hexdigest()}"


def _decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decode a JPEG/PNG/BMP/GIF file's bytes to uint8 RGB at its native size: ``channels=3``
    copies grey to 3 channels and drops alpha, palettes are expanded, 16-bit PNGs are scaled to
    8 bits, and an animated GIF gives its first frame."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _read_image(example: dict) -> dict:
    return {**example, "image": _decode(tf.io.read_file(example["image"]))}


def _and_more(found: list, what: str = "") -> str:
    """A message's note on the items after the one it names: " (and N more WHAT)", or nothing."""
    return f" (and {len(found) - 1} more{what})" if len(found) > 1 else ""
