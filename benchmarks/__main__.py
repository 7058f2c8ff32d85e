"""The benchmark suite: every speed goal of the package, measured side by side in one run.

    python -m benchmarks [--out DIR] [--size 227] [--batch 80] [--steps 3] [--repeats 3]

Writes ``DIR/benchmark.json`` and ``DIR/benchmark.md`` (default DIR: ``benchmark-results``) and
prints the Markdown table. Everything runs in one process on the same machine; the configurations
whose ratios are goals are timed alternately (``timing.measure_alternating``), medians over
``--repeats``:

1. Training steps on one fixed batch: full, frozen features (uncached retraining), cached
   retraining (the classifier alone on pool5 features: with the package's fused Caffe update,
   TensorFlow's momentum kernel, Keras' element-wise update, and XLA), inference; a 4096^3
   matmul for the FLOP rate; the same network in PyTorch when installed (``.[bench]``).
2. Input pipelines: Caffe's augmentation on the host (CIFAR-10's test split from
   ``$TFDS_DATA_DIR``, else synthetic images) and the feature cache's per-epoch stream (a cache
   of random pool5 values written to a temporary directory); each alone, then the step it feeds
   against the same step on a fixed batch.
3. 10-crop evaluation: source images/s of ``evaluate.evaluate`` (10 views per image).

Goals (issues 7 and 17), on the 2-core CPU: cached step >= 8x full (an epoch is the same number
of steps, so a cached epoch costs <= 1/8 of a full one); frozen >= 2.2x full; full >= 1.3x
PyTorch; the full and the cached step >= 60 % of the matmul FLOP rate; pipelines >= 20x
(augmentation) and >= 5x (cache) the step they feed, and the fed step within 5 % of the
fixed-batch step. About 5 minutes at 227 px.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from benchmarks.bench_data import fed_and_fixed, pipeline_rate, source, training_model
from benchmarks.bench_model import (
    MATMUL_N,
    forward_flops,
    keras_steps,
    matmul_step,
    stream_step,
    torch_steps,
)
from benchmarks.timing import machine, measure_alternating, peak_rss_gb, write_json
from paper_repro import cache, data, markdown
from paper_repro.augment import AugmentConfig
from paper_repro.evaluate import evaluate
from paper_repro.experiments import PRECISIONS
from paper_repro.model import CLASSIFIER
from paper_repro.runs import write_atomic
from paper_repro.solver import CaffeSGD
from paper_repro.trainee import for_mode

CLASSES = 1000
CACHE_IMAGES = 1000
EVAL_IMAGES = 160
# (ratio name, numerator, denominator, goal): the goals the suite checks, in the table's order.
GOALS = (
    ("cached step / full step", "cached step", "full step", 8.0),
    ("frozen step / full step", "frozen-features step", "full step", 2.2),
    ("full step / PyTorch full step", "full step", "torch full step (best layout)", 1.3),
    ("full step FLOP rate / matmul FLOP rate", "full step GFLOP/s", "matmul GFLOP/s", 0.6),
    ("cached step FLOP rate / matmul FLOP rate", "cached step GFLOP/s", "matmul GFLOP/s", 0.6),
    ("augmentation pipeline / frozen step", "augmentation pipeline", "frozen, fixed batch", 20.0),
    ("frozen step fed by the pipeline / fixed batch", "frozen, fed", "frozen, fixed batch", 0.95),
    ("cache pipeline / cached step", "cache pipeline", "cached, fixed batch", 5.0),
    ("cached step fed by the cache / fixed batch", "cached, fed", "cached, fixed batch", 0.95),
)


def cached_steps(model, batch: int) -> dict:
    """The classifier trained alone on a fixed pool5 batch: as a cached run trains it (graph,
    this package's fused Caffe update), with TensorFlow's fused momentum kernel after a separate
    decay (the step before the package's kernel), with Keras' element-wise update (the step
    before both), and XLA-compiled."""
    classifier = model.get_layer(CLASSIFIER)
    rng = np.random.default_rng(1)
    features = tf.constant(rng.random((batch, *classifier.input_shape[1:]), np.float32))
    labels = tf.constant(rng.integers(0, CLASSES, batch))
    steps = {}
    variants = (("cached step", False, None),
                ("cached step, TensorFlow's momentum kernel", False, "tensorflow"),
                ("cached step, element-wise update", False, "keras"),
                ("cached step, XLA", True, None))  # fmt: skip
    for name, jit, kernel in variants:
        trainee = _classifier_trainee(classifier, jit, kernel)
        steps[name] = (lambda t=trainee: t.train_on_batch(features, labels), batch)
    return steps


def _classifier_trainee(classifier, jit_compile: bool, kernel: str | None = None):
    """A fresh copy of the classifier block, compiled as a cached run compiles it; ``kernel``
    forces ``CaffeSGD``'s update kernels (None: the ones it chooses)."""
    trainee = tf.keras.models.clone_model(classifier)
    optimizer = CaffeSGD(0.001)
    if kernel:
        optimizer._kernel = lambda variable: kernel
    return for_mode(trainee, "full", optimizer, jit_compile=jit_compile)


def model_rates(args) -> tuple[dict, dict]:
    """Section 1: step images/s, FLOP rates, PyTorch."""
    configs, model = keras_steps(args.size, args.batch, CLASSES)
    configs.update(cached_steps(model, args.batch))
    configs["matmul"] = matmul_step()
    configs["stream"] = stream_step()
    configs.update(torch_steps(args.size, args.batch, CLASSES))
    rates = measure_alternating(configs, steps=args.steps, repeats=args.repeats)
    names = {"keras full step": "full step", "keras frozen-features step": "frozen-features step",
             "keras inference": "inference"}  # fmt: skip
    rates = {names.get(k, k): v for k, v in rates.items()}
    features, classifier = forward_flops(model)
    torch = [v for k, v in rates.items() if k.startswith("torch")]
    if torch:
        rates["torch full step (best layout)"] = max(torch)
    derived = {
        "full step GFLOP/s": rates["full step"] * 3 * (features + classifier) / 1e9,
        "cached step GFLOP/s": rates["cached step"] * 3 * classifier / 1e9,
        "matmul GFLOP/s": rates.pop("matmul") * 2 * MATMUL_N**3 / 1e9,
        "memory GB/s": rates.pop("stream") / 1e9,
    }
    derived.update(cached_step_bounds(model, args.batch, rates, derived))
    return rates, derived


def cached_step_bounds(model, batch: int, rates: dict, derived: dict) -> dict:
    """What a cached step's time is bound by, in milliseconds: its matmuls at the measured
    matmul rate (forward and backward: 3x the forward FLOPs) and its update's memory traffic at
    the measured bandwidth (the fused Caffe update reads w, v, g and writes w, v: 5 float32
    passes over every trainable value), beside the step itself."""
    classifier = model.get_layer(CLASSIFIER)
    values = sum(int(np.prod(v.shape)) for v in classifier.trainable_weights)
    _, flops = forward_flops(model)
    return {
        "cached step ms": 1e3 * batch / rates["cached step"],
        "cached step matmul ms (at matmul rate)": 3
        * flops
        * batch
        / derived["matmul GFLOP/s"]
        / 1e6,
        "cached step update ms (at memory GB/s)": 5 * 4 * values / derived["memory GB/s"] / 1e6,
    }


def augmentation_rates(args) -> dict:
    """Section 2a: Caffe's augmentation pipeline and the frozen step it feeds."""
    split, _ = source()
    augment = AugmentConfig(args.resize, args.size)
    pipeline = data.train_dataset(split, augment, batch_size=args.batch, num_epochs=2,
                                  placement="host")  # fmt: skip
    rates = {"augmentation pipeline": pipeline_rate(pipeline, 40, args.batch)}
    configs = fed_and_fixed(training_model(args.size, "frozen"), pipeline, args.batch, "frozen")
    rates.update(measure_alternating(configs, steps=args.steps * 2, repeats=args.repeats))
    return rates


def cache_rates(args, directory: str) -> dict:
    """Section 2b: the feature cache's stream (random pool5 values, 10 views, on disk)."""
    model = training_model(args.size, "frozen")
    classifier = model.get_layer(CLASSIFIER)
    shape = (CACHE_IMAGES, 10, *classifier.input_shape[1:])
    random = _random_cache(directory, shape, classifier.output_shape[-1])
    stream = random.train_batches(args.batch, 0, 0, 20)  # more batches than any timing takes
    rates = {"cache pipeline": pipeline_rate(stream, 40, args.batch)}
    configs = fed_and_fixed(_classifier_trainee(classifier, False), stream, args.batch, "cached")
    rates.update(measure_alternating(configs, steps=args.steps * 8, repeats=args.repeats))
    return rates


def _random_cache(directory: str, shape: tuple[int, ...], classes: int) -> cache.FeatureCache:
    """Random pool5 values memory-mapped from disk, as a built cache is: the stream is timed
    without a build."""
    rng = np.random.default_rng(2)
    features = np.lib.format.open_memmap(f"{directory}/features.npy", "w+", np.float32, shape)
    for start in range(0, shape[0], 500):
        features[start : start + 500] = rng.random((500, *shape[1:]), np.float32)
    features.flush()
    return cache.FeatureCache(
        Path(directory), features, rng.integers(0, classes, shape[0]), np.arange(shape[0]),
        build_seconds=0.0, reused=True,
    )  # fmt: skip


def evaluation_rate(args) -> dict:
    """Section 3: source images/s of the 10-crop evaluation."""
    split, _ = source()
    model = training_model(args.size, "frozen")
    augment = AugmentConfig(args.resize, args.size)
    images = split.take(EVAL_IMAGES)
    evaluate(model, images.take(args.batch), crops=10, augment=augment, verbose=0)  # warm-up
    start = time.perf_counter()
    evaluate(model, images, crops=10, augment=augment, batch_size=args.batch, verbose=0)
    return {"10-crop evaluation (source images)": EVAL_IMAGES / (time.perf_counter() - start)}


def goal_rows(values: dict) -> list[dict]:
    """Each goal's ratio from the measured values; a goal whose inputs are missing is skipped."""
    rows = []
    for name, numerator, denominator, goal in GOALS:
        if numerator in values and denominator in values:
            ratio = values[numerator] / values[denominator]
            rows.append({"ratio": name, "value": ratio, "goal": goal, "met": ratio >= goal})
    return rows


def report(result: dict) -> str:
    """The Markdown report: the rates measured, then each goal's ratio against its goal."""
    rates = [[name, f"{value:,.1f}"] for name, value in result["images_per_second"].items()]
    goals = [
        [row["ratio"], f"{row['value']:.2f}", str(row["goal"]), "yes" if row["met"] else "NO"]
        for row in result["goals"]
    ]
    lines = [
        f"Benchmarks: {result['machine']}, TensorFlow {result['tensorflow']}, "
        f"{result['image_size']} px, batch {result['batch']}, {result['precision']}, medians of "
        f"{result['repeats']} "
        "alternated repeats (`python -m benchmarks`).",
        "",
        markdown.table(["measurement", "images/s"], rates, "lr"),
        "",
        markdown.table(["ratio", "measured", "goal", "met"], goals, "lrrl"),
        "",
        ", ".join(f"{k} {v:,.1f}" for k, v in result["rates"].items())
        + f"; peak RSS {result['peak_rss_gb']:.1f} GB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmark-results", help="folder for the results")
    parser.add_argument("--size", type=int, default=227, help="crop size (227)")
    parser.add_argument("--resize", type=int, default=256, help="resize before cropping (256)")
    parser.add_argument("--batch", type=int, default=80)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precision",
        default="float32",
        choices=PRECISIONS,
        help="Keras dtype policy of every model built (as --set precision=... in a run)",
    )
    args = parser.parse_args(argv)
    keras.mixed_precision.set_dtype_policy(args.precision)

    print(
        f"{machine()}, TF {tf.__version__}, {args.size} px, batch {args.batch}, {args.precision}",
        flush=True,
    )
    rates, derived = model_rates(args)
    print("  training steps measured", flush=True)
    rates.update(augmentation_rates(args))
    with tempfile.TemporaryDirectory() as directory:
        rates.update(cache_rates(args, directory))
    print("  pipelines measured", flush=True)
    rates.update(evaluation_rate(args))
    result = {
        "machine": machine(),
        "tensorflow": tf.__version__,
        "image_size": args.size,
        "batch": args.batch,
        "precision": args.precision,
        "repeats": args.repeats,
        "images_per_second": rates,
        "rates": derived,
        "goals": goal_rows({**rates, **derived}),
        "peak_rss_gb": peak_rss_gb(),
    }
    text = report(result)
    write_json(result, os.path.join(args.out, "benchmark.json"))
    write_atomic(os.path.join(args.out, "benchmark.md"), text.encode())
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
