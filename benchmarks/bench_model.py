"""The training steps the suite (``python -m benchmarks``) times: the Table II network's full,
frozen-features and inference steps on a fixed batch, a matmul for the machine's FLOP rate, and,
when torch is installed (``pip install -e .[bench]``), the same network in PyTorch (NCHW and
channels_last), each as ``{name: (step, images per step)}`` for ``timing.measure_alternating``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from paper_repro.model import build_alexnet, caffe_layers
from paper_repro.solver import CaffeSGD
from paper_repro.trainee import for_mode

MATMUL_N = 4096
STREAM_FLOATS = 2**25  # 128 MiB per float32 array: far past any CPU cache


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
    full, frozen = (
        for_mode(build_alexnet(classes, size, seed=0), mode, CaffeSGD(), jit_compile=False)
        for mode in ("full", "retrain")
    )
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


def stream_step() -> tuple:
    """``c = a + b`` over arrays far larger than the caches: memory bandwidth, as STREAM's add
    measures it (two arrays read, one written per step; the step's "items" are bytes)."""
    a = tf.random.normal((STREAM_FLOATS,))
    b = tf.random.normal((STREAM_FLOATS,))
    add = tf.function(lambda: tf.add(a, b))  # on the CPU the call returns once it is computed
    return lambda: add(), 3 * 4 * STREAM_FLOATS


def _torch():
    """PyTorch, or None where it is not installed (it is the ``bench`` extra's)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_version() -> str | None:
    """PyTorch's version and build (``2.13.0+cpu``), None where it is not installed: the
    comparison's denominator changes with it, so the results record it."""
    torch = _torch()
    return torch.__version__ if torch else None


def torch_steps(size: int, batch: int, classes: int) -> dict:
    """The same network in PyTorch, as fast as it goes on a CPU: both memory layouts."""
    torch = _torch()
    if torch is None:
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
