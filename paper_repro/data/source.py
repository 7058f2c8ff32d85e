"""What a reader hands on: a whole split, before any selection, and what it holds.

Elements are ``{"image": uint8 (H, W, 3), "label": int64, "index": int64}`` in a stable order.
Every example keeps its ``index`` in the whole split: it keys the class-balanced subset
(``selection``), the epoch's order and the example's crops (``pipelines``) alike, so a resumed
epoch equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

# Examples per batch wherever a whole split is read in one pass (labels, checks, sums, arrays).
READ_BATCH = 4096


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
    content: str
    """What the whole split's examples are, for a feature cache's key: a tfds dataset's full name
    (with its version) and split; an image folder's hash of its classes and of each image's path
    and bytes. The images behind a folder's path can change; this says when they did."""


@dataclass(frozen=True)
class Source:
    """A whole split before selection; ``labels()`` reads every label (one pass, no pixels).

    ``encoded`` holds each example's image still encoded (a tfds record's bytes, a file's path)
    and ``decode`` makes it pixels: selection filters first and decodes only what it keeps, so
    a 12,000-image subset of MNIST's 60,000 decodes 12,000 images, not 60,000."""

    encoded: tf.data.Dataset
    decode: Callable[[dict], dict]
    info: SplitInfo
    labels: Callable[[], np.ndarray]
