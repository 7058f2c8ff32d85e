"""TensorFlow imported once, without its start-up noise, for the commands that run it."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow once, before any command that uses it, without its start-up noise.

    TensorFlow 2.21 writes "All log messages before absl::InitializeLog() ..." and the oneDNN and
    CPU-feature notices straight to file descriptor 2 while it loads, before any of its logging
    settings (``TF_CPP_MIN_LOG_LEVEL``, ``GLOG_minloglevel``, ``ABSL_MIN_LOG_LEVEL``) is read, so
    only redirecting the descriptor itself around the import silences them; it is restored at
    once, so every later message, and every error, reaches stderr. ``TF_CPP_MIN_LOG_LEVEL=3``
    (unless set) then quiets TensorFlow's native log at run time, whose "errors" are notices such
    as oneDNN's "supports DT_UINT8 only on platforms with AVX-512" at the first evaluation; a
    failure that matters raises a Python exception, which still prints. TensorFlow's Python
    logger is set to errors only: its warnings are hints for developers, such as "N out of the
    last M calls ... triggered tf.function retracing" when ``reproduce`` evaluates its fourth run
    in one process. ``TF_ENABLE_ONEDNN_OPTS`` is left alone: it changes the numerics, and runs
    must stay bit-identical. ``verbose`` lets all of it through.
    """
    quiet = not verbose and "tensorflow" not in sys.modules
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_discarded() if quiet else contextlib.nullcontext():
        tensorflow = importlib.import_module("tensorflow")
    if quiet:
        tensorflow.get_logger().setLevel("ERROR")


@contextlib.contextmanager
def _stderr_discarded() -> Iterator[None]:
    """File descriptor 2 on /dev/null (what native code writes too), restored on the way out."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
