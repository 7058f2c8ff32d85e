"""Caffe's update of a decayed weight as one TensorFlow kernel, built on first use.

TensorFlow's fused ``ResourceApplyKerasMomentum`` is Caffe's momentum step, but it has no
coupled weight decay. With it, a weight's update takes three kernels: ``decay * w``, ``g + decay
* w``, then the momentum step. That is eight float32 passes over the weight's size. A cached
step spends about a third of its time there: 58.7 M classifier values against 80 pool5 vectors
(docs/performance.md). The kernel in ``fused_update.cc`` reads ``w``, ``v`` and ``g`` once and
writes ``w`` and ``v`` once: five passes. It rounds the same float32 products and sums in the
same order, compiled without FMA contraction, so its result is bit for bit the three kernels'
(``tests/test_solver.py``), and every history stays as it was.

TensorFlow has no such kernel and Keras no hook for one, so this package writes its own. It is
compiled once per machine, TensorFlow version and source, with the flags TensorFlow's own
headers ask for (``tf.sysconfig``), into ``$PAPER_REPRO_CACHE`` (default
``~/.cache/paper_repro``). Where it cannot be built or loaded (say, no C++ compiler), the three
kernels serve, with the same results, and one logged line says why. It runs on the CPU only, and
not inside XLA, which has no use for it: XLA fuses the three kernels itself. Fewer passes are not
faster on every CPU: ``update_choice`` measures the two on the machine and the solver takes the
faster.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

SOURCE = Path(__file__).with_suffix(".cc")
# -O3 vectorizes the loop; -ffp-contract=off keeps every product and sum rounded on its own.
COMPILE_FLAGS = ("-shared", "-fPIC", "-O3", "-ffp-contract=off", "-w")


def usable(variable) -> bool:
    """Whether ``variable``'s update can take the kernel: a float32 variable on the CPU,
    outside an XLA-compiled function, with the kernel built."""
    return (
        variable.dtype == tf.float32
        and tf.DeviceSpec.from_string(variable.device).device_type == "CPU"
        and not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
        and kernel() is not None
    )


def apply(variable, velocity, learning_rate, gradient, momentum: float, decay: float) -> None:
    """``v = momentum * v - lr * (g + decay * w); w += v``, in place, in one pass."""
    kernel()(
        var=variable.handle,
        accum=velocity.handle,
        lr=tf.cast(learning_rate, tf.float32),
        grad=tf.cast(gradient, tf.float32),
        momentum=tf.constant(momentum, tf.float32),
        decay=tf.constant(decay, tf.float32),
    )


@functools.cache
def kernel():
    """The op, loaded from the built library; None (after one logged line) where it cannot be."""
    try:
        library = tf.load_op_library(str(_library()))
    except (OSError, subprocess.SubprocessError, tf.errors.OpError) as error:
        # A log line rather than a Python warning: one line on stderr, without the source line
        # Python's warnings print under it.
        logging.getLogger(__name__).warning(
            "paper_repro: the fused Caffe update could not be built (%s); training uses "
            "TensorFlow's kernels instead, with the same results and a slower update. Set CXX to "
            "a C++ compiler to build it.",
            _reason(error),
        )
        return None
    return library.paper_repro_caffe_momentum


def source_digest() -> str:
    """What the kernel's speed depends on in this package: its source and compile flags."""
    text = "\0".join([SOURCE.read_text(), *COMPILE_FLAGS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where the built kernel (and ``update_choice``'s measurements) are kept."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "paper_repro"
    return Path(os.environ.get("PAPER_REPRO_CACHE", default))


def _library() -> Path:
    """The built library, compiled now if this machine has not built this source yet."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise OSError("no C++ compiler found: neither CXX nor g++ nor c++")
    flags = [*COMPILE_FLAGS, *tf.sysconfig.get_compile_flags()]
    link = tf.sysconfig.get_link_flags()
    key = "\0".join([SOURCE.read_text(), tf.__version__, compiler, *flags, *link])
    path = cache_dir() / f"fused_update-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built beside its final name, then renamed: two processes building at once both
        # finish with a whole library.
        with tempfile.TemporaryDirectory(dir=path.parent) as build:
            built = Path(build) / path.name
            command = [compiler, *flags, str(SOURCE), "-o", str(built), *link]
            subprocess.run(command, check=True, capture_output=True)
            os.replace(built, path)
    return path


def _reason(error: Exception) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        lines = error.stderr.decode(errors="replace").strip().splitlines()
        return f"{error.cmd[0]} failed: {lines[-1] if lines else f'exit {error.returncode}'}"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
