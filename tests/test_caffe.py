"""The .caffemodel reader, the Caffe -> Keras conversions, and the CaffeNet import.

Two kinds of ground truth: a real Caffe-trained LeNet (its MNIST accuracy only comes out right if
kernel layouts and the C,H,W flatten order are right), and CaffeNet-shaped files written here with
random weights, checked against a NumPy forward pass with Caffe's semantics.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import keras
import numpy as np
import pytest

from paper_repro.caffe import load_caffe_layer, read_caffemodel
from paper_repro.errors import UserError

CAFFE_DIR = Path(__file__).resolve().parents[2] / "shared" / "caffe"
LENET = CAFFE_DIR / "lenet_mnist.caffemodel"
LENET_SCALE = 0.00390625  # 1/256, Caffe's LeNet example's input scale


# --- a minimal protobuf writer: the test's own, independent of the reader under test ---------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _blob_proto(array: np.ndarray, *, legacy: bool) -> bytes:
    """BlobProto: shape (7) or legacy num/channels/height/width (1-4), then packed data (5)."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_key(f, 0) + _varint(d) for f, d in zip((1, 2, 3, 4), dims, strict=True))
    else:
        head = _len_field(7, _len_field(1, b"".join(_varint(d) for d in array.shape)))
    return head + _len_field(5, np.asarray(array, "<f4").tobytes())


def write_caffemodel(path: Path, layers: dict[str, list[np.ndarray]], *, legacy: bool) -> None:
    """NetParameter with field 100 (LayerParameter: name 1, blobs 7), or legacy field 2
    (V1LayerParameter: name 4, blobs 6); a weightless data layer first, as real files have."""
    layer_field, name_field, blobs_field = (2, 4, 6) if legacy else (100, 1, 7)
    out = [_len_field(1, b"net")]
    for name, blobs in {"data": [], **layers}.items():
        body = _len_field(name_field, name.encode())
        body += b"".join(_len_field(blobs_field, _blob_proto(b, legacy=legacy)) for b in blobs)
        out.append(_len_field(layer_field, body))
    path.write_bytes(b"".join(out))


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
    shape = _key(1, 0) + _varint(3)  # BlobShape.dim, unpacked
    floats = b"".join(_key(5, 5) + struct.pack("<f", v) for v in data)  # BlobProto.data, unpacked
    blob = _len_field(7, shape) + floats
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(_len_field(100, _len_field(1, b"ip") + _len_field(7, blob)))
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


def _mnist_test() -> tuple[np.ndarray, np.ndarray]:
    data_dir = os.environ.get("TFDS_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "mnist").is_dir():
        pytest.skip("needs the prepared TFDS dataset mnist under $TFDS_DATA_DIR")
    tfds = pytest.importorskip("tensorflow_datasets")
    test = tfds.load("mnist", split="test", data_dir=data_dir, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(test)
    return images, labels


@pytest.mark.skipif(not LENET.exists(), reason=f"needs the real Caffe LeNet at {LENET}")
def test_real_caffe_lenet_scores_mnist():
    """Wrong kernel layout or flatten order (ip1 follows pool2) would collapse the accuracy."""
    images, labels = _mnist_test()
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
