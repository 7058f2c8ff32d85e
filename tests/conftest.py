"""Shared fixtures: the real prepared tfds datasets, mocked tfds, small image folders, the tiny run
settings, and what several test files train or import once per session (the smoke preset's
reproduction, an imported random CaffeNet)."""

import contextlib
import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

REAL_DATASETS = ("mnist/3.0.1", "cifar10/3.0.2")
# The tiny run every training test shrinks the smoke preset to: 4 steps an epoch.
TINY = ("train_subset=160", "test_subset=80", "batch_size=40")


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal sends it, in this process and the commands its tests start. A suite
    started in the background by a script (``nohup pytest &``) inherits SIGINT ignored, and so
    would every command it starts: the tests of what Ctrl-C does would fail for want of one.
    A handler, unlike an ignored signal, does not survive ``exec``, so the commands get the
    default again."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tfds_dir() -> str:
    """``$TFDS_DATA_DIR`` when it holds prepared MNIST and CIFAR-10; skips otherwise."""
    root = os.environ.get("TFDS_DATA_DIR", "")
    missing = [d for d in REAL_DATASETS if not (Path(root) / d / "dataset_info.json").is_file()]
    if not root or missing:
        pytest.skip(f"needs prepared {', '.join(missing)} in TFDS_DATA_DIR ({root or 'unset'})")
    return root


@pytest.fixture
def mock_tfds(monkeypatch, tmp_path):
    """tfds' random mock data (``num_examples`` per split) in a dataset that counts as prepared.

    ``tfds.testing.mock_data`` replaces reading but leaves ``is_prepared()`` false, which our loader
    checks before reading: the mock stands for a prepared dataset, so it must say so.
    """

    def mock(num_examples: int):
        monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
        return tfds.testing.mock_data(num_examples=num_examples)

    return mock


@pytest.fixture
def image_folder(tmp_path):
    """Writes ``{class: [image arrays]}`` as PNG files in ``tmp_path/<split>/<class>/``."""

    def write(classes: dict, split: str = "train") -> Path:
        for name, images in classes.items():
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(images):
                png = tf.io.encode_png(np.asarray(image, np.uint8))
                (folder / f"{i:03d}.png").write_bytes(png.numpy())
        return tmp_path

    return write


@pytest.fixture
def mixed_image_folder(tmp_path):
    """``tmp_path/mixed/<a|b>/``: the images a user's folder holds, of every size and mode: RGB
    JPEG, grey and 16-bit PNG, RGBA PNG, palette GIF, a 1x1 pixel, and one 3000x3000 PNG (a solid
    colour: small on disk, 27 MB decoded). Returns the folder and the (height, width) of each
    image, in the folder's order."""
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(14)
    root, sizes = tmp_path / "mixed", []
    for k, name in enumerate("ab"):
        (root / name).mkdir(parents=True)
        rgb = rng.integers(0, 256, (40, 36, 3), np.uint8)
        rgb[..., k] = 255 - 60 * k  # the classes differ in colour
        grey16 = rng.integers(0, 65536, (28, 40), np.uint16)
        images = {
            "rgb.png": image_module.fromarray(rgb),
            "grey.png": image_module.fromarray(rgb[..., 0]),
            "deep.png": image_module.fromarray(grey16),
            "alpha.png": image_module.fromarray(np.dstack([rgb[:30], rgb[:30, :, :1]])),
            "palette.gif": image_module.fromarray(rgb[:, :33]).convert("P"),
            "dot.png": image_module.fromarray(rgb[:1, :1]),
            "photo.jpg": image_module.fromarray(rgb[:37]),
        }
        if k == 0:
            images["large.png"] = image_module.new("RGB", (3000, 3000), (20, 140, 230))
        for file_name, image in images.items():
            image.save(root / name / file_name)
        sizes += [images[file_name].size[::-1] for file_name in sorted(images)]
    return root, sizes


@pytest.fixture(scope="session")
def smoke_reproduction(tmp_path_factory, tfds_dir):
    """``paper-repro reproduce --preset smoke`` once per session: its exit status and the folder
    holding ``runs/`` and the tables. Tests read it; the ones that add runs to it add their own
    (cached) run directories and leave the others alone."""
    from paper_repro import cli

    root = tmp_path_factory.mktemp("reproduce")
    code = cli.main(
        ["reproduce", "--preset", "smoke", "--runs-dir", str(root / "runs"), "--out", str(root)]
    )
    return code, root


@pytest.fixture(scope="session")
def caffenet_imports(tmp_path_factory):
    """A random CaffeNet written in Caffe's current (V2) and legacy (V1) formats and imported
    once each with ``paper-repro import-caffe``: ``(layers, {legacy: (caffemodel, keras file)},
    what the command printed)``. The imports at 227 pixels are among the slowest steps of the
    suite, so they are shared."""
    from caffe_files import random_caffenet, write_caffemodel

    from paper_repro import cli

    layers = random_caffenet()
    root = tmp_path_factory.mktemp("caffenet")
    files, printed = {}, io.StringIO()
    for legacy in (False, True):
        caffemodel = root / f"caffenet-{'v1' if legacy else 'v2'}.caffemodel"
        write_caffemodel(caffemodel, layers, legacy=legacy)
        keras_file = caffemodel.with_suffix(".keras")
        with contextlib.redirect_stdout(printed):
            assert cli.main(["import-caffe", str(caffemodel), "--out", str(keras_file)]) == 0
        files[legacy] = (caffemodel, keras_file)
    return layers, files, printed.getvalue()


# Under pytest-xdist (CI's `-n 2 --dist loadgroup`), the tests that share a fixture built once per
# session or per module go to one worker, so that it is still built once: a module-scoped fixture
# split over two workers would be built twice. Only this suite's fixtures count (pytest's own, such
# as ``tmp_path_factory``, have no base id); ``tfds_dir`` only reads the environment.
CHEAP_SHARED = {"tfds_dir"}


def _shared_group(item: pytest.Item) -> str | None:
    """The xdist group of a test: the first expensive session fixture it uses, else its module
    when it uses a module-scoped fixture, else none (the test goes wherever a worker is free)."""
    definitions = [d[-1] for d in item._fixtureinfo.name2fixturedefs.values()]
    shared = [d for d in definitions if d.baseid and d.argname not in CHEAP_SHARED]
    for scope in ("session", "package", "module"):
        names = sorted(d.argname for d in shared if d.scope == scope)
        if names:
            return names[0] if scope != "module" else item.module.__name__
    return None


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marked as it is collected: xdist reads the groups in its collection_modifyitems hook."""
    group = _shared_group(item)
    if group:
        item.add_marker(pytest.mark.xdist_group(group))
