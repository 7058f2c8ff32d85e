"""How much of a frozen feature block a retraining run's images reach: pool5's active values.

The transfer study (figures/study/README.md) asks why retraining on a source's frozen features does
worse than on random ones. A classifier can only use the pool5 values that are nonzero (ReLU, then
max pooling): a feature block that is silent on the target's images leaves it little to learn from.
This measures, on a finished run's validation (test-split) images, centre crop, as its per-epoch
test sees them: how many pool5 values are active per image, and how many of the 256 channels are
silent at every position on every image; and their root mean square, the scale of what the
classifier's first layer receives. The run's own ``model.keras`` holds the frozen block:
the source's for a retraining, the untrained one for the random-features control.

Command::

    paper-repro feature-activity RUNS/CELL/study/retrain-mnist-cached-seed1 ...
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import keras
import numpy as np

from paper_repro import data, markdown, run_features
from paper_repro.history import History
from paper_repro.model import FEATURES, load_model

HEADER = ("run", "seed", "last-epoch test accuracy (%)", "active pool5 values per image",
          "silent pool5 channels", "pool5 RMS")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Activity:
    """pool5 on ``images`` images: values > 0 per image, channels never > 0, and the values'
    root mean square (the scale the classifier's first layer receives)."""

    images: int
    values: int  # pool5 values per image (height x width x channels)
    active_per_image: float
    channels: int
    silent_channels: int
    rms: float

    def row(self) -> list[str]:
        return [
            f"{self.active_per_image:.1f} of {self.values}",
            f"{self.silent_channels} of {self.channels}",
            f"{self.rms:.2f}",
        ]


class _Tally:
    """Running counts over batches of pool5 values ``(batch, height, width, channels)``."""

    def __init__(self) -> None:
        self.images, self.active, self.squares, self.channel_max = 0, 0, 0.0, None

    def add(self, features: np.ndarray) -> None:
        self.images += len(features)
        self.active += int(np.count_nonzero(features > 0))
        self.squares += float(np.square(features, dtype=np.float64).sum())
        batch_max = features.max(axis=(0, 1, 2))
        self.channel_max = (
            batch_max if self.channel_max is None else np.maximum(self.channel_max, batch_max)
        )

    def activity(self, shape: tuple[int, ...]) -> Activity:
        values = int(np.prod(shape))
        return Activity(
            images=self.images,
            values=values,
            active_per_image=self.active / self.images,
            channels=shape[-1],
            silent_channels=int(np.count_nonzero(self.channel_max <= 0)),
            rms=float(np.sqrt(self.squares / (self.images * values))),
        )


def of_features(features: np.ndarray) -> Activity:
    """The activity of pool5 values ``(images, height, width, channels)``."""
    tally = _Tally()
    tally.add(np.asarray(features))
    return tally.activity(features.shape[1:])


def of_run(
    run_dir: str | os.PathLike, *, data_dir: str | None = None, limit: int | None = None
) -> Activity:
    """The activity of a finished run's frozen features on its validation images (the first
    ``limit`` of them, or all)."""
    return _activity(Path(run_dir), run_features.finished_history(Path(run_dir)), data_dir, limit)


def table(
    run_dirs: Sequence[str | os.PathLike],
    *,
    data_dir: str | None = None,
    limit: int | None = None,
) -> Iterator[str]:
    """A Markdown table's lines: each run's last-epoch test accuracy beside its features' activity.

    Every run directory is checked before the first is measured, so that a bad path late in a
    long list costs nothing; each row comes as soon as its run is measured (a run takes a minute
    or more), so that a long list shows its progress and an interrupted one keeps its rows.
    """
    runs = run_features.finished_runs(run_dirs, limit)
    yield from markdown.head(HEADER, "l" + "r" * (len(HEADER) - 1))
    for run, history in runs:
        activity = _activity(run, history, data_dir, limit)
        accuracy = f"{100 * history.epochs[-1].test_accuracy:.2f}"
        yield markdown.row([str(run), str(history.seed), accuracy, *activity.row()])


def _activity(run: Path, history: History, data_dir: str | None, limit: int | None) -> Activity:
    config = run_features.run_config(history)
    splits = data.load_experiment_data(config, data_dir=data_dir, seed=history.seed)
    test = splits.test.take(limit) if limit else splits.test
    return of_batches(load_model(run / "model.keras"), run_features.centre_crops(test, splits))


def of_batches(model: keras.Model, batches: Iterable) -> Activity:
    """The activity of ``model``'s pool5 on batches of ``(images, labels)``."""
    tally = _Tally()
    for features, _ in run_features.pool5_batches(model, batches):
        tally.add(features)
    return tally.activity(tuple(model.get_layer(FEATURES).output.shape[1:]))
