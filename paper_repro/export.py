"""Export a trained model as ``.keras``, as a standalone SavedModel for TF Serving, or as ONNX.

Every export is written next to its target under a temporary name, reloaded, run on a few images
and compared with the in-memory model (largest probability difference at most 1e-4; measured
2.5e-5 to 8e-5 for trained models' SavedModels, see ``TOLERANCE``); only then does it replace
the target. A mismatch (or a crash) leaves no half-written or silently wrong export behind.

The SavedModel carries the whole test-time pipeline of the paper, so that a client sends raw
images and gets class names back:

- ``serving_default``: uint8 images ``[batch, height, width, 1 or 3]`` of any size -> grey to
  RGB, bilinear resize to ``resize`` x ``resize`` (rounded to uint8, as the training and
  evaluation pipelines of ``data`` do), center crop to the model's input size, the
  model's own ``preprocess`` layer (mean, BGR), the network and its softmax;
- ``multi_crop``: the same with the run's test-time crops (10: four corners and center, each also
  mirrored; 5 for MNIST runs: no mirror), softmax outputs averaged, as in Table III: the
  evaluation's own ``views_mean`` and geometry (``paper_repro.evaluate``).

Both return ``probabilities``, ``top5_indices`` and ``top5_class_names``. A third, ``metadata``,
takes no input and returns ``class_names`` (in output order) and ``trained_on``, a JSON text of
what the run trained on (``evaluate.trained_on``: its config, with the dataset, splits, class
subset, resize, crop, mirroring and test crops, its seed and class names) and the geometry the
endpoints serve (``served``). The class names come from the run, which records them when it
trains (its history, and its ``model.keras``): no dataset is read to name them. The SavedModel
holds a TensorFlow graph only: it loads with ``tf.saved_model.load`` and needs neither Keras nor
this package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from paper_repro import runs
from paper_repro.augment import AugmentConfig
from paper_repro.errors import UserError
from paper_repro.evaluate import (
    TOP_K,
    check_network,
    load_source,
    resolve_geometry,
    trained_on,
    views_mean,
)
from paper_repro.model import save_model
from paper_repro.runs import replace_atomic

# Export format -> the suffix its output must have (a SavedModel is a directory: any name).
SUFFIXES = {"keras": ".keras", "saved_model": None, "onnx": ".onnx"}
MULTI_CROPS = (5, 10)
# Largest |reloaded - in-memory| probability accepted by the verification. The graphs are the
# same; only kernel choice and summation order may differ. Measured (the max printed by the
# export; 2-core x86_64 CPU, TensorFlow 2.21, each repeated with the same result): 2.5e-5 for a
# smoke run's model (`paper-repro export RUN --format saved_model`), 4.9e-5 for the export
# tests' He-scaled 67-pixel network, 3e-8 for a fresh 227-pixel CaffeNet (near-uniform outputs);
# the mini runs' models measured 4e-5 to 8e-5.
TOLERANCE = 1e-4
_VERIFY_IMAGES = 3


class ExportMismatchError(RuntimeError):
    """A written export does not compute what the in-memory model computes (a bug, not input)."""


@dataclass(frozen=True)
class Serving:
    """What the SavedModel's endpoints need besides the model: test-time geometry and names."""

    resize: int
    crops: int
    class_names: tuple[str, ...]
    trained_on: str = "{}"  # JSON, for the ``metadata`` endpoint


# --- the test-time pipeline in TensorFlow ops (traced into the SavedModel) ---------------------


def _as_rgb(images: tf.Tensor) -> tf.Tensor:
    """uint8 [N, H, W, 1 or 3] -> [N, H, W, 3]: a grey channel is repeated, as for MNIST."""
    channels = tf.shape(images)[-1]
    check = tf.debugging.assert_equal(
        tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)),
        True,
        message="images must be uint8 [batch, height, width, 1 or 3]",
    )
    with tf.control_dependencies([check]):
        rgb = tf.tile(images, [1, 1, 1, 3 // channels])
    return tf.ensure_shape(rgb, [None, None, None, 3])


def _endpoint(model: keras.Model, serving: Serving, crops: int) -> Callable:
    """The serving function of one endpoint: raw uint8 images -> probabilities and top-5.

    The probabilities are the evaluation's own (``evaluate.views_mean``: bilinear resize rounded to
    uint8 as Caffe's stored images are, then Caffe's crops), so a served image scores exactly as
    in the paper's test protocol.
    """
    augment = AugmentConfig(resize=serving.resize, crop=int(model.input_shape[1]))
    names = tf.constant(serving.class_names)
    k = min(TOP_K, len(serving.class_names))

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = views_mean(model, _as_rgb(images), augment, crops)
        top = tf.math.top_k(probabilities, k=k)
        return {
            "probabilities": probabilities,
            "top5_indices": top.indices,
            "top5_class_names": tf.gather(names, top.indices),
        }

    return serve


IMAGES_SPEC = tf.TensorSpec([None, None, None, None], tf.uint8, name="images")


def serving_endpoints(model: keras.Model, serving: Serving) -> dict[str, Callable]:
    """The SavedModel's image endpoints by name; ``serving_default`` first (TF Serving's
    default)."""
    return {
        "serving_default": _endpoint(model, serving, 1),
        "multi_crop": _endpoint(model, serving, serving.crops),
    }


def _metadata(serving: Serving) -> Callable:
    """The ``metadata`` endpoint: no input, the class names and what the model trained on."""

    def metadata() -> dict[str, tf.Tensor]:
        return {
            "class_names": tf.constant(serving.class_names),
            "trained_on": tf.constant(serving.trained_on),
        }

    return metadata


# --- writing and verifying ---------------------------------------------------------------------


def check_target(out: Path, force: bool, suffix: str | None) -> None:
    """Refuse a wrong suffix, or an existing target without ``force`` (before any slow work)."""
    if suffix and out.suffix != suffix:
        raise UserError(f"the output {out} must end with {suffix}; change --out")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it, or change --out")
    if out.is_dir() and not (out / "saved_model.pb").exists():
        raise UserError(f"{out} is a directory but not a SavedModel; remove it or change --out")


def _write_verified(
    out: Path, write: Callable[[Path], None], verify: Callable[[Path], float], what: str
) -> float:
    """Write to a temporary sibling, verify it, then move it onto ``out``; return the max diff.

    Interrupted (Ctrl-C, or SIGTERM, which the command line turns into one), the temporary is
    removed and ``out`` stays as it was; one left by an export killed outright (SIGKILL, a power
    cut) is removed by the next export of ``out``.
    """

    def write_and_verify(path: Path) -> float:
        write(path)
        return verify(path)

    with _exporting(out):
        diff = replace_atomic(out, write_and_verify)
    print(f"{what} written to {out}; verified: max |reloaded - in-memory| = {diff:.2e}")
    return diff


@contextlib.contextmanager
def _exporting(out: Path) -> Iterator[None]:
    """Held while an export writes ``out``; first removes the temporaries of exports of ``out``
    that were killed mid-write, unless another export is writing in the same folder now.

    A SavedModel's temporary is a hidden folder as large as the model, that nothing else would
    ever remove. Every export holds a shared flock on the target's folder while it writes; the
    removal takes it exclusive, which it gets only while no export writes there: a temporary it
    removes belongs to no export that runs. In a folder not made yet there is nothing to remove,
    and without ``fcntl`` (Windows) nothing is removed.
    """
    try:
        folder = os.open(out.parent, os.O_RDONLY)
    except OSError:  # no such folder yet, or unreadable: replace_atomic says what is wrong
        folder = None
    if runs.fcntl is None or folder is None:
        yield
        return
    try:
        try:
            runs.fcntl.flock(folder, runs.fcntl.LOCK_EX | runs.fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another export writes here now: its temporary may be one of these
        else:
            _remove_stale_temporaries(out)
        runs.fcntl.flock(folder, runs.fcntl.LOCK_SH)
        yield
    finally:
        os.close(folder)


def _remove_stale_temporaries(out: Path) -> None:
    """Remove ``out``'s temporaries, named as ``runs.replace_atomic`` names them
    (``.STEM.16-HEX.partial.SUFFIX``), saying so: no other target's, no other file. First the
    previous export of ``out``, where one killed mid-replacement left it aside, is put back
    (``runs.restore_previous``): an export that did not finish leaves the previous one in place."""
    for line in runs.restore_previous(out):
        print(line, file=sys.stderr)
    for path in sorted(out.parent.iterdir()):
        if runs.is_temporary_of(path, out):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            print(
                f"removed {path}, the unfinished export of {out.name} that an interrupted export "
                "left",
                file=sys.stderr,
            )


def _max_diff(reloaded: np.ndarray, expected: np.ndarray, what: str) -> float:
    """Max abs difference of two probability arrays; above TOLERANCE is an error."""
    diff = float(np.max(np.abs(np.asarray(reloaded) - np.asarray(expected))))
    if not diff <= TOLERANCE:  # also catches NaN
        raise ExportMismatchError(
            f"the reloaded {what} differs from the in-memory model by {diff:.2e} (tolerance "
            f"{TOLERANCE:.0e}); the export was not written"
        )
    return diff


def _sample_images(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save_keras(
    model: keras.Model, out: str | Path, *, force: bool = False, record: dict | None = None
) -> float:
    """``model`` as a .keras file that loads with ``safe_mode=True``, with ``record``
    (``model.save_model``: what it trained on) inside; returns the verified diff."""
    out = Path(out)
    check_target(out, force, SUFFIXES["keras"])
    images = _sample_images((_VERIFY_IMAGES, *model.input_shape[1:]))
    expected = model.predict(images, verbose=0)

    def verify(path: Path) -> float:
        reloaded = keras.saving.load_model(path, compile=False, safe_mode=True)
        return _max_diff(reloaded.predict(images, verbose=0), expected, ".keras model")

    return _write_verified(out, lambda path: save_model(model, path, record), verify, "Keras model")


def save_saved_model(
    model: keras.Model, out: str | Path, serving: Serving, *, force: bool = False
) -> float:
    """A standalone SavedModel with the endpoints of :func:`serving_endpoints`."""
    out = Path(out)
    check_target(out, force, SUFFIXES["saved_model"])
    endpoints = serving_endpoints(model, serving)
    # An odd-sized RGB batch and a grey one: what a client may send.
    batches = [_sample_images((2, 251, 173, 3), 1), _sample_images((2, 97, 131, 1), 2)]

    def write(path: Path) -> None:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, endpoint in endpoints.items():
            archive.add_endpoint(name, endpoint, input_signature=[IMAGES_SPEC])
        archive.add_endpoint("metadata", _metadata(serving), input_signature=[])
        archive.write_out(path, verbose=False)

    def verify(path: Path) -> float:
        signatures = tf.saved_model.load(str(path)).signatures
        return max(
            _max_diff(
                signatures[name](images=tf.constant(images))["probabilities"].numpy(),
                endpoint(tf.constant(images))["probabilities"].numpy(),
                f"SavedModel endpoint {name}",
            )
            for name, endpoint in endpoints.items()
            for images in batches
        )

    return _write_verified(out, write, verify, "SavedModel")


def _require_onnx() -> None:
    missing = [
        name for name in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise UserError(
            f"the ONNX export needs {' and '.join(missing)}: pip install 'paper_repro[onnx]'"
        )


def save_onnx(model: keras.Model, out: str | Path, *, force: bool = False) -> float:
    """ONNX through Keras' own exporter (tf2onnx), verified with onnxruntime.

    The ONNX graph takes float32 RGB images in 0..255 at the model's input size (the model's
    ``preprocess`` layer is inside); resizing and cropping are left to the client.
    """
    _require_onnx()
    import onnxruntime

    out = Path(out)
    check_target(out, force, SUFFIXES["onnx"])
    images = _sample_images((_VERIFY_IMAGES, *model.input_shape[1:])).astype(np.float32)
    expected = model.predict(images, verbose=0)

    def verify(path: Path) -> float:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (reloaded,) = session.run(None, {session.get_inputs()[0].name: images})
        return _max_diff(reloaded, expected, "ONNX model")

    def write(path: Path) -> None:
        model.export(str(path), format="onnx", verbose=False)

    return _write_verified(out, write, verify, "ONNX model")


# --- the command: a run directory or a .keras file in, one format out ---------------------------


def serving_config(
    model: keras.Model,
    config: dict,
    class_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    data_dir: str | None = None,
) -> Serving:
    """Test-time geometry from the run config (``evaluate.resolve_geometry``) and class names.

    Class names: as given (those the run recorded), else, for a run that predates their
    recording, its tfds dataset's (its ``classes`` subset, in order), else the class indices as
    strings, said on stderr: a client would otherwise read '0'..'4' as the names.
    """
    image_size = int(model.input_shape[1])
    num_classes = int(model.output_shape[-1])
    if config.get("crop", image_size) != image_size:
        raise UserError(
            f"the run config crops {config['crop']} pixels but the model takes {image_size}; "
            "the run directory is inconsistent"
        )
    names = tuple(class_names or _dataset_class_names(config, data_dir) or ())
    if not names:
        names = tuple(map(str, range(num_classes)))
        print(
            f"class names: none recorded with the model, nor in its dataset's info "
            f"({config.get('dataset', 'unknown')}); the classes are named by their numbers "
            f"0..{num_classes - 1}",
            file=sys.stderr,
        )
    if len(names) != num_classes:
        raise UserError(f"{len(names)} class names given for a model of {num_classes} classes")
    augment, crops = resolve_geometry(image_size, config)
    crops = crops if crops in MULTI_CROPS else 10
    served = {"resize": augment.resize, "crop": image_size, "multi_crop": crops}
    return Serving(
        resize=augment.resize,
        crops=crops,
        class_names=names,
        trained_on=json.dumps({**trained_on(config, seed, names), "served": served}),
    )


def _dataset_class_names(config: dict, data_dir: str | None) -> list[str] | None:
    """The label names of the run's tfds dataset, if tfds knows it.

    The names come from the prepared dataset's info under ``data_dir`` (default
    ``$TFDS_DATA_DIR``; CIFAR-10's are only there, tfds' code alone numbers them) or from the
    builder's code (ImageNet's synsets).
    """
    import tensorflow_datasets as tfds

    if "dataset" not in config:
        return None
    try:
        builder = tfds.builder(config["dataset"], data_dir=data_dir)
        label = builder.info.features["label"]
    except tfds.core.DatasetNotFoundError:
        return None
    classes = config.get("classes") or range(label.num_classes)
    names = [label.names[c] for c in classes]
    # An unprepared dataset's builder may know only the numbers (CIFAR's names are in its files).
    return None if names == [str(c) for c in classes] else names


def export_model(
    source: str | Path,
    fmt: str,
    out: str | Path,
    force: bool = False,
    class_names: Sequence[str] | None = None,
    data_dir: str | None = None,
) -> Path:
    """``paper-repro export``: a run's model (or a .keras file) written in ``fmt`` and verified.

    ``class_names`` replaces the recorded ones; ``data_dir`` is read only for a run that predates
    their recording (``serving_config``).
    """
    if fmt not in SUFFIXES:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(SUFFIXES)}")
    out = Path(out)
    check_target(out, force, SUFFIXES[fmt])
    if fmt == "onnx":
        _require_onnx()
    loaded = load_source(source)
    check_network(loaded.model, source)
    if fmt == "keras":
        save_keras(loaded.model, out, force=force, record=loaded.trained_on())
    elif fmt == "onnx":
        save_onnx(loaded.model, out, force=force)
    else:
        serving = serving_config(
            loaded.model,
            loaded.config,
            class_names or loaded.class_names,
            seed=loaded.seed,
            data_dir=data_dir,
        )
        save_saved_model(loaded.model, out, serving, force=force)
    return out
