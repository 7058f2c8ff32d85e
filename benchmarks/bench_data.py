"""Input-pipeline pieces of the suite (``python -m benchmarks``): the data source (CIFAR-10's
test split from $TFDS_DATA_DIR, else synthetic 32x32 images), a compiled training model, and a
pipeline's images/s timed alone over many batches, after start-up, so that prefetched batches do
not count.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from paper_repro import data
from paper_repro.errors import UserError
from paper_repro.model import build_alexnet
from paper_repro.solver import CaffeSGD
from paper_repro.trainee import for_mode


def source(synthetic_examples: int = 4000) -> tuple[tf.data.Dataset, str]:
    """CIFAR-10's test split when prepared, else random 32x32 images shaped like a loaded split."""
    try:
        return data.load_split("cifar10", "test")[0], "cifar10 test"
    except UserError:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (synthetic_examples, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, synthetic_examples)
        split = {"image": images, "label": labels, "index": np.arange(synthetic_examples)}
        return tf.data.Dataset.from_tensor_slices(split), "synthetic 32x32"


def training_model(crop: int, mode: str):
    """The Table II network for 10 classes, compiled to train whole (``full``) or on frozen
    features (any other mode)."""
    trains = "full" if mode == "full" else "retrain"
    return for_mode(build_alexnet(10, crop, seed=0), trains, CaffeSGD(), jit_compile=False)


def pipeline_rate(pipeline: tf.data.Dataset, batches: int, batch: int) -> float:
    """Images/s of the pipeline alone, after its first batches (start-up, prefetch) are out."""
    iterator = iter(pipeline)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def fed_and_fixed(model, stream: tf.data.Dataset, batch: int, name: str) -> dict:
    """``{name: (step, images per step)}``: ``model``'s training step on the stream's first batch,
    over and over, and the same step fed by the stream, for timing side by side."""
    inputs, labels = next(iter(stream))
    fed = iter(stream)
    return {
        f"{name}, fixed batch": (lambda: model.train_on_batch(inputs, labels), batch),
        f"{name}, fed": (lambda: model.train_on_batch(*next(fed)), batch),
    }
