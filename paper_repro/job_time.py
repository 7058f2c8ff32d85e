"""Where a job's wall time goes: the time-by-phase table of a preset's runs.

Every run records its training steps per epoch, its final multi-crop evaluation and, since the
phase record (``history.PHASES``), the rest: data, model, feature cache, the test after every
epoch, checkpoints, the final save, and its whole wall time. This table puts them side by side,
one row per run and a last row for the job, so that what is not training can be seen and cut.
A run is named as a reader knows it, by its experiment and seed (``run_name``), not by the file
its history happens to be saved in; the time-to-accuracy table names runs the same way. No
TensorFlow, no matplotlib: it reads histories only.
"""

from __future__ import annotations

import os
from collections import Counter
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
    "Wall seconds per phase of each run, named by its experiment and seed (from the histories'"
    " phase records; training steps are the epochs' own times, the final evaluation its"
    " multi-crop test)."
)
PRECOMPUTED = " (precomputed features)"  # a run whose classifier trained on cached features


def run_name(history: History) -> str:
    """A run as the time tables name it: ``retrain-mnist, seed 1``. Retraining on cached
    features shares its experiment with retraining on the images, so it says so."""
    return f"{history.experiment}{PRECOMPUTED if history.cache else ''}, seed {history.seed}"


def run_names(histories: Mapping[str, History]) -> dict[str, str]:
    """Each history's ``run_name``, with its preset where several are among them, and, should two
    runs still share a name (the same run kept in two folders), with its file after it."""
    several = len({h.preset for h in histories.values()}) > 1
    names = {
        source: run_name(h) + (f", preset {h.preset}" if several else "")
        for source, h in histories.items()
    }
    taken = Counter(names.values())
    return {
        source: name if taken[name] == 1 else f"{name} ({source})" for source, name in names.items()
    }


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
    history has a phase record. A row per run, in the order of its name (experiment, then seed)."""
    seconds = {source: phase_seconds(h) for source, h in histories.items()}
    timed = {source: h for source, h in histories.items() if seconds[source] is not None}
    if not timed:
        return None
    names = run_names(timed)
    order = sorted(timed, key=lambda source: _order(timed[source], names[source]))
    rows = {names[source]: seconds[source] for source in order}
    job = {key: sum(run[key] for run in rows.values()) for key in [*COLUMNS, "total"]}
    header = ["run", *COLUMNS.values(), "total"]
    share = {key: 100 * value / job["total"] if job["total"] else 0.0 for key, value in job.items()}
    cells = [
        *(_row(name, seconds) for name, seconds in rows.items()),
        _row(f"**all {len(rows)} runs**", job),
        _row("share of the job", share, unit="%"),
    ]
    text = markdown.table(header, cells, "l" + "r" * (len(header) - 1))
    return f"{CAPTION}\n\n{text}\n"


def _order(history: History, name: str) -> tuple[str, bool, int, str]:
    """Experiment, then on the images before on cached features, then seed (as a number: seed 10
    after seed 9), then the name (preset, file) to break what remains."""
    return history.experiment, history.cache is not None, history.seed, name


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
