"""The .caffemodel reader, the Caffe -> Keras conversions, and the CaffeNet import.

Two kinds of ground truth: a real Caffe-trained LeNet (its MNIST accuracy only comes out right if
kernel layouts and the C,H,W flatten order are right), and CaffeNet-shaped files written here with
random weights, checked against a NumPy forward pass with Caffe's semantics.
"""

from __future__ import annotations

import struct
from pathlib import Path

import keras
import numpy as np
import pytest
from caffe_files import (  # tests/caffe_files.py
    CAFFENET_CONVS,
    CAFFENET_FCS,
    MEAN_BGR,
    blob_proto,
    field_key,
    len_field,
    varint,
    write_caffemodel,
)

from paper_repro.caffe import (
    caffe_mean,
    import_caffe,
    import_caffenet,
    load_caffe_layer,
    read_caffemodel,
)
from paper_repro.errors import UserError

CAFFE_DIR = Path(__file__).resolve().parents[2] / "shared" / "caffe"
LENET = CAFFE_DIR / "lenet_mnist.caffemodel"
LENET_SCALE = 0.00390625  # 1/256, Caffe's LeNet example's input scale


# --- the reader --------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_reader_round_trips_both_formats(tmp_path, legacy):
    rng = np.random.default_rng(0)
    layers = {
        "conv": [rng.normal(size=(4, 3, 2, 2)).astype("f4"), rng.normal(size=4).astype("f4")],
        "fc": [rng.normal(size=(5, 7)).astype("f4")],
    }
    path = tmp_path / "net.caffemodel"
    write_caffemodel(path, layers, legacy=legacy)
    read = read_caffemodel(path)
    assert list(read) == ["conv", "fc"]  # weightless layers are left out
    for name, blobs in layers.items():
        for want, got in zip(blobs, read[name], strict=True):
            # legacy blobs are 4-D: (1, 1, out, in) for an fc weight, as in old model-zoo files
            assert got.size == want.size and got.shape[-want.ndim :] == want.shape
            np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_reader_accepts_unpacked_floats_and_dims(tmp_path):
    data = [1.5, -2.0, 3.25]
    shape = field_key(1, 0) + varint(3)  # BlobShape.dim, unpacked
    # BlobProto.data, unpacked
    floats = b"".join(field_key(5, 5) + struct.pack("<f", v) for v in data)
    blob = len_field(7, shape) + floats
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(len_field(100, len_field(1, b"ip") + len_field(7, blob)))
    np.testing.assert_array_equal(read_caffemodel(path)["ip"][0], np.float32(data))


def test_reader_refuses_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.caffemodel"
    write_caffemodel(good, {"fc": [np.ones((3, 4), "f4")]}, legacy=False)
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(good.read_bytes()[:-5])
    prototxt = CAFFE_DIR / "lenet_mnist_deploy.prototxt"
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    for bad in (truncated, garbage, prototxt):
        if bad.exists():
            with pytest.raises(UserError, match=r"not a readable binary \.caffemodel"):
                read_caffemodel(bad)
    with pytest.raises(UserError, match="cannot read"):
        read_caffemodel(tmp_path / "missing.caffemodel")


# --- the real LeNet ----------------------------------------------------------------------------


def _lenet() -> keras.Model:
    """lenet_mnist_deploy.prototxt in Keras, channels_last (no ReLU after the convolutions)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(20, 5, name="conv1"),
            layers.MaxPooling2D(2, 2, name="pool1"),
            layers.Conv2D(50, 5, name="conv2"),
            layers.MaxPooling2D(2, 2, name="pool2"),
            layers.Flatten(),
            layers.Dense(500, activation="relu", name="ip1"),
            layers.Dense(10, name="ip2"),
        ]
    )


def _mnist_test(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    tfds = pytest.importorskip("tensorflow_datasets")
    test = tfds.load("mnist", split="test", data_dir=data_dir, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(test)
    return images, labels


@pytest.mark.skipif(not LENET.exists(), reason=f"needs the real Caffe LeNet at {LENET}")
def test_real_caffe_lenet_scores_mnist(tfds_dir):
    """Wrong kernel layout or flatten order (ip1 follows pool2) would collapse the accuracy."""
    images, labels = _mnist_test(tfds_dir)
    weights = read_caffemodel(LENET)
    model = _lenet()
    for name in ("conv1", "conv2", "ip2"):
        load_caffe_layer(model.get_layer(name), weights[name])
    h, w, c = model.get_layer("pool2").output.shape[1:]
    load_caffe_layer(model.get_layer("ip1"), weights["ip1"], input_chw=(c, h, w))
    logits = model.predict(images.astype("f4") * LENET_SCALE, batch_size=1000, verbose=0)
    accuracy = float(np.mean(logits.argmax(1) == labels))
    print(f"Caffe LeNet on the MNIST test set: {accuracy:.2%}")
    assert accuracy >= 0.989


# --- CaffeNet: random weights written in both formats, against a NumPy forward pass ------------


def _caffe_conv(x, kernel, bias, stride, pad, group):
    """Caffe's convolution on NCHW by im2col: each group sees its slice of input channels."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = kernel.shape[2:]
    cols = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[
        :, :, ::stride, ::stride
    ]
    cin, cout = x.shape[1] // group, kernel.shape[0] // group
    outs = [
        np.tensordot(
            cols[:, g * cin : (g + 1) * cin],
            kernel[g * cout : (g + 1) * cout],
            ([1, 4, 5], [1, 2, 3]),
        )
        for g in range(group)
    ]
    return np.concatenate(outs, axis=-1).transpose(0, 3, 1, 2) + bias[:, None, None]


def _caffe_max_pool(x, size=3, stride=2):
    """Ceil mode: Caffe's output size rounds up, the last window runs off the edge."""
    out = [-(-(dim - size) // stride) + 1 for dim in x.shape[2:]]
    need = [(o - 1) * stride + size - dim for o, dim in zip(out, x.shape[2:], strict=True)]
    x = np.pad(x, ((0, 0), (0, 0), (0, need[0]), (0, need[1])), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(2, 3))
    return windows[:, :, ::stride, ::stride].max(axis=(4, 5))


def _caffe_lrn(x, size=5, alpha=1e-4, beta=0.75):
    """Across channels: x / (1 + alpha/size * sum of squares over `size` channels) ** beta."""
    squares = np.pad(x**2, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
    window_sum = sum(squares[:, i : i + x.shape[1]] for i in range(size))
    return x / (1.0 + alpha / size * window_sum) ** beta


def _caffe_forward(layers, rgb_images):
    """CaffeNet's deploy net on RGB uint8 NHWC images, as Caffe runs it: BGR, mean, NCHW."""
    x = (
        rgb_images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float64)
        - np.array(MEAN_BGR)[:, None, None]
    )
    for name, _, stride, pad, group in CAFFENET_CONVS:
        x = np.maximum(_caffe_conv(x, *layers[name], stride, pad, group), 0)
        if name in ("conv1", "conv2", "conv5"):
            x = _caffe_max_pool(x)
        if name in ("conv1", "conv2"):
            x = _caffe_lrn(x)
    x = x.reshape(len(x), -1)  # C, H, W order
    for name, _ in CAFFENET_FCS:
        kernel, bias = layers[name]
        x = x @ kernel.T + bias
        x = np.maximum(x, 0) if name != "fc8" else x
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [False, True], ids=["layer", "v1-layers"])
def test_imported_caffenet_computes_what_caffe_computes(caffenet_imports, legacy):
    """``import-caffe``'s file (the session's import of a random CaffeNet in either format) gives
    what Caffe's forward pass gives on the same images, and the command said it verified it."""
    layers, files, printed = caffenet_imports
    assert f"Keras model written to {files[legacy][1]}; verified" in printed
    rgb = np.random.default_rng(7).integers(0, 256, (2, 227, 227, 3), dtype=np.uint8)
    expected = _caffe_forward(layers, rgb)
    model = keras.saving.load_model(files[legacy][1], safe_mode=True)
    probabilities = model.predict(rgb, verbose=0)
    print(f"max |keras - caffe| probability: {np.abs(probabilities - expected).max():.2e}")
    assert expected.min() > 1e-9  # no underflow: the log comparison sees every logit
    np.testing.assert_allclose(np.log(probabilities), np.log(expected), atol=1e-3)


@pytest.mark.skipif(not LENET.exists(), reason=f"needs the real Caffe LeNet at {LENET}")
def test_import_names_the_first_layer_that_does_not_fit():
    with pytest.raises(UserError) as error:
        import_caffenet(LENET)
    message = str(error.value)
    assert "does not fit CaffeNet" in message and "layer conv1" in message
    assert "(20, 1, 5, 5)" in message and "(96, 3, 11, 11)" in message


def test_import_names_a_missing_layer(tmp_path):
    path = tmp_path / "conv1_only.caffemodel"
    write_caffemodel(
        path, {"conv1": [np.zeros((96, 3, 11, 11), "f4"), np.zeros(96, "f4")]}, legacy=False
    )
    with pytest.raises(UserError, match="it has no layer conv2"):
        import_caffenet(path)


def test_mean_from_values_and_mean_image_files(tmp_path):
    assert caffe_mean([1, 2, 3]) == (1.0, 2.0, 3.0)
    image = np.stack([np.full((4, 4), v) for v in (10.0, 20.0, 30.0)])
    np.save(tmp_path / "mean.npy", image)
    (tmp_path / "mean.binaryproto").write_bytes(blob_proto(image[None], legacy=True))
    for name in ("mean.npy", "mean.binaryproto"):
        assert caffe_mean(tmp_path / name) == pytest.approx((10.0, 20.0, 30.0))
    np.save(tmp_path / "hwc.npy", image.transpose(1, 2, 0))
    with pytest.raises(UserError, match=r"\(3, H, W\)"):
        caffe_mean(tmp_path / "hwc.npy")
    with pytest.raises(UserError, match="3 values"):
        caffe_mean([1, 2])


def test_import_caffe_refuses_an_existing_file_before_reading(tmp_path):
    """The CLI path checks its output before the (slow) read of the weights."""
    out = tmp_path / "caffenet.keras"
    out.write_text("an older import")
    with pytest.raises(UserError, match="already exists; pass --force"):
        import_caffe(tmp_path / "no-such.caffemodel", out)
    assert out.read_text() == "an older import"


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_imported_caffenet_is_retrained_directly(caffenet_imports, tmp_path):
    """`paper-repro train retrain-... --weights caffenet.keras`, on a few real MNIST images."""
    from paper_repro.cli import main
    from paper_repro.model import caffe_layers

    _, files, _ = caffenet_imports
    weights = files[False][1]
    overrides = ["resize=256", "crop=227", "epochs=1", "train_subset=40", "test_subset=20",
                 "batch_size=20"]  # fmt: skip
    args = ["train", "retrain-mnist", "--preset", "smoke", "--weights", str(weights),
            "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main([*args, *(a for o in overrides for a in ("--set", o))]) == 0
    trained = caffe_layers(
        keras.saving.load_model(tmp_path / "runs/smoke/retrain-mnist/model.keras")
    )
    source = caffe_layers(keras.saving.load_model(weights))
    np.testing.assert_array_equal(trained["conv3"].kernel.numpy(), source["conv3"].kernel.numpy())
    assert trained["fc8"].kernel.shape == (4096, 10)
    assert trained["conv1"].input.shape[1:] == (227, 227, 3)


@pytest.mark.slow
def test_mean_image_is_subtracted_as_caffes_test_phase_does(caffenet_imports, tmp_path):
    """`import-caffe --mean-image`: Caffe's TEST transform of a 256x256 image, against NumPy:
    the centre 227 crop (offset (256 - 227) // 2 = 14) of the BGR image minus the same crop of
    the mean image. The weight survives saving and the classifier's replacement for retraining."""
    from paper_repro.model import replace_classifier

    _, files, _ = caffenet_imports
    caffemodel = files[False][0]
    rng = np.random.default_rng(3)
    mean_image = rng.uniform(90, 140, (3, 256, 256))  # (3, H, W) BGR, like ilsvrc_2012_mean.npy
    np.save(tmp_path / "mean.npy", mean_image)
    rgb = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    datum = rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float64)  # Caffe's BGR, NCHW
    expected = (datum - mean_image)[:, :, 14:241, 14:241].transpose(0, 2, 3, 1)

    out = tmp_path / "caffenet.keras"
    assert import_caffe(caffemodel, out, mean_image=tmp_path / "mean.npy") == out
    reloaded = keras.saving.load_model(out, safe_mode=True, compile=False)
    retrained = replace_classifier(reloaded, 10)
    for model in (reloaded, retrained):
        got = model.get_layer("preprocess")(rgb[:, 14:241, 14:241]).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(UserError, match="pass one"):
        import_caffe(caffemodel, out, force=True, mean=[1, 2, 3], mean_image="mean.npy")
    np.save(tmp_path / "small.npy", mean_image[:, :100, :100])
    with pytest.raises(UserError, match="smaller than 227x227"):
        import_caffe(caffemodel, out, force=True, mean_image=tmp_path / "small.npy")
