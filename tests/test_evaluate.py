"""paper_repro.evaluate: view-averaged top-1 / top-5 against a NumPy reference."""

import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from paper_repro import evaluate as evaluate_module
from paper_repro.augment import AugmentConfig
from paper_repro.errors import UserError
from paper_repro.evaluate import evaluate, top5_text

# 24 -> 16: corners at 0 and 8, centre at 4 (Caffe's (resize - crop) // 2).
SMALL = AugmentConfig(24, 16)
VIEWS = {
    1: [(4, 4, False)],
    5: [(0, 0, False), (0, 8, False), (8, 0, False), (8, 8, False), (4, 4, False)],
}
VIEWS[10] = VIEWS[5] + [(r, c, True) for r, c, _ in VIEWS[5]]


def position_sensitive_model(num_classes: int) -> keras.Model:
    """Softmax over a dense layer of the raw pixels: every view gives different outputs."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    init = keras.initializers.RandomNormal(stddev=0.3, seed=1)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init)(x)
    return keras.Model(inputs, outputs)


def averaged(model, images, crops) -> np.ndarray:
    """Probabilities averaged over views cut with NumPy."""
    views = []
    for row, col, mirrored in VIEWS[crops]:
        view = images[:, row : row + 16, col : col + 16]
        views.append(view[:, :, ::-1] if mirrored else view)
    return np.mean([model.predict(v.astype(np.float32), verbose=0) for v in views], axis=0)


def reference(model, images, labels, crops) -> tuple[float, float]:
    """Top-1 / top-5 of the NumPy average (ties to the lower class, like argmax)."""
    top5 = np.argsort(-averaged(model, images, crops), axis=1, kind="stable")[:, :5]
    return float(np.mean(top5[:, 0] == labels)), float(np.mean((top5 == labels[:, None]).any(1)))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (13, 24, 24, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 13)
    return position_sensitive_model(10), images, labels


@pytest.mark.parametrize("crops", [1, 5, 10])
def test_accuracy_equals_a_numpy_reference_over_caffes_views(case, crops):
    model, images, labels = case
    scores = evaluate(model, (images, labels), crops=crops, augment=SMALL, batch_size=4, verbose=0)
    top1, top5 = reference(model, images, labels, crops)
    assert scores["num_examples"] == 13 and scores["crops"] == crops
    assert scores["top1"] == pytest.approx(top1) and scores["top5"] == pytest.approx(top5)
    # The centre view alone, from the same pass: Caffe's TEST-phase accuracy.
    center1, center5 = reference(model, images, labels, 1)
    assert (scores["center_top1"], scores["center_top5"]) == pytest.approx((center1, center5))


def test_views_are_averaged_not_just_the_centre(case):
    model, images, _ = case
    labels_10 = np.argmax(averaged(model, images, 10), axis=1)
    ten = evaluate(model, (images, labels_10), crops=10, augment=SMALL, verbose=0)
    one = evaluate(model, (images, labels_10), crops=1, augment=SMALL, verbose=0)
    assert ten["top1"] == 1.0 and one["top1"] < 1.0


def test_a_loaded_split_and_grey_arrays_give_the_same_scores(case):
    model, images, labels = case
    grey = images[..., 0]
    split = tf.data.Dataset.from_tensor_slices(
        {"image": np.repeat(grey[..., None], 3, axis=-1), "label": labels, "index": np.arange(13)}
    )
    from_split = evaluate(model, split, crops=5, augment=SMALL, batch_size=5, verbose=0)
    from_arrays = evaluate(model, (grey, labels), crops=5, augment=SMALL, batch_size=5, verbose=0)
    assert from_split == from_arrays


def test_native_images_are_resized_first(case):
    model, images, labels = case
    small = images[:, ::2, ::2]
    resized = tf.saturate_cast(tf.round(tf.image.resize(small, (24, 24))), tf.uint8).numpy()
    native = evaluate(model, (small, labels), crops=10, augment=SMALL, verbose=0)
    assert native == evaluate(model, (resized, labels), crops=10, augment=SMALL, verbose=0)


def test_top5_with_fewer_than_five_classes_is_top_all():
    images = np.zeros((4, 24, 24, 3), np.uint8)
    scores = evaluate(
        position_sensitive_model(3), (images, np.arange(4) % 3), crops=1, augment=SMALL, verbose=0
    )
    assert scores["top5"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crops": 3}, "crops must be 1"),
        ({"crops": 10, "augment": AugmentConfig(24, 16, mirror=False)}, "use 5 crops"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"data": (np.zeros((2, 24, 24, 3), np.float32), [0, 1])}, "must be uint8"),
        ({"data": (np.zeros((2, 24, 24, 3), np.uint8), [0])}, "one label each"),
        ({"data": "mnist"}, "needs a split from data.load_split"),
    ],
)
def test_bad_arguments_are_explained(case, kwargs, message):
    model, images, labels = case
    arguments = {"data": (images, labels), "crops": 1, "augment": SMALL, **kwargs}
    with pytest.raises(UserError, match=message):
        evaluate(model, arguments.pop("data"), verbose=0, **arguments)


def test_top5_prints_na_where_the_model_has_at_most_5_classes():
    assert top5_text(1.0, 5) == "n/a"  # always 100 %: says nothing
    assert top5_text(0.875, 6) == "87.50%"


def test_ctrl_c_lands_between_two_batches(case, monkeypatch):
    """Ctrl-C pressed while a batch is scored is raised once that batch is whole: never inside
    the next call, where TensorFlow's bindings may turn it into a RuntimeError."""
    model, images, labels = case
    scored = []
    hits = evaluate_module._hits

    def hits_then_ctrl_c(probabilities, batch_labels):
        scored.append(len(batch_labels))
        if len(scored) == 1:
            signal.raise_signal(signal.SIGINT)
        return hits(probabilities, batch_labels)

    monkeypatch.setattr(evaluate_module, "_hits", hits_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (images, labels), crops=1, augment=SMALL, batch_size=5, verbose=0)
    # The first batch was scored twice (all views, the centre), the second batch never.
    assert scored == [5, 5]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
