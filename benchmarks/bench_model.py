"""Training-step throughput of the Table II network: full, frozen features, inference.

    python -m benchmarks.bench_model [--batch 80] [--size 227] [--repeats 3] [--json out.json]

Prints images/s of each step, the FLOP rate the full step achieves against a large matmul measured
in the same run, and, when torch is installed (``pip install -e .[bench]``), the same network in
PyTorch (NCHW and channels_last), every configuration timed alternately. Goals on the 2-core CPU:
full step >= 1.3x PyTorch's best layout, >= 60 % of the matmul rate; frozen >= 2.2x full.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from benchmarks.timing import (
    machine,
    measure_alternating,
    peak_rss_gb,
    ratio_line,
    write_json,
)
from paper_repro.model import build_alexnet, caffe_layers
from paper_repro.solver import CaffeSGD

MATMUL_N = 4096


def forward_flops(model: tf.keras.Model) -> tuple[float, float]:
    """Multiply-adds x 2 per image of the features block and of the classifier, from the layers."""
    features = classifier = 0.0
    for name, layer in caffe_layers(model).items():
        if name.startswith("conv"):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            features += 2.0 * h * w * cout * kh * kw * cin
        elif name.startswith("fc"):
            fan_in, fan_out = layer.kernel.shape
            classifier += 2.0 * fan_in * fan_out
    return features, classifier


def keras_steps(size: int, batch: int, classes: int) -> dict:
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = tf.constant(rng.integers(0, classes, batch))
    full = build_alexnet(classes, size, seed=0)
    full.compile(CaffeSGD(0.001), "sparse_categorical_crossentropy", jit_compile=False)
    frozen = build_alexnet(classes, size, seed=0)
    frozen.get_layer("features").trainable = False
    frozen.compile(CaffeSGD(0.001), "sparse_categorical_crossentropy", jit_compile=False)
    infer = tf.function(lambda x: full(x, training=False))
    return {
        "keras full step": (lambda: full.train_on_batch(images, labels), batch),
        "keras frozen-features step": (lambda: frozen.train_on_batch(images, labels), batch),
        "keras inference": (lambda: infer(images).numpy(), batch),
    }, full


def matmul_step() -> tuple:
    a = tf.random.normal((MATMUL_N, MATMUL_N))
    matmul = tf.function(lambda: tf.linalg.matmul(a, a))
    return lambda: matmul().numpy(), 1


def torch_steps(size: int, batch: int, classes: int) -> dict:
    """The same network in PyTorch, as fast as it goes on a CPU: both memory layouts."""
    try:
        import torch
    except ImportError:
        return {}
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    pool5 = (size - 67) // 32 + 1
    net = nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5, 1e-4),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.LocalResponseNorm(5, 1e-4), nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(256 * pool5 * pool5, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, classes),
    )  # fmt: skip
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, classes, (batch,))

    def step(layout):
        def run():
            net.to(memory_format=layout)
            optimizer.zero_grad()
            loss_fn(net(images.contiguous(memory_format=layout)), labels).backward()
            optimizer.step()

        return run

    return {
        "torch full step (NCHW)": (step(torch.contiguous_format), batch),
        "torch full step (channels_last)": (step(torch.channels_last), batch),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=80)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    configs, model = keras_steps(args.size, args.batch, args.classes)
    configs["matmul 4096^3"] = matmul_step()
    configs.update(torch_steps(args.size, args.batch, args.classes))
    rates = measure_alternating(configs, steps=args.steps, repeats=args.repeats)

    features, classifier = forward_flops(model)
    train_flops = 3 * (features + classifier)  # forward + backward (input and weight gradients)
    matmul_gflops = rates.pop("matmul 4096^3") * 2 * MATMUL_N**3 / 1e9
    full_gflops = rates["keras full step"] * train_flops / 1e9
    torch_best = max((v for k, v in rates.items() if k.startswith("torch")), default=None)
    result = {
        "machine": machine(),
        "tensorflow": tf.__version__,
        "batch": args.batch,
        "image_size": args.size,
        "images_per_second": rates,
        "train_gflop_per_image": train_flops / 1e9,
        "full_step_gflops": full_gflops,
        "matmul_gflops": matmul_gflops,
        "peak_rss_gb": peak_rss_gb(),
    }
    print(f"{machine()}, TF {tf.__version__}, batch {args.batch}, size {args.size}")
    for name, rate in rates.items():
        print(f"  {name:<44} {rate:8.1f} img/s")
    print(
        f"  training step: {train_flops / 1e9:.2f} GFLOP/image -> {full_gflops:.0f} GFLOP/s; "
        f"matmul {matmul_gflops:.0f} GFLOP/s; peak RSS {result['peak_rss_gb']:.2f} GB"
    )
    full = rates["keras full step"]
    print(ratio_line("full step / matmul FLOP rate", full_gflops / matmul_gflops, 0.6))
    print(ratio_line("frozen step / full step", rates["keras frozen-features step"] / full, 2.2))
    if torch_best:
        print(ratio_line("keras full / best torch full", full / torch_best, 1.3))
        result["keras_over_torch"] = full / torch_best
    write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
