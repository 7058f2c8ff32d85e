"""Feature caching: stored values equal the network's features of each view, bounded streaming per
epoch, resumable and reused builds, and cached retraining end to end on real MNIST."""

import dataclasses
import fcntl
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY

from paper_repro import cache, data, experiments
from paper_repro.augment import AugmentConfig, crop_views
from paper_repro.evaluate import evaluate
from paper_repro.model import (
    CLASSIFIER,
    FEATURES,
    PREPROCESS,
    build_alexnet,
    caffe_layers,
    replace_classifier,
)
from paper_repro.training import train
from paper_repro.training.callbacks import RunRecorder

AUGMENT = AugmentConfig(76, 67, mirror=True)


@pytest.fixture(scope="module")
def network():
    return build_alexnet(10, 67, init="xavier", seed=1, mean=(120.0, 110.0, 100.0))


def _split(count: int = 12) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        {
            "image": rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, count).astype(np.int64),
            "index": np.arange(100, 100 + count, dtype=np.int64),
        }
    )


def _spec(network, views: int = 10, dtype: str = "float32") -> cache.CacheSpec:
    return cache.CacheSpec(
        dataset="random", content="random images", split="train", classes=None, subset=None,
        subset_seed=None, resize=AUGMENT.resize, crop=AUGMENT.crop,
        views=cache.training_views(AUGMENT, views), dtype=dtype,
        weights=cache.features_digest(network),
    )  # fmt: skip


def _build(root, network, spec=None, split=None, verbose=0):
    spec = spec or _spec(network)
    split = split if split is not None else _split()
    return cache.open_or_build(root, spec, network, split, AUGMENT, batch_size=5, verbose=verbose)


def test_cached_values_are_the_networks_features_of_every_view(tmp_path, network):
    built = _build(tmp_path, network)
    batch = next(iter(_split().batch(12)))
    views = crop_views(batch["image"], AUGMENT, 10)
    features = network.get_layer(FEATURES)
    expected = np.stack([features(network.get_layer(PREPROCESS)(v)).numpy() for v in views], axis=1)
    assert built.features.shape == (12, 10, 1, 1, 256)
    np.testing.assert_allclose(built.features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(built.labels, batch["label"].numpy())
    np.testing.assert_array_equal(built.indices, np.arange(100, 112))
    assert not built.reused and built.build_seconds > 0
    assert built.path.name.startswith("random-train-67px-10views-float32-")


def test_float16_cache_is_half_the_size_and_close(tmp_path, network):
    full = _build(tmp_path, network)
    half = _build(tmp_path, network, _spec(network, dtype="float16"))
    assert half.features.dtype == np.float16 and half.path != full.path
    assert (half.path / "features.npy").stat().st_size < 0.6 * (
        full.path / "features.npy"
    ).stat().st_size
    np.testing.assert_allclose(
        half.features.astype(np.float32), full.features, rtol=2e-3, atol=1e-2
    )


def test_without_mirroring_only_the_five_unmirrored_views_are_cached():
    views = cache.training_views(dataclasses.replace(AUGMENT, mirror=False), 10)
    assert len(views) == 5 and not any(mirrored for _, _, mirrored in views)


def test_a_built_cache_is_reused_and_other_weights_get_their_own(tmp_path, network, monkeypatch):
    first = _build(tmp_path, network)
    monkeypatch.setattr(cache, "extractor", lambda _: pytest.fail("rebuilt a built cache"))
    again = _build(tmp_path, network)
    assert again.reused and again.path == first.path
    assert again.build_seconds == first.build_seconds
    monkeypatch.undo()
    other = build_alexnet(10, 67, init="xavier", seed=2)
    assert _build(tmp_path, other, _spec(other)).path != first.path


def test_features_ending_at_relu5_get_a_cache_of_their_own(tmp_path, network):
    """Same weights, another end of the block: relu5's 3x3x256 values, not pool5's 1x1x256."""
    relu5 = replace_classifier(network, 10, keep_fc67=False, pool5=False)
    pooled, unpooled = _build(tmp_path, network), _build(tmp_path, relu5, _spec(relu5))
    assert unpooled.path != pooled.path
    assert unpooled.features.shape[-3:] == (3, 3, 256) and pooled.features.shape[-3:] == (1, 1, 256)
    np.testing.assert_array_equal(
        np.max(unpooled.features, axis=(-3, -2), keepdims=True), pooled.features
    )


def test_an_interrupted_build_resumes_to_the_same_cache(tmp_path, network, monkeypatch):
    calls = {"n": 0}
    real = cache.extractor

    def failing(model):
        extract = real(model)

        def run(images):
            calls["n"] += 1
            if calls["n"] > 25:  # 2.5 batches of 10 views
                raise KeyboardInterrupt
            return extract(images)

        return run

    monkeypatch.setattr(cache, "extractor", failing)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "interrupted", network)
    monkeypatch.undo()
    directory = next((tmp_path / "interrupted" / cache.CACHE_DIR_NAME).iterdir())
    assert not (directory / "meta.json").exists()
    assert '"rows": 10' in (directory / "progress.json").read_text()
    resumed = _build(tmp_path / "interrupted", network)
    whole = _build(tmp_path / "whole", network)
    np.testing.assert_array_equal(resumed.features, whole.features)
    np.testing.assert_array_equal(resumed.labels, whole.labels)
    assert not (directory / "progress.json").exists()


def test_a_build_waits_for_another_runs_build_and_reuses_it(tmp_path, network, capsys):
    spec = _spec(network)
    path = tmp_path / cache.CACHE_DIR_NAME / spec.name
    path.mkdir(parents=True)
    result = {}
    with open(path / "build.lock", "w") as lock:  # another run holds the build lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = threading.Thread(
            target=lambda: result.update(built=_build(tmp_path, network, verbose=1))
        )
        waiting.start()
        waiting.join(timeout=2.0)
        assert waiting.is_alive(), "the second build did not wait for the lock"
        cache._build(path, spec, network, _split(), AUGMENT, 5, 0)  # the other run's build
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiting.join(timeout=60)
    assert result["built"].reused
    assert "waiting for another run building" in capsys.readouterr().out


def test_each_epoch_streams_every_image_once_with_a_keyed_view(tmp_path, network):
    built = _build(tmp_path, network)
    flat = built.features.reshape(12, 10, -1)

    def epoch(number):
        rows = []
        for features, labels in built.train_batches(5, 7, number, number + 1):
            features = features.numpy().reshape(len(labels), -1)
            for vector, label in zip(features, labels.numpy(), strict=True):
                row, view = np.argwhere(np.all(flat == vector, axis=-1))[0]
                assert built.labels[row] == label
                rows.append((int(row), int(view)))
        return rows

    first, second = epoch(0), epoch(1)
    assert sorted(r for r, _ in first) == list(range(12)) == sorted(r for r, _ in second)
    assert first != second and len({v for _, v in first + second}) > 3
    assert first == epoch(0)
    shapes = [f.shape[0] for f, _ in built.train_batches(5, 7, 0, 2)]
    assert shapes == [5, 5, 2, 5, 5, 2]


def test_validation_batches_are_the_first_view_in_order(tmp_path, network):
    built = _build(tmp_path, network, _spec(network, views=1))
    features = np.concatenate([f.numpy() for f, _ in built.validation_batches(5)])
    np.testing.assert_array_equal(features, built.features[:, 0])


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "source.keras"
    build_alexnet(10, 67, init="xavier", seed=5).save(path)
    return path


def _retrain(runs, weights, overrides=(), **kwargs):
    return train(
        "retrain-mnist", "smoke", weights=str(weights), runs_dir=runs, verbose=0,
        overrides=[*TINY, "cache_features=true", *overrides], **kwargs,
    )  # fmt: skip


@pytest.mark.usefixtures("tfds_dir")
@pytest.mark.slow
def test_cached_retraining_end_to_end(tmp_path, source_weights):
    history = _retrain(tmp_path, source_weights)
    run = tmp_path / "smoke" / "retrain-mnist-cached"
    assert history.status == "finished" and history.cache is not None
    assert not history.cache.reused and history.cache.build_seconds > 0
    assert (tmp_path / cache.CACHE_DIR_NAME / history.cache.train / "meta.json").is_file()
    model = keras.saving.load_model(run / "model.keras")
    source = caffe_layers(keras.saving.load_model(source_weights))
    result = caffe_layers(model)
    for name in ("conv1", "conv5"):
        np.testing.assert_array_equal(source[name].kernel.numpy(), result[name].kernel.numpy())
    assert not np.array_equal(source["fc7"].kernel.numpy(), result["fc7"].kernel.numpy())
    # The last epoch's test accuracy came from the cached centre crops; the saved model on the
    # images themselves must score the same.
    config = experiments.resolve("retrain-mnist", "smoke", [*TINY, "cache_features=true"])
    splits = data.load_experiment_data(config)
    scores = evaluate(model, splits.test, crops=1, augment=splits.augment, verbose=0)
    # (Keras accumulates its metric in float32.)
    assert scores["top1"] == pytest.approx(history.epochs[-1].test_accuracy, abs=1e-6)
    cached = np.load(tmp_path / cache.CACHE_DIR_NAME / history.cache.test / "features.npy")
    images = next(iter(splits.test.batch(80)))["image"]
    centre = crop_views(images, splits.augment, 1)[0]
    np.testing.assert_allclose(
        model.get_layer(CLASSIFIER)(cached[:, 0]), model(centre), rtol=1e-4, atol=1e-6
    )
    again = _retrain(tmp_path, source_weights, ["epochs=1", "drop_epochs=1"], force=True)
    assert again.cache.reused and again.cache.train == history.cache.train
    # A run in another runs directory, with this one as its cache root (the study's cells), too.
    cell = tmp_path / "another-cell"
    other = _retrain(cell, source_weights, ["epochs=1", "drop_epochs=1"], cache_root=tmp_path)
    assert other.cache.reused and other.cache.train == history.cache.train
    assert not (cell / cache.CACHE_DIR_NAME).exists()


@pytest.mark.usefixtures("tfds_dir")
@pytest.mark.slow
def test_interrupted_cached_run_resumes_to_the_uninterrupted_history(
    tmp_path, source_weights, monkeypatch
):
    original = RunRecorder.on_epoch_end

    def stop_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunRecorder, "on_epoch_end", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        _retrain(tmp_path / "killed", source_weights)
    monkeypatch.undo()
    resumed = _retrain(tmp_path / "killed", source_weights)
    whole = _retrain(tmp_path / "whole", source_weights)

    def numbers(history):
        return [(e.train_loss, e.test_accuracy) for e in history.epochs], history.final.top1

    assert len(resumed.epochs) == 2 and numbers(resumed) == numbers(whole)


def test_a_sliced_splits_cache_has_a_portable_name_of_its_own(network):
    """train[:90%] (the selection rule's split) names a directory without ':' or '[' or '%'."""
    names = [
        dataclasses.replace(_spec(network), split=split).name
        for split in ("train", "train[:90%]", "train[90%:]")
    ]
    assert names[0].startswith("random-train-") and names[1].startswith("random-train_90_-")
    assert len(set(names)) == 3 and not any(set(":[]%") & set(name) for name in names)
