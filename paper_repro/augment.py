"""Caffe's augmentation: resize, random crop and mirror from a per-example key; the test views.

Caffe transforms each image in three steps:

1. resize to ``resize x resize`` (bilinear) and round back to uint8: Caffe's ``convert_imageset``
   stores the resized images as uint8 before its data layer ever sees them;
2. a random ``crop x crop`` window, offsets uniform in ``[0, resize - crop]`` inclusive
   (``Rand(height - crop_size + 1)`` in Caffe's ``DataTransformer``), drawn per image;
3. a random horizontal mirror of the window when ``mirror`` (off for MNIST's digits).

Evaluation uses the centre window (offset ``(resize - crop) // 2``, Caffe's TEST phase) or the 5 /
10 views of Caffe's ``oversample``. Normalisation (mean, channel order) belongs to the model.

The randomness is stateless: every example gets a 63-bit key hashed from ``(seed, epoch, example
index)`` on the host, and its crop offsets and mirror flag are digits of that key. One function,
``caffe_augment``, turns a uint8 batch and its keys into crops; ``data.pipelines`` runs it as a
tf.data map on the host, and the ``CaffeAugment`` layer runs it inside the training step, so that
only uint8 native-size batches and keys cross to an accelerator. Both give identical pixels, and a
resumed run sees the crops an uninterrupted one would.

This module is the geometry alone (no datasets): ``data.pipelines`` builds on it, ``evaluate`` and
``export`` cut its test views, ``cache`` its fixed training views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import tensorflow as tf

from paper_repro.errors import UserError
from paper_repro.experiments import CROPS

# The layer's name in a model wrapped by ``with_device_augmentation``: how the trainer finds the
# network inside such a model.
AUGMENT_LAYER = "caffe_augment"
_KEY_RANGE = 2**63 - 1


@dataclass(frozen=True)
class AugmentConfig:
    """Caffe's augmentation sizes: resize to ``resize`` square, crop ``crop`` square, mirror."""

    resize: int = 256
    crop: int = 227
    mirror: bool = True

    def __post_init__(self):
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.crop > self.resize:
            raise UserError(
                f"crop {self.crop} is larger than resize {self.resize}: the crop must fit in "
                f"the resized image; lower crop or raise resize"
            )

    @property
    def span(self) -> int:
        """How many crop offsets fit along one axis: ``resize - crop + 1``."""
        return self.resize - self.crop + 1

    @property
    def center(self) -> int:
        """Caffe's centre offset, ``(resize - crop) // 2`` (integer division, as in Caffe)."""
        return (self.resize - self.crop) // 2


def hash64(seed: int, stream: str, index: tf.Tensor) -> tf.Tensor:
    """A 63-bit hash of ``seed/stream/index`` (FarmHash Fingerprint64, stable across versions).

    Why a hash and not tf.random: TF's stateless RNG ops draw one stream per call, so a per-example
    seed means a per-example op (a while loop on the device); ``index_shuffle`` is vectorised but
    mixes neighbouring indices poorly (chi-square of adjacent crop offsets ~9x its expectation).
    The fingerprint is one vectorised op and passes the same test.
    """
    text = tf.strings.join(
        [tf.strings.as_string(tf.cast(seed, tf.int64)), stream, tf.strings.as_string(index)],
        separator="/",
    )
    return tf.strings.to_hash_bucket_fast(text, _KEY_RANGE)


def example_keys(seed: int, epoch: int, index: tf.Tensor) -> tf.Tensor:
    """The int64 augmentation key of each example ``index`` in ``epoch`` of a run with ``seed``."""
    return hash64(seed, f"crop{epoch}", tf.cast(index, tf.int64))


def crop_parameters(keys: tf.Tensor, augment: AugmentConfig) -> tuple[tf.Tensor, ...]:
    """(row offset, column offset, mirror flag) per key: digits of the key in base ``span``.

    A key is uniform on [0, 2**63 - 1), so its base-``span`` digits are uniform on ``[0, span)``
    (bias ~span / 2**63) and independent. Integer ops only: they run on any device.
    """
    keys = tf.cast(keys, tf.int64)
    rest = tf.math.floordiv(keys, augment.span)
    rows, cols = tf.math.floormod(keys, augment.span), tf.math.floormod(rest, augment.span)
    mirror = tf.math.floormod(tf.math.floordiv(rest, augment.span), 2) == 1
    return rows, cols, tf.logical_and(mirror, augment.mirror)


def resize_uint8(images: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear resize to ``size x size``, rounded back to uint8: Caffe's ``convert_imageset``.

    Caffe's LMDBs hold images resized by OpenCV (INTER_LINEAR: half-pixel centres, edges clamped,
    no antialiasing) and stored as uint8; tf.image.resize's bilinear mode is that interpolation.
    Used per image to bring images of varying size to one size; fixed-size batches are resized
    and cropped in one step by ``resize_and_crop``. Skipped when the static size already matches.
    """
    images = tf.convert_to_tensor(images)
    if tuple(images.shape[-3:-1]) == (size, size):
        return images
    resized = tf.image.resize(images, (size, size), method="bilinear", antialias=False)
    return tf.cast(tf.round(resized), tf.uint8)


def _interpolation(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """``[out_size, in_size]`` weights of tf.image.resize's bilinear kernel, as a matrix.

    Same arithmetic as TF's ``compute_interpolation_weights``: source ``(i + 0.5) * in / out -
    0.5`` in float32, taps ``max(floor, 0)`` and ``min(ceil, in - 1)`` (edges clamped).
    """
    length = tf.cast(in_size, tf.float32)
    source = (tf.range(out_size, dtype=tf.float32) + 0.5) * (length / out_size) - 0.5
    floor = tf.floor(source)
    lerp = (source - floor)[:, None]
    lower = tf.cast(tf.maximum(floor, 0.0), tf.int32)
    upper = tf.cast(tf.minimum(tf.math.ceil(source), length - 1.0), tf.int32)
    depth = tf.cast(in_size, tf.int32)
    return tf.one_hot(lower, depth) * (1.0 - lerp) + tf.one_hot(upper, depth) * lerp


def resize_and_crop(
    images: tf.Tensor,
    rows: tf.Tensor,
    cols: tf.Tensor,
    mirror: tf.Tensor,
    augment: AugmentConfig,
) -> tf.Tensor:
    """``crop x crop`` windows at (rows[i], cols[i]) of each image resized to ``resize``, mirrored
    where mirror[i]: equal to ``resize_uint8`` then NumPy slicing, computed without the resize.

    Bilinear resizing is separable, so window i of the resized image is ``R_i @ image @ C_i^T``
    with R_i, C_i the window's rows of the interpolation matrix (C_i read backwards when
    mirrored): two small batched matmuls from the native image, ~4x faster on the CPU than
    resizing 32x32 -> 256x256 then cropping, and two batched matmuls on a GPU. At the paper's
    sizes (28 or 32 -> 256) every weight is a multiple of 1/128, so the float sums are exact and
    the pixels equal tf.image.resize's bit for bit; other ratios may differ by 1 in a few pixels
    in 10^4. Images already ``resize`` square (static shape) are cropped by gathers, exactly.
    """
    images = tf.convert_to_tensor(images)
    crop, size = augment.crop, augment.resize
    steps = tf.range(crop, dtype=tf.int64)
    row_index = tf.cast(rows, tf.int64)[:, None] + steps
    cols = tf.cast(cols, tf.int64)[:, None]
    col_index = tf.where(mirror[:, None], cols + (crop - 1) - steps, cols + steps)
    if tuple(images.shape[1:3]) == (size, size):
        strips = tf.gather(images, row_index, axis=1, batch_dims=1)
        return tf.gather(strips, col_index, axis=2, batch_dims=1)
    batch, height, width = tf.unstack(tf.shape(images, out_type=tf.int64)[:3])
    row_weights = tf.gather(_interpolation(height, size), row_index)
    col_weights = tf.gather(_interpolation(width, size), col_index)
    # Columns first, while the image is small: transposes touch native-size data only.
    x = tf.transpose(tf.cast(images, tf.float32), [0, 2, 1, 3])
    x = tf.matmul(col_weights, tf.reshape(x, tf.stack([batch, width, height * 3])))
    x = tf.transpose(tf.reshape(x, tf.stack([batch, crop, height, 3])), [0, 2, 1, 3])
    x = tf.matmul(row_weights, tf.reshape(x, tf.stack([batch, height, crop * 3])))
    return tf.cast(tf.round(tf.reshape(x, tf.stack([batch, crop, crop, 3]))), tf.uint8)


def caffe_augment(images: tf.Tensor, keys: tf.Tensor, augment: AugmentConfig) -> tf.Tensor:
    """Caffe's training transform of a uint8 batch: resize, per-image random crop and mirror."""
    return resize_and_crop(images, *crop_parameters(keys, augment), augment)


def check_crops(crops: int) -> None:
    """The paper's test views: 1, 5 or 10."""
    if crops not in CROPS or isinstance(crops, bool):
        raise UserError(
            f"crops must be 1 (centre), 5 (corners + centre) or 10 (+ mirrors), got {crops!r}"
        )


def view_offsets(augment: AugmentConfig, crops: int) -> list[tuple[int, int, bool]]:
    """(row, column, mirrored) of each test view, in Caffe's ``oversample`` order.

    1: the centre; 5: corners (0,0), (0,m), (m,0), (m,m) then the centre, with m = resize - crop;
    10: those 5, then the same 5 mirrored. The centre is ``(resize - crop) // 2`` as in Caffe.
    """
    check_crops(crops)
    m, c = augment.resize - augment.crop, augment.center
    if crops == 1:
        return [(c, c, False)]
    five = [(0, 0, False), (0, m, False), (m, 0, False), (m, m, False), (c, c, False)]
    return five + [(y, x, True) for y, x, _ in five] if crops == 10 else five


def crop_views(
    images: tf.Tensor, augment: AugmentConfig, crops: int | Sequence[tuple[int, int, bool]]
) -> list[tf.Tensor]:
    """The views of a uint8 batch, each through ``resize_and_crop`` like training crops.

    ``crops``: 1, 5 or 10 test views (``view_offsets``), or the (row, column, mirrored) offsets.
    """
    images = tf.convert_to_tensor(images)
    ones = tf.ones(tf.shape(images)[:1], tf.int64)
    offsets = view_offsets(augment, crops) if isinstance(crops, int) else crops
    return [
        resize_and_crop(images, row * ones, col * ones, tf.fill(tf.shape(ones), mirrored), augment)
        for row, col, mirrored in offsets
    ]


@keras.saving.register_keras_serializable(package="paper_repro")
class CaffeAugment(keras.layers.Layer):
    """Caffe's augmentation inside the model, so that it runs on the training device.

    Training: ``caffe_augment(images, keys)``, the very function of the host path. Otherwise
    (validation, predict): the centre crop, Caffe's TEST phase. Inputs are uint8 batches of any
    size and their int64 keys (from ``example_keys``); the output is uint8 ``crop x crop``.
    TensorFlow backend only (it calls tf ops).
    """

    def __init__(self, resize: int = 256, crop: int = 227, mirror: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.augment = AugmentConfig(resize, crop, mirror)

    def call(self, images, keys, training=None):
        if training:
            return caffe_augment(images, keys, self.augment)
        return crop_views(images, self.augment, 1)[0]

    def compute_output_shape(self, images_shape, keys_shape=None):
        return (images_shape[0], self.augment.crop, self.augment.crop, 3)

    def get_config(self):
        a = self.augment
        return {**super().get_config(), "resize": a.resize, "crop": a.crop, "mirror": a.mirror}


def with_device_augmentation(model: keras.Model, augment: AugmentConfig) -> keras.Model:
    """``model`` behind a ``CaffeAugment`` layer: inputs ``{"image": uint8, "key": int64}``.

    Fit this model on ``train_dataset(..., placement="device")``; it shares ``model``'s weights,
    so ``model`` itself is what to evaluate and export.
    """
    images = keras.Input((None, None, 3), dtype="uint8", name="image")
    keys = keras.Input((), dtype="int64", name="key")
    layer = CaffeAugment(augment.resize, augment.crop, augment.mirror, name=AUGMENT_LAYER)
    outputs = model(layer(images, keys))
    return keras.Model({"image": images, "key": keys}, outputs, name=f"{model.name}_augmented")
