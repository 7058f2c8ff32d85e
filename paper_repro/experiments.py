"""The paper's experiments as plain data, at three scales (presets).

An experiment is one training run of the paper: ``pretrain-imagenet`` (the ILSVRC-12 network whose
features everything else reuses), then ``full-DATASET`` (all layers from scratch) and
``retrain-DATASET`` (features frozen, classifier trained) for MNIST, CIFAR-10 and CIFAR-100, and
beside each retraining its control ``retrain-random-DATASET`` and its oracle
``retrain-oracle-DATASET`` (below). A preset says how big each run is; every field of a run is a
``RunConfig`` field and can be changed from the command line with ``--set key=value`` (validated
against the field's type).

paper
    ``paper-repro reproduce --preset paper`` -- the real thing, for a GPU. Pretraining follows
    BVLC's CaffeNet solver (../shared/caffe/caffenet_solver.prototxt) because the paper trained
    "just like Krizhevsky et al.": lr 0.01 divided by 10 every 100,000 iterations for 450,000
    iterations of batch 256, followed in iterations (``drop_iterations``, ``max_iterations``):
    with 1,281,167 images that is 89.9 epochs, the 90th cut short at iteration 450,000. The six
    transfer runs use the paper's solver, stated in epochs: 30 epochs, batch 80, lr 0.001 ->
    0.0001 after epoch 20 (iteration 20 * ceil(N / 80): 15,000 for MNIST, 12,500 for CIFAR, as in
    Caffe, since 80 divides both), momentum 0.9, decay 0.0005; resize 256, random 227 crop, mirror
    except MNIST; 10-crop test (5 for MNIST). Retraining starts from the pretrained network (or
    the one given by ``--weights``, such as an imported CaffeNet): conv1 .. conv5 copied and
    frozen, fc6 and fc7 copied and trained (``--set keep_fc67=false`` draws them fresh), fc8 new
    for the target's classes; full training starts every layer from the paper's initialisation
    (``init``, seeded), never from the weights. Expected:
    Table III (full / retrain: MNIST 99.68 / 99.54, CIFAR-10 89.99 / 89.14, CIFAR-100
    63.65 / 67.68) and pretraining top-1 59.23 %, top-5 83.58 %. Cost: days of GPU time for
    pretraining (or import CaffeNet instead: ``paper-repro import-caffe``), hours per transfer run.

mini
    ``paper-repro reproduce --preset mini`` -- a CPU analog of the whole paper on the data shipped
    with this project (MNIST, CIFAR-10), keeping its structure: the pretraining source is
    CIFAR-10's classes 0-4 (airplane, automobile, bird, cat, deer), distinct from the targets
    MNIST (a balanced 12,000 of its training images) and CIFAR-10's classes 5-9 (dog, frog, horse,
    ship, truck); full, retrain, the control and the oracle (below) for each target; the paper's
    solver with the epochs scaled (30 -> 9) and the drop at two thirds (after epoch 6); resize 76,
    crop 67.
    It is the first mini (``first-mini``) with what the transfer study's selection rule chose on
    validation splits (figures/study/PLAN.md, figures/study/table.md): dropout 0 when retraining,
    in the control too; each frozen arm at the step size chosen for its arm and target (retraining
    0.03, the control 0.001, the oracle 0.01 on MNIST and 0.03 on CIFAR-10), still for 9 epochs;
    and, as in the study, retraining on cached features (10 fixed views per image, 5 for MNIST).
    Each seed pretrains its own source (``SOURCE_PER_SEED``). The main job is seed 0: 4,150 s
    inside its nine runs on a 2-core AMD EPYC that ran 1.83 times slower than the machine of
    the earlier timings (about 38 minutes there; figures/README.md), so it does not fit the
    35 minutes the study's plan asked of it, nor 3 seeds its 45; ``--seeds 0,1,2`` gives the
    committed histories, one seed after another. Expected (test, multi-crop, seed 0): full /
    retrain / control / oracle 98.75 / 94.42 / 95.43 / 98.87 on MNIST and 87.14 / 75.30 /
    74.88 / 87.46 on CIFAR-10 classes 5-9; the mean over seeds 0-2, 98.68 / 94.54 / 95.19 /
    98.77 and 86.71 / 75.51 / 74.07 / 87.23. Results: figures/README.md; with every frozen arm
    at lr 0.001 and no oracle: figures/mini-lr-0.001/README.md.

first-mini
    ``paper-repro reproduce --preset first-mini`` -- mini as it was first run
    (figures/first-mini/README.md), before the transfer study: dropout 0.5 when retraining,
    retraining on random crops of the images. Two changes the scale forced, both measured before the
    preset was fixed (on training loss, never on a test set), and kept by mini: CaffeNet's Gaussian
    filler needs thousands of iterations before the loss leaves ln(classes) -- 3 epochs of 6,000
    MNIST images stayed at chance -- so it uses Caffe's ``xavier`` filler (83 % after 2 such
    epochs); and with it CaffeNet's pretraining lr 0.01 gives NaN in the first epoch, so it also
    pretrains with the paper's solver (lr 0.001). Cost: about 42 minutes for its five runs on an
    idle 2-core CPU (measured). Histories: figures/first-mini/.

Controls
    Every preset has, for each target dataset, ``retrain-random-DATASET``: the same run as
    ``retrain-DATASET`` (``features=random``) but its frozen conv1 .. pool5 are a fresh, untrained
    network drawn by the preset's ``init`` filler with the run's seed, under a new classifier. It
    needs no pretrained weights (``--weights`` is not given to it) and its preprocessing mean is
    the target's own training mean, there being no source. Whatever retraining gains over it is
    what the pretrained features bring: any transfer claim is read against it
    (figures/study/README.md: at mini's 67 pixels, random frozen features alone gave a usable MNIST
    classifier).

Oracle
    Every preset also has, for each target, ``retrain-oracle-DATASET``, the positive control
    (figures/study/PLAN.md, "Features or optimiser?"): retraining's recipe (``features=oracle``)
    on the frozen conv1 .. pool5 of the finished ``full-DATASET`` run with the same seed (in every
    preset, also where the seeds share one pretraining), with that network's own mean (the
    target's) and fc6, fc7 and fc8 drawn fresh by ``init`` with the run's seed, as the control's
    are (``keep_fc67`` false), so that the oracle and the control differ only in the frozen block.
    It bounds what the recipe reaches on features known to fit the target, so it runs after that
    full run (``dependency_order``); ``--weights`` (reproduce) is not given to it.

Seeds
    ``--seeds 0,1,2`` (reproduce) runs every transfer experiment once per seed, in
    ``EXPERIMENT[-cached]-seedN`` run directories (seed 0 keeps the plain name). The pretraining
    runs once per source: in mini, first-mini and smoke each seed pretrains its own and retrains
    from it (``SOURCE_PER_SEED``); in paper once, with seed 0, and every seed retrains from it (as
    the paper's all start from one). Tables and Figure 5 show mean ± sample standard deviation
    and min-max across the seeds found in the histories.

Selection rule
    Settings (learning rate, epochs, filler, ...) are chosen before the final runs on a validation
    split carved from the training images, never on the test split: ``--set
    train_split=train[:90%] --set test_split=train[90%:]`` (tfds' split slicing: the first 90 % of
    the training split trains, the last 10 % is the validation set that the per-epoch and final
    accuracies then report; the two are disjoint). ``train_subset`` and ``classes`` apply within
    each slice. A preset's settings are frozen once chosen; the test split is used only for the
    runs whose numbers are reported. An image folder's split is a sub-folder: carve a validation
    folder instead (a sliced split name is refused there).

study
    ``paper-repro study CELL --seeds 0,1,2`` -- the transfer study's base (figures/study/README.md):
    first-mini on validation splits (MNIST trains on ``train[:50000]``, CIFAR-10 on
    ``train[:45000]``; each reports accuracy on the rest of its training split). Its cells, one
    knob changed each, are in ``paper_repro/study.py``; its plan and selection rule, written
    before its first run, in figures/study/PLAN.md.

smoke
    ``paper-repro reproduce --preset smoke`` -- for tests: first-mini's settings on 800 training
    and 200 test images, 2 epochs; well under a minute per run on a 2-core CPU. Its accuracies mean
    nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from paper_repro import arms, datasets
from paper_repro.errors import UserError

# The choices of a run, declared here once: this module needs no TensorFlow, so the history
# (read without TensorFlow), the data pipelines, the model and the command line all take them
# from here.
MODES = ("pretrain", "full", "retrain")
PLACEMENTS = ("auto", "host", "device")  # where the augmentation runs (``auto``: GPU if any)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
INITS = ("gaussian", "xavier")  # Caffe's weight fillers (model._filler)
# What a retraining's frozen conv1 .. pool5 are: a pretrained network's, a fresh untrained
# network's (the control, drawn by ``init`` with the run's seed), or those of the full training
# on the target with the run's seed (the oracle). A full run's features stay "pretrained".
FEATURE_SOURCES = ("pretrained", "random", "oracle")
# Where a retraining's frozen block ends: at pool5, as in the paper, or one step before, at relu5,
# whose values keep conv5's spatial layout (3x3x256 at 67 pixels, pool5's layout at 131).
FEATURE_ENDS = ("pool5", "relu5")
# The frozen blocks only a retraining has, in words.
_RETRAIN_ONLY = {"random": "untrained features", "oracle": "the features of a full training"}
CROPS = (1, 5, 10)  # test views: centre; corners and centre; those and their mirrors
CACHE_DTYPES = ("float32", "float16")
STRATEGIES = ("default", "mirrored", "multi-worker")  # tf.distribute, by name
# The settings that take one of a few values: checked by ``RunConfig`` and listed by
# ``paper-repro settings`` from this one table.
CHOICES: dict[str, tuple] = {
    "mode": MODES,
    "augment_on": PLACEMENTS,
    "precision": PRECISIONS,
    "init": INITS,
    "test_crops": CROPS,
    "cache_views": CROPS,
    "cache_dtype": CACHE_DTYPES,
    "features": FEATURE_SOURCES,
    "features_end": FEATURE_ENDS,
}
JOIN_TIMEOUT = 300.0  # seconds for every worker of a cluster to start (launchers take minutes)
MAX_SEED = 2**32 - 1  # numpy.random.seed's limit (keras.utils.set_random_seed)
# Retraining with any seed starts from the pretraining run with this seed, one source for every
# seed as in the paper, except in the presets below.
SHARED_SOURCE_SEED = 0
# Presets that pretrain one source per seed, retraining with seed s starting from source s: at
# mini's scale the transfer study found that retraining's spread across seeds follows the source
# (figures/study/README.md), which one shared source would hide. The paper preset keeps one
# (days of GPU each; ``--weights`` stands in for it with any preset).
SOURCE_PER_SEED = frozenset({"mini", "first-mini", "smoke"})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on; saved in its history, compared on resume."""

    dataset: str
    mode: str
    epochs: int = 30
    batch_size: int = 80
    base_lr: float = 0.001
    drop_epochs: tuple[float, ...] = (20,)
    # A schedule stated in iterations (BVLC's CaffeNet solver): drops at these iterations instead
    # of drop_epochs, and training stops at max_iterations, within its last epoch if need be.
    drop_iterations: tuple[int, ...] | None = None
    max_iterations: int | None = None
    gamma: float = 0.1
    # A linear warm-up (not in Caffe or the paper; for the transfer study's source): the learning
    # rate grows from base_lr / steps to the schedule's value over this many epochs' steps.
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0005
    resize: int = 256
    crop: int = 227
    mirror: bool = True
    test_crops: int = 10
    train_split: str = "train"
    test_split: str = "test"
    classes: tuple[int, ...] | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    groups: int = 2
    dropout: float = 0.5
    init: str = "gaussian"
    keep_fc67: bool = True
    # Retraining on pretrained features: subtract the target's own channel mean instead of the
    # source's (the paper keeps the source's, as the features were learned under it).
    target_mean: bool = False
    pretrained: str | None = None  # the experiment it starts from (arms.Arm.source)
    features: str = "pretrained"  # retrain runs: FEATURE_SOURCES
    features_end: str = "pool5"  # retrain runs: FEATURE_ENDS
    # The control (features=random) at a trained block's scale: its untrained pool5 brought to
    # this root mean square on the first RANDOM_RMS_IMAGES training images (training/network.py).
    # Xavier's untrained pool5 is 13-23, a trained source's 0.7-1.4
    # (figures/study/feature_activity.md).
    random_rms: float | None = None
    augment_on: str = "auto"
    precision: str = "float32"
    jit_compile: bool = False  # XLA for the training step
    # Retrain runs: train the classifier on cached pool5 values of cache_views fixed crops.
    cache_features: bool = False
    cache_views: int = 10
    cache_dtype: str = "float32"

    def __post_init__(self):
        for name, choices in CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        if self.features in _RETRAIN_ONLY and self.mode != "retrain":
            raise UserError(
                f"features={self.features} freezes {_RETRAIN_ONLY[self.features]} under a new "
                f"classifier, a retrain run; this run's mode is {self.mode}: drop --set "
                f"features={self.features}"
            )
        if self.random_rms is not None:
            self._check_random_rms()
        if self.features_end != "pool5":
            self._check_features_end()
        if self.target_mean and (self.mode != "retrain" or self.features != "pretrained"):
            raise UserError(
                "target_mean replaces a pretrained network's mean when retraining on its "
                f"features; this run (mode {self.mode}, features {self.features}) already uses "
                "its own data's mean: drop --set target_mean"
            )
        if self.cache_features and self.mode != "retrain":
            raise UserError(
                f"cache_features needs frozen features, so only retrain runs can use it; "
                f"this run's mode is {self.mode}: drop --cache-features"
            )
        for name in ("epochs", "batch_size", "resize", "crop"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise UserError(
                f"max_iterations must be at least 1, got {self.max_iterations}: --set "
                "max_iterations=N, or --set max_iterations=none to run every epoch"
            )
        if self.drop_iterations is not None and self.drop_epochs:
            raise UserError(
                f"drop_epochs {list(self.drop_epochs)} and drop_iterations "
                f"{list(self.drop_iterations)} are two schedules: keep one (--set drop_epochs= "
                "clears the epochs)"
            )
        self._check_drops()
        if not 0 <= self.warmup_epochs < math.inf:
            raise UserError(
                f"warmup_epochs must be a finite number of epochs >= 0, got {self.warmup_epochs}"
            )
        if self.crop > self.resize:
            raise UserError(f"crop {self.crop} is larger than resize {self.resize}: lower crop")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.test_crops == 10 and not self.mirror:
            raise UserError(
                "test_crops 10 adds the mirrored views, but this run does not mirror (mirror "
                "false): use --set test_crops=5 (or --set mirror=true)"
            )
        self._check_solver()

    def _check_drops(self) -> None:
        """The learning rate drops at increasing, finite points, each named once: a NaN or
        infinite drop cannot be scheduled (a traceback in the first epoch); out of order, Keras'
        piecewise schedule gives rates other than the step policy's, without a word; a drop
        named twice falls twice at once, which a smaller gamma says plainly."""
        for name, valid, unit in (
            ("drop_epochs", lambda drop: 0 < drop < math.inf, "a finite number of epochs > 0"),
            ("drop_iterations", lambda drop: drop >= 1, "an iteration >= 1"),
        ):
            drops = list(getattr(self, name) or ())
            if all(map(valid, drops)) and all(a < b for a, b in itertools.pairwise(drops)):
                continue
            fixed = ",".join(f"{drop:g}" for drop in sorted(set(filter(valid, drops))))
            raise UserError(
                f"{name} must each be {unit}, in increasing order and named once, got {drops}: "
                f"--set {name}={fixed or 'VALUES'}"
            )

    def _check_features_end(self) -> None:
        if self.mode != "retrain":
            raise UserError(
                f"features_end={self.features_end} ends a retraining's frozen block early; this "
                f"run's mode is {self.mode}, which freezes nothing: drop --set features_end"
            )
        if self.keep_fc67 and self.features == "pretrained":
            raise UserError(
                f"features_end={self.features_end} gives fc6 another input than the source's "
                "fc6 was trained on, so fc6 and fc7 cannot be kept: add --set keep_fc67=false"
            )

    def _check_random_rms(self) -> None:
        if self.features != "random":
            raise UserError(
                "random_rms rescales the untrained features of the random-features control; this "
                f"run's features are {self.features}: drop --set random_rms (or use a "
                "retrain-random-DATASET experiment)"
            )
        if not 0 < self.random_rms < math.inf:
            raise UserError(
                f"random_rms must be a finite number > 0, got {self.random_rms}: "
                "--set random_rms=VALUE"
            )

    def _check_solver(self) -> None:
        """The solver's numbers, checked here rather than after a first epoch's NaN loss
        (``not low <= x < high`` also refuses NaN)."""
        ranges = {  # name: (lowest, highest, whether the lowest itself is allowed)
            "base_lr": (0.0, math.inf, False),
            "gamma": (0.0, math.inf, False),
            "momentum": (0.0, 1.0, True),
            "weight_decay": (0.0, math.inf, True),
        }
        for name, (low, high, closed) in ranges.items():
            value = getattr(self, name)
            if not (low <= value if closed else low < value) or not value < high:
                interval = f"{'[' if closed else '('}{low:g}, {high:g})"
                raise UserError(
                    f"{name} must be a finite number in {interval}, got {value}: --set {name}=VALUE"
                )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


# What each ``RunConfig`` field means, for ``paper-repro settings`` (its type and default come from
# the field itself). A test holds it to the fields: a new field needs its line here.
MEANINGS: dict[str, str] = {
    "dataset": "a tfds name (mnist, cifar10, cifar100, imagenet2012) or an image folder",
    "mode": "full trains every layer from scratch, retrain freezes conv1 .. pool5; set by the "
    "experiment",
    "epochs": "training epochs",
    "batch_size": "images per training step (the global batch, over every device)",
    "base_lr": "the learning rate before any drop",
    "drop_epochs": "epochs after which the learning rate is multiplied by gamma",
    "drop_iterations": "iterations at which it drops instead (BVLC's CaffeNet solver)",
    "max_iterations": "stop after this many iterations, within the last epoch if need be",
    "gamma": "the factor of each learning-rate drop",
    "warmup_epochs": "a linear learning-rate warm-up over this many epochs (0: none)",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay, as Caffe's",
    "resize": "images are resized to this square size first",
    "crop": "the network's input size: random crops in training, test views at test",
    "mirror": "random horizontal flips in training (false for digits)",
    "test_crops": "test views: the centre; corners and centre; those and their mirrors",
    "train_split": "the split trained on (tfds slicing such as train[:90%]; a folder's sub-folder)",
    "test_split": "the split the accuracies are measured on",
    "classes": "keep these class numbers, relabelled in this order (e.g. 5,6,7,8,9)",
    "train_subset": "a class-balanced subset of this many training images",
    "test_subset": "a class-balanced subset of this many test images",
    "groups": "grouped convolutions of conv2, conv4 and conv5 (CaffeNet's 2; 1: none)",
    "dropout": "the dropout rate of fc6 and fc7",
    "init": "the weight filler, as Caffe's",
    "keep_fc67": "retraining: fc6 and fc7 copied from the source (false: drawn fresh)",
    "target_mean": "retraining on pretrained features: subtract the target's mean pixel instead "
    "of the source's",
    "pretrained": "the experiment whose finished model the run starts from; set by the experiment",
    "features": "a retraining's frozen block: a pretrained network's, an untrained one's (the "
    "control) or the full run's (the oracle); set by the experiment",
    "features_end": "retraining: the frozen block ends at pool5 or, keeping conv5's spatial "
    "layout, at relu5",
    "random_rms": "the control's untrained pool5 brought to this root mean square",
    "augment_on": "where the augmentation runs (auto: the GPU if there is one)",
    "precision": "the dtype policy: mixed precision is for a GPU",
    "jit_compile": "XLA for the training step (stays off on the CPU, where runs are deterministic)",
    "cache_features": "retraining: train the classifier on pool5 values computed once per view "
    "(as --cache-features)",
    "cache_views": "the feature cache's fixed views per image",
    "cache_dtype": "the feature cache's dtype",
}


@functools.cache
def _hints() -> dict[str, Any]:
    """``RunConfig``'s field types, evaluated once (its annotations are strings)."""
    return typing.get_type_hints(RunConfig)


def _optional(hint) -> bool:
    args = typing.get_args(hint)
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return union and type(None) in args


def _plain(hint):
    """``hint`` without its ``| None``."""
    if not _optional(hint):
        return hint
    return next(a for a in typing.get_args(hint) if a is not type(None))


def setting_type(key: str, none: bool = True) -> str:
    """What ``--set KEY=...`` accepts, in words: the listing's type and the refusal's "expected"
    say it alike (``none``: with the ``or none`` of an optional setting, which a refusal says as
    how to clear it instead)."""
    hint = _hints()[key]
    plain = _plain(hint)
    if key in CHOICES:
        kind = "one of " + ", ".join(map(str, CHOICES[key]))
    elif typing.get_origin(plain) is tuple:
        kind = f"{typing.get_args(plain)[0].__name__}s, comma-separated"
    else:
        kind = {bool: "bool (true or false)", str: "text"}.get(plain, plain.__name__)
    return f"{kind}, or none" if none and _optional(hint) else kind


def setting_text(value: Any) -> str:
    """A setting's value as ``--set`` takes it back: ``none``, ``true``, ``20,25``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(setting_text, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def clearing(key: str) -> str:
    """How to clear a setting that can be empty (``--set classes=none``); empty for the others."""
    hint = _hints()[key]
    if _optional(hint):
        return f"--set {key}=none clears it"
    return f"--set {key}= clears it" if typing.get_origin(hint) is tuple else ""


def settings_table(config: RunConfig | None = None) -> list[tuple[str, str, str, str]]:
    """``(key, type, value, meaning)`` for every field: ``config``'s values, else the defaults
    (the paper's transfer runs'); a field every experiment sets itself shows as such."""
    rows = []
    for field in dataclasses.fields(RunConfig):
        if config is not None:
            value = setting_text(getattr(config, field.name))
        elif field.default is dataclasses.MISSING:
            value = "(the experiment's)"
        else:
            value = setting_text(field.default)
        kind, meaning = setting_type(field.name), MEANINGS[field.name]
        rows.append((field.name, kind, value or "(empty)", meaning))
    return rows


def recorded_settings(recorded: Mapping[str, Any], dataset: str, mode: str) -> dict:
    """A run's settings as a history recorded them (``RunConfig.to_dict``), with any field added
    since at its default, which it had then (fields are only ever added)."""
    return {**RunConfig(dataset=dataset, mode=mode).to_dict(), **recorded}


def check_seed(seed: int) -> None:
    """A seed keys every random draw of a run and is NumPy's global seed too: 0 .. 2**32 - 1."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= seed <= MAX_SEED
    ):
        raise UserError(
            f"seed must be a non-negative integer up to {MAX_SEED} (--seed), got {seed!r}"
        )


def pretrains(preset: str, experiment: str | None) -> bool:
    """Whether ``experiment`` is a pretraining run of ``preset`` (the source that ``--weights``
    stands in for), rather than a transfer run or none."""
    config = preset_runs(preset).get(experiment)
    return config is not None and config.mode == "pretrain"


def source_seed(preset: str, seed: int, source: str) -> int:
    """The seed of the run ``source`` that a run of ``preset`` with ``seed`` starts from: a
    pretraining's is shared by every seed unless the preset pretrains one per seed; any other
    source (the oracle's full training) is trained once per seed, so it is the run's own."""
    shared = pretrains(preset, source) and preset not in SOURCE_PER_SEED
    return SHARED_SOURCE_SEED if shared else seed


def _check_choice(name: str, value, choices: Iterable) -> None:
    if value not in choices:
        names = [str(choice) for choice in choices]
        close = _did_you_mean(str(value), names, n=1)
        raise UserError(f"{name} must be one of {', '.join(names)}; got {value!r}{close}")


def _paper() -> dict[str, RunConfig]:
    pretrain = RunConfig(
        "imagenet2012", "pretrain", epochs=90, batch_size=256, base_lr=0.01, drop_epochs=(),
        drop_iterations=(100_000, 200_000, 300_000, 400_000), max_iterations=450_000,
        test_split="validation",
    )  # fmt: skip
    runs = {"pretrain-imagenet": pretrain}
    for dataset in datasets.PAPER_TARGETS:
        entry = datasets.REGISTRY[dataset]
        for arm in arms.ARMS:
            runs[arm.experiment(dataset)] = RunConfig(
                dataset, arm.mode, mirror=entry.mirror, test_crops=entry.test_crops,
                features=arm.features, pretrained=arm.source_of(dataset), keep_fc67=arm.keep_fc67,
            )  # fmt: skip
    return runs


PAPER = _paper()

_MINI_SOURCE_CLASSES = (0, 1, 2, 3, 4)
_MINI = {"resize": 76, "crop": 67, "epochs": 9, "drop_epochs": (6,), "init": "xavier"}
# The mini's targets, each with what it keeps of its dataset: a balanced 12,000 MNIST images,
# CIFAR-10's classes 5-9 (the source has the others).
_MINI_TARGETS = {"mnist": {"train_subset": 12_000}, "cifar10": {"classes": (5, 6, 7, 8, 9)}}


def _scaled(source: RunConfig, targets: Mapping[str, Mapping[str, Any]], **scale) -> dict:
    """A preset: the source's pretraining, then every arm of the paper for each target, with the
    target's own changes and ``scale``'s."""
    runs = {"pretrain-imagenet": dataclasses.replace(source, **scale)}
    for arm in arms.ARMS:
        for dataset, changes in targets.items():
            name = arm.experiment(dataset)
            runs[name] = dataclasses.replace(PAPER[name], **changes, **scale)
    return runs


FIRST_MINI = _scaled(
    dataclasses.replace(PAPER["full-cifar10"], mode="pretrain", classes=_MINI_SOURCE_CLASSES),
    _MINI_TARGETS,
    **_MINI,
)
# What the transfer study's rule chose (figures/study/table.md: the no-dropout cell, retraining
# and control), retrained as the study measured it, on cached features.
_MINI_RETRAINING = {"dropout": 0.0, "cache_features": True}
# Rule F (figures/study/PLAN.md): each frozen arm at the rate rule A chose for its arm and target
# on the study's validation grid (figures/study/table.md, "Rule A"), at the mini's 9 epochs, which
# rule F's time limit fixes. A test holds these to ``study.rule_a_from`` on the committed histories.
_MINI_RATES = {
    "retrain-mnist": 0.03, "retrain-cifar10": 0.03,
    "retrain-random-mnist": 0.001, "retrain-random-cifar10": 0.001,
    "retrain-oracle-mnist": 0.01, "retrain-oracle-cifar10": 0.03,
}  # fmt: skip
MINI = {
    name: dataclasses.replace(config, **_MINI_RETRAINING, base_lr=_MINI_RATES[name])
    if config.mode == "retrain"
    else config
    for name, config in FIRST_MINI.items()
}


def _on_validation_split(config: RunConfig) -> RunConfig:
    """``config`` training on ``train[:N]`` and reporting on ``train[N:]``, N the registry's
    ``validation_from`` for its dataset."""
    start = datasets.REGISTRY[config.dataset].validation_from
    return dataclasses.replace(
        config, train_split=f"train[:{start}]", test_split=f"train[{start}:]"
    )


# The transfer study's base (paper_repro/study.py, figures/study/PLAN.md): the first mini, each run
# training on the first images of its training split and reporting accuracy on the rest, a
# validation split that settings are chosen on, so that choosing never looks at a test split.
STUDY = {name: _on_validation_split(config) for name, config in FIRST_MINI.items()}

_SMOKE = {**_MINI, "epochs": 2, "drop_epochs": (1,), "train_subset": 800, "test_subset": 200}
SMOKE = _scaled(FIRST_MINI["pretrain-imagenet"], {"mnist": {}}, **_SMOKE)

PRESETS: dict[str, dict[str, RunConfig]] = {
    "paper": PAPER,
    "mini": MINI,
    "first-mini": FIRST_MINI,
    "study": STUDY,
    "smoke": SMOKE,
}


def _did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """The ``n`` closest spellings, else the names that contain ``value`` (``lr``: ``base_lr``)."""
    names = list(choices)
    close = (
        difflib.get_close_matches(value, names, n=n)
        or [name for name in names if value and value in name][:n]
    )
    return f" (did you mean {', '.join(close)}?)" if close else ""


def preset_runs(preset: str) -> dict[str, RunConfig]:
    if preset not in PRESETS:
        raise UserError(
            f"unknown preset '{preset}'{_did_you_mean(preset, PRESETS)}; "
            f"presets: {', '.join(PRESETS)}"
        )
    return PRESETS[preset]


def resolve(experiment: str, preset: str, overrides: Iterable[str] = ()) -> RunConfig:
    """The config of ``experiment`` at ``preset`` with ``key=value`` overrides applied."""
    runs = preset_runs(preset)
    if experiment not in runs:
        known = sorted({name for p in PRESETS.values() for name in p})
        where = "" if experiment not in known else f" in preset '{preset}'"
        raise UserError(
            f"unknown experiment '{experiment}'{where}{_did_you_mean(experiment, runs)}; "
            f"{preset} has: {', '.join(runs)}"
        )
    return apply_overrides(runs[experiment], overrides)


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """``--set key=value`` pairs parsed by the type of the field they change."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep:
            hint = (
                f": give {key} a value{_example(key, getattr(config, key))}"
                if key in fields
                else "; `paper-repro settings` lists the keys"
            )
            raise UserError(f"--set takes key=value, got '{item}'{hint}")
        if key not in fields:
            raise UserError(
                f"unknown --set key '{key}'{_did_you_mean(key, fields)}; `paper-repro settings` "
                "lists every key with its type, default and meaning"
            )
        try:
            changes[key] = _parse(text, _hints()[key])
        except ValueError:
            raise UserError(_refusal(key, text, getattr(config, key))) from None
    return dataclasses.replace(config, **changes)


def _parse(text: str, hint):
    """Parse ``text`` as ``hint`` (int, float, bool, str, tuples of numbers, optional of those);
    a ``ValueError`` where it does not."""
    if _optional(hint):
        if text.lower() in ("none", "null", ""):
            return None
        hint = _plain(hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return tuple(args[0](part) for part in text.split(",") if part.strip())
    if hint is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return text.lower() in ("true", "1", "yes")
    return hint(text)


def _refusal(key: str, text: str, current: Any) -> str:
    """Why ``--set key=text`` does not parse: the type expected, an example (the run's own
    value), how to clear it."""
    clear = clearing(key)
    kind = setting_type(key, none=not clear)
    example = _example(key, current)
    return f"--set {key}={text}: expected {kind}{example}" + (f"; {clear}" if clear else "")


def _example(key: str, value: Any) -> str:
    """``, such as --set key=VALUE`` where ``value`` (the run's) makes an example."""
    usable = value not in (None, ())
    return f", such as --set {key}={setting_text(value)}" if usable else ""


def dependency_order(preset: str) -> list[str]:
    """Experiments of a preset, each after the run whose weights it starts from (``pretrained``:
    the pretraining for retraining, the full run for the oracle), else in the preset's order."""
    runs = preset_runs(preset)

    def depth(name: str) -> int:
        source = runs[name].pretrained
        return 0 if source is None else 1 + (depth(source) if source in runs else 0)

    return sorted(runs, key=depth)  # stable
