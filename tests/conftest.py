"""Shared data fixtures: the real prepared tfds datasets, mocked tfds, small image folders."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

REAL_DATASETS = ("mnist/3.0.1", "cifar10/3.0.2")


@pytest.fixture(scope="session")
def tfds_dir() -> str:
    """``$TFDS_DATA_DIR`` when it holds prepared MNIST and CIFAR-10; skips otherwise."""
    root = os.environ.get("TFDS_DATA_DIR", "")
    missing = [d for d in REAL_DATASETS if not (Path(root) / d / "dataset_info.json").is_file()]
    if not root or missing:
        pytest.skip(f"needs prepared {', '.join(missing)} in TFDS_DATA_DIR ({root or 'unset'})")
    return root


@pytest.fixture
def mock_tfds(monkeypatch, tmp_path):
    """tfds' random mock data (``num_examples`` per split) in a dataset that counts as prepared.

    ``tfds.testing.mock_data`` replaces reading but leaves ``is_prepared()`` false, which our loader
    checks before reading: the mock stands for a prepared dataset, so it must say so.
    """

    def mock(num_examples: int):
        monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
        return tfds.testing.mock_data(num_examples=num_examples)

    return mock


@pytest.fixture
def image_folder(tmp_path):
    """Writes ``{class: [image arrays]}`` as PNG files in ``tmp_path/<split>/<class>/``."""

    def write(classes: dict, split: str = "train") -> Path:
        for name, images in classes.items():
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(images):
                png = tf.io.encode_png(np.asarray(image, np.uint8))
                (folder / f"{i:03d}.png").write_bytes(png.numpy())
        return tmp_path

    return write
