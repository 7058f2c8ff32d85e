"""``paper-repro regenerate-tables`` and ``regenerate-figures``: every report of a folder of
histories, in one call each."""

from __future__ import annotations

import os
from pathlib import Path

from paper_repro import job_time
from paper_repro.reports.figure5 import write_figure5
from paper_repro.reports.index import load_histories
from paper_repro.reports.table3 import write_table3
from paper_repro.reports.time_to_accuracy import write_time_to_accuracy


def regenerate_tables(
    histories_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
    target: float | None = None,
) -> list[Path]:
    """Table III, the time-to-accuracy table and (for runs that recorded it) the time-by-phase
    table from every history below ``histories_dir``."""
    histories = load_histories(histories_dir)
    return [
        *write_table3(histories, out_dir, allow_mixed_presets),
        *write_time_to_accuracy(histories, out_dir, allow_mixed_presets, target),
        *job_time.write_time_by_phase(histories, out_dir),
    ]


def regenerate_figures(
    histories_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
) -> list[Path]:
    """Figure 5 from every history below ``histories_dir``."""
    return write_figure5(load_histories(histories_dir), out_dir, allow_mixed_presets)
