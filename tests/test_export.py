"""Exports: .keras (safe mode), the standalone SavedModel with its test-time pipeline, ONNX.

A small model (67-pixel input, the paper's pipeline scaled: resize 76, crop 67) keeps these fast:
nothing here depends on 227.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from paper_repro import evaluate, export
from paper_repro.errors import UserError
from paper_repro.history import FinalEvaluation, History, Provenance, save_history
from paper_repro.model import build_alexnet, caffe_layers, save_model

SIZE, RESIZE = 67, 76
NAMES = tuple(f"class-{i}" for i in range(10))


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """BGR + mean like an imported CaffeNet, He-scaled weights and a small fc8: probabilities
    that differ clearly between images, crops and mirrors (Caffe's init gives ~uniform ones)."""
    net = build_alexnet(10, SIZE, mean=(104.0, 117.0, 123.0), bgr=True, seed=0)
    rng = np.random.default_rng(0)
    for name, layer in caffe_layers(net).items():
        if name.startswith(("conv", "fc")):
            kernel, bias = layer.get_weights()
            std = np.sqrt(2.0 / np.prod(kernel.shape[:-1])) * (0.01 if name == "fc8" else 1.0)
            layer.set_weights([rng.normal(0.0, std, kernel.shape), np.zeros_like(bias)])
    return net


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "serving"
    export.save_saved_model(model, out, export.Serving(RESIZE, 10, NAMES))
    return out


def _images(shape, seed=0) -> np.ndarray:
    """uint8 images of 16-pixel blocks plus noise: structure that crops and mirrors change."""
    rng = np.random.default_rng(seed)
    n, height, width, channels = shape
    blocks = rng.uniform(0, 255, (n, -(-height // 16), -(-width // 16), channels))
    coarse = blocks.repeat(16, axis=1).repeat(16, axis=2)[:, :height, :width]
    return np.clip(coarse + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)


def _reference(model, images, offsets) -> np.ndarray:
    """The paper's test pipeline written out: grey -> RGB, bilinear resize stored as uint8 (as
    Caffe's image databases are), crops, mean of the softmax outputs."""
    rgb = np.repeat(images, 3 // images.shape[-1], axis=-1).astype(np.float32)
    resized = np.round(tf.image.resize(rgb, [RESIZE, RESIZE]).numpy()).clip(0, 255).astype(np.uint8)
    views = []
    for top, left, mirrored in offsets:
        view = resized[:, top : top + SIZE, left : left + SIZE]
        views.append(view[:, :, ::-1] if mirrored else view)
    return np.mean([model.predict(view, verbose=0) for view in views], axis=0)


CENTER = [(4, 4, False)]  # (76 - 67) // 2
CORNERS = [(0, 0), (0, 9), (9, 0), (9, 9), (4, 4)]
TEN = [(t, left, False) for t, left in CORNERS] + [(t, left, True) for t, left in CORNERS]


def test_default_resize_keeps_caffes_ratio():
    assert evaluate.default_resize(227) == 256
    assert evaluate.default_resize(67) == RESIZE


def test_saved_model_runs_the_paper_pipeline(model, saved_model):
    signatures = tf.saved_model.load(str(saved_model)).signatures
    rgb, grey = _images((2, 101, 89, 3), 1), _images((2, 40, 52, 1), 2)
    for name, offsets in (("serving_default", CENTER), ("multi_crop", TEN)):
        for images in (rgb, grey):
            result = signatures[name](images=tf.constant(images))
            probabilities = result["probabilities"].numpy()
            # At odd native sizes augment.resize_and_crop may differ from tf.image.resize by one
            # grey level in a few pixels in 10^4 (its docstring): ~1e-4 in the probabilities.
            want = _reference(model, images, offsets)
            np.testing.assert_allclose(probabilities, want, atol=1e-3)
            top5 = np.argsort(-probabilities, axis=1)[:, :5]
            np.testing.assert_array_equal(result["top5_indices"].numpy(), top5)
            names = result["top5_class_names"].numpy().astype(str)
            np.testing.assert_array_equal(names, np.array(NAMES)[top5])
    # the crops matter: the multi-crop average is not the center crop's output
    center = signatures["serving_default"](images=tf.constant(rgb))["probabilities"].numpy()
    multi = signatures["multi_crop"](images=tf.constant(rgb))["probabilities"].numpy()
    assert np.abs(center - multi).max() > 1e-3


def test_saved_model_refuses_two_channel_images(saved_model):
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 or 3"):
        serve(images=tf.zeros((1, 80, 80, 2), tf.uint8))


STANDALONE = textwrap.dedent(
    """
    import sys
    sys.modules["paper_repro"] = None  # the export must not need this package
    sys.modules["keras"] = None  # nor Keras: TensorFlow alone
    try:
        import paper_repro
    except ImportError:
        pass
    else:
        raise SystemExit("paper_repro is importable")
    import numpy as np
    import tensorflow as tf

    model_dir, inputs, outputs = sys.argv[1:]
    images = np.load(inputs)
    signatures = tf.saved_model.load(model_dir).signatures
    results = {}
    for name in ("serving_default", "multi_crop"):
        for key in images.files:
            result = signatures[name](images=tf.constant(images[key]))
            results[f"{name}/{key}"] = result["probabilities"].numpy()
            results[f"{name}/{key}/names"] = result["top5_class_names"].numpy().astype(str)
    np.savez(outputs, **results)
    """
)


@pytest.mark.slow
def test_saved_model_is_standalone(saved_model, tmp_path):
    """Loaded by a Python that cannot import this package (nor Keras), from another directory."""
    images = {"odd_rgb": _images((3, 257, 199, 3), 3), "grey": _images((2, 28, 28, 1), 4)}
    np.savez(tmp_path / "in.npz", **images)
    command = [sys.executable, "-I", "-c", STANDALONE, str(saved_model), "in.npz", "out.npz"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    outside = np.load(tmp_path / "out.npz")
    signatures = tf.saved_model.load(str(saved_model)).signatures
    for name in ("serving_default", "multi_crop"):
        for key, batch in images.items():
            inside = signatures[name](images=tf.constant(batch))
            np.testing.assert_allclose(outside[f"{name}/{key}"], inside["probabilities"], atol=1e-6)
            np.testing.assert_array_equal(
                outside[f"{name}/{key}/names"], inside["top5_class_names"].numpy().astype(str)
            )


def _run_dir(model, path, config):
    """A finished run as training leaves it: model.keras and history.json with the config."""
    path.mkdir()
    model.save(path / "model.keras")
    provenance = Provenance("0.1.0", {}, None, None, "cpu", "host", "2026-01-01T00:00:00+00:00")
    history = History(
        "retrain-cifar10", "mini", "cifar10", "retrain", 0, config, provenance, (),
        FinalEvaluation(crops=5, top1=0.5, top5=0.9, wall_seconds=1.0), "finished",
    )  # fmt: skip
    save_history(history, path / "history.json")
    return path


def test_export_from_a_run_dir_uses_its_config(model, tmp_path, capsys):
    config = {"dataset": "cifar10", "resize": RESIZE, "crop": SIZE, "test_crops": 5}
    run = _run_dir(model, tmp_path / "run", config)
    out = export.export_model(run, "saved_model", tmp_path / "sm", class_names=NAMES)
    assert "verified: max |reloaded - in-memory|" in capsys.readouterr().out
    multi = tf.saved_model.load(str(out)).signatures["multi_crop"]
    images = _images((2, 90, 90, 3), 5)
    five = [(t, left, False) for t, left in CORNERS]
    np.testing.assert_allclose(
        multi(images=tf.constant(images))["probabilities"],
        _reference(model, images, five),
        atol=1e-5,
    )


@pytest.mark.usefixtures("tfds_dir")
def test_class_names_come_from_the_runs_dataset(model):
    config = {"dataset": "cifar10", "classes": [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]}
    names = export.serving_config(model, config).class_names
    assert names[:2] == ("dog", "frog") and names[5] == "airplane"
    assert export.serving_config(model, {}).class_names == tuple(map(str, range(10)))


def test_names_never_recorded_nor_prepared_are_numbers_said_on_stderr(model, tmp_path, capsys):
    """A run older than the recorded names, its CIFAR-10 not prepared: never silently '0'..'9'."""
    serving = export.serving_config(model, {"dataset": "cifar10"}, data_dir=str(tmp_path))
    assert serving.class_names == tuple(map(str, range(10)))
    assert "the classes are named by their numbers 0..9" in capsys.readouterr().err


def test_keras_export_loads_in_safe_mode(model, tmp_path, capsys):
    source = tmp_path / "trained.keras"
    model.save(source)
    out = export.export_model(source, "keras", tmp_path / "exported.keras")
    assert "verified" in capsys.readouterr().out
    reloaded = keras.saving.load_model(out, safe_mode=True, compile=False)
    images = _images((2, SIZE, SIZE, 3), 6)
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_a_keras_export_keeps_what_its_model_was_trained_on(model, tmp_path, capsys):
    config = {"dataset": "cifar10", "classes": list(range(10)), "resize": RESIZE, "crop": SIZE}
    source = tmp_path / "trained.keras"
    save_model(model, source, evaluate.trained_on(config, 3, NAMES))
    out = export.export_model(source, "keras", tmp_path / "exported.keras")
    loaded = evaluate.load_source(out)
    assert (loaded.config, loaded.seed, loaded.class_names) == (config, 3, NAMES)


def test_existing_target_is_refused_unless_forced(model, tmp_path):
    out = tmp_path / "model.keras"
    out.write_text("old")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export.save_keras(model, out)
    export.save_keras(model, out, force=True)
    assert out.stat().st_size > 1000
    not_a_saved_model = tmp_path / "documents"
    not_a_saved_model.mkdir()
    with pytest.raises(UserError, match="not a SavedModel"):
        export.save_saved_model(
            model, not_a_saved_model, export.Serving(RESIZE, 10, NAMES), force=True
        )


def test_bad_requests_are_user_errors(model, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export.export_model(tmp_path, "tflite", tmp_path / "x")
    with pytest.raises(UserError, match=r"must end with \.keras"):
        export.export_model(tmp_path, "keras", tmp_path / "model.h5")
    with pytest.raises(UserError, match="holds no trained model"):
        export.export_model(tmp_path, "keras", tmp_path / "model.keras")
    with pytest.raises(UserError, match="3 class names given for a model of 10"):
        export.serving_config(model, {}, class_names=["a", "b", "c"])


def test_a_mismatching_export_is_an_error_and_is_not_kept(model, tmp_path, monkeypatch):
    other = build_alexnet(10, SIZE, seed=1)
    monkeypatch.setattr(keras.saving, "load_model", lambda *args, **kwargs: other)
    out = tmp_path / "model.keras"
    with pytest.raises(export.ExportMismatchError, match="differs from the in-memory model"):
        export.save_keras(model, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(model, tmp_path):
    pytest.importorskip("tf2onnx", reason="the onnx extra (tf2onnx) is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
    source = tmp_path / "trained.keras"
    model.save(source)
    out = export.export_model(source, "onnx", tmp_path / "model.onnx")
    assert out.stat().st_size > 1000
