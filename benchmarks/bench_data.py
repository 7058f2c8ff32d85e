"""Input pipeline images/s beside training-step images/s, measured in the same run.

    python -m benchmarks.bench_data [--sizes 256/227,76/67] [--mode frozen|full] [--batch 80]
                                    [--steps 6] [--repeats 3] [--json out.json]

For each resize/crop pair: the host pipeline alone (CIFAR-10's test split from $TFDS_DATA_DIR,
else synthetic 32x32 images; decode once, per-epoch permutation, Caffe's resize, random crop and
mirror; timed alone over many batches, so that prefetched batches do not count), then the Table II
network's training step on one fixed batch ("synthetic") and the same step fed by the pipeline,
those two timed alternately. Goals (issue 3): pipeline >= 20x the step,
and the step fed by the pipeline within 5 % of the synthetic one. ``frozen`` (the retraining
step, the fastest one) is the stricter test of the pipeline.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from benchmarks.timing import machine, measure_alternating, peak_rss_gb, ratio_line, write_json
from paper_repro import data
from paper_repro.errors import UserError
from paper_repro.model import build_alexnet

PIPELINE_GOAL = 20.0
FEED_GOAL = 0.95
EPOCHS = 2


def source(synthetic_examples: int = 4000) -> tuple[tf.data.Dataset, str]:
    """CIFAR-10's test split when prepared, else random 32x32 images shaped like a loaded split."""
    try:
        return data.load_split("cifar10", "test")[0], "cifar10 test"
    except UserError:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (synthetic_examples, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, synthetic_examples)
        split = {"image": images, "label": labels, "index": np.arange(synthetic_examples)}
        return tf.data.Dataset.from_tensor_slices(split), "synthetic 32x32"


def training_model(crop: int, mode: str):
    from paper_repro.solver import CaffeSGD

    model = build_alexnet(10, crop, seed=0)
    model.get_layer("features").trainable = mode == "full"
    model.compile(CaffeSGD(0.001), "sparse_categorical_crossentropy", jit_compile=False)
    return model


def pipeline_rate(pipeline: tf.data.Dataset, batches: int, batch: int) -> float:
    """Images/s of the pipeline alone, after its first batches (start-up, prefetch) are out."""
    iterator = iter(pipeline)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def step_configs(pipeline: tf.data.Dataset, crop: int, args) -> dict:
    """``{name: (step, images per step)}``: the training step on a fixed batch and fed."""
    model = training_model(crop, args.mode)
    images, labels = next(iter(pipeline))
    fed = iter(pipeline)
    return {
        "step, synthetic batch": (lambda: model.train_on_batch(images, labels), args.batch),
        "step, fed by pipeline": (lambda: model.train_on_batch(*next(fed)), args.batch),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256/227,76/67", help="resize/crop pairs")
    parser.add_argument("--mode", choices=("frozen", "full"), default="frozen")
    parser.add_argument("--batch", type=int, default=80)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline-batches", type=int, default=40)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    split, name = source()
    print(f"{machine()}, TF {tf.__version__}, {name}, batch {args.batch}, {args.mode} step")
    result = {"machine": machine(), "source": name, "mode": args.mode, "sizes": {}}
    for pair in args.sizes.split(","):
        resize, crop = map(int, pair.split("/"))
        augment = data.AugmentConfig(resize, crop)
        pipeline = data.train_dataset(
            split, augment, batch_size=args.batch, num_epochs=EPOCHS, placement="host"
        )
        rates = {"pipeline": pipeline_rate(pipeline, args.pipeline_batches, args.batch)}
        configs = step_configs(pipeline, crop, args)
        rates.update(measure_alternating(configs, steps=args.steps, repeats=args.repeats))
        result["sizes"][pair] = rates
        print(f"  {pair}: " + ", ".join(f"{k} {v:8.1f} img/s" for k, v in rates.items()))
        step = rates["step, synthetic batch"]
        print(ratio_line(f"{pair} pipeline / step", rates["pipeline"] / step, PIPELINE_GOAL))
        fed = rates["step, fed by pipeline"] / step
        print(ratio_line(f"{pair} fed step / synthetic step", fed, FEED_GOAL))
    result["peak_rss_gb"] = peak_rss_gb()
    print(f"  peak RSS {result['peak_rss_gb']:.2f} GB")
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
