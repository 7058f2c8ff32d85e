"""Caffe files written by the tests themselves: a minimal protobuf writer, independent of the
reader under test, and CaffeNet-shaped weights (BVLC's layer names and blob shapes, random values).

Shared by the reader's tests (test_caffe.py) and the end-to-end road from a ``.caffemodel`` to
Table III (test_paper_road.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def len_field(field: int, payload: bytes) -> bytes:
    return field_key(field, 2) + varint(len(payload)) + payload


def blob_proto(array: np.ndarray, *, legacy: bool) -> bytes:
    """BlobProto: shape (7) or legacy num/channels/height/width (1-4), then packed data (5)."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        pairs = zip((1, 2, 3, 4), dims, strict=True)
        head = b"".join(field_key(f, 0) + varint(d) for f, d in pairs)
    else:
        head = len_field(7, len_field(1, b"".join(varint(d) for d in array.shape)))
    return head + len_field(5, np.asarray(array, "<f4").tobytes())


def write_caffemodel(path: Path, layers: dict[str, list[np.ndarray]], *, legacy: bool) -> None:
    """NetParameter with field 100 (LayerParameter: name 1, blobs 7), or legacy field 2
    (V1LayerParameter: name 4, blobs 6); a weightless data layer first, as real files have."""
    layer_field, name_field, blobs_field = (2, 4, 6) if legacy else (100, 1, 7)
    out = [len_field(1, b"net")]
    for name, blobs in {"data": [], **layers}.items():
        body = len_field(name_field, name.encode())
        body += b"".join(len_field(blobs_field, blob_proto(b, legacy=legacy)) for b in blobs)
        out.append(len_field(layer_field, body))
    path.write_bytes(b"".join(out))


# (name, caffe blob shape of the kernel, stride, pad, group) of BVLC's caffenet_deploy.prototxt.
CAFFENET_CONVS = (
    ("conv1", (96, 3, 11, 11), 4, 0, 1),
    ("conv2", (256, 48, 5, 5), 1, 2, 2),
    ("conv3", (384, 256, 3, 3), 1, 1, 1),
    ("conv4", (384, 192, 3, 3), 1, 1, 2),
    ("conv5", (256, 192, 3, 3), 1, 1, 2),
)
CAFFENET_FCS = (("fc6", (4096, 9216)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)))
MEAN_BGR = (104.0, 117.0, 123.0)


def random_caffenet() -> dict[str, list[np.ndarray]]:
    """He-scaled weights: conv1 outputs ~60, so the LRN (alpha/5) halves them; fc8 is scaled down
    to logits of std ~2, so that every probability is far from 0 and 1 and is compared."""
    rng = np.random.default_rng(2015)
    layers = {}
    for name, shape in [(n, s) for n, s, *_ in CAFFENET_CONVS] + list(CAFFENET_FCS):
        std = np.sqrt(2.0 / np.prod(shape[1:])) * (0.02 if name == "fc8" else 1.0)
        kernel = (rng.standard_normal(shape, dtype=np.float32) * std).astype("f4")
        layers[name] = [kernel, rng.normal(0.0, 0.1, shape[0]).astype("f4")]
    return layers
