"""One run as ``train`` resolved it: what every step of its fit reads, and how it speaks."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from paper_repro import cluster as cluster_lib
from paper_repro import data
from paper_repro.experiments import RunConfig
from paper_repro.history import History
from paper_repro.runs import RunPaths
from paper_repro.training.callbacks import PhaseTimer


@dataclasses.dataclass(frozen=True)
class Run:
    """A run resolved: its settings, where it writes and reads, and what it starts from."""

    experiment: str
    preset: str
    config: RunConfig
    paths: RunPaths  # where this process writes: the run directory, or a worker's own
    shared: RunPaths  # the run directory, written by the chief, read by every worker
    seed: int
    cache_root: str | os.PathLike  # its feature caches go to CACHE_ROOT/feature-cache
    data_dir: str | None
    weights_path: Path | None  # the pretrained model it starts (or restarts) from
    source: keras.Model | None  # that model, loaded
    previous: History | None  # the history to resume, None for a new run
    timer: PhaseTimer  # where the run's wall time goes (history.PHASES)
    cluster: cluster_lib.Cluster
    tensorboard: bool
    download: bool
    verbose: int


def say(verbose: int, message: str) -> None:
    if verbose:
        print(message, flush=True)


def as_run_here(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings (``RunConfig.to_dict``) as this machine runs them: ``augment_on`` resolved
    (``auto``: the GPU when there is one) and XLA (``jit_compile``) off without a GPU, where
    runs are made deterministic and Keras keeps XLA off. Two runs are the same run when these
    agree, however they were asked: a resume compares them, and the step compiles with them."""
    gpu = bool(tf.config.list_physical_devices("GPU"))
    return {
        **settings,
        "augment_on": data.resolve_placement(settings["augment_on"]),
        "jit_compile": settings["jit_compile"] is True and gpu,
    }
