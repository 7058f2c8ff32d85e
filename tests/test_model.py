"""The Table II network: shapes, parameters, Caffe's LRN, grouped convolution, freezing, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from paper_repro import model as model_lib
from paper_repro.errors import UserError
from paper_repro.model import (
    CLASSIFIER,
    FEATURES,
    PREPROCESS,
    GroupedConv2D,
    LocalResponseNormalization,
    build_alexnet,
    caffe_layers,
    replace_classifier,
)
from paper_repro.solver import CaffeSGD

QUICK = 67  # the smallest size the stack takes; everything but Table II's shapes is size-free

TABLE_II = {  # layer: (height, width, depth) of its output at 227, the paper's Table II
    "conv1": (55, 55, 96), "relu1": (55, 55, 96), "pool1": (27, 27, 96), "norm1": (27, 27, 96),
    "conv2": (27, 27, 256), "relu2": (27, 27, 256), "pool2": (13, 13, 256),
    "norm2": (13, 13, 256), "conv3": (13, 13, 384), "relu3": (13, 13, 384),
    "conv4": (13, 13, 384), "relu4": (13, 13, 384), "conv5": (13, 13, 256),
    "relu5": (13, 13, 256), "pool5": (6, 6, 256),
    "fc6": (4096,), "relu6": (4096,), "drop6": (4096,), "fc7": (4096,), "relu7": (4096,),
    "drop7": (4096,), "fc8": (1000,), "prob": (1000,),
}  # fmt: skip


@pytest.fixture(scope="module")
def caffenet():
    return build_alexnet(1000, seed=0)


def test_parameter_count_is_caffenets(caffenet):
    assert caffenet.count_params() == 60_965_224


def test_ungrouped_variant_is_buildable():
    assert build_alexnet(1000, groups=1).count_params() == 62_378_344


def test_every_layer_output_matches_table_ii(caffenet):
    layers = caffe_layers(caffenet)
    shapes = {name: tuple(layer.output.shape[1:]) for name, layer in layers.items()}
    assert {name: shapes[name] for name in TABLE_II} == TABLE_II


def test_blocks_split_features_from_classifier(caffenet):
    feature_names = {layer.name for layer in caffenet.get_layer(FEATURES).layers}
    assert {"conv1", "norm2", "conv5", "pool5"} <= feature_names
    assert not feature_names & {"fc6", "fc7", "fc8"}


def caffe_lrn_numpy(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's LRNLayer (ACROSS_CHANNELS), written from its formula, channels last."""
    half = size // 2
    squared = np.pad(x.astype(np.float64) ** 2, [(0, 0)] * 3 + [(half, half)])
    window = sum(squared[..., i : i + x.shape[-1]] for i in range(size))
    return x / (k + alpha / size * window) ** beta


def test_lrn_equals_caffes_formula():
    x = np.random.default_rng(0).normal(0, 40, (2, 5, 5, 16)).astype(np.float32)
    got = LocalResponseNormalization()(x).numpy()
    np.testing.assert_allclose(got, caffe_lrn_numpy(x), rtol=1e-5)
    assert not np.allclose(got, x, rtol=1e-3)  # it really normalises at this scale


@pytest.mark.parametrize("path", ["tensorflow_lrn", "portable_lrn"])
@pytest.mark.parametrize(
    "params", [{}, {"size": 3, "alpha": 0.01, "beta": 0.5, "k": 2.0}], ids=["caffenet", "other"]
)
def test_both_lrn_paths_equal_caffes_formula(path, params):
    # TF's fused kernel on the TF backend, keras.ops elsewhere (JAX): both called directly here.
    x = np.random.default_rng(1).normal(0, 40, (2, 4, 3, 12)).astype(np.float32)
    got = keras.ops.convert_to_numpy(getattr(LocalResponseNormalization(**params), path)(x))
    want = caffe_lrn_numpy(x, **params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got - x).max() > 1.0  # it really normalises (a no-op would not pass)
    np.testing.assert_allclose(got[..., 0], want[..., 0], rtol=1e-5)  # the zero-padded edges
    np.testing.assert_allclose(got[..., -1], want[..., -1], rtol=1e-5)


@pytest.mark.parametrize("path", ["tensorflow_lrn", "portable_lrn"])
def test_lrn_paths_compute_mixed_precision_in_float32(path):
    x = np.random.default_rng(2).normal(0, 40, (1, 3, 3, 8)).astype(np.float32)
    layer = LocalResponseNormalization()
    got = getattr(layer, path)(keras.ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    want = caffe_lrn_numpy(keras.ops.convert_to_numpy(keras.ops.cast(x, "bfloat16")).astype("f4"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got).astype(np.float32), want, rtol=1e-2)


def _grouped_pair(groups=2):
    fast = GroupedConv2D(8, 3, padding="same", groups=groups)
    reference = keras.layers.Conv2D(8, 3, padding="same", groups=groups)
    x = tf.random.stateless_normal((2, 7, 7, 6), seed=(1, 2))
    fast.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(fast.get_weights())
    return fast, reference, x


def _outputs_and_gradients(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.sin(y))
    return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]


@pytest.mark.parametrize("native", [True, False], ids=["tf.nn.convolution", "fallback"])
def test_grouped_conv_equals_keras_grouped_conv(native, monkeypatch):
    monkeypatch.setattr(model_lib, "grouped_convolution_is_native", lambda dtype: native)
    fast, reference, x = _grouped_pair()
    for got, want in zip(
        _outputs_and_gradients(fast, x), _outputs_and_gradients(reference, x), strict=True
    ):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_grouped_conv_is_really_grouped():
    fast, _, x = _grouped_pair()
    ungrouped = keras.layers.Conv2D(8, 3, padding="same")
    ungrouped.build(x.shape)
    assert fast.kernel.shape[2] == 3 and ungrouped.kernel.shape[2] == 6


def _quick_batch(num_classes=3, n=4):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, QUICK, QUICK, 3), dtype=np.uint8)
    return images, np.arange(n) % num_classes


def _weights(block):
    return {v.path: v.numpy().copy() for v in block.weights}


def test_frozen_features_do_not_move_and_classifier_does():
    model = build_alexnet(3, QUICK, seed=1)
    model.get_layer(FEATURES).trainable = False
    model.compile(CaffeSGD(0.01), "sparse_categorical_crossentropy")
    features, classifier = model.get_layer(FEATURES), model.get_layer(CLASSIFIER)
    before_f, before_c = _weights(features), _weights(classifier)
    model.train_on_batch(*_quick_batch())
    assert all(np.array_equal(before_f[k], v) for k, v in _weights(features).items())
    moved = {k: not np.array_equal(before_c[k], v) for k, v in _weights(classifier).items()}
    assert len(moved) == 6 and all(moved.values()), moved


def test_scaling_pool5_multiplies_the_features_and_nothing_else():
    model = build_alexnet(3, QUICK, init="xavier", seed=1)
    features = model.get_layer(FEATURES)
    images = _quick_batch()[0]
    before, weights = features(model.get_layer(PREPROCESS)(images)), _weights(features)
    model_lib.scale_pool5(model, 0.05)
    after = features(model.get_layer(PREPROCESS)(images))
    assert float(np.max(before)) > 1  # an untrained block is far from a trained one's scale
    np.testing.assert_allclose(after, 0.05 * np.asarray(before), rtol=1e-5, atol=1e-7)
    changed = {k for k, v in _weights(features).items() if not np.array_equal(weights[k], v)}
    assert {k.split("/")[-2] for k in changed} == {"conv5"} and len(changed) == 2
    with pytest.raises(ValueError, match=r"factor must be > 0 .* got -1\.0"):
        model_lib.scale_pool5(model, -1.0)


def test_unfreezing_is_honoured_after_recompiling():
    model = build_alexnet(3, QUICK, seed=1)
    model.get_layer(FEATURES).trainable = False
    model.compile(CaffeSGD(0.01), "sparse_categorical_crossentropy")
    model.train_on_batch(*_quick_batch())
    model.get_layer(FEATURES).trainable = True
    model.compile(CaffeSGD(0.01), "sparse_categorical_crossentropy")
    before = _weights(model.get_layer(FEATURES))
    model.train_on_batch(*_quick_batch())
    after = _weights(model.get_layer(FEATURES))
    assert all(not np.array_equal(before[k], v) for k, v in after.items())


def test_saved_model_loads_in_safe_mode_with_identical_outputs(tmp_path):
    model = build_alexnet(5, QUICK, mean=(104.0, 117.0, 123.0), bgr=True, seed=2)
    path = tmp_path / "alexnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images, _ = _quick_batch()
    np.testing.assert_array_equal(
        model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    )
    assert loaded.get_layer(PREPROCESS).bgr is True


def test_model_takes_raw_uint8_and_float_images_alike():
    model = build_alexnet(3, QUICK, mean=(120.0, 110.0, 100.0), seed=3)
    images, _ = _quick_batch()
    probs = model.predict(images, verbose=0)
    np.testing.assert_allclose(probs, model.predict(images.astype(np.float32), verbose=0))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_preprocessing_reverses_to_bgr_then_subtracts_the_mean():
    layer = model_lib.CaffePreprocessing(mean=(1.0, 2.0, 3.0), bgr=True)
    out = layer(np.array([[[[10, 20, 30]]]], dtype=np.uint8)).numpy()
    np.testing.assert_array_equal(out.ravel(), [29.0, 18.0, 7.0])


def test_replace_classifier_keeps_features_and_sizes_fc8():
    source = build_alexnet(7, QUICK, mean=(1.0, 2.0, 3.0), seed=4)
    target = replace_classifier(source, 4, seed=5)
    src, new = caffe_layers(source), caffe_layers(target)
    for name in ("conv1", "conv5", "fc6", "fc7"):
        for a, b in zip(src[name].get_weights(), new[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert new["fc8"].kernel.shape == (4096, 4)
    assert target.get_layer(PREPROCESS).mean == [1.0, 2.0, 3.0]
    fresh = caffe_layers(replace_classifier(source, 4, keep_fc67=False, seed=5))
    assert not np.array_equal(fresh["fc6"].kernel.numpy(), src["fc6"].kernel.numpy())


def test_replace_classifier_can_take_the_targets_mean_and_its_own_dropout():
    """The study's knobs: the target's mean replaces the source's (reversed for a BGR network,
    mean image dropped) and the retraining's dropout replaces the source's; features stay."""
    source = build_alexnet(7, QUICK, mean=(1.0, 2.0, 3.0), bgr=True, mean_image=True, seed=4)
    target = replace_classifier(source, 4, seed=5, mean=(10.0, 20.0, 30.0), dropout=0.0)
    pre = target.get_layer(PREPROCESS)
    assert (pre.mean, pre.bgr, pre.mean_image) == ([30.0, 20.0, 10.0], True, False)
    assert caffe_layers(target)["drop6"].rate == 0.0 == caffe_layers(target)["drop7"].rate
    np.testing.assert_array_equal(
        caffe_layers(target)["conv1"].kernel.numpy(), caffe_layers(source)["conv1"].kernel.numpy()
    )
    kept = replace_classifier(source, 4, seed=5)
    assert kept.get_layer(PREPROCESS).mean == [1.0, 2.0, 3.0]
    assert kept.get_layer(PREPROCESS).mean_image and caffe_layers(kept)["drop6"].rate == 0.5


def test_replace_classifier_refuses_other_models():
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(UserError, match="not a paper_repro AlexNet"):
        replace_classifier(other, 3)


@pytest.mark.parametrize("size", [224, 66, 35])
def test_input_size_the_stack_cannot_take_is_refused(size):
    with pytest.raises(UserError, match=rf"image size {size} .* 67 \+ 32k"):
        build_alexnet(10, size)


@pytest.mark.parametrize("classes", [1, 0, -3])
def test_fewer_than_two_classes_is_refused(classes):
    with pytest.raises(UserError, match="num_classes must be an integer of at least 2"):
        build_alexnet(classes, QUICK)


@pytest.mark.parametrize("size", [67, 99, 131, 163, 195])
def test_every_quick_size_builds(size):
    model = build_alexnet(2, size)
    assert model.get_layer(FEATURES).output.shape[1] == (size - 67) // 32 + 1


def test_grouped_kernels_are_checked_per_dtype_with_their_gradients():
    # oneDNN (TensorFlow's CPU default) has grouped float32 kernels and gradients; TensorFlow's
    # float16 CPU kernels refuse grouped gradients, so float16 takes Keras' op.
    assert model_lib.grouped_convolution_is_native("float32")
    assert not model_lib.grouped_convolution_is_native("float16")


def test_reseed_dropout_relies_on_this_keras_seed_generator_layout():
    """``reseed_dropout`` writes ``[seed, draws]`` into Keras' ``SeedGenerator.state``: a Keras
    release that changes that layout (or stops counting one draw per call) fails here."""
    layer = keras.layers.Dropout(0.5, seed=3)
    model = keras.Sequential([keras.Input((256,)), layer])
    state = layer.seed_generator.state
    ones = np.ones((4, 256), np.float32)
    assert tuple(state.shape) == (2,)

    model_lib.reseed_dropout(model, 2)
    assert state.numpy().tolist() == [3, 2 * model_lib.DROPOUT_DRAWS_PER_EPOCH]
    first = layer(ones, training=True).numpy()
    assert state.numpy().tolist() == [3, 2 * model_lib.DROPOUT_DRAWS_PER_EPOCH + 1]

    model_lib.reseed_dropout(model, 2)
    np.testing.assert_array_equal(layer(ones, training=True).numpy(), first)
    model_lib.reseed_dropout(model, 3)
    assert not np.array_equal(layer(ones, training=True).numpy(), first)


def test_features_can_end_at_relu5_with_the_same_weights_and_conv5s_layout():
    """The geometry cell: at 67 pixels relu5 keeps 3x3x256 values where pool5 keeps 1x1x256;
    a retraining on them copies the source's conv1 .. conv5 and draws fc6, fc7 and fc8 anew."""
    source = build_alexnet(7, QUICK, seed=4)
    assert model_lib.describe(source)["pool5"]
    target = replace_classifier(source, 4, seed=5, keep_fc67=False, pool5=False)
    assert tuple(target.get_layer("features").output.shape[1:]) == (3, 3, 256)
    assert tuple(source.get_layer("features").output.shape[1:]) == (1, 1, 256)
    assert not model_lib.describe(target)["pool5"]
    assert caffe_layers(target)["fc6"].kernel.shape == (3 * 3 * 256, 4096)
    for name in ("conv1", "conv5"):
        for a, b in zip(
            caffe_layers(source)[name].get_weights(),
            caffe_layers(target)[name].get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    # Its values are conv5's, unpooled: pooling them gives the source's pool5 exactly.
    images = np.random.default_rng(0).integers(0, 256, (2, QUICK, QUICK, 3)).astype("uint8")
    pre = source.get_layer(PREPROCESS)(images)
    relu5 = target.get_layer("features")(pre).numpy()
    pool5 = source.get_layer("features")(pre).numpy()
    np.testing.assert_array_equal(relu5.max(axis=(1, 2), keepdims=True), pool5)
