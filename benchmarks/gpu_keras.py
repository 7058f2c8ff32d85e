"""Training and inference images/s of the Table II network under Keras 3's JAX backend, on a GPU.

    KERAS_BACKEND=jax python -m benchmarks.gpu_keras --out DIR [--batch 256] [--steps 30]
                                                   [--size 227] [--repeats 3]

Measures, on the first device JAX has (the GPU where there is one), images/s of:

- ``full``: training the whole network (``model.train_on_batch``);
- ``retrain``: the paper's retraining, features frozen (``get_layer("features").trainable =
  False``), so only fc6 .. fc8 are trained;
- ``cached``: retraining on cached features (``--cache-features``): the classifier block alone,
  trained on a fixed batch of pool5 values (the cache's reading is not measured);
- ``predict``: inference (``model.predict_on_batch``);

each in ``float32`` and ``mixed_bfloat16`` (the global dtype policy set before building), compiled
with XLA (``jit_compile=True``), optimizer ``paper_repro.solver.CaffeSGD`` (the paper's solver;
``--optimizer sgd`` for Keras' SGD with momentum 0.9). One fixed batch of random uint8 images and
labels, already on the device, is fed repeatedly: no input pipeline is measured. Each step ends
with its loss (or probabilities) copied to the host, so every step is complete when timed. After
warm-up steps (which compile), ``--steps`` steps per configuration are timed, configurations
alternated in each of ``--repeats`` repeats; the medians are reported, with frozen/full ratios.
Writes DIR/gpu_keras.json and DIR/gpu_keras.md and prints the Markdown table.

Why JAX: the GPU machine's Python image has no TensorFlow (and its wheels are too large to carry
there); it has JAX with CUDA, and Keras 3 runs the same model code on it (``paper_repro.model``
imports TensorFlow only on the TensorFlow backend). So this script imports no TensorFlow, and the
numbers are for Keras on JAX/XLA, not for the TensorFlow backend the package trains with. Runs on
a CPU too, for a check with small settings: ``--size 67 --batch 16 --steps 3``.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import keras
import numpy as np

from paper_repro import markdown
from paper_repro.model import CLASSIFIER, PAPER_IMAGE_SIZE, build_alexnet
from paper_repro.solver import PAPER_BASE_LR, PAPER_MOMENTUM, CaffeSGD
from paper_repro.trainee import for_mode

PRECISIONS = ("float32", "mixed_bfloat16")
MODES = ("full", "retrain", "cached", "predict")
NUM_CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_keras.json and .md")
    parser.add_argument("--size", type=int, default=PAPER_IMAGE_SIZE, help="input size (227)")
    parser.add_argument("--batch", type=int, default=256, help="images per step (256)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat (30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians reported (3)")
    parser.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma-separated dtype policies"
    )
    parser.add_argument("--optimizer", choices=("caffe", "sgd"), default="caffe")
    return parser.parse_args(argv)


def make_optimizer(kind: str) -> keras.optimizers.Optimizer:
    if kind == "caffe":
        return CaffeSGD(PAPER_BASE_LR)
    return keras.optimizers.SGD(PAPER_BASE_LR, momentum=PAPER_MOMENTUM)


def build(precision: str, mode: str, size: int, optimizer: str) -> keras.Model:
    """The Table II network under ``precision``'s dtype policy, compiled for ``mode``."""
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        network = build_alexnet(NUM_CLASSES, size, seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return for_mode(network, mode, make_optimizer(optimizer), jit_compile=True)


def step_function(model: keras.Model, mode: str, images, labels) -> Callable[[], None]:
    """One complete step: its result is copied to the host, so the device has finished it."""
    if mode == "predict":
        return lambda: np.asarray(model.predict_on_batch(images))
    return lambda: float(model.train_on_batch(images, labels))


def measure(configs: dict[str, Callable[[], None]], args) -> tuple[dict, dict, dict]:
    """Medians (img/s) of alternated repeats, every repeat's rate, and warm-up seconds."""
    warmup_s = {}
    for name, step in configs.items():
        start = time.perf_counter()
        for _ in range(max(args.warmup, 1)):
            step()
        warmup_s[name] = time.perf_counter() - start
        print(f"  warmed up {name} in {warmup_s[name]:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        for name, step in configs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
        print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return medians, rates, warmup_s


def device_memory_gb(device) -> float | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # not every platform reports memory (CPU)
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


HEADER = ("precision", "full train img/s", "retrain (frozen) img/s", "frozen/full",
          "cached retrain img/s", "cached/full", "predict img/s")  # fmt: skip


def report(result: dict) -> str:
    """The Markdown report: a row of images/s and ratios per precision."""
    rates = result["images_per_s"]
    rows = []
    for precision in result["precisions"]:
        full, retrain, cached, predict = (rates[f"{mode} {precision}"] for mode in MODES)
        rows.append([
            precision, f"{full:.0f}", f"{retrain:.0f}",
            f"{result['frozen_over_full'][precision]:.2f}", f"{cached:.0f}",
            f"{result['cached_over_full'][precision]:.2f}", f"{predict:.0f}",
        ])  # fmt: skip
    lines = [
        f"Table II network, Keras {result['keras_version']} on JAX {result['jax_version']}, "
        f"{result['device']}, {result['image_size']}x{result['image_size']}, batch "
        f"{result['batch']}, optimizer {result['optimizer']}, jit_compile=True; median of "
        f"{result['repeats']} x {result['steps']} steps",
        "",
        markdown.table(HEADER, rows, "l" + "r" * (len(HEADER) - 1)),
    ]
    if "float32" in result["precisions"] and "mixed_bfloat16" in result["precisions"]:
        ratios = ", ".join(f"{m} {v:.2f}" for m, v in result["bfloat16_over_float32"].items())
        lines += ["", f"mixed_bfloat16 / float32: {ratios}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if keras.backend.backend() != "jax":
        print(f"needs KERAS_BACKEND=jax, Keras runs on {keras.backend.backend()}", file=sys.stderr)
        return 2
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    device = jax.devices()[0]
    print(f"Keras {keras.__version__}, JAX {jax.__version__}, device {device}", flush=True)

    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    images = jax.device_put(rng.integers(0, 256, shape, dtype=np.uint8), device)
    labels = jax.device_put(rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32), device)
    pool5_shape = build_alexnet(NUM_CLASSES, args.size).get_layer(CLASSIFIER).input_shape[1:]
    pool5 = jax.device_put(rng.random((args.batch, *pool5_shape), dtype=np.float32), device)

    configs = {}
    for precision in precisions:
        full = build(precision, "full", args.size, args.optimizer)
        retrain = build(precision, "retrain", args.size, args.optimizer)
        cached = build(precision, "cached", args.size, args.optimizer)
        # predict runs the full-training model's forward pass (dropout off).
        for mode, model, inputs in (
            ("full", full, images),
            ("retrain", retrain, images),
            ("cached", cached, pool5),
            ("predict", full, images),
        ):
            configs[f"{mode} {precision}"] = step_function(model, mode, inputs, labels)
    medians, rates, warmup_s = measure(configs, args)

    result = {
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "jax_version": jax.__version__,
        "device": getattr(device, "device_kind", str(device)),
        "platform": device.platform,
        "devices": [str(d) for d in jax.devices()],
        "host": platform.node(),
        "image_size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "optimizer": type(make_optimizer(args.optimizer)).__name__,
        "jit_compile": True,
        "precisions": precisions,
        "images_per_s": medians,
        "images_per_s_repeats": rates,
        "warmup_s": warmup_s,
        "frozen_over_full": {p: medians[f"retrain {p}"] / medians[f"full {p}"] for p in precisions},
        "cached_over_full": {p: medians[f"cached {p}"] / medians[f"full {p}"] for p in precisions},
        "peak_device_memory_gb": device_memory_gb(device),
    }
    if "float32" in precisions and "mixed_bfloat16" in precisions:
        result["bfloat16_over_float32"] = {
            mode: medians[f"{mode} mixed_bfloat16"] / medians[f"{mode} float32"] for mode in MODES
        }
    table = report(result)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_keras.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_keras.md").write_text(table)
    print(f"wrote {out / 'gpu_keras.json'} and {out / 'gpu_keras.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
