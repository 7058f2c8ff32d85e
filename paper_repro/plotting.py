"""Figures that every machine draws byte for byte the same: one style and one save for all.

matplotlib's defaults, not the user's matplotlibrc; ``svg.hashsalt`` fixes the ids matplotlib
would otherwise randomise should an SVG ever be written; PNG and PDF are saved without the
timestamps and version stamps matplotlib puts in them, so regenerating a committed figure shows a
diff only when what it plots changed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matplotlib import rc_context, style
from matplotlib.figure import Figure

from paper_repro.runs import write_atomic

_RC = {"svg.hashsalt": "paper_repro", "savefig.dpi": 150}
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}
FORMATS = ("png", "pdf")


@contextmanager
def deterministic_style() -> Iterator[None]:
    """Draw (and save) inside this: the same style on every machine."""
    with style.context("default"), rc_context(_RC):
        yield


def save_figure(figure: Figure, out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    """``OUT_DIR/STEM.png`` and ``.pdf``, written atomically, free of timestamps."""
    paths = []
    with deterministic_style():
        for fmt in FORMATS:
            buffer = io.BytesIO()
            figure.savefig(buffer, format=fmt, metadata=_METADATA[fmt])
            path = Path(out_dir) / f"{stem}.{fmt}"
            write_atomic(path, buffer.getvalue())
            paths.append(path)
    return paths
