"""The batches that feed a training step are made while the step runs on the one before.

No time is asserted (a loaded machine would fail it): a slow source counts what it has made, and
a consumer holding batch k waits, for a bounded time, until batch k + 1 has been made, which only
a pipeline that works ahead does while nobody asks it for a batch.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from paper_repro import data
from paper_repro.cache import FeatureCache
from paper_repro.data.pipelines import read_batches

PATIENCE_S = 30.0  # a bound, not a timing: the wait ends as soon as the batch is made


@pytest.fixture
def determinism():
    """TensorFlow's op determinism, which every run turns on (``training/run.py``): it changes
    how tf.data runs Python functions, so the pipelines are tested under it. It stays on in the
    process, as it does after any run."""
    tf.config.experimental.enable_op_determinism()


def _eventually(condition) -> bool:
    """Whether ``condition()`` holds within ``PATIENCE_S``, polled."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class CountingRows:
    """A cache's memory-mapped features stand-in: rows read as the array's, slowly, counted."""

    def __init__(self, features: np.ndarray):
        self.features = features
        self.shape = features.shape
        self.reads = 0
        self.lock = threading.Lock()

    def __getitem__(self, index):
        time.sleep(0.02)  # a slow disk
        with self.lock:
            self.reads += 1
        return self.features[index]


def _cache(features) -> FeatureCache:
    count = len(features) if isinstance(features, np.ndarray) else features.shape[0]
    labels = np.arange(count, dtype=np.int64) % 3
    return FeatureCache(Path("cache"), features, labels, np.arange(count), 0.0, True)


def test_a_finished_pipeline_makes_the_next_batch_while_the_consumer_holds_one(determinism):
    made = []

    def slow(i: np.int64) -> np.int64:
        time.sleep(0.02)
        made.append(int(i))
        return i

    # Stateless, as a real source's ops are: under op determinism, which every run turns on,
    # tf.data runs a stateful Python function one call at a time.
    source = tf.data.Dataset.range(8).map(
        lambda i: tf.numpy_function(slow, [i], tf.int64, stateful=False)
    )
    batches = iter(data.finish_pipeline(source))
    for k in range(4):
        assert int(next(batches)) == k
        assert _eventually(lambda k=k: len(made) >= k + 2), f"batch {k + 1} not made ahead"


def test_the_feature_cache_reads_the_next_batch_while_the_step_holds_one(determinism):
    rng = np.random.default_rng(0)
    features = rng.random((24, 2, 3), np.float32)
    rows = CountingRows(features)
    fed = iter(_cache(rows).train_batches(batch_size=4, seed=0, first_epoch=0, end_epoch=1))
    for k in range(3):
        next(fed)
        assert _eventually(lambda k=k: rows.reads >= k + 2), f"batch {k + 1} not read ahead"
    # Read ahead, and in parallel, the batches are the ones a plain array gives, in its order.
    plain = _cache(features).train_batches(batch_size=4, seed=0, first_epoch=0, end_epoch=2)
    counted = _cache(rows).train_batches(batch_size=4, seed=0, first_epoch=0, end_epoch=2)
    for (got, got_labels), (want, want_labels) in zip(counted, plain, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_array_equal(got_labels.numpy(), want_labels.numpy())


def test_batches_are_read_side_by_side_and_handed_on_in_order(determinism):
    """The first read waits until a second has started: a pipeline reading one batch at a time
    would never start it, and the read would say so."""
    started = [threading.Event() for _ in range(6)]

    def read(k: np.int64) -> np.int64:
        started[int(k)].set()
        if int(k) == 0 and not started[1].wait(PATIENCE_S):
            return np.int64(-1)
        return k

    positions = tf.data.Dataset.range(6)
    # Stateless, as the feature cache's read is (see above).
    batches = read_batches(
        positions, lambda k: tf.numpy_function(read, [k], tf.int64, stateful=False)
    )
    assert [int(k) for k in data.finish_pipeline(batches)] == list(range(6))
