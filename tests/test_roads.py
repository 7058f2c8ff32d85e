"""The paper's full-scale roads (issue 11), walked end to end at tiny size, offline, on the CPU.

Each road starts from fake source files in the real format, in the place a user puts the real
ones, and goes through the command line as a user would (``--download`` with no network):

- ILSVRC-12: ``ILSVRC2012_img_train.tar`` (a tar of per-synset tars of JPEGs) and
  ``ILSVRC2012_img_val.tar`` in ``$TFDS_DATA_DIR/downloads/manual``; tfds' own ``imagenet2012``
  builder prepares them (validation labels from its ``validation_labels.txt``, by sorted file
  name), then ``train pretrain-imagenet --preset paper`` pretrains one tiny epoch.
- CIFAR-100: ``cifar-100-binary.tar.gz`` (``train.bin`` / ``test.bin`` records of a coarse label
  byte, a fine label byte and 3,072 pixel bytes, and the label-name files) in the same manual
  directory; tfds' own ``cifar100`` builder prepares it, then ``full-cifar100`` and
  ``retrain-cifar100`` (from the ILSVRC-12 run above, the paper's order) train on the fine labels.
  The one thing a fake cannot match is the archive's registered SHA-256: the test registers the
  fake's own checksum for the URL, so tfds still checks it; a file with another checksum (a
  truncated download) is refused in one line.
- An image folder (``--set dataset=FOLDER``, ``FOLDER/train/<synset>/`` and ``FOLDER/val/``): the
  road around tfds' ILSVRC-12 build, for ILSVRC-12 already extracted to folders; and a folder of
  images of every size and mode, through pretraining, full training and retraining.

Nothing here needs ../shared or a network.
"""

import numpy as np
import pytest
from fake_datasets import (
    jpeg,
    register_cifar100_checksum,
    write_fake_cifar100,
    write_fake_ilsvrc12,
)

from paper_repro import cli, data
from paper_repro.errors import UserError
from paper_repro.history import load_history
from paper_repro.model import caffe_layers, describe, load_model

# The paper preset's roads (not the default preset, mini), shrunk to one tiny epoch.
TINY = ["--preset", "paper", "--set", "crop=67", "--set", "resize=76", "--set", "epochs=1",
        "--set", "batch_size=8"]  # fmt: skip


@pytest.fixture(scope="module")
def road(tmp_path_factory):
    """A fresh ``$TFDS_DATA_DIR`` and runs directory shared by this module's runs."""
    root = tmp_path_factory.mktemp("roads")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", str(root / "tfds"))
        yield root


@pytest.fixture(scope="module")
def ilsvrc12_run(road):
    colours = write_fake_ilsvrc12(road / "tfds" / "downloads" / "manual")
    args = ["train", "pretrain-imagenet", "--runs-dir", str(road / "runs"), "--download", *TINY]
    code = cli.main(args)
    return code, road / "runs" / "paper" / "pretrain-imagenet", colours


@pytest.mark.slow
def test_ilsvrc12_road_prepares_the_manual_tars_and_pretrains(ilsvrc12_run):
    code, run, colours = ilsvrc12_run
    assert code == 0
    history = load_history(run / "history.json")
    assert history.status == "finished" and history.dataset == "imagenet2012"
    assert history.config["test_split"] == "validation" and len(history.epochs) == 1
    model = load_model(run / "model.keras")
    assert tuple(caffe_layers(model)["fc8"].kernel.shape) == (4096, 1000)  # tfds' class list

    # What the run read: the fake images, each with its synset's label, in both splits.
    for split, count in (("train", 12), ("validation", 4)):
        dataset, info = data.load_split("imagenet2012", split)
        assert info.num_classes == 1000 and info.num_examples == count
        images, synsets = [], set()
        for example in dataset.as_numpy_iterator():
            pixels, synset = example["image"].reshape(-1, 3), info.class_names[example["label"]]
            np.testing.assert_allclose(pixels.mean(axis=0), colours[synset], atol=6)
            images.append(pixels)
            synsets.add(synset)
        assert synsets == set(colours)
        assert len({image.shape for image in images}) > 1  # native sizes, as in ILSVRC-12
        if split == "train":  # the network's mean pixel is the fake training images' mean
            expected = np.concatenate(images).mean(axis=0)
            np.testing.assert_allclose(describe(model)["mean"], expected, rtol=1e-6)


@pytest.mark.slow
def test_image_folder_road_pretrains_on_train_and_val_class_folders(tmp_path):
    """The alternative to tfds' build: ILSVRC-12 as FOLDER/train/<synset>/ and FOLDER/val/."""
    for split, sizes in (("train", ((50, 40), (36, 70), (64, 64))), ("val", ((45, 60),))):
        for k, synset in enumerate(("n01440764", "n01443537", "n01484850")):
            (tmp_path / "ilsvrc" / split / synset).mkdir(parents=True)
            for j, (height, width) in enumerate(sizes):
                image = jpeg((60 * k, 90, 200 - 60 * k), height, width)
                (tmp_path / "ilsvrc" / split / synset / f"{synset}_{j}.JPEG").write_bytes(image)
    folder = tmp_path / "ilsvrc"
    args = ["train", "pretrain-imagenet", "--runs-dir", str(tmp_path / "runs"), *TINY,
            "--set", f"dataset={folder}", "--set", "test_split=val"]  # fmt: skip
    assert cli.main(args) == 0
    run = tmp_path / "runs" / "paper" / "pretrain-imagenet"
    history = load_history(run / "history.json")
    assert history.status == "finished" and history.dataset == str(folder)
    model = load_model(run / "model.keras")
    assert tuple(caffe_layers(model)["fc8"].kernel.shape) == (4096, 3)


@pytest.mark.slow
def test_a_folder_of_mixed_sizes_and_modes_pretrains_trains_and_retrains(
    mixed_image_folder, tmp_path, capsys
):
    """Any folder of images (issue 14): grey, RGBA, palette, 16-bit, 1x1 and 3000x3000 images
    side by side, through the three kinds of run; a corrupt file is named in one line."""
    folder, _ = mixed_image_folder
    # Class folders alone are a training split only: these runs are told to test on it.
    runs = ["--runs-dir", str(tmp_path / "runs"), *TINY, "--set", f"dataset={folder}",
            "--set", "test_split=train"]  # fmt: skip
    for experiment in ("pretrain-imagenet", "full-mnist", "retrain-mnist"):
        assert cli.main(["train", experiment, *runs]) == 0, capsys.readouterr().err
        history = load_history(tmp_path / "runs" / "paper" / experiment / "history.json")
        assert history.status == "finished" and np.isfinite(history.epochs[0].train_loss)
    (folder / "b" / "broken.jpg").write_bytes((folder / "b" / "photo.jpg").read_bytes()[:200])
    assert cli.main(["train", "full-mnist", *runs, "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'b' / 'broken.jpg'} is not a readable image" in err


# ----------------------------------------------------------------------------- CIFAR-100


@pytest.mark.slow
def test_cifar100_road_trains_full_and_retrain_on_the_fine_labels(road, ilsvrc12_run, monkeypatch):
    manual = road / "tfds" / "downloads" / "manual"
    truth = write_fake_cifar100(manual)
    register_cifar100_checksum(monkeypatch, manual / "cifar-100-binary.tar.gz")
    runs = ["--runs-dir", str(road / "runs")]
    assert cli.main(["train", "full-cifar100", *runs, "--download", *TINY]) == 0
    assert ilsvrc12_run[0] == 0  # retrain-cifar100 starts from it, as in the paper
    assert cli.main(["train", "retrain-cifar100", *runs, *TINY]) == 0

    for experiment, start in (
        ("full-cifar100", "scratch"),
        ("retrain-cifar100", "pretrained-features"),
    ):
        run = road / "runs" / "paper" / experiment
        history = load_history(run / "history.json")
        assert history.status == "finished" and history.dataset == "cifar100"
        assert history.start == start
        fc8 = caffe_layers(load_model(run / "model.keras"))["fc8"].kernel.shape
        assert tuple(fc8) == (4096, 100)

    for split, count in (("train", 12), ("test", 6)):
        dataset, info = data.load_split("cifar100", split)
        assert info.num_examples == count and info.class_names[97] == "fake97"
        labels = []
        for example in dataset.as_numpy_iterator():
            coarse, fine = truth[example["image"].tobytes()]
            assert example["label"] == fine != coarse
            labels.append(fine)
        assert sorted(set(labels)) == [3, 42, 97]


def test_cifar100_archive_with_another_checksum_is_refused_in_one_line(tmp_path, capsys):
    write_fake_cifar100(tmp_path / "downloads" / "manual", train=1, test=1)
    args = ["train", "full-cifar100", "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path)]
    assert cli.main([*args, "--download", *TINY]) == 2
    # stderr also holds tfds' progress bars; the error is one line of its own.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("paper-repro train: error: cifar100: ")
    assert "cifar-100-binary.tar.gz, has wrong checksum" in errors[0]
    assert str(tmp_path / "downloads" / "manual") in errors[0]


def test_unprepared_cifar100_says_where_its_archive_goes_for_an_offline_download(tmp_path):
    with pytest.raises(UserError) as error:
        data.load_split("cifar100", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert f"put cifar-100-binary.tar.gz in {tmp_path / 'downloads' / 'manual'} first" in message
