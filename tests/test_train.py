"""Training runs end to end on real MNIST: histories, retraining, resume after SIGKILL, determinism,
divergence and every bad input of the train command."""

import dataclasses
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY

from paper_repro import cli, data, feature_activity, fused_update, runs
from paper_repro.errors import UserError
from paper_repro.experiments import resolve
from paper_repro.history import PHASES, load_history, save_history
from paper_repro.model import FEATURES, build_alexnet, caffe_layers
from paper_repro.training import TrainingDiverged, train
from paper_repro.training import fit as fit_module

REPO = Path(__file__).resolve().parents[1]


def _metrics(history):
    """Per-epoch numbers that must repeat exactly (wall time never does)."""
    return [
        {k: v for k, v in dataclasses.asdict(e).items() if k != "wall_seconds"}
        for e in history.epochs
    ]


def _run(tmp_path, name="full-mnist", overrides=TINY, **kwargs):
    return train(name, "smoke", runs_dir=tmp_path, overrides=overrides, verbose=0, **kwargs)


@pytest.fixture
def full_smoke(smoke_reproduction):
    """The smoke preset's full MNIST run (real data, 2 epochs), as the session's reproduction
    trained it: its runs directory and history."""
    _, root = smoke_reproduction
    runs = root / "runs"
    return runs, load_history(runs / "smoke" / "full-mnist" / "history.json")


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_full_training_writes_a_valid_history_and_model(full_smoke):
    runs, history = full_smoke
    run = runs / "smoke" / "full-mnist"
    assert history.status == "finished" and len(history.epochs) == 2
    assert history.final.crops == 5 and 0 <= history.final.top1 <= history.final.top5 <= 1
    assert [e.lr for e in history.epochs] == pytest.approx([0.001, 0.0001])
    assert history.config["train_subset"] == 800 and history.provenance.device
    assert not (run / "checkpoint.keras").exists()
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert model.output_shape == (None, 10) and getattr(model, "optimizer", None) is None
    # Where its time went: every phase ran, and together they fit in the run's wall time.
    phases = history.phases
    assert list(phases) == list(PHASES) and phases["cache"] == 0.0
    assert all(phases[name] > 0 for name in PHASES if name != "cache")
    steps = sum(e.wall_seconds for e in history.epochs) + history.final.wall_seconds
    assert steps + sum(v for k, v in phases.items() if k != "total") < phases["total"]


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_retraining_keeps_the_features_and_trains_the_classifier(full_smoke, tmp_path):
    runs, full = full_smoke
    weights = runs / "smoke" / "full-mnist" / "model.keras"
    # As if killed in its first epoch, before any checkpoint: the rerun must still retrain.
    started = dataclasses.replace(
        full, experiment="retrain-mnist", mode="retrain", epochs=(), final=None, status="running",
        config=resolve("retrain-mnist", "smoke").to_dict(),
    )  # fmt: skip
    save_history(started, tmp_path / "smoke" / "retrain-mnist" / "history.json")
    history = train("retrain-mnist", "smoke", weights=str(weights), runs_dir=tmp_path, verbose=0)
    source = caffe_layers(keras.saving.load_model(weights))
    result = caffe_layers(keras.saving.load_model(tmp_path / "smoke/retrain-mnist/model.keras"))
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        for before, after in zip(
            source[name].get_weights(), result[name].get_weights(), strict=True
        ):
            np.testing.assert_array_equal(before, after)
    for name in ("fc6", "fc7"):
        assert not np.array_equal(source[name].kernel.numpy(), result[name].kernel.numpy())
    assert history.provenance.weights.path == str(weights)
    assert len(history.provenance.weights.sha256) == 64


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_finished_run_is_not_redone_unless_forced(full_smoke, capsys):
    runs, history = full_smoke
    again = train("full-mnist", "smoke", runs_dir=runs, verbose=1)
    assert again == history and "already finished" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_same_seed_gives_the_same_history(tmp_path):
    first = _run(tmp_path / "a", seed=3)
    second = _run(tmp_path / "b", seed=3)
    other = _run(tmp_path / "c", seed=4)
    assert _metrics(first) == _metrics(second)
    assert _metrics(first) != _metrics(other)


# The command as a user runs it: without the test environment's TF_CPP_MIN_LOG_LEVEL, which would
# let TensorFlow's native notices (which depend on the CPU's instruction set) through to stderr.
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def _train_command(runs: Path) -> list[str]:
    overrides = [a for o in ["epochs=3", "drop_epochs=2", *TINY[1:]] for a in ("--set", o)]
    return [sys.executable, "-m", "paper_repro.cli", "train", "full-mnist", "--preset", "smoke",
            "--runs-dir", str(runs), *overrides]  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_history(tmp_path, capsys):
    """Also the command's log to a pipe: small, one line per epoch, nothing on stderr."""
    history_file = tmp_path / "killed" / "smoke" / "full-mnist" / "history.json"
    checkpoint = history_file.with_name("checkpoint.keras")
    process = subprocess.Popen(_train_command(tmp_path / "killed"), cwd=REPO, env=USER_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while process.poll() is None:  # pytest-timeout bounds the wait
        # The checkpoint follows the history: on a loaded machine it may take seconds to come.
        if checkpoint.exists() and len(json.loads(history_file.read_text())["epochs"]) >= 1:
            time.sleep(1.0)  # into epoch 2
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    # Meanwhile a second run of the same command is refused at once, naming the first.
    assert cli.main(_train_command(tmp_path / "killed")[3:]) == 2
    assert f"is being trained by pid {process.pid} on " in capsys.readouterr().err
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = load_history(history_file)
    assert interrupted.status == "running" and len(interrupted.epochs) < 3

    resumed = subprocess.run(_train_command(tmp_path / "killed"), cwd=REPO, env=USER_ENV,
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert "resuming after epoch" in resumed.stdout
    logged = subprocess.run(_train_command(tmp_path / "whole"), cwd=REPO, env=USER_ENV,
                            capture_output=True, text=True, check=True)  # fmt: skip
    whole = load_history(tmp_path / "whole" / "smoke" / "full-mnist" / "history.json")
    # Output to a pipe, as to a log file: one line per epoch and evaluation, no progress bars,
    # and no TensorFlow start-up lines on stderr.
    epochs = len(whole.epochs)
    assert "\r" not in logged.stdout and "\b" not in logged.stdout
    assert len(logged.stdout) < 1000 * epochs and logged.stdout.count("Epoch ") == epochs
    if fused_update.kernel() is None:  # no C++ compiler here: the line that says so, only
        assert logged.stderr.count("\n") == 1 and "fused Caffe update" in logged.stderr
    else:
        assert logged.stderr == ""
    assert _metrics(load_history(history_file)) == _metrics(whole)
    # The resumed run's phases add the killed process's time to its own.
    earlier, phases = interrupted.phases, load_history(history_file).phases
    assert all(phases[name] >= earlier[name] for name in PHASES)
    assert phases["total"] > earlier["total"] + phases["final_save"]
    resumed_final = load_history(history_file).final
    assert (resumed_final.top1, resumed_final.top5) == (whole.final.top1, whole.final.top5)
    assert [r.after_epoch for r in load_history(history_file).resumes] == [len(interrupted.epochs)]
    assert whole.resumes is None and "resumes" not in whole.to_dict()


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_nan_loss_stops_the_run_and_keeps_the_last_good_epoch(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch (\d+)") as error:
        _run(tmp_path, overrides=[*TINY, "base_lr=1e12"])
    bad_epoch = int(re.search(r"epoch (\d+)", str(error.value)).group(1))
    run = tmp_path / "smoke" / "full-mnist"
    history = load_history(run / "history.json")
    assert history.status == "diverged" and len(history.epochs) == bad_epoch - 1
    assert re.match(rf"the (training|test) loss became nan in epoch {bad_epoch}", history.diverged)
    assert (run / "checkpoint.keras").exists() == (bad_epoch > 1)
    # Rerun, it is refused at once (deterministic, it would diverge again), its files kept.
    kept = (run / "history.json").read_bytes()
    before = r"diverged before \(the (training|test) loss became nan"
    with pytest.raises(TrainingDiverged, match=before):
        _run(tmp_path, overrides=[*TINY, "base_lr=1e12"])
    assert (run / "history.json").read_bytes() == kept


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_a_full_disk_mid_run_is_one_line_keeps_the_last_epoch_and_the_rerun_resumes(
    tmp_path, monkeypatch, capsys
):
    """The disk fills up when epoch 2's checkpoint is flushed, after its history was written
    (a failing history write is test_runs' unit case: the older history stays)."""
    run = tmp_path / "smoke" / "full-mnist"
    flush = runs._fsync_tree

    def full_disk(path: Path) -> None:
        if path.name.startswith(".checkpoint.") and (run / "checkpoint.keras").exists():
            # The run's lock is held all along: another holder is refused.
            refused = pytest.raises(UserError, match="is being trained by pid")
            with refused, runs.lock_run(runs.RunPaths(run)):
                pass
            raise OSError(errno.ENOSPC, "No space left on device")
        flush(path)

    monkeypatch.setattr(runs, "_fsync_tree", full_disk)
    args = ["train", "full-mnist", "--preset", "smoke", "--runs-dir", str(tmp_path)]
    args += [flag for override in TINY for flag in ("--set", override)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {run / 'checkpoint.keras'} (No space" in err
    # The history is written before the checkpoint: it may be one epoch ahead, never behind.
    assert len(load_history(run / "history.json").epochs) == 2
    checkpoint = keras.saving.load_model(run / "checkpoint.keras")
    assert int(checkpoint.optimizer.iterations) == 4  # epoch 1's
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.keras", "history.json", "run.lock"]
    monkeypatch.undo()
    assert cli.main(args) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    history = load_history(run / "history.json")
    assert history.status == "finished" and len(history.epochs) == 2
    # What trained epoch 2 is on record too: this process, resuming after epoch 1.
    assert [resume.after_epoch for resume in history.resumes] == [1]
    assert history.resumes[0].git_commit == history.provenance.git_commit


def _cli(*args) -> int:
    return cli.main(list(args))


def test_weights_of_another_architecture_are_refused(tmp_path, capsys):
    other = keras.Sequential(
        [keras.Input((67, 67, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    other.save(tmp_path / "other.keras")
    code = _cli("train", "retrain-mnist", "--preset", "smoke", "--runs-dir", str(tmp_path),
                "--weights", str(tmp_path / "other.keras"))  # fmt: skip
    assert code == 2 and "not a paper_repro AlexNet" in capsys.readouterr().err


@pytest.mark.usefixtures("tfds_dir")
def test_weights_of_another_class_count_name_the_layer_and_shapes(tmp_path, capsys):
    build_alexnet(5, 67).save(tmp_path / "five.keras")
    code = _cli("train", "full-mnist", "--preset", "smoke", "--runs-dir", str(tmp_path),
                "--weights", str(tmp_path / "five.keras"))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "layer fc8 has shape (4096, 5)" in err and "10 classes" in err


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_corrupted_checkpoint_is_reported_and_left_alone(full_smoke, tmp_path):
    _, history = full_smoke
    run = tmp_path / "smoke" / "full-mnist"
    run.mkdir(parents=True)
    save_history(dataclasses.replace(history, final=None, status="running"), run / "history.json")
    (run / "checkpoint.keras").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="checkpoint is corrupted"):
        train("full-mnist", "smoke", runs_dir=tmp_path, verbose=0)
    assert (run / "checkpoint.keras").read_bytes() == b"not a zip file"


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_changed_settings_on_an_existing_run_are_refused(full_smoke):
    runs, _ = full_smoke
    with pytest.raises(UserError, match=r"started with other settings \(epochs: 2 -> 3\)"):
        train("full-mnist", "smoke", runs_dir=runs, overrides=["epochs=3"], verbose=0)


@pytest.mark.slow
def test_an_experiment_runs_on_a_users_image_folder(image_folder, tmp_path):
    """`--set dataset=FOLDER`: the paper's "further datasets", here two classes of own images."""
    rng = np.random.default_rng(0)
    classes = {name: rng.integers(0, 256, (12, 40, 36, 3)) for name in ("cat", "dog")}
    image_folder(classes, "train")
    folder = image_folder(classes, "test")
    overrides = [f"dataset={folder}", "train_subset=none", "test_subset=none", "batch_size=8",
                 "epochs=1", "mirror=true", "test_crops=10"]  # fmt: skip
    history = train("full-mnist", "smoke", runs_dir=tmp_path / "runs", overrides=overrides,
                    verbose=0)  # fmt: skip
    assert history.status == "finished" and history.dataset == str(folder)
    assert history.final.crops == 10 and history.final.top5 == 1.0  # two classes: always in top 5


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_mixed_precision_and_tensorboard_logs(tmp_path):
    overrides = [*TINY, "precision=mixed_bfloat16", "epochs=1"]
    history = _run(tmp_path, overrides=overrides, tensorboard=True)
    assert list((tmp_path / "smoke/full-mnist/logs").rglob("events.out.tfevents.*"))
    assert history.status == "finished" and np.isfinite(history.epochs[0].train_loss)
    model = keras.saving.load_model(tmp_path / "smoke/full-mnist/model.keras")
    assert caffe_layers(model)["conv1"].compute_dtype == "bfloat16"
    assert caffe_layers(model)["prob"].compute_dtype == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_gpu_path_options_run_on_cpu(tmp_path, monkeypatch, capsys):
    """Prefetching to the device gives the default run's numbers (here the device is the CPU);
    XLA is refused on the CPU with a notice (Keras disables it under op determinism);
    mixed_float16 trains with Keras' loss scaling and stays finite."""
    overrides = [*TINY, "epochs=1"]
    default = _run(tmp_path / "default", overrides=overrides)
    monkeypatch.setattr(fit_module, "_input_device", lambda strategy: "/cpu:0")
    prefetched = _run(tmp_path / "prefetched", overrides=overrides)
    monkeypatch.undo()
    assert _metrics(prefetched) == _metrics(default)
    assert prefetched.final.top1 == default.final.top1
    assert prefetched.final.top5 == default.final.top5
    train("full-mnist", "smoke", runs_dir=tmp_path / "xla", overrides=[*overrides,
          "jit_compile=true"], verbose=1)  # fmt: skip
    assert "XLA stays off on the CPU" in capsys.readouterr().out
    half = _run(tmp_path / "half", overrides=[*overrides, "precision=mixed_float16"])
    assert np.isfinite(half.epochs[0].train_loss) and half.status == "finished"


@pytest.mark.slow
def test_xla_compiles_the_training_step_where_determinism_is_off():
    """In a fresh process (no op determinism): the step is XLA-compiled and agrees with TF's."""
    out = subprocess.run([sys.executable, "-c", _XLA], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    assert out[0] == "True"
    assert float(out[1]) == pytest.approx(float(out[2]), rel=1e-4)


_XLA = """
import numpy as np, keras
from paper_repro.model import build_alexnet
images = np.random.default_rng(0).integers(0, 256, (8, 67, 67, 3)).astype("uint8")
labels = np.arange(8) % 10
losses = []
for jit in (True, False):
    model = build_alexnet(10, 67, seed=0, dropout=0.0)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", jit_compile=jit)
    losses.append([float(model.train_on_batch(images, labels)) for _ in range(3)][-1])
    jit_used = model.jit_compile if jit else jit_used
print(jit_used, *losses)
"""


def test_mixed_float16_scales_the_loss():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_alexnet(10, 67, seed=0)
        model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_a_schedule_in_iterations_drops_and_stops_where_caffe_does(tmp_path, monkeypatch):
    """BVLC's pretraining solver in small: 4 steps an epoch, drop at iteration 6, max_iter 10, so
    epoch 3 is cut after 2 steps and the run ends at iteration 10, as Caffe's max_iter does."""
    seen = {}
    finish = fit_module.finish

    def record_iterations(run, model, splits, history):
        seen["iterations"] = int(model.optimizer.iterations)
        return finish(run, model, splits, history)

    monkeypatch.setattr(fit_module, "finish", record_iterations)
    schedule = ["epochs=3", "drop_epochs=", "drop_iterations=6", "max_iterations=10"]
    history = _run(tmp_path, overrides=[*TINY, *schedule])
    assert seen["iterations"] == 10
    assert [e.lr for e in history.epochs] == pytest.approx([1e-3, 1e-3, 1e-4])
    assert history.status == "finished" and len(history.epochs) == 3


def test_a_cut_short_last_epoch_counts_as_done_on_resume():
    assert fit_module._epochs_done(8, 4, max_iterations=10) == 2
    assert fit_module._epochs_done(10, 4, max_iterations=10) == 3
    assert fit_module._epochs_done(11, 4, max_iterations=None) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_the_random_features_control_retrains_on_frozen_untrained_features(tmp_path, capsys):
    overrides = [*TINY, "epochs=1", "drop_epochs=1"]
    history = _run(tmp_path, "retrain-random-mnist", overrides=overrides, seed=3)
    assert history.status == "finished" and history.start == "random-features"
    assert history.config["features"] == "random" and history.provenance.weights is None
    model = keras.saving.load_model(tmp_path / "smoke/retrain-random-mnist-seed3/model.keras")
    fresh = build_alexnet(10, 67, init="xavier", seed=3)
    _assert_same_weights(fresh.get_layer(FEATURES), model.get_layer(FEATURES))
    assert not model.get_layer(FEATURES).trainable
    trained, untrained = caffe_layers(model), caffe_layers(fresh)
    assert not np.array_equal(trained["fc7"].kernel.numpy(), untrained["fc7"].kernel.numpy())

    cached = _run(tmp_path, "retrain-random-mnist", [*overrides, "cache_features=true"], seed=3)
    assert cached.start == "random-features" and cached.cache is not None
    cached_model = keras.saving.load_model(
        tmp_path / "smoke/retrain-random-mnist-cached-seed3/model.keras"
    )
    _assert_same_weights(fresh.get_layer(FEATURES), cached_model.get_layer(FEATURES))

    code = _cli("train", "retrain-random-mnist", "--preset", "smoke", "--runs-dir",
                str(tmp_path / "w"), "--weights", "caffenet.keras")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "takes no weights; drop --weights" in err
    assert len(err.strip().splitlines()) == 1
    code = _cli("train", "retrain-random-mnist", "--preset", "smoke", "--runs-dir",
                str(tmp_path / "p"), "--set", "features=pretrained")  # fmt: skip
    assert code == 2 and "names no pretraining run: pass --weights" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_the_control_at_a_sources_scale_has_that_rms_on_its_training_images(tmp_path):
    """random_rms scales the untrained conv5 by one factor, so that pool5's RMS on the first
    training images (centre crop) is the value asked; the cache is built from the scaled block."""
    overrides = [*TINY, "epochs=1", "drop_epochs=1", "cache_features=true", "random_rms=0.8"]
    history = _run(tmp_path, "retrain-random-mnist", overrides, seed=3)
    assert history.status == "finished" and history.config["random_rms"] == 0.8
    model = keras.saving.load_model(
        tmp_path / "smoke/retrain-random-mnist-cached-seed3/model.keras"
    )
    splits = data.load_experiment_data(resolve("retrain-random-mnist", "smoke", overrides), seed=3)
    images = data.eval_dataset(splits.train, splits.augment, batch_size=40, placement="host")
    assert feature_activity.of_batches(model, images).rms == pytest.approx(0.8, rel=1e-5)
    scaled, fresh = caffe_layers(model), caffe_layers(build_alexnet(10, 67, init="xavier", seed=3))
    for name in ("conv1", "conv2", "conv3", "conv4"):
        np.testing.assert_array_equal(scaled[name].kernel.numpy(), fresh[name].kernel.numpy())
    factor = scaled["conv5"].bias.numpy() / fresh["conv5"].bias.numpy()  # bias 1 before
    assert 0 < factor[0] < 0.2  # an untrained pool5 is far above a trained one's scale
    np.testing.assert_allclose(factor, factor[0], rtol=1e-6)
    np.testing.assert_allclose(
        scaled["conv5"].kernel.numpy(), factor[0] * fresh["conv5"].kernel.numpy(), rtol=1e-6
    )


def _assert_same_weights(expected: keras.layers.Layer, actual: keras.layers.Layer) -> None:
    for before, after in zip(expected.get_weights(), actual.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
