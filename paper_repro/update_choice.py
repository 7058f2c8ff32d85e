"""Which kernel updates a run's decayed weights: measured once per machine, then read back.

Two kernels give every decayed weight the same bits (``CaffeSGD.kernels``): the package's own
(``fused_update``, five passes over memory) and TensorFlow's (the decay as two element-wise ops,
then ``ResourceApplyKerasMomentum``: eight passes). Fewer passes are not faster everywhere: the
package's kernel made the cached step 1.25x faster on an AMD EPYC and 4 % slower on an Intel
Xeon (docs/performance.md). No rule read from a CPU's name says which wins, so the first
training on a machine times both on the run's own weight shapes, and keeps the faster.

The choice is kept in ``fused_update.cache_dir()``, one JSON file per machine (CPU model and
count), TensorFlow version, kernel source and weight shapes, written atomically. A file that is
damaged, or that another machine or version wrote, is measured again and replaced, never
trusted. ``$PAPER_REPRO_UPDATE`` (``auto``, ``caffe`` or ``tensorflow``) forces a kernel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from paper_repro import fused_update
from paper_repro.errors import UserError
from paper_repro.history import UpdateRecord
from paper_repro.provenance import cpu_model
from paper_repro.runs import write_atomic
from paper_repro.solver import CaffeSGD, is_bias

ENV = "PAPER_REPRO_UPDATE"
SETTINGS = ("auto", "caffe", "tensorflow")
SCHEMA = "paper_repro.update_choice/1"
# Alternated timings of each kernel: the median of 5 separates kernels 5 % apart on a quiet
# machine, and costs a second or two for the 227-pixel classifier's 58.7 M weights.
REPEATS = 5


@dataclass(frozen=True)
class Choice:
    """The kernel chosen and what choosing cost: 0 seconds where nothing was measured (forced,
    read back, or a single kernel can serve); ``timings``: seconds per update of each kernel
    timed, medians (empty where none was)."""

    kernel: str
    seconds: float
    timings: dict[str, float]


def choose(optimizer: CaffeSGD, variables: Sequence[keras.Variable], batch: int) -> Choice:
    """Set ``optimizer``'s update kernel for the run's trainable ``variables``, trained on
    batches of ``batch``: forced by ``$PAPER_REPRO_UPDATE``, else read from this machine's
    cache, else measured and cached."""
    setting = os.environ.get(ENV) or "auto"
    if setting not in SETTINGS:
        raise UserError(f"{ENV} must be one of {', '.join(SETTINGS)}, got {setting!r}")
    # Under mixed precision Keras wraps the solver to scale the loss; the solver updates.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    decayed = decayed_weights(variables)
    shapes = tuple(tuple(int(n) for n in v.shape) for v in decayed)
    kernels = optimizer.kernels(decayed[0].value) if decayed else ("tensorflow",)
    if not optimizer.coupled_weight_decay:  # nothing to fold in: the last kernel serves all
        kernels = kernels[-1:]
    if setting != "auto" or len(kernels) == 1:
        choice = Choice(setting if setting in kernels else kernels[0], 0.0, {})
    else:
        choice = _cached_or_measured(optimizer, shapes, kernels, batch)
    optimizer.update_kernel = choice.kernel
    return choice


def record(choice: Choice, earlier: UpdateRecord | None) -> UpdateRecord:
    """The history's record of this process's choice, its cost added to earlier processes'."""
    spent = earlier.choice_seconds if earlier else 0.0
    return UpdateRecord(kernel=choice.kernel, choice_seconds=spent + choice.seconds)


def decayed_weights(variables: Sequence[keras.Variable]) -> list[keras.Variable]:
    """The float32 weights the solver decays: the only ones whose kernel differs (a bias has no
    decay and always takes TensorFlow's momentum kernel)."""
    return [v for v in variables if v.trainable and v.dtype == "float32" and not is_bias(v)]


def choice_path(key: dict[str, Any]) -> Path:
    """The cache file of ``key``: its hash in the name, so that machines sharing a home folder,
    and runs of other shapes, keep their own."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return fused_update.cache_dir() / f"update-choice-{digest}.json"


def machine_key(
    shapes: Sequence[Sequence[int]], kernels: Sequence[str], batch: int
) -> dict[str, Any]:
    """Everything a timing depends on besides the moment: the CPU, TensorFlow, the kernel's
    source and flags, the weight shapes, the batch and the kernels compared."""
    return {
        "schema": SCHEMA,
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "kernel_source": fused_update.source_digest(),
        "shapes": [list(shape) for shape in shapes],
        "batch": batch,
        "kernels": list(kernels),
    }


def _cached_or_measured(
    optimizer: CaffeSGD, shapes: tuple[tuple[int, ...], ...], kernels: tuple[str, ...], batch: int
) -> Choice:
    key = machine_key(shapes, kernels, batch)
    path = choice_path(key)
    cached = read_choice(path, key)
    if cached is not None:
        return Choice(cached, 0.0, {})
    start = time.perf_counter()
    timings = measure(optimizer, shapes, kernels, batch)
    choice = Choice(min(timings, key=timings.get), time.perf_counter() - start, timings)
    _write(path, {**key, "kernel": choice.kernel, "timings": timings})
    return choice


def read_choice(path: Path, key: dict[str, Any]) -> str | None:
    """The kernel cached in ``path`` for ``key``; None where the file is missing, damaged, or
    was written for another machine, version or shapes (it is then measured again)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(saved, dict) or set(saved) != {*key, "kernel", "timings"}:
        return None
    if any(saved[name] != value for name, value in key.items()):
        return None
    timings = saved["timings"]
    if not (
        isinstance(timings, dict)
        and set(timings) == set(key["kernels"])
        and all(_positive(seconds) for seconds in timings.values())
        and saved["kernel"] == min(timings, key=timings.get)
    ):
        return None
    return saved["kernel"]


def measure(
    optimizer: CaffeSGD, shapes: Sequence[Sequence[int]], kernels: Sequence[str], batch: int
) -> dict[str, float]:
    """Seconds per training update of weights of ``shapes`` with each kernel, medians of
    alternated timings, on stand-ins (timing the run's own weights would change them).

    Each timed step computes every weight's gradient as the backward pass does, one matmul over
    a ``batch`` of activations, then updates: TensorFlow's kernels can start ``decay * w``
    while the matmuls run, the package's waits for the gradient, so an update timed alone
    would favour the package's. Zeros throughout: no value is slower than another to compute
    with but denormals, which zeros are not."""
    probe = CaffeSGD(
        0.001, momentum=optimizer.momentum, coupled_weight_decay=optimizer.coupled_weight_decay
    )
    weights = [keras.Variable(tf.zeros(shape), name="kernel") for shape in shapes]
    # Variables, not constants: a matmul of constants would be folded away when traced.
    inputs = [tf.Variable(tf.zeros((batch, math.prod(shape[:-1])))) for shape in shapes]
    errors = [tf.Variable(tf.zeros((batch, shape[-1]))) for shape in shapes]
    probe.build(weights)

    def gradients() -> list[tf.Tensor]:
        return [
            tf.reshape(tf.matmul(x, e, transpose_a=True), w.shape)
            for x, e, w in zip(inputs, errors, weights, strict=True)
        ]

    steps = {kernel: _training_update(probe, kernel, gradients, weights) for kernel in kernels}
    seconds: dict[str, list[float]] = {kernel: [] for kernel in kernels}
    for _ in range(REPEATS):
        for kernel, step in steps.items():
            start = time.perf_counter()
            step().numpy()
            seconds[kernel].append(time.perf_counter() - start)
    return {kernel: statistics.median(values) for kernel, values in seconds.items()}


def _training_update(probe: CaffeSGD, kernel: str, gradients, weights):
    """A compiled step, gradients then update with ``kernel``, traced (and run once) now: the
    kernel is read when the step is traced."""
    probe.update_kernel = kernel

    @tf.function
    def step():
        probe.apply(gradients(), weights)
        return probe.iterations.value

    step().numpy()
    return step


def _write(path: Path, choice: dict[str, Any]) -> None:
    """Keep the choice; where the cache folder is not writable, say so once and go on (the next
    run measures again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(choice, indent=2) + "\n").encode())
    except (OSError, UserError) as error:
        logging.getLogger(__name__).warning(
            "paper_repro: the update kernel's choice could not be kept in %s (%s); the next "
            "run measures it again.",
            path.parent,
            str(error).splitlines()[0],
        )


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf
