"""Test accuracy over Caffe's views: centre crop (Figure 5), 5 or 10 crops (Table III).

The paper averages the softmax outputs of the views of each test image (Krizhevsky et al.'s
10-crop test: four corners and the centre, each also mirrored; no mirrors for MNIST). The views
are cut inside a ``tf.function`` from uint8 batches at native size, so on a GPU only those batches
cross to the device, as in training.

This module is the one definition of the test protocol: ``views_mean`` (the averaged outputs) and
``resolve_geometry`` (the resize, mirroring and views a model is tested with) are also what the
exported SavedModel serves (``paper_repro.export``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from paper_repro import runs
from paper_repro.augment import (
    AugmentConfig,
    check_crops,
    crop_views,
    resize_uint8,
    view_offsets,
)
from paper_repro.data import SplitInfo, load_split
from paper_repro.errors import UserError
from paper_repro.history import load_history
from paper_repro.model import (
    FC8,
    MODEL_RECORD,
    alexnet_problem,
    caffe_layers,
    load_model,
    model_record,
)
from paper_repro.runs import MODEL_NAME, RunPaths, model_file

TOP_K = 5
# Caffe's test-time geometry: resize 256, crop 227. A model of another input size without a run
# config gets the same ratio.
CAFFE_RESIZE, CAFFE_CROP = 256, 227
_BAD_DATA = "evaluate needs a split from data.load_split or (images, labels) arrays"


def evaluate(
    model: keras.Model,
    data: tf.data.Dataset | tuple[np.ndarray, np.ndarray],
    *,
    crops: int,
    augment: AugmentConfig,
    batch_size: int = 80,
    verbose: int = 1,
) -> dict[str, float | int]:
    """Top-1 / top-5 accuracy of ``model`` (which outputs probabilities) averaged over views.

    Args:
        model: takes ``crop x crop x 3`` images with values 0..255, returns softmax outputs.
        data: a split from ``data.load_split`` (unbatched ``{"image", "label", ...}``), or
            ``(images, labels)`` arrays: uint8 ``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)``.
        crops: 1 (centre), 5 (corners + centre) or 10 (the 5 and their mirrors).
        augment: the resize / crop sizes the model was trained with.
        batch_size: test images per step (the model sees ``batch_size`` views per call).
        verbose: 1 shows a progress bar.

    Returns:
        ``{"top1", "top5", "num_examples", "crops", "center_top1", "center_top5",
        "num_classes"}``; top5 is
        top-min(5, classes); ``center_*`` score the centre view alone, from the same pass: Caffe's
        TEST phase (and so most likely the paper's ILSVRC-12 accuracy) tests the centre crop.
    """
    check_crops(crops)
    if crops == 10 and not augment.mirror:
        raise UserError(
            "10 crops include mirrored views but this augmentation does not mirror (as for "
            "MNIST's digits); use 5 crops"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    batches = _batches(data, augment, batch_size)
    step = _averaged_probabilities(model, augment, crops)
    total = int(batches.cardinality())
    progress = keras.utils.Progbar(
        total if total >= 0 else None, verbose=verbose, stateful_metrics=["top1"], unit_name="batch"
    )
    hits, center_hits, seen = np.zeros(2, np.int64), np.zeros(2, np.int64), 0
    # Ctrl-C lands between two batches, never inside TensorFlow's calls, where it can turn the
    # end of the split into pybind11's RuntimeError and a traceback (``runs.deferred_interrupt``).
    with runs.deferred_interrupt() as stop_if_interrupted:
        for images, labels in batches:
            averaged, center = step(images)
            hits += _hits(averaged, labels)
            center_hits += _hits(center, labels)
            seen += int(labels.shape[0])
            progress.add(1, values=[("top1", hits[0] / seen)])
            stop_if_interrupted()
    if not seen:
        raise UserError("the test data holds no examples")
    top1, top5, center_top1, center_top5 = (float(h) / seen for h in (*hits, *center_hits))
    return {"top1": top1, "top5": top5, "num_examples": seen, "crops": crops,
            "center_top1": center_top1, "center_top5": center_top5,
            "num_classes": int(model.output_shape[-1])}  # fmt: skip


def top5_text(top5: float, num_classes: int) -> str:
    """A top-5 accuracy as printed: "n/a" for at most 5 classes, where it is always 100 %."""
    return "n/a" if num_classes <= TOP_K else f"{top5:.2%}"


def _batches(data, augment: AugmentConfig, batch_size: int) -> tf.data.Dataset:
    """``(uint8 images, label)`` batches at one size per batch (native, else resized)."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, dict) and {"image", "label"} <= spec.keys()):
            raise UserError(_BAD_DATA)
        pairs = data.map(lambda ex: (ex["image"], ex["label"]))
    elif isinstance(data, tuple | list) and len(data) == 2:
        pairs = tf.data.Dataset.from_tensor_slices(_image_arrays(*data))
    else:
        raise UserError(_BAD_DATA)
    if not pairs.element_spec[0].shape.is_fully_defined():
        pairs = pairs.map(
            lambda image, label: (resize_uint8(image, augment.resize), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return pairs.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _image_arrays(images, labels) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels):
        raise UserError(
            f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3) with one label each; got "
            f"images {images.shape} and labels {labels.shape}"
        )
    if images.dtype != np.uint8:
        raise UserError(f"images must be uint8 pixels 0..255, got {images.dtype}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images, labels


def views_mean(
    model: keras.Model, images: tf.Tensor, augment: AugmentConfig, crops: int
) -> tf.Tensor:
    """The model's float32 outputs averaged over the ``crops`` views of a uint8 batch (TF ops).

    One call of the model per view, each on the whole batch, as the evaluation always did; the
    exported ``multi_crop`` endpoint traces this very function.
    """
    outputs = _view_outputs(model, images, augment, crops)
    return tf.add_n(outputs) / len(outputs)


def _view_outputs(
    model: keras.Model, images: tf.Tensor, augment: AugmentConfig, crops: int
) -> list[tf.Tensor]:
    views = crop_views(images, augment, crops)
    return [tf.cast(model(tf.cast(v, tf.float32), training=False), tf.float32) for v in views]


def _averaged_probabilities(model: keras.Model, augment: AugmentConfig, crops: int):
    """A compiled step: uint8 batch -> (``views_mean``, the centre view's outputs)."""
    center = view_offsets(augment, crops).index((augment.center, augment.center, False))

    @tf.function(reduce_retracing=True)
    def step(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        outputs = _view_outputs(model, images, augment, crops)
        return tf.add_n(outputs) / len(outputs), outputs[center]

    return step


def _hits(probabilities: tf.Tensor, labels: tf.Tensor) -> np.ndarray:
    """(top-1 hits, top-k hits) of a batch, by Keras' top-k accuracy.

    The classes are ranked by ``tf.math.top_k``, whose ties go to the lower class index as
    argmax's do, and handed to the metric sorted (``from_sorted_ids``): ranked from the scores,
    Keras' ``in_top_k`` would count every class tied at the k-th place. The hits are counted as
    integers, through the function ``SparseTopKCategoricalAccuracy`` averages: the metric object's
    float32 mean would round the recorded fractions (187 of 200 is 0.935, not 0.9350000024).
    """
    k = min(TOP_K, probabilities.shape[-1])
    ranked = tf.math.top_k(probabilities, k=k).indices
    hits = [
        keras.metrics.sparse_top_k_categorical_accuracy(labels, ranked, k=top, from_sorted_ids=True)
        for top in (1, k)
    ]
    return np.array([int(tf.reduce_sum(h)) for h in hits], np.int64)


def default_resize(image_size: int) -> int:
    """Caffe's resize for a crop of ``image_size``: 256 for 227, the same ratio otherwise."""
    return round(image_size * CAFFE_RESIZE / CAFFE_CROP)


def resolve_geometry(
    image_size: int, config: Mapping, crops: int | None = None
) -> tuple[AugmentConfig, int]:
    """The views a model taking ``image_size`` pixels is tested with, and how many.

    From its run's config (resize, mirroring, test crops), else Caffe's: the 256/227 ratio,
    mirrored views, 10 crops (5 without mirrors, as for MNIST). ``crops`` overrides the number.
    """
    mirror = bool(config.get("mirror", True))
    augment = AugmentConfig(
        int(config.get("resize", default_resize(image_size))), image_size, mirror
    )
    return augment, crops or int(config.get("test_crops", 10 if mirror else 5))


@dataclass(frozen=True)
class Source:
    """A trained model with what it was trained on: its run config (``{}`` when unknown), seed
    and class names (None when unrecorded)."""

    model: keras.Model
    config: dict
    seed: int
    class_names: tuple[str, ...] | None

    def trained_on(self) -> dict | None:
        """What a copy of the model file carries of it (``trained_on``); None when unknown."""
        if not (self.config or self.class_names):
            return None
        return trained_on(self.config, self.seed, self.class_names)


def trained_on(config: Mapping, seed: int, class_names: Sequence[str] | None) -> dict:
    """The record a trained model file carries (``model.save_model``), read by ``load_source``:
    its run config (dataset, splits, class subset, resize, crop, mirroring, test crops), seed and
    class names."""
    return {"seed": seed, "class_names": list(class_names or ()), "config": dict(config)}


def load_source(source: str | Path) -> Source:
    """The model of a run directory, with its history's config, seed and class names, or of a
    .keras file, with those its trainer recorded inside it (``model.save_model``): what
    ``evaluate`` and ``export`` take, so neither needs the dataset to know them.

    A run is taken at rest only (``_check_run_at_rest``). Whether the model is a whole network
    is the caller's check (``check_network``), once it has checked what else it was given.
    """
    paths = RunPaths(Path(source))
    if paths.root.is_dir():
        _check_run_at_rest(paths)
    path = model_file(source)
    model = load_model(path)
    if path == paths.checkpoint:
        _check_checkpoint(paths, model)
    if paths.root.is_dir() and paths.history.is_file():
        record = load_history(paths.history)
        return Source(model, record.config, record.seed, record.class_names)
    config, seed, names = _recorded(path)
    return Source(model, config, seed, names)


def _check_run_at_rest(paths: RunPaths) -> None:
    """Refuse a run that a process is training now: its checkpoint changes every epoch, and a
    number or an export taken from it would be of no epoch the run will record."""
    holder = runs.lock_holder(paths.lock)
    if holder:
        raise UserError(
            f"{paths.root} is being trained now ({holder}, see {paths.lock}); wait for the run "
            f"to finish (it then writes {MODEL_NAME}), or use a finished run"
        )


def _check_checkpoint(paths: RunPaths, model: keras.Model) -> None:
    """An unfinished run's checkpoint is taken only when it holds the whole network, and says so.

    A retraining on cached features checkpoints its classifier block alone: it becomes a whole
    network again only when the run finishes.
    """
    problem = alexnet_problem(model)
    if problem:
        raise UserError(
            f"{paths.root} has not finished and its {paths.checkpoint.name} is no whole network "
            f"({problem}); rerun the `paper-repro train` command that started the run to finish "
            f"it (it resumes and writes {MODEL_NAME}), then use the run again"
        )
    print(
        f"{paths.root} has not finished: using its {paths.checkpoint.name}, the network after "
        "its last finished epoch",
        file=sys.stderr,
    )


def _recorded(path: Path) -> tuple[dict, int, tuple[str, ...] | None]:
    """The config, seed and class names a model file's record holds (``trained_on``'s layout);
    ``({}, 0, None)`` for a file without one."""
    record = model_record(path)
    config, seed, names = record.get("config", {}), record.get("seed", 0), record.get("class_names")
    names_ok = names is None or (
        isinstance(names, list) and all(isinstance(name, str) for name in names)
    )
    if not (isinstance(config, dict) and type(seed) is int and names_ok):
        raise UserError(
            f"{path}: its member {MODEL_RECORD} is damaged (config must be an object, seed an "
            f"integer, class_names a list of names; got {config!r:.60}, {seed!r:.20}, "
            f"{names!r:.60}); copy or export the file again from its run directory"
        )
    return config, seed, tuple(names or ()) or None


def check_network(model: keras.Model, source: str | Path) -> None:
    """Refuse a model that is not a whole Table II network (``model.alexnet_problem``), naming
    the file: the test cuts image views for its input and reads its fc8, the export serves it."""
    problem = alexnet_problem(model)
    if problem:
        raise UserError(
            f"{source}: model '{model.name}' is not a paper_repro AlexNet ({problem}); evaluate "
            f"and export take a whole network, as a finished run's {MODEL_NAME}"
        )


def _check_classes(
    source: str, dataset: str, trained: Sequence[str] | None, info: SplitInfo
) -> None:
    """Refuse test images whose classes are not the model's, in its order: with as many classes
    under other names (MNIST's digits for a CIFAR-10 model) or in another order, output ``k``
    would be scored against another class's label, a number that means nothing. A model that
    recorded no class names is taken as it is (fc8's size is then all there is to check)."""
    if not trained or tuple(trained) == tuple(info.class_names):
        return
    raise UserError(
        f"{source} was trained on {_classes(trained)} but {dataset} {info.split} has "
        f"{_classes(info.class_names)}; evaluate on images of the model's classes in its order, "
        "or leave --dataset out for the run's own"
    )


def _classes(names: Sequence[str]) -> str:
    """``5 classes (airplane, automobile, bird, ...)``: enough to tell two class lists apart."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} classes ({shown})"


def evaluate_source(
    source: str,
    *,
    dataset: str | None = None,
    crops: int | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    verbose: int = 1,
) -> dict[str, float | int]:
    """``paper-repro evaluate``: a run directory or a .keras model on a dataset's test split.

    The run's config supplies what the model was trained with (dataset, class subset, resize,
    mirroring, number of test crops, test subset and seed, so that a run's recorded accuracy is
    reproduced), as does the record inside a model file the trainer wrote; any other .keras file
    gets Caffe's 256/227 ratio, and needs ``dataset``. An image folder's test split is labelled
    by the class folders of its training split (the run's, else ``train``).
    """
    loaded = load_source(source)
    model, config, seed = loaded.model, loaded.config, loaded.seed
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise UserError(f"{source} has no run config naming its dataset: pass --dataset NAME")
    same_data = dataset == config.get("dataset")
    test, info = load_split(
        dataset,
        split or (config.get("test_split", "test") if same_data else "test"),
        train_split=config.get("train_split", "train") if same_data else "train",
        split_option="--split NAME",
        data_dir=data_dir,
        class_subset=config.get("classes") if same_data else None,
        subset_size=config.get("test_subset") if same_data and not split else None,
        seed=seed,
        download=download,
    )
    check_network(model, source)
    fc8 = caffe_layers(model)[FC8].kernel.shape
    if fc8[-1] != info.num_classes:
        raise UserError(
            f"{source}: layer fc8 has shape {tuple(fc8)} but {dataset} has {info.num_classes} "
            "classes; evaluate on the dataset the model was trained for"
        )
    _check_classes(source, dataset, loaded.class_names, info)
    augment, crops = resolve_geometry(int(model.input_shape[1]), config, crops)
    return evaluate(model, test, crops=crops, augment=augment, verbose=verbose)
