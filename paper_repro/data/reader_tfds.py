"""The tfds reader: a split of a tfds image-classification dataset, prepared or prepared here.

Nothing is downloaded unless asked (``download``); an unprepared dataset is refused with what
would prepare it (a manual download, ``tfds build`` elsewhere, ``--download``), offline included.
Images are read encoded and decoded by the reader's own map, grey copied to 3 channels as the
paper did for MNIST.
"""

from __future__ import annotations

import difflib
import functools
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from paper_repro.data.source import READ_BATCH, Source, SplitInfo
from paper_repro.errors import UserError

DEFAULT_TFDS_DIR = "~/tensorflow_datasets"
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def tfds_source(name: str, split: str, data_dir: str | None, download: bool) -> Source:
    """Split ``split`` of tfds dataset ``name`` (``mnist``, ``imagenet2012``, ``name:1.2.3``), in
    ``data_dir`` (default ``$TFDS_DATA_DIR``); ``split`` may be sliced (``train[:90%]``)."""
    data_dir = _tfds_dir(data_dir)
    builder = _builder(name, data_dir)
    image_key, label_key = _image_label_keys(builder)
    if not builder.is_prepared():
        if not download:
            raise UserError(_not_prepared_message(builder, data_dir))
        _prepare(builder, data_dir)
    key = _split_files(builder, split)  # the files this split is read from, once
    raw = _encoded(builder, name, split, key, image_key, label_key)
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
        content=f"tfds {builder.info.full_name} {split}",
    )
    labels = functools.partial(_labels, raw, key)
    return Source(raw, decode, info, labels)


def _tfds_dir(data_dir: str | None) -> str:
    """Resolve the directory here so that TFDS_DATA_DIR is read per call, not at tfds import."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_TFDS_DIR)


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


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grey -> 3 equal channels (as the paper did for MNIST); alpha dropped."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    return image[..., :3] if channels == 4 else image


# A split is opened once per process and its labels read once: tfds keeps a small dataset's
# records in memory after its first pass (its auto-caching, under 250 MiB: MNIST, CIFAR), which a
# dataset opened anew pays again (about 2.5 s for MNIST's training split), and ``reproduce`` and
# the tests load the same splits for every run. Keyed by ``_split_files``.
_ENCODED: dict[tuple, tf.data.Dataset] = {}
_LABELS: dict[tuple, np.ndarray] = {}


def _encoded(
    builder: tfds.core.DatasetBuilder,
    name: str,
    split: str,
    key: tuple | None,
    image_key: str,
    label_key: str,
) -> tf.data.Dataset:
    """The split's examples, images encoded: our own map decodes them after selection, a label
    pass decodes nothing, and labels come from the very records the pixels do (also under
    tfds' mocks). ``key``: ``_split_files``', None to keep nothing."""
    if key in _ENCODED:
        return _ENCODED[key]
    try:
        raw = builder.as_dataset(
            split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()}
        )
    except ValueError as error:
        raise UserError(f"{name}: {str(error).splitlines()[0]}") from None
    raw = raw.enumerate().map(
        lambda i, ex: {"image": ex[image_key], "label": ex[label_key], "index": i}
    )
    if key is not None:
        _ENCODED[key] = raw
    return raw


def _labels(raw: tf.data.Dataset, key: tuple | None) -> np.ndarray:
    if key is None or key not in _LABELS:
        batches = raw.map(lambda ex: ex["label"]).batch(READ_BATCH).as_numpy_iterator()
        labels = np.concatenate(list(batches)).astype(np.int64)
        if key is None:
            return labels
        _LABELS[key] = labels
    return _LABELS[key].copy()


def _split_files(builder: tfds.core.DatasetBuilder, split: str) -> tuple | None:
    """What a split is read from, the key of what is kept of it: the split and each record
    file's path, size and modification time (a dataset prepared again is read again); None
    where the files are not there to vouch for it (tfds' mocks generate examples)."""
    try:
        instructions = builder.info.splits[split].file_instructions
        files = [os.stat(instruction.filename) for instruction in instructions]
    except (KeyError, ValueError, OSError):
        return None
    stamps = tuple(
        (i.filename, f.st_size, f.st_mtime_ns) for i, f in zip(instructions, files, strict=True)
    )
    return (split, *stamps) if stamps else None
