"""Source files of datasets this machine lacks, faked in their real formats for the tests.

ILSVRC-12's manual tars and CIFAR-100's binary archive, small, so that tfds' own builders prepare
them offline exactly as they prepare the real files (test_roads.py, test_paper_road.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def jpeg(colour, height: int, width: int) -> bytes:
    image = np.broadcast_to(np.asarray(colour, np.uint8), (height, width, 3))
    return tf.io.encode_jpeg(image, quality=95).numpy()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


# ---------------------------------------------------------------------------- ILSVRC-12


def write_fake_ilsvrc12(manual: Path, val_images: int = 4, per_class: int = 3) -> dict:
    """Fake ILSVRC-12 tars; returns ``{synset: colour}`` (every image of a synset is that colour).

    tfds labels validation images by zipping their sorted file names with its own
    ``validation_labels.txt``: the synsets are those of its first ``val_images`` lines, so that
    the training classes are the validation ones, as in the real data.
    """
    labels_file = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    val_synsets = labels_file.read_text().split()[:val_images]
    colours = {s: (40 + 50 * i, 200 - 45 * i, 90 + 30 * i) for i, s in enumerate(val_synsets)}

    def synset_tar(synset: str, colour) -> bytes:  # n01751748.tar: n01751748_1.JPEG, ...
        sizes = ((48 + 8 * j, 64 - 6 * j) for j in range(per_class))
        return tar_bytes(
            {f"{synset}_{j + 1}.JPEG": jpeg(colour, *hw) for j, hw in enumerate(sizes)}
        )

    train = {f"{synset}.tar": synset_tar(synset, colour) for synset, colour in colours.items()}
    val = {
        f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg(colours[synset], 60, 44 + 4 * i)
        for i, synset in enumerate(val_synsets)
    }
    manual.mkdir(parents=True, exist_ok=True)
    (manual / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(train))
    (manual / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    return colours


def write_fake_cifar100(manual: Path, fine=(3, 42, 97), train: int = 4, test: int = 2) -> dict:
    """A fake ``cifar-100-binary.tar.gz``; returns ``{image bytes: (coarse, fine)}``.

    The fine classes are above 19 (coarse labels stop there) and differ from the coarse ones.
    """
    rng = np.random.default_rng(0)
    truth = {}

    def records(per_class: int) -> bytes:
        out = []
        for label in fine:
            for _ in range(per_class):
                chw = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
                coarse = 19 - label % 20
                truth[chw.transpose(1, 2, 0).tobytes()] = (coarse, label)
                out.append(bytes([coarse, label]) + chw.tobytes())
        return b"".join(out)

    folder = {
        "cifar-100-binary/train.bin": records(train),
        "cifar-100-binary/test.bin": records(test),
        "cifar-100-binary/coarse_label_names.txt": "\n".join(f"super{i}" for i in range(20)),
        "cifar-100-binary/fine_label_names.txt": "\n".join(f"fake{i}" for i in range(100)),
    }
    manual.mkdir(parents=True, exist_ok=True)
    archive = manual / "cifar-100-binary.tar.gz"
    archive.write_bytes(
        gzip.compress(tar_bytes({k: _bytes(v) for k, v in folder.items()}), mtime=0)
    )
    return truth


def _bytes(value) -> bytes:
    return value.encode() if isinstance(value, str) else value


def register_cifar100_checksum(monkeypatch, archive: Path) -> None:
    """Register the fake's SHA-256 for tfds' CIFAR-100 URL (the real one's cannot be faked)."""
    payload = archive.read_bytes()
    info = tfds.core.download.checksums.UrlInfo(
        size=tfds.core.utils.Size(len(payload)),
        checksum=hashlib.sha256(payload).hexdigest(),
        filename=archive.name,
    )
    builder = tfds.builder_cls("cifar100")
    (url,) = builder.url_infos  # the one source URL tfds registers for CIFAR-100
    monkeypatch.setattr(builder, "url_infos", {url: info})
