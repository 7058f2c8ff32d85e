"""The paper's "retraining is much faster", measured: the seconds each mode needs to reach one
accuracy, a row per preset and dataset with at least two modes run, declared as its columns.

Seconds from different machines or code versions are never compared silently: the notes say
where they were measured, and where that is several places each time names its own. A run is
named by its experiment and seed (``job_time.run_name``), as in the time-by-phase table.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from paper_repro import arms, datasets, seeds
from paper_repro.history import History
from paper_repro.job_time import run_name
from paper_repro.reports.index import (
    Index,
    Runs,
    arms_run,
    group,
    mixed_note,
    places,
    presets_of,
    shown,
    sources,
)
from paper_repro.reports.table import (
    DATASET_COLUMN,
    PRESET_COLUMN,
    Cell,
    Column,
    caption,
    notes,
    render_csv,
    render_markdown,
    section,
    summary_cell,
    write_all,
)

FULL = arms.variant(arms.FULL, False)
RETRAIN = arms.variant(arms.RETRAIN, False)
CACHED = arms.variant(arms.RETRAIN, True)
COMPARED = (FULL, RETRAIN, CACHED)  # the modes whose times choose the target
TITLE = "Time to accuracy (reproduced)"
CAPTION = (
    "Time to accuracy: the wall-clock seconds each mode needs before its centre-crop test accuracy"
    " first reaches the target, and the epoch where it does."
)
NOTES = (
    "Seconds are the runs' own training seconds per epoch, summed (per-epoch testing excluded, as"
    " in Table III); cached retraining adds the time its feature caches took to build, also when"
    " a run reused them. Pretraining is excluded: both retraining modes start from the same"
    " pretrained network.",
    "The target is the highest accuracy that every mode shown reaches (its lowest best epoch),"
    " unless one was given.",
)
CONTROL_CAPTIONS = {
    arms.CONTROL: (
        " The control column (the same retraining on frozen, untrained features) is timed to the"
        " same target, which is chosen without it."
    ),
    arms.ORACLE: (
        " The oracle column (the same retraining on the frozen features of the same seed's full"
        " training) is timed to the same target, which is chosen without it."
    ),
}
# A time per seed: (seconds, epoch), or None where that seed never reaches the target.
Time = tuple[float, int] | None


def write_time_to_accuracy(
    histories: Mapping[str, History],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
    target: float | None = None,
) -> list[Path]:
    """Write ``time_to_accuracy.md`` and ``.csv``: the paper's "retraining is faster" claim as
    seconds to reach one accuracy. ``target`` is a fraction; default: see ``CAPTION``."""
    index = group(histories, allow_mixed_presets)
    controls = {arms.variant(arm, cached) for arm in arms.CONTROLS for cached in (False, True)}
    timed = {*COMPARED, *controls}
    where = places(*(_with_epochs(runs) for (_, _, v), runs in index.items() if v in timed))
    rows = _timed_rows(index, target, mixed=len(where) > 1)
    presets = presets_of(histories)
    table = section("time_to_accuracy", COLUMNS, rows, arms_run(index), presets)
    text = caption(CAPTION, index, CONTROL_CAPTIONS)
    said = notes(histories, *NOTES, _places_note(where))
    return write_all(
        out_dir,
        {
            "time_to_accuracy.md": render_markdown([table], presets, histories, TITLE, text, said),
            "time_to_accuracy.csv": render_csv([table]),
        },
    )


def _places_note(places: Sequence[str]) -> str:
    """Where the seconds were measured: one place, named, or several, each time then footnoted
    with its own (seconds of different machines or code versions are not compared silently)."""
    if not places:
        return ""
    if len(places) == 1:
        return f"Every time was measured at {places[0]}."
    return (
        f"The times come from {len(places)} different machines or code versions, so they compare"
        " the places as well as the modes: each time's footnote names where it was measured, and"
        " a ratio of times from different places says so."
    )


@dataclass(frozen=True)
class _Timed:
    """A row's runs per mode (those with epochs), their times to ``goal``, and whether the
    table's times come from several places (each time cell then names its own)."""

    preset: str
    dataset: str
    goal: float
    runs: Mapping[str, Runs]
    times: Mapping[str, Sequence[Time]]
    mixed: bool

    @property
    def sources(self) -> tuple[str, ...]:
        return sources(*self.runs.values())


def _timed_rows(index: Index, target: float | None, mixed: bool) -> Iterator[_Timed]:
    """A row per preset and dataset with at least two of the modes run (the controls aside, each
    keyed by its arm's name: its runs on the images, else on cached features)."""
    for preset, dataset in sorted(
        {(p, d) for p, d, _ in index}, key=lambda k: (k[0], datasets.order(k[1]))
    ):
        runs = {v: _with_epochs(index.get((preset, dataset, v))) for v in COMPARED}
        for arm in arms.CONTROLS:
            runs[arm.name] = _with_epochs(shown(index, preset, dataset, arm))
        runs = {v: found for v, found in runs.items() if found}
        if len([v for v in runs if v in COMPARED]) < 2:
            continue
        goal = target if target is not None else _default_target(runs)
        times = {v: [_time_to(h, goal) for _, h in found] for v, found in runs.items()}
        yield _Timed(preset, dataset, goal, runs, times, mixed)


def _with_epochs(runs: Runs | None) -> Runs:
    return tuple(run for run in runs or () if run[1].epochs)


def _default_target(runs: Mapping[str, Runs]) -> float:
    """The highest accuracy every run of the compared modes reaches (the control excluded)."""
    return min(
        max(e.test_accuracy for e in h.epochs)
        for v, found in runs.items()
        if v in COMPARED
        for _, h in found
    )


def _seconds(value: float) -> str:
    return f"{value:.0f}"


def _time_to(history: History, goal: float) -> Time:
    """(seconds, epoch) when the history first reaches ``goal``; None if it never does."""
    seconds = history.cache.build_seconds if history.cache else 0.0
    for epoch in history.epochs:
        seconds += epoch.wall_seconds
        if epoch.test_accuracy >= goal:
            return seconds, epoch.epoch
    return None


def _time_column(header: str, variant: str, control: arms.Arm | None = None) -> Column[_Timed]:
    """``seconds (epoch)`` over the seeds that reach the target (mean ± std, epochs min-max);
    a seed that does not is named in a note, and so, in a table of mixed places, is where the
    seconds shown were measured."""

    def cell(row: _Timed) -> Cell:
        runs, times = row.runs.get(variant), row.times.get(variant)
        if not runs:
            return Cell()
        missed = [
            f"{run_name(h)} does not reach the target in {len(h.epochs)} epochs"
            for (_, h), time in zip(runs, times, strict=True)
            if time is None
        ]
        timed = tuple(run for run, time in zip(runs, times, strict=True) if time is not None)
        if not timed:
            return Cell(note="; ".join(missed))
        where = ["timed at " + " and ".join(places(timed))] if row.mixed else []
        reached = [time for time in times if time is not None]
        seconds = seeds.summarize([time[0] for time in reached])
        epochs = seeds.range_text(seeds.summarize([time[1] for time in reached]), _seconds)
        return Cell(
            f"{seeds.text(seconds, _seconds)} ({epochs})",
            "; ".join([*missed, *where]),
            seeds.spread(seconds, _seconds),
        )

    return Column(header, cell, control)


def _ratio_column(header: str, other: str) -> Column[_Timed]:
    """Mean seconds of full training over another mode's, where every seed of both reaches;
    noted where the two were timed at different places."""

    def cell(row: _Timed) -> Cell:
        full, theirs = row.times.get(FULL), row.times.get(other)
        if not full or not theirs or None in full or None in theirs:
            return Cell()
        their_seconds = statistics.fmean(time[0] for time in theirs)
        if their_seconds <= 0:
            return Cell()
        ratio = statistics.fmean(time[0] for time in full) / their_seconds
        return Cell(f"{ratio:.2f}", mixed_note(row.runs.get(FULL), row.runs.get(other)))

    return Column(header, cell)


def _cache_build_cell(row: _Timed) -> Cell:
    cached = row.runs.get(CACHED)
    return summary_cell([h.cache.build_seconds for _, h in cached], _seconds) if cached else Cell()


COLUMNS: tuple[Column[_Timed], ...] = (
    DATASET_COLUMN,
    PRESET_COLUMN,
    Column("Target (%)", lambda row: Cell(f"{100 * row.goal:.2f}")),
    _time_column(f"{arms.FULL.column}: s (epoch)", FULL),
    _time_column(f"{arms.RETRAIN.column}: s (epoch)", RETRAIN),
    _time_column("Cached retraining: s (epoch)", CACHED),
    Column("Of which cache build (s)", _cache_build_cell),
    _ratio_column("Full / retrain", RETRAIN),
    _ratio_column("Full / cached", CACHED),
    *(_time_column(f"{arm.column}: s (epoch)", arm.name, control=arm) for arm in arms.CONTROLS),
)
