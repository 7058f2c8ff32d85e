"""Table III of the paper, reproduced: a transfer section (a row per preset and dataset run: full
training, retraining and, once one was run, each control, beside the paper's numbers and the
state of the art it cites, named) and a pretraining section (a row per pretraining run), each
declared as its columns. A paper dataset without runs gets no row of dashes: a note says it was
not run.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from paper_repro import arms, datasets
from paper_repro.history import FinalEvaluation, History
from paper_repro.job_time import run_name
from paper_repro.reports.index import (
    PRETRAIN,
    Index,
    Runs,
    accuracy_curve,
    arms_run,
    cached_only,
    group,
    mixed_note,
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
    render_latex,
    render_markdown,
    section,
    summary_cell,
    write_all,
)

TOP_K = 5  # top-5 accuracy: "n/a" for a run of at most this many classes, where it is always 100 %
PAPER_PRETRAIN_TOP1 = 59.23
PAPER_PRETRAIN_TOP5 = 83.58
TITLE = "Table III (reproduced)"
CAPTION = (
    "Test accuracy (%) after training: the multi-crop top-1 of each run's final evaluation,"
    " beside the paper's Table III."
)
CONTROL_CAPTIONS = {
    arms.CONTROL: (
        " The control column retrains the same classifier on frozen, untrained features: what"
        " retraining gains over it is what the pretrained features bring."
    ),
    arms.ORACLE: (
        " The oracle column (a positive control) retrains it, drawn fresh, on the frozen features"
        " of the same seed's full training on the target: what the recipe reaches on features"
        " known to fit the target."
    ),
}
# How the columns were computed, under the tables, in the columns' order.
NOTES = (
    "Crops: the test views averaged (the paper: 10, and 5 for MNIST, which is not mirrored).",
    "Epochs to match: the first epoch at which full training reaches the centre-crop test"
    " accuracy that retraining has after one epoch; the paper gives it in words only.",
    "Wall-clock full / retrain: the total training seconds of full training over those of"
    " retraining (the paper says only that retraining is much faster).",
    "A dash in a paper column: the paper gives no value.",
)
CACHED_NOTE = (
    "Where a dataset's retraining ran on cached features only, its retraining and control values"
    " are those runs' (the classifier trained on stored pool5 values of fixed crops, computed"
    " once beforehand, its training seconds including their computation; the final evaluation"
    " on the images)."
)
OLDER = "kept only by histories written since the centre crop was recorded"


def write_table3(
    histories: Mapping[str, History],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
) -> list[Path]:
    """Write ``table3.md``, ``table3.tex`` and ``table3.csv``; return their paths.

    ``histories`` maps each history's path relative to the histories directory to the history;
    the tables name those paths as their sources.
    """
    index = group(histories, allow_mixed_presets)
    run, presets = arms_run(index), presets_of(histories)
    transfer = list(_transfer_rows(index))
    sections = (
        section("transfer", TRANSFER_COLUMNS, transfer, run, presets),
        section("pretrain", PRETRAIN_COLUMNS, _pretrain_rows(index), run, presets),
    )
    text = caption(CAPTION, index, CONTROL_CAPTIONS)
    said = notes(
        histories,
        *NOTES,
        CACHED_NOTE if cached_only(index) else "",
        _not_run_note(transfer),
        _references_note(transfer),
    )
    return write_all(
        out_dir,
        {
            "table3.md": render_markdown(sections, presets, histories, TITLE, text, said),
            "table3.tex": render_latex(sections, presets, histories, text, said),
            "table3.csv": render_csv(sections),
        },
    )


# --- The transfer section --------------------------------------------------------------------


@dataclass(frozen=True)
class _Transfer:
    """A transfer row's runs: each arm's for one preset and dataset (None where not run)."""

    preset: str
    dataset: str
    runs: Mapping[arms.Arm, Runs | None]

    @property
    def full(self) -> Runs | None:
        return self.runs[arms.FULL]

    @property
    def retrain(self) -> Runs | None:
        return self.runs[arms.RETRAIN]

    @property
    def sources(self) -> tuple[str, ...]:
        return sources(*self.runs.values())

    @property
    def paper(self) -> datasets.PaperRow | None:
        return datasets.paper_row(self.dataset)


def _transfer_rows(index: Index) -> Iterator[_Transfer]:
    """A row per preset and dataset with a transfer run, the paper's datasets in its order: a
    row of dashes for a dataset never run would only hide the rows that say something."""
    for preset in sorted({key[0] for key in index}):
        run = {d for p, d, variant in index if p == preset and variant != PRETRAIN}
        for dataset in sorted(run, key=datasets.order):
            runs = {arm: shown(index, preset, dataset, arm) for arm in arms.ARMS}
            yield _Transfer(preset, dataset, runs)


def _not_run_note(rows: Sequence[_Transfer]) -> str:
    """The paper's datasets left out for want of runs, with the paper's values, so that the
    reader still sees what the paper reports there; empty when every one was run."""
    run = {row.dataset for row in rows}
    missing = [
        f"{datasets.display(name)} (the paper: full training {paper.full:.2f}, retraining"
        f" {paper.retrain:.2f})"
        for name in datasets.PAPER_TARGETS
        if name not in run and (paper := datasets.paper_row(name))
    ]
    return f"Not run here, so not shown: {'; '.join(missing)}." if missing else ""


def _references_note(rows: Sequence[_Transfer]) -> str:
    """The publications behind the state-of-the-art values shown, named in full."""
    cited = {row.paper.citation: None for row in rows if row.paper}
    if not cited:
        return ""
    return "State of the art, as the paper cites it: " + "; ".join(r.full for r in cited) + "."


def _final_column(arm: arms.Arm) -> Column[_Transfer]:
    """An arm's multi-crop top-1 (%) across its seeds."""
    return Column(
        arm.column,
        lambda row: _final_cell(row.runs[arm], arm.name, row.dataset, row.preset),
        control=arm if arm in arms.CONTROLS else None,
    )


def _paper_column(header: str, value: Callable[[datasets.PaperRow], str]) -> Column[_Transfer]:
    """A number of the paper's Table III (or its text); a dash for a dataset it does not have."""
    return Column(header, lambda row: Cell(value(row.paper) if row.paper else ""))


def _absent(runs: Runs | None, variant: str, dataset: str, preset: str) -> str:
    """Why a variant has no final evaluation to show, as a footnote; empty when every seed's run
    has one (a seed still running holds back the whole value: a mean of some seeds would not
    compare with the others')."""
    if not runs:
        return f"no {variant} history for {dataset} in preset {preset}"
    running = [h for _, h in runs if h.final is None]
    if running:
        state = "diverged" if running[0].status == "diverged" else "is still running"
        return f"{run_name(running[0])} {state} ({len(running[0].epochs)} epochs recorded)"
    return ""


def _final_cell(runs: Runs | None, variant: str, dataset: str, preset: str) -> Cell:
    """Multi-crop top-1 (%) across the variant's seeds."""
    absent = _absent(runs, variant, dataset, preset)
    if absent:
        return Cell(note=absent)
    return summary_cell([100 * h.final.top1 for _, h in runs])


def _crops_cell(*groups: Runs | None) -> Cell:
    crops = sorted({h.final.crops for runs in groups if runs for _, h in runs if h.final})
    return Cell(" / ".join(str(c) for c in crops))


def _epochs_to_match_cell(row: _Transfer) -> Cell:
    """The first epoch at which full training reaches retraining's accuracy after one epoch
    (over several seeds: full training's mean curve against retraining's mean epoch 1).

    Needs only the per-epoch records, so a run still in progress already gives an answer.
    """
    for arm in (arms.FULL, arms.RETRAIN):
        runs = row.runs[arm]
        if not runs:
            return Cell(note=_absent(runs, arm.name, row.dataset, row.preset))
        empty = next((h for _, h in runs if not h.epochs), None)
        if empty is not None:
            return Cell(note=f"{run_name(empty)} has no epochs yet")
    target = statistics.fmean(h.epochs[0].test_accuracy for _, h in row.retrain)
    curve = accuracy_curve(row.full)
    reached = next(
        (e for e, value in zip(curve.epochs, curve.mean, strict=True) if value >= target), None
    )
    return Cell(str(reached) if reached else f"not reached in {len(curve.epochs)}")


def _train_seconds(history: History) -> float:
    """Training time of a run: the epochs' seconds and, on cached features, the caches' build,
    without the final multi-crop evaluation."""
    cache = history.cache.build_seconds if history.cache else 0.0
    return cache + sum(epoch.wall_seconds for epoch in history.epochs)


def _wall_ratio_cell(row: _Transfer) -> Cell:
    """Total training seconds (means over seeds) compare like with like only when every run is
    finished."""
    full, retrain = row.full, row.retrain
    absent = _absent(full, arms.FULL.name, row.dataset, row.preset) or _absent(
        retrain, arms.RETRAIN.name, row.dataset, row.preset
    )
    if absent:
        return Cell(note=absent)
    retrain_seconds = statistics.fmean(_train_seconds(h) for _, h in retrain)
    if retrain_seconds == 0:
        return Cell(note=f"{run_name(retrain[0][1])} records no training time")
    ratio = statistics.fmean(_train_seconds(h) for _, h in full) / retrain_seconds
    return Cell(f"{ratio:.2f}", mixed_note(full, retrain))


TRANSFER_COLUMNS: tuple[Column[_Transfer], ...] = (
    DATASET_COLUMN,
    PRESET_COLUMN,
    Column("Crops", lambda row: _crops_cell(*row.runs.values())),
    _final_column(arms.FULL),
    _paper_column(f"{arms.FULL.column} (paper)", lambda paper: f"{paper.full:.2f}"),
    _final_column(arms.RETRAIN),
    _paper_column(f"{arms.RETRAIN.column} (paper)", lambda paper: f"{paper.retrain:.2f}"),
    _final_column(arms.CONTROL),
    _final_column(arms.ORACLE),
    _paper_column(
        "State of the art (as cited)",
        lambda paper: f"{paper.state_of_the_art:.2f}, {paper.citation.short}",
    ),
    Column("Epochs for full training to match retraining's epoch 1", _epochs_to_match_cell),
    _paper_column(
        "Epochs to match (paper)",
        lambda paper: f"≈{paper.epochs_to_match}" if paper.epochs_to_match else "",
    ),
    Column("Wall-clock full / retrain", _wall_ratio_cell),
)


# --- The pretraining section -----------------------------------------------------------------


@dataclass(frozen=True)
class _Pretraining:
    """A pretraining row's runs (None for a preset without one) and, then, what stood in."""

    preset: str
    runs: Runs | None
    stand_in: str | None = None

    @property
    def dataset(self) -> str:
        return self.runs[0][1].dataset if self.runs else ""

    @property
    def sources(self) -> tuple[str, ...]:
        return sources(self.runs)

    @property
    def missing(self) -> str:
        """Why the row has no values: no run (and what stood in for it), or one unfinished."""
        if self.runs is None:
            what = f"no pretrain history in preset {self.preset}"
            if self.stand_in:
                what += f"; its retrainings started from the weights {self.stand_in}"
            return what
        return _absent(self.runs, PRETRAIN, self.dataset, self.preset)


def _pretrain_rows(index: Index) -> Iterator[_Pretraining]:
    """Every pretraining run; a preset without one gets a dash row, as any missing run does."""
    for preset in sorted({key[0] for key in index}):
        groups = sorted(
            (runs for (p, _, v), runs in index.items() if p == preset and v == PRETRAIN),
            key=lambda runs: datasets.order(runs[0][1].dataset),
        )
        if not groups:
            yield _Pretraining(preset, None, _given_weights(index, preset))
        yield from (_Pretraining(preset, runs) for runs in groups)


def _given_weights(index: Index, preset: str) -> str | None:
    """The weights a preset's retrainings started from, for a preset whose histories hold no
    pretraining run (``--weights``, such as an imported CaffeNet), as ``path (sha256 prefix)``."""
    retrain = arms.variant(arms.RETRAIN, False)
    given = sorted(
        {
            f"{h.provenance.weights.path} (sha256 {h.provenance.weights.sha256[:12]})"
            for (p, _, variant), runs in index.items()
            if p == preset and variant == retrain
            for _, h in runs
            if h.provenance.weights is not None
        }
    )
    return ", ".join(given) or None


def _pretrain_cell(value: Callable[[FinalEvaluation], float | None], top5: bool = False):
    """A column's cell of (centre-crop or multi-crop) top-1 or top-5 (%) across the seeds:
    n/a for top-5 of at most ``TOP_K`` classes, a note for a history too old to hold it."""

    def cell(row: _Pretraining) -> Cell:
        if row.missing:
            return Cell(note=row.missing)
        classes = row.runs[0][1].num_classes
        if top5 and classes is not None and classes <= TOP_K:
            return Cell("n/a", f"{classes} classes: every image's class is among the top {TOP_K}")
        values = [value(h.final) for _, h in row.runs]
        if None in values:
            return Cell(note=OLDER)
        return summary_cell([100 * v for v in values])

    return cell


PRETRAIN_COLUMNS: tuple[Column[_Pretraining], ...] = (
    Column(
        "Pretraining dataset",
        lambda row: Cell(datasets.display(row.dataset)) if row.runs else Cell(note=row.missing),
        key=True,
    ),
    PRESET_COLUMN,
    Column("Crops", lambda row: _crops_cell(row.runs)),
    Column("Top-1", _pretrain_cell(lambda final: final.top1)),
    Column("Top-1 (paper, ILSVRC-12)", lambda row: Cell(f"{PAPER_PRETRAIN_TOP1:.2f}")),
    Column("Top-5", _pretrain_cell(lambda final: final.top5, top5=True)),
    Column("Top-5 (paper, ILSVRC-12)", lambda row: Cell(f"{PAPER_PRETRAIN_TOP5:.2f}")),
    Column("Top-1, centre crop", _pretrain_cell(lambda final: final.center_top1)),
    Column("Top-5, centre crop", _pretrain_cell(lambda final: final.center_top5, top5=True)),
)
