"""An image folder means one thing: a split is a sub-folder, the training split's class folders
label every split, and a split the folder lacks is refused in one line, never read from the root.

Each case here once gave a silent wrong result: a test run on the folder's root (with its split
folders taken as classes), a test class scored under another's label, hidden files trained on, a
FIFO that hung the image check, a folder tested on the images it trained on.
"""

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from paper_repro import cli, data, experiments
from paper_repro.augment import AugmentConfig
from paper_repro.errors import UserError
from paper_repro.evaluate import evaluate
from paper_repro.history import DataRecord, load_history
from paper_repro.training.fit import check_same_images

FIXTURES = Path(__file__).parent / "fixtures" / "histories"

# One colour per class: the colour model below tells them apart perfectly.
COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (90, 90, 90)}


def solid(names: str, count: int = 2) -> dict:
    """``{class: [images]}``: ``count`` 6x6 images of each class's colour."""
    return {name: [np.full((6, 6, 3), COLOURS[name])] * count for name in names}


def smoke_config(root, *overrides: str) -> experiments.RunConfig:
    return experiments.resolve("full-mnist", "smoke", [f"dataset={root}", *overrides])


def refusal(argv: list[str], capsys) -> str:
    """The command's one line on stderr; it must exit 2."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def train_argv(root, runs) -> list[str]:
    return ["train", "full-mnist", "--preset", "smoke", "--runs-dir", str(runs),
            "--set", f"dataset={root}"]  # fmt: skip


def assert_nothing_written(runs) -> None:
    """Data is read once the run directory is locked: its lock file alone is left."""
    assert not [p for p in runs.rglob("*") if p.is_file() and p.name != "run.lock"]


def colour_model() -> keras.Model:
    """The softmax of the mean pixel: class i for the images whose channel i is brightest, as
    ``COLOURS`` a, b and c are, with certainty."""
    return keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Softmax()]
    )


@pytest.fixture
def model_file(tmp_path_factory):
    """The colour model as a .keras file with no record: ``evaluate`` needs ``--dataset``."""
    path = tmp_path_factory.mktemp("model") / "colours.keras"
    colour_model().save(path)
    return path


# ---------------------------------------------------------------------- a split it lacks


def test_a_split_the_folder_lacks_is_refused_naming_the_splits_it_has(image_folder):
    """Once tested on the root, with "train" and "validation" as its two classes."""
    image_folder(solid("ab"), "train")
    root = image_folder(solid("ab"), "validation")
    (root / ".cache").mkdir()  # hidden: not a split
    with pytest.raises(UserError, match=r"has no split 'test' \(its splits: train, validation\)"):
        data.load_split(str(root), "test")
    with pytest.raises(UserError, match=r"its splits: train, validation\).*--set test_split=NAME"):
        data.load_experiment_data(smoke_config(root))


def test_a_run_on_a_folder_without_its_test_split_is_one_line(
    image_folder, tmp_path_factory, capsys
):
    image_folder(solid("ab"), "train")
    root = image_folder(solid("ab"), "validation")
    runs = tmp_path_factory.mktemp("runs")
    err = refusal(train_argv(root, runs), capsys)
    assert f"{root} has no split 'test' (its splits: train, validation)" in err
    assert "--set test_split=NAME" in err
    assert_nothing_written(runs)


def test_evaluate_refuses_a_misspelt_split(image_folder, model_file, capsys):
    """``--split validaton`` once fell back to the root, as a missing test split did."""
    image_folder(solid("ab"), "train")
    root = image_folder(solid("ab"), "validation")
    argv = ["evaluate", str(model_file), "--dataset", str(root), "--split", "validaton"]
    err = refusal(argv, capsys)
    assert "has no split 'validaton' (its splits: train, validation)" in err
    assert "--split NAME" in err


def test_a_misnamed_training_split_is_refused_not_read_as_classes(image_folder):
    image_folder(solid("ab"), "trian")
    root = image_folder(solid("ab"), "test")
    lacking = r"has no training split 'train' \(its splits: test, trian\), whose class folders"
    with pytest.raises(UserError, match=lacking):
        data.load_split(str(root), "train")
    with pytest.raises(UserError, match=lacking):  # its classes label the test split
        data.load_split(str(root), "test")
    with pytest.raises(UserError, match=r"--set train_split=NAME"):
        data.load_experiment_data(smoke_config(root))


def test_a_split_is_checked_before_the_training_images_are_read(image_folder):
    """A misspelt test split is found before the training split's images are decoded (hours
    for ILSVRC-12): the unreadable training image is not what is reported."""
    image_folder(solid("ab"), "train")
    root = image_folder(solid("ab"), "val")
    (root / "train" / "a" / "broken.png").write_bytes(b"")
    config = smoke_config(root, "test_split=valid", "train_subset=none", "test_subset=none")
    with pytest.raises(UserError, match=r"has no split 'valid' \(its splits: train, val\)"):
        data.load_experiment_data(config)


def test_named_splits_load_as_the_pretraining_road_lays_them_out(image_folder):
    """``FOLDER/train/`` and ``FOLDER/val/`` with ``--set test_split=val``, as ILSVRC-12 is."""
    image_folder(solid("abc"), "train")
    root = image_folder(solid("abc", count=1), "val")
    config = smoke_config(root, "test_split=val", "train_subset=none", "test_subset=none")
    splits = data.load_experiment_data(config)
    assert (splits.train_info.num_examples, splits.test_info.num_examples) == (6, 3)
    assert splits.train_info.class_names == splits.test_info.class_names == ("a", "b", "c")


# ------------------------------------------------------------------ classes, by name


def test_a_test_split_with_fewer_classes_is_labelled_by_the_training_splits_names(image_folder):
    """``train/{a,b,c}`` with ``test/{a,c}``: c once took b's label (index 1) and scored 0."""
    image_folder(solid("abc"), "train")
    root = image_folder(solid("ac"), "test")
    test, info = data.load_split(str(root), "test")
    assert info.class_names == ("a", "b", "c") and info.num_classes == 3
    assert [int(e["label"]) for e in test.as_numpy_iterator()] == [0, 0, 2, 2]
    chosen, chosen_info = data.load_split(str(root), "test", class_subset=[2, 0])
    assert chosen_info.class_names == ("c", "a")
    assert [int(e["label"]) for e in chosen.as_numpy_iterator()] == [1, 1, 0, 0]


def test_a_model_of_the_training_classes_scores_every_test_image(image_folder):
    """A model that knows the colours perfectly scores 100 % (it once scored 50 %)."""
    image_folder(solid("abc"), "train")
    root = image_folder(solid("ac"), "test")
    test, _ = data.load_split(str(root), "test")
    scores = evaluate(colour_model(), test, crops=1, augment=AugmentConfig(6, 6, False), verbose=0)
    assert scores["top1"] == 1.0 and scores["num_examples"] == 4


def test_a_test_class_the_training_split_lacks_is_refused(image_folder):
    image_folder(solid("ab"), "train")
    root = image_folder(solid("ad"), "test")
    with pytest.raises(UserError, match=rf"^{root / 'test' / 'd'} is a class folder that the "):
        data.load_split(str(root), "test")


# --------------------------------------------------------------- what a class holds


def test_hidden_files_and_folders_inside_a_class_are_skipped(image_folder):
    """As hidden class folders are: ``.thumbnails/``, macOS' ``._name.png``; a visible
    sub-folder's images still belong to the class."""
    root = image_folder(solid("ab"))
    class_a = root / "train" / "a"
    image = (class_a / "000.png").read_bytes()
    for name in (".thumbnails/000.png", ".thumbnails/deep/001.png", "._000.png", "more/000.png"):
        (class_a / name).parent.mkdir(parents=True, exist_ok=True)
        (class_a / name).write_bytes(image if "._" not in name else b"\x00\x05\x16\x07")
    dataset, info = data.load_split(str(root), "train")
    labels = [int(e["label"]) for e in dataset.as_numpy_iterator()]
    assert info.num_examples == 5 and labels == [0, 0, 0, 1, 1]


@pytest.mark.timeout(120, method="thread")
def test_a_fifo_named_like_an_image_is_not_read(image_folder):
    """Reading a FIFO waits for a writer: the image check once hung on ``pipe.png``."""
    root = image_folder(solid("ab"))
    os.mkfifo(root / "train" / "a" / "pipe.png")
    (root / "train" / "b" / "folder.png").mkdir()
    assert data.load_split(str(root), "train")[1].num_examples == 4


# ------------------------------------------------ a folder of class folders alone


def test_a_folder_of_class_folders_alone_is_training_images_only(image_folder):
    """The one-folder-per-class layout is the training split; it has no test split to give."""
    root = image_folder(solid("ab"), "flat") / "flat"
    assert data.load_split(str(root), "train")[1].num_examples == 4
    layout = rf"no split folders.*{root}/train/<class>/ and the test images in {root}/test/<class>/"
    with pytest.raises(UserError, match=layout):
        data.load_split(str(root), "test")


def test_a_run_on_a_folder_of_class_folders_alone_is_one_line(
    image_folder, tmp_path_factory, capsys
):
    root = image_folder(solid("ab"), "flat") / "flat"
    runs = tmp_path_factory.mktemp("runs")
    err = refusal(train_argv(root, runs), capsys)
    assert f"image folder {root} has no split folders" in err
    assert_nothing_written(runs)


def test_evaluate_refuses_a_folder_of_class_folders_alone(image_folder, model_file, capsys):
    root = image_folder(solid("ab"), "flat") / "flat"
    err = refusal(["evaluate", str(model_file), "--dataset", str(root)], capsys)
    assert f"image folder {root} has no split folders" in err


# ---------------------------------------------------------------------- images changed since

TINY = ("train_subset=null", "test_subset=null", "batch_size=4", "epochs=1", "drop_epochs=1")


def test_a_finished_run_is_skipped_only_while_its_folder_holds_the_images_it_trained_on(
    image_folder, tmp_path_factory, capsys
):
    """Rerunning after a file of the folder changed would report the old run as the new images'
    result: refused in one line naming the split, nothing of the run touched."""
    image_folder(solid("ab"), "train")
    root = image_folder(solid("ab"), "test")
    runs = tmp_path_factory.mktemp("runs")
    argv = [*train_argv(root, runs), "--quiet", *[a for s in TINY for a in ("--set", s)]]
    assert cli.main(argv) == 0
    history = (runs / "smoke" / "full-mnist" / "history.json").read_bytes()
    recorded = load_history(runs / "smoke" / "full-mnist" / "history.json").data
    assert recorded.train.startswith("image folder ") and recorded.test.startswith("image folder ")
    capsys.readouterr()
    assert cli.main([a for a in argv if a != "--quiet"]) == 0
    assert "already finished" in capsys.readouterr().out

    (root / "test" / "b" / "001.png").write_bytes((root / "test" / "a" / "000.png").read_bytes())
    err = refusal(argv, capsys)
    assert "was trained on other images: its test split's images changed" in err
    assert "--force" in err
    assert (runs / "smoke" / "full-mnist" / "history.json").read_bytes() == history


def test_a_run_goes_on_only_on_the_images_it_started_on():
    older = load_history(FIXTURES / "full-mnist" / "history.json")  # before images were recorded
    started = dataclasses.replace(older, data=DataRecord("image folder 1", "image folder 2"))
    check_same_images(started, DataRecord("image folder 1", "image folder 2"), "r", "resume it")
    with pytest.raises(UserError, match="its training and test split's images changed"):
        check_same_images(started, DataRecord("image folder 3", "image folder 4"), "r", "resume it")
    check_same_images(older, DataRecord("image folder 3", "image folder 4"), "r", "resume it")
