"""Test accuracy over Caffe's views: centre crop (Figure 5), 5 or 10 crops (Table III).

The paper averages the softmax outputs of the views of each test image (Krizhevsky et al.'s
10-crop test: four corners and the centre, each also mirrored; no mirrors for MNIST). The views
are cut inside a ``tf.function`` from uint8 batches at native size, so on a GPU only those batches
cross to the device, as in training.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from paper_repro.data import AugmentConfig, check_crops, crop_views, resize_uint8
from paper_repro.errors import UserError

TOP_K = 5
_BAD_DATA = "evaluate needs a split from data.load_split or (images, labels) arrays"


def evaluate(
    model: keras.Model,
    data: tf.data.Dataset | tuple[np.ndarray, np.ndarray],
    *,
    crops: int,
    augment: AugmentConfig,
    batch_size: int = 80,
    verbose: int = 1,
) -> dict[str, float | int]:
    """Top-1 / top-5 accuracy of ``model`` (which outputs probabilities) averaged over views.

    Args:
        model: takes ``crop x crop x 3`` images with values 0..255, returns softmax outputs.
        data: a split from ``data.load_split`` (unbatched ``{"image", "label", ...}``), or
            ``(images, labels)`` arrays: uint8 ``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)``.
        crops: 1 (centre), 5 (corners + centre) or 10 (the 5 and their mirrors).
        augment: the resize / crop sizes the model was trained with.
        batch_size: test images per step (the model sees ``batch_size`` views per call).
        verbose: 1 shows a progress bar.

    Returns:
        ``{"top1", "top5", "num_examples", "crops"}``; top5 is top-min(5, classes).
    """
    check_crops(crops)
    if crops == 10 and not augment.mirror:
        raise UserError(
            "10 crops include mirrored views but this augmentation does not mirror (as for "
            "MNIST's digits); use 5 crops"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    batches = _batches(data, augment, batch_size)
    step = _averaged_probabilities(model, augment, crops)
    total = int(batches.cardinality())
    progress = keras.utils.Progbar(
        total if total >= 0 else None, verbose=verbose, stateful_metrics=["top1"], unit_name="batch"
    )
    hits, seen = np.zeros(2, np.int64), 0
    for images, labels in batches:
        hits += _hits(step(images), labels)
        seen += int(labels.shape[0])
        progress.add(1, values=[("top1", hits[0] / seen)])
    if not seen:
        raise UserError("the test data holds no examples")
    top1, top5 = (float(h) / seen for h in hits)
    return {"top1": top1, "top5": top5, "num_examples": seen, "crops": crops}


def _batches(data, augment: AugmentConfig, batch_size: int) -> tf.data.Dataset:
    """``(uint8 images, label)`` batches at one size per batch (native, else resized)."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, dict) and {"image", "label"} <= spec.keys()):
            raise UserError(_BAD_DATA)
        pairs = data.map(lambda ex: (ex["image"], ex["label"]))
    elif isinstance(data, tuple | list) and len(data) == 2:
        pairs = tf.data.Dataset.from_tensor_slices(_image_arrays(*data))
    else:
        raise UserError(_BAD_DATA)
    if not pairs.element_spec[0].shape.is_fully_defined():
        pairs = pairs.map(
            lambda image, label: (resize_uint8(image, augment.resize), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _image_arrays(images, labels) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels):
        raise UserError(
            f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3) with one label each; got "
            f"images {images.shape} and labels {labels.shape}"
        )
    if images.dtype != np.uint8:
        raise UserError(f"images must be uint8 pixels 0..255, got {images.dtype}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images, labels


def _averaged_probabilities(model: keras.Model, augment: AugmentConfig, crops: int):
    """A compiled step: uint8 batch -> mean of the model's outputs over the views."""

    @tf.function(reduce_retracing=True)
    def step(images: tf.Tensor) -> tf.Tensor:
        views = crop_views(images, augment, crops)
        outputs = [
            tf.cast(model(tf.cast(v, tf.float32), training=False), tf.float32) for v in views
        ]
        total = tf.add_n(outputs)
        return total / len(views)

    return step


def _hits(probabilities: tf.Tensor, labels: tf.Tensor) -> np.ndarray:
    """(top-1 hits, top-k hits). Ties go to the lower class index, as argmax would."""
    k = min(TOP_K, probabilities.shape[-1])
    top = tf.math.top_k(probabilities, k=k).indices
    match = tf.equal(top, tf.cast(labels, top.dtype)[:, None]).numpy()
    return np.array([match[:, 0].sum(), match.any(axis=1).sum()], np.int64)


def evaluate_source(
    source: str,
    *,
    dataset: str | None = None,
    crops: int | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    verbose: int = 1,
) -> dict[str, float | int]:
    """``paper-repro evaluate``: a run directory or a .keras model on a dataset's test split.

    The run's config supplies what the model was trained with (dataset, class subset, resize,
    mirroring, number of test crops, test subset and seed, so that a run's recorded accuracy is
    reproduced); a bare .keras file gets Caffe's 256/227 ratio, and needs ``dataset``.
    """
    from paper_repro.data import load_split
    from paper_repro.export import default_resize, load_source
    from paper_repro.history import HISTORY_NAME, load_history
    from paper_repro.model import caffe_layers

    model, config = load_source(source)
    history = Path(source) / HISTORY_NAME
    seed = load_history(history).seed if history.is_file() else 0
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise UserError(f"{source} has no run config naming its dataset: pass --dataset NAME")
    same_data = dataset == config.get("dataset")
    test, info = load_split(
        dataset,
        split or (config.get("test_split", "test") if same_data else "test"),
        data_dir=data_dir,
        class_subset=config.get("classes") if same_data else None,
        subset_size=config.get("test_subset") if same_data and not split else None,
        seed=seed,
    )
    fc8 = caffe_layers(model)["fc8"].kernel.shape
    if fc8[-1] != info.num_classes:
        raise UserError(
            f"{source}: layer fc8 has shape {tuple(fc8)} but {dataset} has {info.num_classes} "
            "classes; evaluate on the dataset the model was trained for"
        )
    size = int(model.input_shape[1])
    mirror = bool(config.get("mirror", True))
    augment = AugmentConfig(int(config.get("resize", default_resize(size))), size, mirror)
    crops = crops or int(config.get("test_crops", 10 if mirror else 5))
    return evaluate(model, test, crops=crops, augment=augment, verbose=verbose)
