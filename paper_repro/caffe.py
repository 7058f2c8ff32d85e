"""Caffe ``.caffemodel`` reader and the import of BVLC's reference CaffeNet into the Table II model.

The reader is a minimal protobuf wire-format parser written here on purpose, instead of
compiling Caffe's ``caffe.proto`` or installing Caffe:

- exact format: it reads only the handful of fields the weights live in (layer names and
  ``BlobProto``), in both the current ``LayerParameter`` layout and the legacy ``V1LayerParameter``
  one that old model-zoo files such as ``bvlc_reference_caffenet.caffemodel`` still use;
- no schema dependency: no generated ``caffe_pb2`` module to keep in step with a protobuf runtime;
- safe: a .caffemodel is downloaded from the internet, and this parser only decodes varints,
  lengths and little-endian floats; nothing in the file is ever executed or unpickled.

The conversions (:func:`conv_weights`, :func:`dense_weights`, :func:`load_caffe_layer`) are the
single place where Caffe's layouts become Keras': the CaffeNet import and the LeNet test both go
through them.

:func:`import_caffenet` maps BVLC's ``bvlc_reference_caffenet.caffemodel`` (the public
equivalent of the paper's ILSVRC-12 network) onto ``build_alexnet(1000, 227, groups=2)``, with
Caffe's BGR order and mean folded into the model's ``preprocess`` layer: the imported model takes
RGB images in 0..255, like every model of this package, and computes what Caffe computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np

from paper_repro.errors import UserError
from paper_repro.export import check_target, save_keras
from paper_repro.model import FEATURES, PAPER_IMAGE_SIZE, PREPROCESS, build_alexnet, caffe_layers

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# NetParameter: `layer` (LayerParameter, field 100) and the legacy `layers` (V1LayerParameter, 2).
_NET_LAYER, _NET_V1_LAYER = 100, 2
# (name field, blobs field) of LayerParameter and of V1LayerParameter.
_LAYER_FIELDS = {_NET_LAYER: (1, 7), _NET_V1_LAYER: (4, 6)}
# BlobProto fields.
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE = 5, 7
_LEGACY_DIMS = (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)
# BlobShape: `repeated int64 dim = 1 [packed = true]`; Caffe's kMaxBlobAxes.
_SHAPE_DIM = 1
_MAX_AXES = 32
_MAX_COUNT = 2**31 - 1  # a blob's count is a C int in Caffe

# BVLC reference CaffeNet: ILSVRC-12 classes, layers with weights, and its per-channel BGR mean
# (the values of Caffe's examples; the mean image's own per-channel average is 104.0/116.7/122.7).
CAFFENET_CLASSES = 1000
CAFFENET_GROUPS = 2
CAFFENET_MEAN_BGR = (104.0, 117.0, 123.0)
_CAFFENET_WEIGHTED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


class _WireError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated, or not protobuf at all)."""


class _NonFiniteWeights(ValueError):
    """A blob holds NaN or infinite values: a diverged or damaged model."""


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``; return (value, position after it)."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise _WireError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for every field of one message.

    A varint's value is an int; every other wire type yields its raw bytes, so a caller decodes
    only the fields it needs and skips the rest (Caffe has many fields this package ignores).
    """
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _WireError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
            yield field, wire, value
            continue
        if wire == _LEN:
            size, pos = _read_varint(buf, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
        else:
            raise _WireError(f"unsupported wire type {wire} (field {field})")
        if pos + size > len(buf):
            raise _WireError(f"field {field} runs past the end of its message")
        yield field, wire, buf[pos : pos + size]
        pos += size


def _packed_varints(buf: memoryview) -> list[int]:
    """Decode a packed repeated varint field."""
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _read_varint(buf, pos)
        values.append(value)
    return values


def _blob_shape(buf: memoryview) -> tuple[int, ...]:
    """Decode a BlobShape; ``dim`` may be packed (what Caffe writes) or not."""
    dims: list[int] = []
    for field, wire, value in _fields(buf):
        if field != _SHAPE_DIM:
            continue
        dims.extend(_packed_varints(value) if wire == _LEN else [value])
        if len(dims) > _MAX_AXES:
            raise _WireError(f"its shape has more than Caffe's {_MAX_AXES} axes")
    return tuple(dims)


def _check_shape(shape: tuple[int, ...], floats: int) -> None:
    """Refuse a shape that does not describe the blob's ``floats`` values, as Caffe's
    ``Blob::Reshape`` would: more than 32 axes, a count over ``INT_MAX`` (which a negative
    dimension, an int64 read as unsigned, always gives), or another count.

    The products are Python integers, so huge dimensions cannot overflow into a match; nothing is
    allocated from a declared shape, only from the floats actually in the file.
    """
    if len(shape) > _MAX_AXES:
        raise _WireError(f"its shape has {len(shape)} axes, more than Caffe's {_MAX_AXES}")
    if math.prod(dim for dim in shape if dim) > _MAX_COUNT:
        raise _WireError(
            f"its shape {shape} has a negative dimension or more than Caffe's {_MAX_COUNT} values"
        )
    if math.prod(shape) != floats:
        raise _WireError(f"it holds {floats} floats but its shape is {shape}")


def _float_chunk(wire: int, value: int | memoryview) -> np.ndarray:
    """One occurrence of the float field ``data``: packed (a multiple of 4 bytes) or one float."""
    if wire not in (_LEN, _I32) or len(value) % 4:
        raise _WireError("BlobProto.data is not a sequence of 32-bit floats")
    return np.frombuffer(value, dtype="<f4")


def _blob(buf: memoryview) -> np.ndarray:
    """Decode a BlobProto into a float32 array of its shape (BlobShape, else num/channels/h/w)."""
    chunks: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    legacy: dict[int, int] = {}
    for field, wire, value in _fields(buf):
        if field == _BLOB_DATA:
            chunks.append(_float_chunk(wire, value))
        elif field == _BLOB_SHAPE and wire == _LEN:
            shape = _blob_shape(value)
        elif field in _LEGACY_DIMS and wire == _VARINT:
            legacy[field] = value
    if shape is None:  # proto2 defaults: an unset legacy dimension is 0, as in Caffe
        shape = tuple(legacy.get(field, 0) for field in _LEGACY_DIMS)
    _check_shape(shape, sum(len(chunk) for chunk in chunks))
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return data.astype(np.float32, copy=False).reshape(shape)  # concatenate already copied


def _layer(buf: memoryview, name_field: int, blobs_field: int) -> tuple[str, list[np.ndarray]]:
    """Decode the name and blobs of a LayerParameter or V1LayerParameter.

    The blobs are decoded once the name is known (it may come after them), so that an error
    names the layer and the blob.
    """
    name, raw_blobs = "", []
    for field, wire, value in _fields(buf):
        if wire != _LEN:
            continue
        if field == name_field:
            name = bytes(value).decode("utf-8", errors="replace")
        elif field == blobs_field:
            raw_blobs.append(value)
    blobs = []
    for index, raw in enumerate(raw_blobs):
        try:
            blob = _blob(raw)
        except _WireError as error:
            raise _WireError(f"layer {name!r}, blob {index}: {error}") from None
        if not np.isfinite(blob).all():
            raise _NonFiniteWeights(
                f"layer {name!r}, blob {index} holds {np.count_nonzero(~np.isfinite(blob))} NaN "
                "or infinite values"
            )
        blobs.append(blob)
    return name, blobs


def _net_layers(buf: memoryview) -> dict[str, list[np.ndarray]]:
    """Decode a NetParameter into {layer name: blobs} for the layers that carry weights."""
    layers: dict[str, list[np.ndarray]] = {}
    for field, wire, value in _fields(buf):
        if field in _LAYER_FIELDS and wire == _LEN:
            name, blobs = _layer(value, *_LAYER_FIELDS[field])
            if blobs:
                layers[name] = blobs
    return layers


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read the weights of a binary .caffemodel: {layer name: [blobs as float32 arrays]}.

    Both layouts are accepted (NetParameter field 100, and the legacy field 2 of pre-2015 files).
    Blob shapes come from ``BlobShape`` when present, else from the legacy num/channels/height/width
    (so an old fully-connected weight reads as (1, 1, out, in); the conversions below accept it).
    Layers without blobs (data, ReLU, pooling, ...) are left out. A missing, truncated or
    non-caffemodel file raises :class:`UserError`, and so does any file ``parse_caffemodel``
    refuses.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the caffemodel {path}: {error.strerror}") from error
    return parse_caffemodel(raw, str(path))


def parse_caffemodel(raw: bytes, source: str) -> dict[str, list[np.ndarray]]:
    """The weights in the bytes of a .caffemodel (``source`` names it in errors).

    A .caffemodel comes from the internet, so every byte is distrusted: whatever the bytes, the
    only exception is a :class:`UserError` naming the layer and blob at fault (malformed wire
    data, a shape that does not match the floats, more than 32 axes, NaN or infinite weights).
    Memory stays within a small multiple of ``len(raw)``: arrays are made only from the floats
    actually present, never from a declared size.
    """
    try:
        layers = _net_layers(memoryview(raw))
    except _WireError as error:
        raise UserError(
            f"{source} is not a readable binary .caffemodel ({error}); pass the weights file "
            "(not a .prototxt), and download it again if it may be truncated"
        ) from error
    except _NonFiniteWeights as error:
        raise UserError(
            f"{source}: {error}; such weights cannot be used: download the file again, or "
            "retrain the Caffe model that diverged"
        ) from error
    if not layers:
        raise UserError(f"{source} holds no layer with weights; pass a trained .caffemodel file")
    return layers


def _strip_legacy(blob: np.ndarray, ndim: int) -> np.ndarray:
    """Drop the leading 1s of a legacy 4-D blob, e.g. an old fc weight (1, 1, out, in).

    Caffe's own ``Blob::ShapeEquals`` accepts such blobs the same way.
    """
    extra = blob.ndim - ndim
    if extra > 0 and all(dim == 1 for dim in blob.shape[:extra]):
        return blob.reshape(blob.shape[extra:])
    return blob


def conv_weights(blobs: list[np.ndarray]) -> list[np.ndarray]:
    """Caffe Convolution blobs -> Keras Conv2D weights.

    Caffe's kernel is (out, in/groups, h, w), Keras' (h, w, in/groups, out); both give the output
    channels [g*out/G, (g+1)*out/G) of group g the input channels [g*in/G, (g+1)*in/G), so the
    same transpose serves grouped convolutions. The bias (if any) is unchanged.
    """
    kernel, *bias = blobs
    return [_strip_legacy(kernel, 4).transpose(2, 3, 1, 0), *(_strip_legacy(b, 1) for b in bias)]


def dense_weights(
    blobs: list[np.ndarray], input_chw: tuple[int, int, int] | None = None
) -> list[np.ndarray]:
    """Caffe InnerProduct blobs -> Keras Dense weights: kernel (out, in) -> (in, out).

    ``input_chw`` is the (channels, height, width) of the feature map the layer follows (fc6
    after pool5, LeNet's ip1 after pool2): Caffe flattens it in C, H, W order, Keras' Flatten of
    a channels_last map in H, W, C order, so the kernel's input rows are permuted to match.
    """
    kernel, *bias = blobs
    kernel = _strip_legacy(kernel, 2)
    if input_chw is not None:
        out = kernel.shape[0]
        kernel = kernel.reshape(out, *input_chw).transpose(0, 2, 3, 1).reshape(out, -1)
    return [kernel.T, *(_strip_legacy(b, 1) for b in bias)]


def _caffe_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A Keras weight shape written in Caffe's layout (for shape checks and error messages)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))


def load_caffe_layer(
    layer: keras.layers.Layer,
    blobs: list[np.ndarray],
    *,
    input_chw: tuple[int, int, int] | None = None,
) -> None:
    """Set a Keras Conv2D or Dense ``layer`` from the Caffe blobs of the layer of the same role.

    The shapes are checked first in Caffe's layout, so a mismatch names both shapes as a Caffe
    user knows them. ``input_chw``: see :func:`dense_weights`.
    """
    needed = [_caffe_layout(tuple(weight.shape)) for weight in layer.weights]
    fits = len(blobs) == len(needed) and all(
        _strip_legacy(blob, len(shape)).shape == shape
        for blob, shape in zip(blobs, needed, strict=True)
    )
    if not fits:
        raise UserError(
            f"layer {layer.name}: the caffemodel has weights of shape "
            f"{[blob.shape for blob in blobs]} but the model needs {needed} (Caffe layout)"
        )
    if len(needed[0]) == 4:
        layer.set_weights(conv_weights(blobs))
    else:
        layer.set_weights(dense_weights(blobs, input_chw))


def caffe_mean(mean: Sequence[float] | str | Path) -> tuple[float, float, float]:
    """The per-channel BGR mean: three values as given, or the average of a mean-image file.

    A file is Caffe's mean image in its (3, H, W) BGR layout: a ``.npy`` such as
    ``ilsvrc_2012_mean.npy`` (read with ``allow_pickle=False``), or a ``.binaryproto`` (one
    BlobProto, read by this module's parser).

    Why a per-channel mean instead of Caffe's mean image: Caffe's training and its C++ test layer
    subtract the 256x256 mean image cropped like the input, pycaffe's ``classify.py`` its
    per-channel average. Over the 227 center crop, ILSVRC-12's mean image differs from its
    per-channel average by 5.3 grey levels RMS (13.9 at most) out of 255, a small shift of the
    input; in exchange the model needs no 256x256 constant, does not depend on where a crop was
    taken (10-crop, random crops) and accepts every input size (67..227).
    """
    if not isinstance(mean, str | Path):
        values = tuple(float(value) for value in mean)
        if len(values) != 3:
            raise UserError(f"the mean needs 3 values (B, G, R), got {list(values)}")
        return values
    image = _read_mean_image(Path(mean))
    return tuple(float(v) for v in image.reshape(3, -1).mean(axis=1))


def caffe_mean_image(path: str | Path, size: int = PAPER_IMAGE_SIZE) -> np.ndarray:
    """Caffe's mean image cropped as its TEST phase crops it: the centre ``size`` x ``size``.

    Caffe's data layer subtracts ``mean[c, h_off + h, w_off + w]`` with the offsets of the image's
    own crop, ``(H - size) // 2`` in the TEST phase (14 for 256 -> 227). Returned as
    (size, size, 3) in the file's BGR channel order, for ``CaffePreprocessing(mean_image=True)``.
    """
    image = _read_mean_image(Path(path))
    height, width = image.shape[-2:]
    if min(height, width) < size:
        raise UserError(f"{path}: the mean image is {height}x{width}, smaller than {size}x{size}")
    top, left = (height - size) // 2, (width - size) // 2
    crop = image.reshape(3, height, width)[:, top : top + size, left : left + size]
    return crop.transpose(1, 2, 0).astype(np.float32)


def _read_mean_image(path: Path) -> np.ndarray:
    """A (3, H, W) BGR mean image from a ``.npy`` (no pickles) or a ``.binaryproto``."""
    try:
        if path.suffix == ".binaryproto":
            image = _blob(memoryview(path.read_bytes()))
        else:
            image = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the mean file {path}: {error}") from error
    image = np.asarray(image, np.float64)
    if image.ndim < 3 or image.shape[-3] != 3 or any(n != 1 for n in image.shape[:-3]):
        raise UserError(f"{path}: a mean image is (3, H, W) in BGR order, got shape {image.shape}")
    return image.reshape(image.shape[-3:])


def import_caffenet(
    caffemodel_path: str | Path,
    *,
    mean: Sequence[float] | str | Path = CAFFENET_MEAN_BGR,
    mean_image: str | Path | None = None,
) -> keras.Model:
    """BVLC's reference CaffeNet as the Table II model: 1000 classes, 227 pixels, groups=2.

    The result takes RGB images in 0..255 (uint8 or float); its ``preprocess`` layer reverses them
    to BGR and subtracts ``mean`` (BGR values, or a mean-image file: see :func:`caffe_mean`), or,
    with ``mean_image`` (a mean-image file), the centre crop of that image as Caffe's TEST phase
    does (see :func:`caffe_mean_image`).
    Every weighted CaffeNet layer must be in the file with CaffeNet's shapes; the first one that
    is missing or does not fit raises :class:`UserError` naming it (and both shapes).
    """
    pixels = None if mean_image is None else caffe_mean_image(mean_image)
    weights = read_caffemodel(caffemodel_path)
    model = build_alexnet(
        CAFFENET_CLASSES,
        PAPER_IMAGE_SIZE,
        CAFFENET_GROUPS,
        mean=(0.0, 0.0, 0.0) if pixels is not None else caffe_mean(mean),
        bgr=True,
        mean_image=pixels is not None,
        name="caffenet",
    )
    if pixels is not None:
        model.get_layer(PREPROCESS).set_weights([pixels])
    layers = caffe_layers(model)
    height, width, channels = model.get_layer(FEATURES).output.shape[1:]
    for name in _CAFFENET_WEIGHTED:
        if name not in weights:
            raise UserError(
                f"{caffemodel_path} does not fit CaffeNet: it has no layer {name} (its layers "
                f"with weights: {', '.join(weights)}); pass bvlc_reference_caffenet.caffemodel"
            )
        input_chw = (channels, height, width) if name == "fc6" else None
        try:
            load_caffe_layer(layers[name], weights[name], input_chw=input_chw)
        except UserError as error:
            raise UserError(
                f"{caffemodel_path} does not fit CaffeNet (groups=2, 1000 classes): {error}"
            ) from error
    return model


def import_caffe(
    caffemodel: str | Path,
    out: str | Path,
    force: bool = False,
    mean: Sequence[float] | str | Path | None = None,
    mean_image: str | Path | None = None,
) -> Path:
    """``paper-repro import-caffe``: CaffeNet weights into a verified .keras file.

    The file loads with ``keras.saving.load_model(..., safe_mode=True)`` and is a pretrained
    network for ``paper-repro train ... --weights``. ``mean``: see :func:`caffe_mean` (default
    Caffe's 104/117/123); ``mean_image``: see :func:`import_caffenet` (not with ``mean``). The
    output is checked before the (slow) import, so an existing file is refused at once unless
    ``force``.
    """
    if mean is not None and mean_image is not None:
        raise UserError("--mean and --mean-image are two ways to give the mean: pass one")
    out = Path(out)
    check_target(out, force, ".keras")
    model = import_caffenet(
        caffemodel, mean=CAFFENET_MEAN_BGR if mean is None else mean, mean_image=mean_image
    )
    save_keras(model, out, force=force)
    return out
