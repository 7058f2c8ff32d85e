"""What runs around every epoch of a fit: the run's record and checkpoint, its phase clock, and
TensorBoard when asked for."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import time
from collections.abc import Iterator
from pathlib import Path

import keras

from paper_repro import model as model_lib
from paper_repro.errors import UserError
from paper_repro.history import PHASES, EpochRecord, History, save_history
from paper_repro.runs import RunPaths, replace_atomic


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


def non_finite_weights(model: keras.Model) -> list[str]:
    """The weights of ``model`` holding a NaN or an infinity, by path: a step can make them so
    while the loss it reports, computed before the step, is still finite."""
    return [
        weight.path
        for weight in model.weights
        if not bool(keras.ops.all(keras.ops.isfinite(weight.value)))
    ]


def diverged(what: str, paths: RunPaths) -> TrainingDiverged:
    """The error that ends a diverged run: what became non-finite, what of the run is kept (for
    inspection, and to resume from once the cause is found), and how to start it again."""
    kept = (
        f"{paths.checkpoint} keeps the last good epoch"
        if paths.checkpoint.exists()
        else "no epoch had finished, so no checkpoint was kept"
    )
    return TrainingDiverged(
        f"{what}; {kept} (lower base_lr with --set base_lr=..., and --force to start again)"
    )


class PhaseTimer:
    """Wall seconds per ``history.PHASES`` name, from this process's start of the run plus what
    the processes of a resumed run spent before (``carry``)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._start = time.perf_counter()

    def carry(self, earlier: dict[str, float] | None) -> None:
        for name, seconds in (earlier or {}).items():
            self.add(name, seconds)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def record(self) -> dict[str, float]:
        return {**self.seconds, "total": self.seconds["total"] + time.perf_counter() - self._start}


class RunRecorder(keras.callbacks.Callback):
    """After every epoch: append the epoch to the history, then checkpoint, both atomically.

    The history is written before the checkpoint: a run killed between the two resumes from the
    older checkpoint and trims the history to it, then redoes that epoch identically.
    It also reseeds dropout per epoch (so a resumed epoch draws the same masks), stops the
    run at the first non-finite loss, before anything of that epoch is written, and ends training
    at ``max_iterations`` (Caffe's ``max_iter``), recording the cut-short epoch as the last one.
    """

    def __init__(
        self,
        paths: RunPaths,
        history: History,
        timer: PhaseTimer,
        max_iterations: int | None = None,
    ):
        super().__init__()
        self.paths, self.history, self.max_iterations = paths, history, max_iterations
        self.timer = timer
        self._epoch_start = self._train_seconds = 0.0
        self._lr = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        model_lib.reseed_dropout(self.model, epoch)
        self._lr = float(self.model.optimizer.learning_rate)
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise self._diverged(
                f"the training loss became {loss} in epoch {len(self.history.epochs) + 1}, "
                f"batch {batch + 1}"
            )
        if self.max_iterations and int(self.model.optimizer.iterations) >= self.max_iterations:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        self._train_seconds = time.perf_counter() - self._epoch_start

    def on_test_end(self, logs=None):
        self.timer.add("epoch_tests", time.perf_counter() - self._epoch_start - self._train_seconds)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._check_finite(epoch + 1, logs)
        record = EpochRecord(
            epoch=epoch + 1,
            lr=self._lr,
            train_loss=float(logs["loss"]),
            train_accuracy=float(logs["accuracy"]),
            test_accuracy=float(logs["val_accuracy"]),
            wall_seconds=self._train_seconds,
        )
        epochs = (*self.history.epochs, record)
        self.history = dataclasses.replace(self.history, epochs=epochs, phases=self.timer.record())
        with self.timer("checkpoints"):
            save_history(self.history, self.paths.history)
            replace_atomic(self.paths.checkpoint, self.model.save)

    def _check_finite(self, epoch: int, logs: dict) -> None:
        """The state after the epoch's last step, before anything of it is written: its weights
        and the test loss they give (the batch losses precede each step, so the last step's
        result is seen here first)."""
        for name in ("loss", "val_loss"):
            value = float(logs.get(name, 0.0))
            if not math.isfinite(value):
                what = "training" if name == "loss" else "test"
                raise self._diverged(f"the {what} loss became {value} in epoch {epoch}")
        broken = non_finite_weights(self.model)
        if broken:
            raise self._diverged(
                f"the weights {', '.join(broken[:3])} became non-finite in epoch {epoch}"
            )

    def _diverged(self, what: str) -> TrainingDiverged:
        """The history marked diverged (its epochs the good ones), and the error to raise."""
        self.history = dataclasses.replace(
            self.history, status="diverged", diverged=what, phases=self.timer.record()
        )
        save_history(self.history, self.paths.history)
        return diverged(what, self.paths)


def tensorboard(log_dir: Path) -> keras.callbacks.TensorBoard:
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs TensorBoard: pip install 'paper_repro[tensorboard]'")
    return keras.callbacks.TensorBoard(log_dir)
