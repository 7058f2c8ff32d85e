"""The README's GPU road, end to end at the paper's 227 pixels, shrunk with ``--set``:

    paper-repro import-caffe bvlc_reference_caffenet.caffemodel --out caffenet.keras
    paper-repro reproduce --preset paper --weights caffenet.keras --download --set ...

The ``.caffemodel`` is CaffeNet-shaped with random weights, written here in Caffe's current (V2)
and legacy (V1) formats; the targets are the real MNIST and CIFAR-10 of ``$TFDS_DATA_DIR`` (linked,
not copied) and a fake CIFAR-100 in its real archive format, prepared by tfds' own builder. Every
run of the paper preset runs except pretraining, which the weights stand in for (the
random-features controls take none), down to Table III.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import register_cifar100_checksum, write_fake_cifar100

from paper_repro import cli
from paper_repro.arms import ARMS
from paper_repro.history import load_history
from paper_repro.model import caffe_layers, load_model

TARGETS = {"mnist": 10, "cifar10": 10, "cifar100": 100}
# One image per CIFAR-100 class in the fake, so 100 is the smallest balanced subset for all three.
SHRINK = ("epochs=1", "train_subset=100", "test_subset=100", "batch_size=50")
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")

pytestmark = pytest.mark.slow  # nine runs at 227 pixels


@pytest.fixture(scope="module")
def road(tmp_path_factory, tfds_dir, caffenet_imports):
    """The reproduction, its weights the session's ``import-caffe`` of a random CaffeNet."""
    root = tmp_path_factory.mktemp("paper-road")
    data_dir = root / "tfds"
    data_dir.mkdir()
    for name in ("mnist", "cifar10"):
        (data_dir / name).symlink_to(Path(tfds_dir) / name, target_is_directory=True)
    manual = data_dir / "downloads" / "manual"
    write_fake_cifar100(manual, fine=range(100), train=1, test=1)
    _, files, _ = caffenet_imports
    for legacy, version in ((True, "v1"), (False, "v2")):
        (root / f"caffenet-{version}.keras").symlink_to(files[legacy][1])
    with pytest.MonkeyPatch.context() as patch:
        register_cifar100_checksum(patch, manual / "cifar-100-binary.tar.gz")
        args = ["reproduce", "--preset", "paper", "--weights", str(root / "caffenet-v2.keras"),
                "--data-dir", str(data_dir), "--runs-dir", str(root / "runs"),
                "--out", str(root / "figures"), "--download"]  # fmt: skip
        code = cli.main([*args, *(a for item in SHRINK for a in ("--set", item))])
    assert code == 0
    return root


def _run(road: Path, experiment: str):
    run = road / "runs" / "paper" / experiment
    return load_history(run / "history.json"), caffe_layers(load_model(run / "model.keras"))


def test_both_caffemodel_formats_import_to_the_same_network(road):
    v1 = caffe_layers(load_model(road / "caffenet-v1.keras"))
    v2 = caffe_layers(load_model(road / "caffenet-v2.keras"))
    for name in (*CONVS, "fc6", "fc7", "fc8"):
        for a, b in zip(v1[name].get_weights(), v2[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_weights_stand_in_for_pretraining(road):
    assert not (road / "runs" / "paper" / "pretrain-imagenet").exists()
    kept = sorted(p.name for p in (road / "figures" / "histories" / "paper").iterdir())
    assert kept == sorted(f"{arm.experiment(d)}.history.json" for d in TARGETS for arm in ARMS)


@pytest.mark.parametrize("dataset", TARGETS)
def test_the_random_features_controls_are_not_given_the_weights(road, dataset):
    history, layers = _run(road, f"retrain-random-{dataset}")
    assert history.start == "random-features" and history.provenance.weights is None
    imported = caffe_layers(load_model(road / "caffenet-v2.keras"))
    assert not np.array_equal(layers["conv1"].kernel.numpy(), imported["conv1"].kernel.numpy())


@pytest.mark.parametrize("dataset", TARGETS)
def test_full_runs_start_from_the_papers_initialisation(road, dataset):
    """Fresh Gaussian fillers (std 0.01, 0.005 for fc6/fc7), not the imported He-scaled weights
    (conv1 std 0.074): one epoch of two steps at lr 0.001 moves them by far less than that."""
    history, layers = _run(road, f"full-{dataset}")
    assert history.start == "scratch" and history.provenance.weights is None
    assert history.status == "finished" and len(history.epochs) == 1
    imported = caffe_layers(load_model(road / "caffenet-v2.keras"))
    for name, std in (("conv1", 0.01), ("conv3", 0.01), ("fc6", 0.005), ("fc7", 0.005)):
        kernel = layers[name].kernel.numpy()
        assert np.std(kernel) == pytest.approx(std, rel=0.1)
        assert not np.allclose(kernel, imported[name].kernel.numpy(), atol=1e-3)
    assert layers["fc8"].kernel.shape == (4096, TARGETS[dataset])


@pytest.mark.parametrize("dataset", TARGETS)
def test_retrain_runs_start_from_the_imported_features(road, dataset):
    """conv1..conv5 copied and frozen (bit for bit after training), fc6/fc7 copied then trained
    (README: keep_fc67), fc8 new with the target's classes."""
    history, layers = _run(road, f"retrain-{dataset}")
    weights = road / "caffenet-v2.keras"
    assert history.start == "pretrained-features"
    assert history.provenance.weights.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    imported = caffe_layers(load_model(weights))
    for name in CONVS:
        for got, want in zip(layers[name].get_weights(), imported[name].get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    for name in ("fc6", "fc7"):
        # Trained for two steps from the imported values (moved by ~7 % of their norm: the random
        # He-scaled CaffeNet has large gradients), not redrawn: a fresh Gaussian fill (std 0.005)
        # would be as far from them as they are large.
        trained, source = layers[name].kernel.numpy(), imported[name].kernel.numpy()
        assert not np.array_equal(trained, source)
        assert np.linalg.norm(trained - source) < 0.2 * np.linalg.norm(source)
    assert layers["fc8"].kernel.shape == (4096, TARGETS[dataset])


def test_table3_has_the_papers_columns_for_every_target(road):
    rows = list(csv.DictReader((road / "figures" / "table3.csv").open()))
    for dataset in TARGETS:
        cells = {r["column"]: r["value"] for r in rows if r["dataset"] == dataset}
        for mode, column in (("full", "Full training"), ("retrain", "Retraining")):
            history, _ = _run(road, f"{mode}-{dataset}")
            assert float(cells[column]) == pytest.approx(100 * history.final.top1, abs=0.005)
        assert cells["Crops"] == ("5" if dataset == "mnist" else "10")
        assert {"Full training (paper)", "Retraining (paper)"} <= set(cells)
    table = (road / "figures" / "table3.md").read_text()
    assert "| Dataset | Crops | Full training | Full training (paper) | Retraining |" in table
    # The pretraining row says what stood in for it.
    assert f"started from the weights {road / 'caffenet-v2.keras'} (sha256 " in table
