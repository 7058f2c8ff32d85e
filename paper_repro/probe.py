"""A linear probe of a run's frozen features, with no step size: how much of the target they hold.

A retraining's classifier learns by SGD at one learning rate for a fixed number of epochs, so
its accuracy mixes what its frozen features hold with how far the optimiser got. A multinomial
logistic regression fitted by L-BFGS (scikit-learn) on the same features has no step size and no
schedule, and no fc6/fc7 to differ between arms: rule B of figures/study/PLAN.md ("Features or
optimiser?"), for the blocks of retraining (the source's), the control (random) and full training
(the oracle's). Each block reads the images as its network did, through its own preprocessing.

For a finished run: pool5 of the centre crop of each image it trained on (its split, class subset
and balanced subset), flattened and standardised on those images; one fit per L2 strength ``C``
of ``C_GRID``; the ``C`` with the best validation accuracy (a tie goes to the smaller ``C``, the
stronger regularisation), whose test accuracy is then read once. The run's own test split plays
whichever part it is: the validation split when carved from the training split (the study's
``train[N:]``), with the dataset's ``test`` split, the run's classes, as the test; else the test,
the validation split then being the last ``VALIDATION_FRACTION`` of the training images, which
the fit leaves out. Whether every fit converged within ``MAX_ITER`` iterations is reported.

Command::

    paper-repro probe RUNS/CELL/study/retrain-mnist-cached-seed1 ... --out probe.md
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from paper_repro import arms, data, markdown, run_features
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import History
from paper_repro.model import load_model
from paper_repro.runs import RunPaths, write_atomic

C_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)  # figures/study/PLAN.md, rule B
MAX_ITER = 1000
VALIDATION_FRACTION = 0.1  # of the training images, where the run's test split is the test
TEST_SPLIT = "test"
HEADER = (
    "run", "experiment", "seed", "arm", "pool5 values", "images fit / validation / test",
    "validation split", "C", "validation accuracy (%)", "test accuracy (%)",
    f"L-BFGS converged (max_iter {MAX_ITER})",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Features:
    """Flattened pool5 values ``(images, values)`` and their labels, in the split's order."""

    values: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Fit:
    """One ``C`` of the grid: its validation accuracy, and whether L-BFGS converged."""

    c: float
    validation_accuracy: float
    converged: bool


@dataclasses.dataclass(frozen=True)
class Probe:
    """Every fit of the grid (in increasing ``C``), the chosen one and its test accuracy."""

    fits: tuple[Fit, ...]
    chosen: Fit
    test_accuracy: float

    def converged_text(self) -> str:
        """``yes`` when every fit converged; else the ``C`` values whose fits did not."""
        failed = [f"{fit.c:g}" for fit in self.fits if not fit.converged]
        return "yes" if not failed else f"no at C = {', '.join(failed)}"


def probe(train: Features, validation: Features, test: Features, *, verbose: int = 0) -> Probe:
    """Standardise on ``train``, fit every ``C`` of the grid, choose ``C`` on ``validation``,
    score the chosen fit on ``test``. ``verbose``: a progress bar over the grid (Keras')."""
    scaler = StandardScaler().fit(train.values)
    train_x, validation_x = scaler.transform(train.values), scaler.transform(validation.values)
    progress = keras.utils.Progbar(len(C_GRID), verbose=verbose, unit_name="fit")
    fits, models = [], []
    for c in sorted(C_GRID):
        model, converged = _fit(train_x, train.labels, c)
        fits.append(Fit(c, float(model.score(validation_x, validation.labels)), converged))
        models.append(model)
        progress.add(1)
    # max() keeps the first of equal values: over increasing C, a tie goes to the smaller C.
    best = max(range(len(fits)), key=lambda i: fits[i].validation_accuracy)
    test_accuracy = float(models[best].score(scaler.transform(test.values), test.labels))
    return Probe(tuple(fits), fits[best], test_accuracy)


def _fit(x: np.ndarray, labels: np.ndarray, c: float) -> tuple[LogisticRegression, bool]:
    """A multinomial logistic regression at L2 strength ``c``, and whether L-BFGS converged:
    scikit-learn says it did not (iterations spent, or a failed line search) by a warning, which
    is taken here and reported in the table instead; any other warning goes on as it came."""
    # L-BFGS draws nothing at random; the seed pins any solver that would.
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, labels)
    for warning in caught:
        if not issubclass(warning.category, ConvergenceWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def carve(train: Features) -> tuple[Features, Features]:
    """The training images split in two, in their order: the first to fit, the last
    ``VALIDATION_FRACTION`` to validate on (disjoint from the fit)."""
    kept = len(train) - int(len(train) * VALIDATION_FRACTION)
    if kept == len(train):
        raise UserError(
            f"{len(train)} training images are too few to carve a validation split from "
            f"(the last {_percent(VALIDATION_FRACTION)} of them)"
        )
    return (
        Features(train.values[:kept], train.labels[:kept]),
        Features(train.values[kept:], train.labels[kept:]),
    )


@dataclasses.dataclass(frozen=True)
class Row:
    """One run's probe: what the table prints, and ``config``, the run's settings, so that a
    reader of the JSON (the study's probe table) never mixes probes of different settings."""

    run: str
    experiment: str
    seed: int
    arm: str
    values: int  # pool5 values per image
    images: tuple[int, int, int]  # fit, validation, test
    validation_split: str
    result: Probe
    config: dict

    def cells(self) -> list[str]:
        return [
            self.run, self.experiment, str(self.seed), self.arm, str(self.values),
            " / ".join(map(str, self.images)), self.validation_split,
            f"{self.result.chosen.c:g}", f"{100 * self.result.chosen.validation_accuracy:.2f}",
            f"{100 * self.result.test_accuracy:.2f}", self.result.converged_text(),
        ]  # fmt: skip


def report(
    run_dirs: Sequence[str | os.PathLike],
    *,
    data_dir: str | None = None,
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    verbose: int = 1,
) -> list[Path]:
    """Print the probe's table a row at a time, as each run is measured, and write the whole
    table to ``out`` (when given) at the end, with its rows as JSON beside it (``out`` with
    the suffix ``.json``); returns the files written."""
    if out is not None and not Path(out).parent.is_dir():
        raise UserError(f"--out {out}: no such directory {Path(out).parent}")
    runs = run_features.finished_runs(run_dirs, limit)
    lines, found = list(markdown.head(HEADER, "llrlrrlrrrl")), []
    print("\n".join(lines), flush=True)
    for run, history in runs:
        found.append(_row(run, history, data_dir, limit, verbose))
        lines.append(markdown.row(found[-1].cells()))
        print(lines[-1], flush=True)
    if out is None:
        return []
    json_out = Path(out).with_suffix(".json")
    write_atomic(json_out, rows_json(found).encode("utf-8"))
    write_atomic(out, ("\n".join(lines) + "\n").encode("utf-8"))
    return [Path(out), json_out]


def rows_json(rows: Sequence[Row]) -> str:
    """The rows as ``--out``'s JSON file holds them (``study_probe`` reads it)."""
    return json.dumps([dataclasses.asdict(row) for row in rows], indent=1) + "\n"


def _row(run: Path, history: History, data_dir: str | None, limit: int | None, verbose: int) -> Row:
    config = run_features.run_config(history)
    splits = data.load_experiment_data(config, data_dir=data_dir, seed=history.seed)
    named, validation_split = _probe_splits(config, splits, history.seed, data_dir)
    named = {name: split.take(limit) if limit else split for name, split in named.items()}
    total = sum(int(split.cardinality()) for split in named.values())
    if verbose:
        print(f"{run}: pool5 of {total} images, then L-BFGS at {len(C_GRID)} values of C")
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="image")
    model = load_model(RunPaths(run).model)
    features = {
        name: _pool5(model, run_features.centre_crops(split, splits), progress)
        for name, split in named.items()
    }
    train, validation = (
        (features["train"], features["validation"])
        if "validation" in features
        else carve(features["train"])
    )
    result = probe(train, validation, features["test"], verbose=verbose)
    arm = arms.of_run(history.mode, history.start)
    return Row(
        run=str(run), experiment=history.experiment, seed=history.seed,
        arm=arm.name if arm else history.mode, values=int(train.values.shape[1]),
        images=(len(train), len(validation), len(features["test"])),
        validation_split=validation_split, result=result, config=history.config,
    )  # fmt: skip


def _probe_splits(
    config: RunConfig, splits: data.ExperimentData, seed: int, data_dir: str | None
) -> tuple[dict[str, tf.data.Dataset], str]:
    """The splits the probe reads, by part (``train``, ``validation`` unless it is carved from
    the training images, ``test``), and what its validation split is, for the table."""
    if _base(config.test_split) != _base(config.train_split):
        where = f"last {_percent(VALIDATION_FRACTION)} of {config.train_split}"
        return {"train": splits.train, "test": splits.test}, where
    test, _ = data.load_split(
        config.dataset, TEST_SPLIT, data_dir=data_dir, class_subset=config.classes, seed=seed
    )
    return {"train": splits.train, "validation": splits.test, "test": test}, config.test_split


def _pool5(model: keras.Model, batches: tf.data.Dataset, progress: keras.utils.Progbar) -> Features:
    values, labels = [], []
    for features, batch_labels in run_features.pool5_batches(model, batches):
        values.append(features.reshape(len(features), -1))
        labels.append(batch_labels)
        progress.add(len(features))
    return Features(np.concatenate(values), np.concatenate(labels))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def _base(split: str) -> str:
    """``train[:50000]`` -> ``train``: the split a slice is carved from."""
    return split.partition("[")[0]
