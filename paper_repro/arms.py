"""The arms of the transfer comparison, declared once: full training, retraining, the control
and the oracle.

An arm is one way of training a target's network. Its name is the prefix of its experiments
(``retrain-random-mnist``), the study's arm, and the reports' variant (with ``-cached`` where its
classifier trained on cached features); its ``start`` is what a history records its network
started from; its ``column`` heads its Table III column and, in plain words (``label``), names
its Figure 5 line; its ``source`` is the experiment whose finished model it starts from. The
experiments, the history, the tables, the figure and the study all read these declarations, so
a new arm is one entry here (plus what builds its network).

This module imports nothing from TensorFlow: the results layer reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a run's network started from: the paper's fresh initialisation; a pretrained network's
# features (frozen) with fc6/fc7 kept or new and fc8 new; a whole pretrained network; the
# control, a fresh untrained network whose features are frozen (``features=random``); or the
# oracle, the frozen features of the same seed's full training on the target
# (``features=oracle``) under a fresh classifier.
STARTS = (
    "scratch",
    "pretrained-features",
    "pretrained-network",
    "random-features",
    "oracle-features",
)
CACHED = "-cached"  # a variant's suffix where the classifier trained on cached features


@dataclass(frozen=True)
class Arm:
    """One arm: how its runs are configured, recorded, tabulated and drawn."""

    name: str
    mode: str  # RunConfig.mode
    features: str  # RunConfig.features: what the frozen block is ("pretrained" also for full)
    start: str  # the history's start when the arm begins as its preset says (STARTS)
    column: str  # Table III's column of its multi-crop accuracy; Figure 5's legend (``label``)
    linestyle: str | tuple  # Figure 5's line; its cached variant draws ``cached_linestyle``
    cached_linestyle: str | tuple
    # Figure 5's legend for the arm's runs on cached features, in words a reader without the
    # package's vocabulary follows: the classifier trained on features computed once, beforehand.
    cached_label: str
    # The experiment whose finished model the arm starts from, ``{dataset}`` standing for its
    # target (RunConfig.pretrained); None for an arm that starts from no trained network.
    source: str | None = None
    keep_fc67: bool = True  # RunConfig.keep_fc67: the source's fc6/fc7 kept, or drawn fresh

    @property
    def label(self) -> str:
        """Figure 5's legend after the dataset's name: the Table III column's words, so that the
        figure and the table name an arm alike ("full training", "retraining, ...")."""
        return self.column[0].lower() + self.column[1:]

    def experiment(self, dataset: str) -> str:
        return f"{self.name}-{dataset}"

    def source_of(self, dataset: str) -> str | None:
        """The experiment a run of this arm on ``dataset`` starts from (None: none)."""
        return self.source.format(dataset=dataset) if self.source else None


# Full training trains its features, so none of its runs is on cached ones: its cached label and
# style complete the declaration only.
FULL = Arm(
    "full", "full", "pretrained", "scratch", "Full training", "-", "-",
    "full training on precomputed features",
)  # fmt: skip
RETRAIN = Arm(
    "retrain", "retrain", "pretrained", "pretrained-features", "Retraining", "--", "-.",
    "retraining on precomputed features", source="pretrain-imagenet",
)  # fmt: skip
CONTROL = Arm(
    "retrain-random", "retrain", "random", "random-features",
    "Retraining, random features (control)", ":", (0, (1, 4)),
    "retraining, precomputed random features (control)",
)  # fmt: skip
# The positive control (figures/study/PLAN.md, "Features or optimiser?"): retraining's recipe on
# the frozen block of the same seed's full training on the target, with that network's mean (the
# target's) and fc6/fc7 drawn fresh as the control's are, so that the two differ only in the
# frozen block. It bounds what the recipe reaches on features known to fit the target.
ORACLE = Arm(
    "retrain-oracle", "retrain", "oracle", "oracle-features",
    "Retraining, oracle features (positive control)", (0, (3, 1, 1, 1, 1, 1)), (0, (8, 3)),
    "retraining, precomputed oracle features (positive control)",
    source=FULL.experiment("{dataset}"), keep_fc67=False,
)  # fmt: skip

ARMS = (FULL, RETRAIN, CONTROL, ORACLE)  # Table III's and the study's order
BY_NAME = {arm.name: arm for arm in ARMS}
# The controls, negative and positive, read against retraining: a table shows a control's column
# only once some run of it is among its histories, so tables made before it stay as they were.
CONTROLS = (CONTROL, ORACLE)


def of_run(mode: str, start: str | None) -> Arm | None:
    """The transfer arm a run belongs to, from its mode and recorded start; None for
    pretraining. Among its mode's arms, the one that starts as it did, else the first (a history
    written before starts were recorded, or a retraining given no weights, reads as retraining)."""
    if mode == "pretrain":
        return None
    same_mode = [arm for arm in ARMS if arm.mode == mode]
    return next((arm for arm in same_mode if arm.start == start), same_mode[0])


def retraining_on(features: str) -> Arm:
    """The retraining arm whose frozen block is ``features`` (RunConfig.features)."""
    return next(arm for arm in ARMS if arm.mode == "retrain" and arm.features == features)


def variant(arm: Arm, cached: bool) -> str:
    """Figure 5's and the tables' name for an arm's runs, cached or on the images."""
    return arm.name + (CACHED if cached else "")


def label(arm: Arm, cached: bool) -> str:
    """The plain words for an arm's runs, cached or on the images: what a reader of Figure 5's
    legend or of a table's sources sees where the code says ``variant``."""
    return arm.cached_label if cached else arm.label


def split_experiment(name: str) -> tuple[Arm, str] | None:
    """``retrain-random-mnist`` -> (CONTROL, "mnist"): the longest arm name that prefixes it."""
    for arm in sorted(ARMS, key=lambda a: -len(a.name)):
        if name.startswith(arm.name + "-"):
            return arm, name[len(arm.name) + 1 :]
    return None
