"""GPU check of the device-side augmentation: op placement, pixels, step rates.

    python -m benchmarks.gpu_data_check [--sizes 256/227,76/67] [--batch 80] [--steps 40]
                                        [--json out.json]

1. Placement: two training steps of the Table II network behind ``CaffeAugment`` run with TF's
   device placement log on; the device of every op of the augmentation layer is listed (all
   should be GPU:0; on a machine without a GPU they are CPU:0 and the check fails).
2. Pixels: the same batch and keys augmented on GPU:0 and on the CPU, differing pixels counted
   (TF32 matmuls can move a few pixels by one level at non-dyadic resize ratios; none at 256).
3. Rates: images/s of ``model.fit`` with the augmentation on the device vs on the host
   (tf.data), frozen features and full training, and the host pipeline alone.

Data: CIFAR-10's test split from $TFDS_DATA_DIR when prepared, else random 32x32 images.
Exit status 1 when an augmentation op other than a constant is not on a GPU. About two minutes
on one GPU.
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import tensorflow as tf

from benchmarks.bench_data import pipeline_rate, source
from benchmarks.timing import write_json
from paper_repro import data
from paper_repro.augment import AugmentConfig, caffe_augment, with_device_augmentation
from paper_repro.model import build_alexnet
from paper_repro.solver import CaffeSGD
from paper_repro.trainee import for_mode

PLACEMENT = re.compile(r"^(\S*caffe_augment\S*): \((\w+)\): (\S+)$")


def training_model(augment: AugmentConfig, mode: str, placement: str):
    """The Table II network (frozen features or full), behind CaffeAugment for the device."""
    behind_augmentation = functools.partial(with_device_augmentation, augment=augment)
    return for_mode(
        build_alexnet(10, augment.crop, seed=0),
        "full" if mode == "full" else "retrain",
        CaffeSGD(),
        jit_compile=False,
        wrap=behind_augmentation if placement == "device" else None,
    )


def log_two_steps(split, augment: AugmentConfig, batch: int) -> None:
    """Two device-augmented training steps (run with the placement log on, in a subprocess)."""
    model = training_model(augment, "frozen", "device")
    batches = data.train_dataset(split, augment, batch_size=batch, placement="device")
    model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)


def augmentation_placement(pair: str, batch: int) -> dict[str, str]:
    """``{op name: "OpType on device"}`` of the augmentation ops inside a Keras training step.

    TF reads the placement-log switch only before its first op, so a fresh process runs the steps.
    """
    command = [sys.executable, "-m", "benchmarks.gpu_data_check", "--log-placement"]
    run = subprocess.run(
        [*command, "--sizes", pair, "--batch", str(batch)], capture_output=True, text=True
    )
    lines = (run.stdout + run.stderr).splitlines()
    return {m[1]: f"{m[2]} on {m[3]}" for m in map(PLACEMENT.match, lines) if m}


def pixel_differences(split, augment: AugmentConfig, batch: int) -> tuple[int, int]:
    """(differing pixels, pixels) between GPU:0 and CPU augmentation of one device batch."""
    features, _ = next(
        iter(data.train_dataset(split, augment, batch_size=batch, placement="device"))
    )
    results = []
    for device in ("/GPU:0", "/CPU:0"):
        with tf.device(device):
            results.append(caffe_augment(features["image"], features["key"], augment).numpy())
    return int(np.sum(results[0] != results[1])), results[0].size


def fit_rate(split, augment, placement: str, mode: str, batch: int, steps: int) -> float:
    """Images/s of ``model.fit`` over ``steps`` batches, after a 3-step warm-up fit."""
    model = training_model(augment, mode, placement)
    per_epoch = data.steps_per_epoch(int(split.cardinality()), batch)
    batches = data.train_dataset(
        split, augment, batch_size=batch, num_epochs=-(-steps // per_epoch), placement=placement
    )
    model.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256/227,76/67", help="resize/crop pairs")
    parser.add_argument("--batch", type=int, default=80)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--log-placement", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    first = args.sizes.split(",")[0]
    if args.log_placement:
        tf.debugging.set_log_device_placement(True)
        log_two_steps(source()[0], AugmentConfig(*map(int, first.split("/"))), args.batch)
        return 0

    gpus = tf.config.list_physical_devices("GPU")
    split, name = source()
    print(f"TF {tf.__version__}, GPUs {[g.name for g in gpus]}, {name}, batch {args.batch}")
    print(f"default placement: {data.default_placement()}")
    result = {"gpus": [g.name for g in gpus], "source": name, "sizes": {}}
    placement = augmentation_placement(first, args.batch)
    off_gpu = Counter(where for where in placement.values() if "GPU" not in where)
    print(f"augmentation ops placed: {len(placement)}, not on a GPU: {sum(off_gpu.values())}")
    for where, count in sorted(off_gpu.items()):
        print(f"  {count} x {where}")
    result["placement"] = placement
    # Constants may stay on the host without moving pixels; any other op off the GPU fails.
    ok = bool(gpus) and bool(placement) and all(w.startswith("Const ") for w in off_gpu)
    for pair in args.sizes.split(","):
        augment = AugmentConfig(*map(int, pair.split("/")))
        rates = {"host pipeline alone": pipeline_rate(
            data.train_dataset(split, augment, batch_size=args.batch, num_epochs=2),
            args.steps, args.batch,
        )}  # fmt: skip
        if gpus:
            differing, total = pixel_differences(split, augment, args.batch)
            print(f"  {pair}: GPU vs CPU pixels differing: {differing} of {total}")
            result.setdefault("pixels_differing", {})[pair] = differing
        for mode in ("frozen", "full"):
            for where in ("device", "host"):
                key = f"fit {mode}, augment on {where}"
                rates[key] = fit_rate(split, augment, where, mode, args.batch, args.steps)
        result["sizes"][pair] = rates
        print(f"  {pair}: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in rates.items()))
    print("placement check: " + ("PASSED" if ok else "FAILED"))
    write_json(result, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
