"""Where a job's wall time goes: the time-by-phase table of a preset's runs (issue 17).

Every run records its training steps per epoch, its final multi-crop evaluation and, since the
phase record (``history.PHASES``), the rest: data, model, feature cache, the test after every
epoch, checkpoints, the final save, and its whole wall time. This table puts them side by side,
one row per run and a last row for the job, so that what is not training can be seen and cut.
No TensorFlow, no matplotlib: it reads histories only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from paper_repro import markdown
from paper_repro.history import History
from paper_repro.runs import write_atomic

# The table's columns, in the order a run spends them; ``other`` is the run's wall time less all
# the rest: process start-up, reading the source model, and Keras' work around the steps.
COLUMNS = {
    "data": "data",
    "model": "model",
    "cache": "feature cache",
    "training": "training steps",
    "epoch_tests": "per-epoch tests",
    "checkpoints": "checkpoints",
    "final_evaluation": "final evaluation",
    "final_save": "model save",
    "other": "other",
}
TABLE = "time_by_phase.md"
CAPTION = (
    "Wall seconds per phase of each run (from the histories' phase records; training steps "
    "are the epochs' own times, the final evaluation its multi-crop test)."
)


def phase_seconds(history: History) -> dict[str, float] | None:
    """Seconds per ``COLUMNS`` key and ``total`` for a finished run with a phase record."""
    if history.phases is None or history.final is None:
        return None
    seconds = {key: history.phases.get(key, 0.0) for key in COLUMNS}
    seconds["training"] = sum(epoch.wall_seconds for epoch in history.epochs)
    seconds["final_evaluation"] = history.final.wall_seconds
    total = history.phases["total"]
    seconds["other"] = max(0.0, total - sum(v for k, v in seconds.items() if k != "other"))
    return {**seconds, "total": total}


def time_by_phase(histories: Mapping[str, History]) -> str | None:
    """The Markdown table (seconds; the job's row also in percent of its total), or None when no
    history has a phase record."""
    rows = {name: phase_seconds(h) for name, h in sorted(histories.items())}
    rows = {name: seconds for name, seconds in rows.items() if seconds is not None}
    if not rows:
        return None
    job = {key: sum(seconds[key] for seconds in rows.values()) for key in [*COLUMNS, "total"]}
    header = ["run", *COLUMNS.values(), "total"]
    share = {key: 100 * value / job["total"] if job["total"] else 0.0 for key, value in job.items()}
    cells = [
        *(_row(name, seconds) for name, seconds in rows.items()),
        _row(f"**all {len(rows)} runs**", job),
        _row("share of the job", share, unit="%"),
    ]
    text = markdown.table(header, cells, "l" + "r" * (len(header) - 1))
    return f"{CAPTION}\n\n{text}\n"


def _row(name: str, seconds: Mapping[str, float], unit: str = "") -> list[str]:
    return [name, *(f"{seconds[key]:,.1f}{unit}" for key in [*COLUMNS, "total"])]


def write_time_by_phase(
    histories: Mapping[str, History], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """``OUT/time_by_phase.md`` when any history has a phase record; nothing otherwise."""
    text = time_by_phase(histories)
    if text is None:
        return []
    path = Path(out_dir) / TABLE
    write_atomic(path, text.encode("utf-8"))
    return [path]
