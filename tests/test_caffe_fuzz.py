"""The .caffemodel reader against hostile bytes: seeded mutants of a synthetic and a real file.

A .caffemodel is downloaded from the internet, so whatever its bytes the reader must end in weights
or in the package's one error type, quickly, and without allocating what a forged size declares.
The mutants are byte flips, truncations, insertions, deletions, copied spans and edits of the
length and varint fields, plus nets whose shapes are forged (products that wrap around 2**64,
negative int64 dimensions, too many axes), from fixed seeds: a failure reproduces from its seed
and index.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from caffe_files import blob_proto, field_key, len_field, varint, write_caffemodel

from paper_repro.caffe import parse_caffemodel, read_caffemodel
from paper_repro.errors import UserError

LENET = Path(__file__).resolve().parents[2] / "shared" / "caffe" / "lenet_mnist.caffemodel"
SECONDS_PER_READ = 1.0
# Peak memory of one read: the floats of the file copied once or twice, plus the parser's own.
MEMORY_FACTOR, MEMORY_SLACK = 3, 1 << 20
# Varints a mutant writes over a field: small, around a limit, or negative (10-byte) int64s.
EDGE_VALUES = (0, 1, 127, 128, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1)


def _synthetic(tmp_path: Path, legacy: bool) -> bytes:
    """A small net in both layouts: a conv with bias, an fc, a 1-D blob."""
    rng = np.random.default_rng(14)
    layers = {
        "conv1": [rng.normal(size=(4, 3, 3, 3)).astype("f4"), rng.normal(size=4).astype("f4")],
        "fc": [rng.normal(size=(5, 8)).astype("f4"), rng.normal(size=5).astype("f4")],
    }
    path = tmp_path / f"small-{legacy}.caffemodel"
    write_caffemodel(path, layers, legacy=legacy)
    return path.read_bytes()


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf):
        value |= (buf[pos] & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not buf[pos - 1] & 0x80:
            return value, pos
    raise IndexError(pos)


def _varint_spans(buf: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list:
    """(start, end) of every key, length and varint value of the well-formed ``buf``, down to
    BlobShape: where an edit changes the structure rather than a float."""
    spans, pos, end = [], start, len(buf) if end is None else end
    while pos < end:
        key, after_key = _read_varint(buf, pos)
        spans.append((pos, after_key))
        wire = key & 7
        if wire == 0:
            _, after = _read_varint(buf, after_key)
            spans.append((after_key, after))
        elif wire == 2:
            size, body = _read_varint(buf, after_key)
            spans.append((after_key, body))
            after = body + size
            if depth < 3 and key >> 3 not in (5,):  # nested messages, not packed floats
                with contextlib.suppress(IndexError):  # a string (a layer name), not a message
                    spans += _varint_spans(buf, body, after, depth + 1)
        else:
            after = after_key + (8 if wire == 1 else 4)
        pos = after
    return spans


def _mutant(raw: bytes, spans: list, rng: np.random.Generator) -> bytes:
    buf = bytearray(raw)
    kind = int(rng.integers(7))
    at = int(rng.integers(len(buf)))
    if kind == 0:  # flip 1..4 bytes
        for where in rng.integers(len(buf), size=rng.integers(1, 5)):
            buf[where] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        del buf[at:]
    elif kind == 2:  # insert random bytes
        buf[at:at] = rng.bytes(int(rng.integers(1, 17)))
    elif kind == 3:  # delete a span
        del buf[at : at + int(rng.integers(1, 33))]
    elif kind == 4:  # copy a span elsewhere (a repeated field, a nested message)
        span = bytes(buf[at : at + int(rng.integers(1, 65))])
        where = int(rng.integers(len(buf)))
        buf[where:where] = span
    else:  # overwrite a key, length or varint value with an edge value or a nearby one
        begin, end = spans[int(rng.integers(len(spans)))]
        old, _ = _read_varint(raw, begin)
        value = EDGE_VALUES[int(rng.integers(len(EDGE_VALUES)))] if kind == 5 else old
        value = max(0, value + int(rng.integers(-2, 3)) * (kind == 6))
        buf[begin:end] = varint(value % 2**64)
    return bytes(buf)


def _fuzz(raw: bytes, seed: int, count: int) -> dict[str, int]:
    """Read ``count`` mutants; only UserError may escape, each within the time and memory bounds."""
    rng, spans = np.random.default_rng(seed), _varint_spans(raw)
    outcomes = {"weights": 0, "refused": 0}
    limit = MEMORY_FACTOR * len(raw) + MEMORY_SLACK
    tracemalloc.start()
    try:
        for index in range(count):
            mutant = _mutant(raw, spans, rng)
            tracemalloc.reset_peak()
            start = time.perf_counter()
            try:
                parse_caffemodel(mutant, f"mutant {seed}/{index}")
                outcomes["weights"] += 1
            except UserError as error:
                assert "\n" not in str(error), f"mutant {seed}/{index}: not one line"
                outcomes["refused"] += 1
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            assert seconds < SECONDS_PER_READ, f"mutant {seed}/{index} took {seconds:.2f} s"
            assert peak < limit, f"mutant {seed}/{index} allocated {peak} bytes"
    finally:
        tracemalloc.stop()
    return outcomes


@pytest.mark.parametrize("legacy", [False, True])
def test_synthetic_mutants_give_weights_or_one_user_error(tmp_path, legacy):
    outcomes = _fuzz(_synthetic(tmp_path, legacy), seed=14 + legacy, count=5000)
    assert outcomes["refused"] > 1000  # the mutants do reach the checks
    print(f"synthetic mutants: {outcomes}")


def test_real_lenet_mutants_give_weights_or_one_user_error():
    if not LENET.is_file():
        pytest.skip(f"needs the real Caffe LeNet at {LENET}")
    outcomes = _fuzz(LENET.read_bytes(), seed=2015, count=2000)
    assert outcomes["refused"] > 300
    print(f"LeNet mutants: {outcomes}")


def _forged_dims(size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Dimensions declared for a blob of ``size`` floats, as an attacker or bit rot forges them:
    int64 products that wrap around 2**64 onto ``size``, negative int64s, too many axes, huge
    axes of an empty blob, wrong counts; and honest ones, with leading 1s."""
    kind = int(rng.integers(6))
    if kind == 0:  # odd * (size / odd mod 2**64): two int64 dimensions whose product wraps to size
        while True:
            odd = int(rng.integers(3, 2**31)) | 1
            other = size * pow(odd, -1, 2**64) % 2**64
            if other < 2**63:
                dims = [odd, other]
                break
    elif kind == 1:  # a negative dimension, as protobuf writes an int64: 2**64 - d
        dims = [size, 2**64 - int(rng.integers(1, 4)), 2**64 - 1]
    elif kind == 2:  # the right count over more axes than Caffe (32) or NumPy (64) allow
        dims = [1] * int(rng.integers(33, 80)) + [size]
    elif kind == 3:  # an empty blob of huge axes
        dims = [0, *(int(d) for d in rng.integers(2**31, 2**62, size=2))]
    elif kind == 4:  # a plausible shape, mostly with the wrong count
        dims = [int(d) for d in rng.integers(0, 9, size=int(rng.integers(1, 5)))]
    else:  # honest: the count, with up to 31 leading 1s
        dims = [1] * int(rng.integers(0, 32)) + [size]
    return tuple(dims)


def _forged_net(rng: np.random.Generator) -> bytes:
    """A one-blob net whose blob declares forged dimensions (BlobShape) over its real floats."""
    size = int(rng.integers(1, 40))
    floats = rng.normal(size=size).astype("<f4").tobytes()
    blob = _shape(*_forged_dims(size, rng)) + len_field(5, floats)
    return len_field(100, len_field(1, b"fc") + len_field(7, blob))


def test_forged_shapes_give_weights_or_one_user_error():
    rng, outcomes = np.random.default_rng(1352), {"weights": 0, "refused": 0}
    for index in range(2000):
        try:
            layers = parse_caffemodel(_forged_net(rng), f"forged {index}")
        except UserError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
            continue
        outcomes["weights"] += 1
        assert all(blob.ndim <= 32 for blobs in layers.values() for blob in blobs)
    assert outcomes["refused"] > 1000 and outcomes["weights"] > 100
    print(f"forged shapes: {outcomes}")


def _one_blob_file(tmp_path: Path, blob: bytes, name: str = "ip") -> Path:
    path = tmp_path / "forged.caffemodel"
    path.write_bytes(len_field(100, len_field(1, name.encode()) + len_field(7, blob)))
    return path


def _shape(*dims: int) -> bytes:
    return len_field(7, len_field(1, b"".join(varint(d) for d in dims)))


@pytest.mark.parametrize(
    ("dims", "floats", "message"),
    [
        ((2**32, 2**32, 1), 1, "more than Caffe's 2147483647 values"),  # product wraps to 0 in u64
        ((2**33, 2**31, 0), 0, "more than Caffe's 2147483647 values"),
        ((2**64 - 3, 1), 1, "negative dimension"),  # int64 -3, as a varint
        ((1,) * 65, 1, "more than Caffe's 32"),
        ((3, 5), 14, "holds 14 floats but its shape is"),
    ],
)
def test_forged_shapes_are_refused_before_any_allocation(tmp_path, dims, floats, message):
    blob = _shape(*dims) + len_field(5, np.ones(floats, "<f4").tobytes())
    with pytest.raises(UserError, match=rf"layer 'ip', blob 0: .*{message}"):
        read_caffemodel(_one_blob_file(tmp_path, blob))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_the_layer_and_blob(tmp_path, bad):
    weights = np.ones((2, 3), "f4")
    weights[1, 2] = bad
    body = len_field(1, b"fc7") + len_field(7, blob_proto(np.ones(2, "f4"), legacy=False))
    body += len_field(7, blob_proto(weights, legacy=False))
    path = tmp_path / "diverged.caffemodel"
    path.write_bytes(len_field(100, body))
    with pytest.raises(UserError, match=r"layer 'fc7', blob 1 holds 1 NaN or infinite values"):
        read_caffemodel(path)


def test_an_unknown_wire_type_is_refused(tmp_path):
    path = tmp_path / "wire.caffemodel"
    path.write_bytes(field_key(100, 3) + b"\x00")
    with pytest.raises(UserError, match="unsupported wire type"):
        read_caffemodel(path)
