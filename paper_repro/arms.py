"""The arms of the transfer comparison, declared once: full training, retraining, the control.

An arm is one way of training a target's network. Its name is the prefix of its experiments
(``retrain-random-mnist``), the study's arm, and Figure 5's variant (with ``-cached`` where its
classifier trained on cached features); its ``start`` is what a history records its network
started from; its ``column`` heads its Table III column and its ``label`` names its Figure 5 line.
The experiments, the history, the tables, the figure and the study all read these declarations,
so a new arm is one entry here (plus what builds its network).

This module imports nothing from TensorFlow: the results layer reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a run's network started from: the paper's fresh initialisation; a pretrained network's
# features (frozen) with fc6/fc7 kept or new and fc8 new; a whole pretrained network; or, the
# control, a fresh untrained network whose features are frozen (``features=random``).
STARTS = ("scratch", "pretrained-features", "pretrained-network", "random-features")
CACHED = "-cached"  # a variant's suffix where the classifier trained on cached features


@dataclass(frozen=True)
class Arm:
    """One arm: how its runs are configured, recorded, tabulated and drawn."""

    name: str
    mode: str  # RunConfig.mode
    features: str  # RunConfig.features: what the frozen block is ("pretrained" also for full)
    start: str  # the history's start when the arm begins as its preset says (STARTS)
    column: str  # Table III's column of its multi-crop accuracy
    label: str  # Figure 5's legend, after the dataset's name
    linestyle: str | tuple  # Figure 5's line; its cached variant draws ``cached_linestyle``
    cached_linestyle: str | tuple

    def experiment(self, dataset: str) -> str:
        return f"{self.name}-{dataset}"


FULL = Arm("full", "full", "pretrained", "scratch", "Full training", "full", "-", "-")
RETRAIN = Arm(
    "retrain", "retrain", "pretrained", "pretrained-features", "Retraining", "retrain", "--", "-."
)
CONTROL = Arm(
    "retrain-random", "retrain", "random", "random-features",
    "Retraining, random features (control)", "retrain, random features (control)", ":", (0, (1, 4)),
)  # fmt: skip

ARMS = (FULL, RETRAIN, CONTROL)  # Table III's and the study's order
BY_NAME = {arm.name: arm for arm in ARMS}
CONTROLS = (CONTROL,)  # the arms that are controls (read against retraining)


def of_run(mode: str, start: str | None) -> Arm | None:
    """The transfer arm a run belongs to, from its mode and recorded start; None for
    pretraining. Among its mode's arms, the one that starts as it did, else the first (a history
    written before starts were recorded, or a retraining given no weights, reads as retraining)."""
    if mode == "pretrain":
        return None
    same_mode = [arm for arm in ARMS if arm.mode == mode]
    return next((arm for arm in same_mode if arm.start == start), same_mode[0])


def variant(arm: Arm, cached: bool) -> str:
    """Figure 5's and the tables' name for an arm's runs, cached or on the images."""
    return arm.name + (CACHED if cached else "")


def split_experiment(name: str) -> tuple[Arm, str] | None:
    """``retrain-random-mnist`` -> (CONTROL, "mnist"): the longest arm name that prefixes it."""
    for arm in sorted(ARMS, key=lambda a: -len(a.name)):
        if name.startswith(arm.name + "-"):
            return arm, name[len(arm.name) + 1 :]
    return None
