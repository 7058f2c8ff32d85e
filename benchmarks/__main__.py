"""The benchmark suite: every speed goal of the package, measured side by side in one run.

    python -m benchmarks [--out DIR] [--size 227] [--batch 80] [--steps 3] [--repeats 3]

Writes ``DIR/benchmark.json`` and ``DIR/benchmark.md`` (default DIR: ``benchmark-results``) and
prints the Markdown table. Everything runs in one process on the same machine; the configurations
whose ratios are goals are timed alternately (``timing.measure_alternating``), medians over
``--repeats``:

1. Training steps on one fixed batch: full, frozen features (uncached retraining), cached
   retraining (the classifier alone on pool5 features: with the package's fused Caffe update,
   TensorFlow's momentum kernel, Keras' element-wise update, and XLA; "cached step" is the
   kernel a run chooses on this machine, ``update_choice``), inference; a 4096^3 matmul for the
   FLOP rate, a stream for the memory bandwidth; the same network in PyTorch when installed
   (``.[bench]``).
2. Input pipelines: Caffe's augmentation on the host (CIFAR-10's test split from
   ``$TFDS_DATA_DIR``, else synthetic images) and the feature cache's per-epoch stream (a cache
   of random pool5 values written to a temporary directory); each alone, then the step it feeds
   against the same step on a fixed batch.
3. 10-crop evaluation: source images/s of ``evaluate.evaluate`` (10 views per image).

Goals, on the 2-core CPU: cached step >= 8x full (an epoch is the same number
of steps, so a cached epoch costs <= 1/8 of a full one); frozen >= 2.2x full; full >= 1.3x
PyTorch; the full and the cached step >= 60 % of the matmul FLOP rate; pipelines >= 20x
(augmentation) and >= 5x (cache) the step they feed, and the fed step within 5 % of the
fixed-batch step. Each goal missed is reported with the bound it hits (``limits``): the matmul
rate, the memory bandwidth, the pipeline, or none of them (overhead). About 5 minutes at 227 px.
"""

from __future__ import annotations

import argparse
import functools
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
    torch_version,
)
from benchmarks.timing import machine, measure_alternating, peak_rss_gb, write_json
from paper_repro import cache, data, markdown, update_choice
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
# The cached step's variants: (name, XLA, update kernel forced), and the one of each kernel.
CACHED_VARIANTS = (
    ("cached step, fused Caffe update", False, "caffe"),
    ("cached step, TensorFlow's momentum kernel", False, "tensorflow"),
    ("cached step, element-wise update", False, "keras"),
    ("cached step, XLA", True, None),
)
KERNEL_VARIANTS = {kernel: name for name, jit, kernel in CACHED_VARIANTS if kernel and not jit}
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


def cached_steps(model, batch: int) -> tuple[dict, update_choice.Choice]:
    """The classifier trained alone on a fixed pool5 batch: with each kernel that can update its
    weights with the same bits (the package's fused Caffe update, TensorFlow's momentum kernel
    after a separate decay), with Keras' element-wise update (the step before both), and
    XLA-compiled; and the kernel a cached run chooses on this machine (``update_choice``)."""
    classifier = model.get_layer(CLASSIFIER)
    rng = np.random.default_rng(1)
    features = tf.constant(rng.random((batch, *classifier.input_shape[1:]), np.float32))
    labels = tf.constant(rng.integers(0, CLASSES, batch))
    steps = {}
    for name, jit, kernel in CACHED_VARIANTS:
        trainee, _ = _classifier_trainee(classifier, batch, jit, kernel)
        steps[name] = (lambda t=trainee: t.train_on_batch(features, labels), batch)
    _, choice = _classifier_trainee(classifier, batch, False)
    return steps, choice


def _classifier_trainee(classifier, batch: int, jit_compile: bool, kernel: str | None = None):
    """A fresh copy of the classifier block, compiled as a cached run compiles it, and its
    update kernel's choice: ``kernel`` forced, or (None) chosen as a run chooses it."""
    trainee = tf.keras.models.clone_model(classifier)
    optimizer = CaffeSGD(0.001)
    if kernel == "keras":
        optimizer._kernel = lambda variable: "keras"
        choice = update_choice.Choice("keras", 0.0, {})
    elif kernel:
        optimizer.update_kernel = kernel
        choice = update_choice.Choice(kernel, 0.0, {})
    else:
        choice = update_choice.choose(optimizer, trainee.trainable_variables, batch)
    return for_mode(trainee, "full", optimizer, jit_compile=jit_compile), choice


def model_rates(args) -> tuple[dict, dict, update_choice.Choice]:
    """Section 1: step images/s, FLOP rates, PyTorch; and the update kernel chosen."""
    configs, model = keras_steps(args.size, args.batch, CLASSES)
    cached, choice = cached_steps(model, args.batch)
    configs.update(cached)
    configs["matmul"] = matmul_step()
    configs["stream"] = stream_step()
    configs.update(torch_steps(args.size, args.batch, CLASSES))
    rates = measure_alternating(configs, steps=args.steps, repeats=args.repeats)
    names = {"keras full step": "full step", "keras frozen-features step": "frozen-features step",
             "keras inference": "inference"}  # fmt: skip
    rates = {names.get(k, k): v for k, v in rates.items()}
    # A cached run's step: the variant of the kernel it chooses here.
    rates["cached step"] = rates[KERNEL_VARIANTS[choice.kernel]]
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
    return rates, derived, choice


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
    # Whole batches only: a last, smaller one would count as a whole one, and retrace the step.
    images = max(1, CACHE_IMAGES // args.batch) * args.batch
    shape = (images, 10, *classifier.input_shape[1:])
    random = _random_cache(directory, shape, classifier.output_shape[-1])
    stream = random.train_batches(args.batch, 0, 0, 20)  # more batches than any timing takes
    rates = {"cache pipeline": pipeline_rate(stream, 40, args.batch)}
    trainee, _ = _classifier_trainee(classifier, args.batch, False)
    configs = fed_and_fixed(trainee, stream, args.batch, "cached")
    rates.update(measure_alternating(configs, steps=args.steps * 8, repeats=args.repeats))
    return rates


def _random_cache(directory: str, shape: tuple[int, ...], classes: int) -> cache.FeatureCache:
    """Random pool5 values memory-mapped from disk, as a built cache is: the stream is timed
    without a build."""
    rng = np.random.default_rng(2)
    features = np.lib.format.open_memmap(f"{directory}/features.npy", "w+", np.float32, shape)
    for start in range(0, shape[0], 500):
        rows = features[start : start + 500]
        rows[:] = rng.random(rows.shape, np.float32)
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


def limits(values: dict) -> list[dict]:
    """What bounds each missed goal, from the measured values alone: ``{"ratio", "bound",
    "why"}`` per goal missed, ``bound`` one of ``BOUNDS``.

    Each step or feed is held against what the machine's measured rates allow it: the matmul
    rate for its FLOPs, the memory bandwidth for its update's passes, the pipeline's share of
    the cores for a fed step. Where even those would miss the goal, the one that dominates is
    the bound; where they would meet it, the goal is missed by time spent above them,
    ``overhead``: a faster CPU of the same kind would not remove it, the software might."""
    rows = []
    for row in goal_rows(values):
        if not row["met"]:
            bound, why = _LIMITS[row["ratio"]](values, row)
            rows.append({"ratio": row["ratio"], "bound": bound, "why": why})
    return rows


BOUNDS = ("matmul rate", "memory bandwidth", "pipeline", "overhead")


def _cached_step_limit(values: dict, row: dict) -> tuple[str, str]:
    """The cached step against its matmuls at the matmul rate plus its update's passes over
    memory at the measured bandwidth (``cached_step_bounds``); both goals it misses scale as
    1 / its time. Its FLOP rate can reach the matmul rate's only in its matmuls' share."""
    step = values["cached step ms"]
    matmuls = values["cached step matmul ms (at matmul rate)"]
    update = values["cached step update ms (at memory GB/s)"]
    best = row["value"] * step / (matmuls + update)
    parts = (
        f"the cached step's matmuls take {matmuls:.0f} ms at the matmul rate and its update "
        f"{update:.0f} ms at the memory bandwidth: {matmuls + update:.0f} of its {step:.0f} ms"
    )
    if best >= row["goal"]:
        return "overhead", f"{parts}; at those two bounds it would be {best:.2f}"
    flops = row["ratio"].startswith("cached step FLOP rate")
    bound = "memory bandwidth" if flops or update > matmuls else "matmul rate"
    return bound, f"{parts}; even at those bounds it would be {best:.2f}"


def _frozen_step_limit(values: dict, row: dict) -> tuple[str, str]:
    """The frozen step does the features' forward FLOPs and the classifier's forward and
    backward ones (3x forward), the full step both blocks' forward and backward: at one FLOP
    rate the ratio of their FLOPs is the most the frozen step can gain."""
    classifier = values["cached step GFLOP/s"] / values["cached step"] / 3  # forward, per image
    whole = values["full step GFLOP/s"] / values["full step"] / 3
    best = 3 * whole / (whole + 2 * classifier)
    why = f"its FLOPs at the full step's FLOP rate would make it {best:.2f}"
    return ("matmul rate" if best < row["goal"] else "overhead"), why


def _full_step_limit(values: dict, row: dict) -> tuple[str, str]:
    """The full step is its convolutions' FLOPs: bound by the matmul rate once it runs them at
    the share of it its own goal asks."""
    share = values["full step GFLOP/s"] / values["matmul GFLOP/s"]
    why = f"the full step runs at {share:.2f} of the matmul rate"
    return ("matmul rate" if share >= FULL_STEP_SHARE else "overhead"), why


def _pipeline_limit(values: dict, row: dict) -> tuple[str, str]:
    """A pipeline measured alone: its own speed on this CPU is the bound."""
    return "pipeline", f"the pipeline alone makes {row['value']:.1f}x the images the step takes"


def _fed_step_limit(values: dict, row: dict, pipeline: str, step: str) -> tuple[str, str]:
    """A fed step shares the cores with its pipeline: making a batch costs ``step /
    pipeline`` of a step's time on the whole machine, so at best, the feed overlapping the
    step, the fed step runs at ``1 / (1 + step / pipeline)`` of the fixed-batch one."""
    share = values[step] / values[pipeline]
    best = 1 / (1 + share)
    why = f"making its batch takes {share:.1%} of a step's time on the same cores"
    if best < row["goal"]:
        return "pipeline", f"{why}: at best the fed step runs at {best:.2f}"
    return "overhead", f"{why}, which allows {best:.2f}: the rest is lost to the feeding itself"


FULL_STEP_SHARE = next(goal for name, _, _, goal in GOALS if name.startswith("full step FLOP"))
_LIMITS = {
    "cached step / full step": _cached_step_limit,
    "frozen step / full step": _frozen_step_limit,
    "full step / PyTorch full step": _full_step_limit,
    "full step FLOP rate / matmul FLOP rate": _full_step_limit,
    "cached step FLOP rate / matmul FLOP rate": _cached_step_limit,
    "augmentation pipeline / frozen step": _pipeline_limit,
    "frozen step fed by the pipeline / fixed batch": functools.partial(
        _fed_step_limit, pipeline="augmentation pipeline", step="frozen, fixed batch"
    ),
    "cache pipeline / cached step": _pipeline_limit,
    "cached step fed by the cache / fixed batch": functools.partial(
        _fed_step_limit, pipeline="cache pipeline", step="cached, fixed batch"
    ),
}


def _torch_text(result: dict) -> str:
    """PyTorch's version in the report's first line (results written before it was recorded,
    and runs without PyTorch, have none)."""
    return f"PyTorch {result['torch']}, " if result.get("torch") else ""


def report(result: dict) -> str:
    """The Markdown report: the rates measured, each goal's ratio against its goal, what
    bounds each goal missed, and the update kernel a run chooses here."""
    rates = [[name, f"{value:,.1f}"] for name, value in result["images_per_second"].items()]
    goals = [
        [row["ratio"], f"{row['value']:.2f}", str(row["goal"]), "yes" if row["met"] else "NO"]
        for row in result["goals"]
    ]
    lines = [
        f"Benchmarks: {result['machine']}, TensorFlow {result['tensorflow']}, "
        f"{_torch_text(result)}{result['image_size']} px, batch {result['batch']}, "
        f"{result['precision']}, medians of {result['repeats']} alternated repeats "
        "(`python -m benchmarks`).",
        "",
        markdown.table(["measurement", "images/s"], rates, "lr"),
        "",
        markdown.table(["ratio", "measured", "goal", "met"], goals, "lrrl"),
        "",
        *_limits_section(result),
        _update_kernel_line(result["update_kernel"]),
        "",
        ", ".join(f"{k} {v:,.1f}" for k, v in result["rates"].items())
        + f"; peak RSS {result['peak_rss_gb']:.1f} GB.",
    ]
    return "\n".join(lines) + "\n"


def _limits_section(result: dict) -> list[str]:
    """What bounds each missed goal (``limits``), as a table; nothing where every goal is met."""
    if not result["limits"]:
        return []
    rows = [[row["ratio"], row["bound"], row["why"]] for row in result["limits"]]
    return [
        "What bounds each goal missed (`limits`: the step against its FLOPs at the matmul rate "
        "and its update at the memory bandwidth, a fed step against its pipeline's share of "
        "the cores; `overhead`: time above those bounds):",
        "",
        markdown.table(["goal missed", "bound", "why"], rows, "lll"),
        "",
    ]


def _update_kernel_line(update: dict) -> str:
    """The update kernel a run chooses on this machine, and the timings it chose by."""
    timed = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in update["seconds_per_update"].items())
    how = f"measured in {update['choice_seconds']:.1f} s: {timed}" if timed else "read back"
    return f"Update kernel a run chooses here: {update['kernel']} ({how})."


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
    rates, derived, choice = model_rates(args)
    print("  training steps measured", flush=True)
    rates.update(augmentation_rates(args))
    with tempfile.TemporaryDirectory() as directory:
        rates.update(cache_rates(args, directory))
    print("  pipelines measured", flush=True)
    rates.update(evaluation_rate(args))
    result = {
        "machine": machine(),
        "tensorflow": tf.__version__,
        "torch": torch_version(),
        "image_size": args.size,
        "batch": args.batch,
        "precision": args.precision,
        "repeats": args.repeats,
        "images_per_second": rates,
        "rates": derived,
        "goals": goal_rows({**rates, **derived}),
        "limits": limits({**rates, **derived}),
        "update_kernel": {
            "kernel": choice.kernel,
            "choice_seconds": choice.seconds,
            "seconds_per_update": choice.timings,
        },
        "peak_rss_gb": peak_rss_gb(),
    }
    text = report(result)
    write_json(result, os.path.join(args.out, "benchmark.json"))
    write_atomic(os.path.join(args.out, "benchmark.md"), text.encode())
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
