"""Experiments and presets: the paper's numbers, scaling, validated overrides."""

import dataclasses

import pytest

from paper_repro.errors import UserError
from paper_repro.experiments import PRESETS, dependency_order, resolve


def test_paper_preset_is_the_papers_solver_and_data():
    config = resolve("retrain-cifar10", "paper")
    assert (config.epochs, config.batch_size, config.base_lr, config.drop_epochs) == (
        30,
        80,
        0.001,
        (20,),
    )
    assert (config.momentum, config.weight_decay, config.resize, config.crop) == (
        0.9,
        0.0005,
        256,
        227,
    )
    assert config.mode == "retrain" and config.pretrained == "pretrain-imagenet"
    assert config.mirror and config.test_crops == 10


def test_mnist_is_never_mirrored_and_tested_on_five_crops():
    for preset, runs in PRESETS.items():
        for name, config in runs.items():
            if config.dataset == "mnist":
                assert not config.mirror and config.test_crops == 5, (preset, name)


def test_pretraining_follows_the_caffenet_solver():
    config = resolve("pretrain-imagenet", "paper")
    assert (config.base_lr, config.batch_size, config.gamma) == (0.01, 256, 0.1)
    # caffenet_solver.prototxt: stepsize 100000, max_iter 450000, followed in iterations
    assert config.drop_iterations == (100_000, 200_000, 300_000, 400_000) and not config.drop_epochs
    assert config.max_iterations == 450_000 and config.epochs == 90  # ceil(450000 / 5005)
    assert config.dataset == "imagenet2012"


def test_mini_keeps_the_papers_structure():
    mini = PRESETS["mini"]
    source = set(mini["pretrain-imagenet"].classes)
    target = set(mini["retrain-cifar10"].classes)
    assert source and target and not source & target
    for config in mini.values():
        if config.mode != "pretrain":
            assert config.drop_epochs[0] == pytest.approx(config.epochs * 2 / 3)


def test_retraining_comes_after_pretraining():
    for preset in PRESETS:
        order = dependency_order(preset)
        for name in order:
            needed = PRESETS[preset][name].pretrained
            if needed:
                assert order.index(needed) < order.index(name)


def test_overrides_are_parsed_by_field_type():
    config = resolve(
        "full-mnist",
        "smoke",
        ["epochs=3", "base_lr=0.01", "mirror=true", "classes=1,2,3", "test_subset=none"],
    )
    assert config.epochs == 3 and config.base_lr == 0.01 and config.mirror
    assert config.classes == (1, 2, 3) and config.test_subset is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", r"unknown --set key 'epoch' \(did you mean epochs"),
        ("epochs=three", r"--set epochs=three: expected int"),
        ("mirror=maybe", "expected bool"),
        ("epochs", "--set takes key=value"),
        ("crop=300", "crop 300 is larger than resize 76"),
        ("mode=finetune", "mode must be one of pretrain, full, retrain"),
        ("random_rms=1", "random_rms rescales the untrained features .* features are pretrained"),
        (
            "features_end=relu5",
            "features_end=relu5 ends a retraining's frozen block early; .*"
            "mode is full, which freezes nothing: drop --set features_end",
        ),
        ("features_end=conv4", "features_end must be one of pool5, relu5"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        resolve("full-mnist", "smoke", [override])


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_the_controls_rms_must_be_a_positive_finite_number(value):
    with pytest.raises(UserError, match=f"random_rms must be a finite number > 0, got {value}"):
        resolve("retrain-random-mnist", "smoke", [f"random_rms={value}"])
    assert resolve("retrain-random-mnist", "smoke", ["random_rms=1"]).random_rms == 1.0


def test_unknown_experiment_and_preset_list_the_valid_ones():
    with pytest.raises(UserError, match=r"did you mean retrain-mnist.*smoke has: pretrain"):
        resolve("retrain-mnst", "smoke")
    with pytest.raises(UserError, match=r"unknown preset .papr. \(did you mean paper.*mini"):
        resolve("full-mnist", "papr")


def test_experiments_import_no_tensorflow():
    """The choices declared here are read by the history and the figures, made without it."""
    import subprocess
    import sys

    code = "import sys, paper_repro.experiments; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_schedule_is_in_epochs_or_in_iterations():
    with pytest.raises(UserError, match="two schedules: keep one"):
        resolve("full-mnist", "paper", ["drop_iterations=1000"])
    config = resolve("full-mnist", "paper", ["drop_epochs=", "drop_iterations=1000"])
    assert config.drop_iterations == (1000,) and config.drop_epochs == ()


def test_every_retraining_has_its_random_features_control():
    """The control differs from retraining in its block alone, but for the mini's step size,
    where rule F gives each frozen arm its own (tests/test_study.py holds it)."""
    for preset, runs in PRESETS.items():
        retrains = {n for n, c in runs.items() if (c.mode, c.features) == ("retrain", "pretrained")}
        assert retrains, preset
        for name in retrains:
            control = runs[name.replace("retrain-", "retrain-random-")]
            assert (control.features, control.pretrained) == ("random", None)
            same = dataclasses.replace(
                control, features="pretrained", pretrained=runs[name].pretrained,
                base_lr=runs[name].base_lr,
            )  # fmt: skip
            assert same == runs[name], f"{preset}: the control differs from {name} beyond features"
            assert preset == "mini" or control.base_lr == runs[name].base_lr, preset
    with pytest.raises(UserError, match=r"features=random .* this run's mode is full"):
        resolve("full-mnist", "smoke", ["features=random"])
    with pytest.raises(UserError, match="features must be one of pretrained, random"):
        resolve("retrain-mnist", "smoke", ["features=imagenet"])


def test_a_retraining_ending_at_relu5_draws_fc6_and_fc7_anew():
    """relu5 hands fc6 another input than the source's fc6 was trained on: keeping fc6 and fc7
    is refused with the setting that fixes it; the control and the oracle draw them anyway."""
    with pytest.raises(UserError, match=r"cannot be kept: add --set keep_fc67=false$"):
        resolve("retrain-mnist", "smoke", ["features_end=relu5"])
    fresh = resolve("retrain-mnist", "smoke", ["features_end=relu5", "keep_fc67=false"])
    assert fresh.features_end == "relu5" and not fresh.keep_fc67
    for experiment in ("retrain-random-mnist", "retrain-oracle-mnist"):
        assert resolve(experiment, "smoke", ["features_end=relu5"]).features_end == "relu5"
