"""The end of a run: the final multi-crop evaluation (Table III), the trained model saved with
what it was trained on, and the history marked finished, with whether its training converged
(``paper_repro.convergence``)."""

from __future__ import annotations

import dataclasses
import time

import keras

from paper_repro import convergence, data, evaluate
from paper_repro import model as model_lib
from paper_repro.experiments import RunConfig
from paper_repro.history import FinalEvaluation, History, save_history
from paper_repro.runs import replace_atomic
from paper_repro.training.callbacks import TrainingDiverged, non_finite_weights
from paper_repro.training.context import Run, say


def finish(run: Run, model: keras.Model, splits: data.ExperimentData, history: History) -> History:
    """Evaluate the trained network, save it, then mark the history finished and drop the
    checkpoint: a run killed on the way finishes again from its last epoch. A network with a
    non-finite weight is refused before any of that: no finished run reports its numbers."""
    config, paths = run.config, run.paths
    broken = non_finite_weights(model)
    if broken:  # resumed from a checkpoint written before every epoch was checked
        raise TrainingDiverged(
            f"the trained weights {', '.join(broken[:3])} are not finite: the run diverged, and "
            f"its files are kept as they are (lower base_lr with --set base_lr=..., and --force "
            "to start again)"
        )
    start = time.perf_counter()
    scores = evaluate.evaluate(
        model, splits.test, crops=config.test_crops, augment=splits.augment, verbose=run.verbose
    )
    final = FinalEvaluation(
        crops=config.test_crops,
        top1=scores["top1"],
        top5=scores["top5"],
        wall_seconds=time.perf_counter() - start,
        center_top1=scores["center_top1"],
        center_top5=scores["center_top5"],
    )
    record = evaluate.trained_on(history.config, history.seed, history.class_names)
    with run.timer("final_save"):
        replace_atomic(
            paths.model, lambda path: model_lib.save_model(_without_optimizer(model), path, record)
        )
    history = dataclasses.replace(
        history,
        final=final,
        status="finished",
        phases=run.timer.record(),
        converged=convergence.converged(
            [epoch.train_loss for epoch in history.epochs], _drop_epochs(config, splits)
        ),
    )
    save_history(history, paths.history)
    paths.checkpoint.unlink(missing_ok=True)
    say(
        run.verbose,
        f"{run.shared.root}: {config.test_crops}-crop top-1 {final.top1:.2%}, top-5 "
        f"{evaluate.top5_text(final.top5, scores['num_classes'])} (centre crop "
        f"{final.center_top1:.2%}, {evaluate.top5_text(final.center_top5, scores['num_classes'])})",
    )
    return history


def _drop_epochs(config: RunConfig, splits: data.ExperimentData) -> tuple[float, ...]:
    """The epochs after which the learning rate drops, also for a schedule in iterations."""
    if config.drop_iterations is None:
        return config.drop_epochs
    steps = data.steps_per_epoch(splits.train_examples, config.batch_size)
    return tuple(iteration / steps for iteration in config.drop_iterations)


def _without_optimizer(model: keras.Model) -> keras.Model:
    """The same model, uncompiled: the exported file carries no momentum (half the size)."""
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    return clean
