"""pool5's activity (the study's diagnosis): counted right on generated values, and for a run,
that of the cached centre crops its own per-epoch test read, through the command, which checks
every run directory before it measures the first."""

import dataclasses

import numpy as np
import pytest
from conftest import TINY

from paper_repro import cache, cli, feature_activity
from paper_repro.model import build_alexnet
from paper_repro.training import train

ONE_EPOCH = [*TINY, "epochs=1", "drop_epochs=1"]


def test_activity_counts_active_values_per_image_silent_channels_and_the_rms():
    features = np.zeros((2, 1, 2, 3), np.float32)  # 2 images of 1 x 2 positions x 3 channels
    features[0, 0, 0, 0] = 1.0
    features[1, 0, 1, 0] = 2.0
    features[1, 0, 0, 1] = 0.5
    activity = feature_activity.of_features(features)
    rms = np.sqrt((1.0 + 4.0 + 0.25) / 12)  # over 2 images x 6 values
    assert dataclasses.astuple(activity) == pytest.approx((2, 6, 1.5, 3, 1, rms))
    assert activity.row() == ["1.5 of 6", "1 of 3", f"{rms:.2f}"]


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_a_runs_activity_is_that_of_the_centre_crops_its_test_read(tmp_path, capsys):
    weights = tmp_path / "source.keras"
    build_alexnet(10, 67, init="xavier", seed=5).save(weights)
    history = train(
        "retrain-mnist", "smoke", weights=str(weights), runs_dir=tmp_path, verbose=0,
        overrides=[*ONE_EPOCH, "cache_features=true"],
    )  # fmt: skip
    cached = np.load(tmp_path / cache.CACHE_DIR_NAME / history.cache.test / "features.npy")[:, 0]
    run = tmp_path / "smoke" / "retrain-mnist-cached"
    measured, expected = feature_activity.of_run(run), feature_activity.of_features(cached)
    assert dataclasses.astuple(measured) == pytest.approx(dataclasses.astuple(expected), rel=1e-6)
    assert 0 < feature_activity.of_run(run).active_per_image < 256
    assert cli.main(["feature-activity", str(run), "--images", "30"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].strip("| ").split(" | ")
    accuracy = f"{100 * history.epochs[-1].test_accuracy:.2f}"
    assert row == [str(run), "0", accuracy, *feature_activity.of_features(cached[:30]).row()]
    # A bad directory late in the list stops the command before the first run is measured.
    assert cli.main(["feature-activity", str(run), str(tmp_path / "no-such-run")]) == 2
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["feature-activity", "no-such-run"], "no-such-run: not a finished run directory"),
        (["feature-activity", ".", "--images", "0"], "--images takes a positive number"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
