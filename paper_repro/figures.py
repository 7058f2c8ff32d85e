"""Table III and Figure 5 of the paper, regenerated from saved run histories alone.

Nothing here imports TensorFlow or Keras: the table and the figure can be remade on any machine
with matplotlib, from the histories committed under ``figures/``. Outputs are byte-for-byte
reproducible (no timestamps, no absolute paths, no hash-ordered iteration, matplotlib's own
defaults instead of a user's matplotlibrc) and written atomically, so regenerating shows a diff
only when a number changed.

Over 500 lines, for a reason: Table III, Figure 5 and the time-to-accuracy table are three views
of one grouping of histories (preset, dataset, mode, seeds) and share its checks and formatting;
split apart, each would import the others' private helpers. What they show of several seeds
(mean ± standard deviation, min-max bands) is computed in ``paper_repro.seeds``.

Beside full training and retraining, the random-features control (``retrain-random-DATASET``:
the same retraining on frozen, untrained features) gets a column in both tables and a dotted line
in Figure 5 as soon as any of its histories is present; without one, the tables stay as they were.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paper_repro import job_time, seeds
from paper_repro.errors import UserError
from paper_repro.history import History, load_history
from paper_repro.plotting import deterministic_style, save_figure
from paper_repro.runs import find_histories, write_atomic

PAPER_DATASETS = ("mnist", "cifar10", "cifar100")
DISPLAY_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
# Figure 5's colours for the paper's datasets; any other dataset takes the next further colour.
COLOURS = {"mnist": "red", "cifar10": "blue", "cifar100": "green"}
FURTHER_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# A curve per variant (``_variant``): the mode, the random-features control, cached or not.
LINESTYLES = {
    "full": "-",
    "retrain": "--",
    "retrain-cached": "-.",
    "retrain-random": ":",
    "retrain-random-cached": (0, (1, 4)),
}
# How Figure 5's legend names a variant, where not by the variant itself.
LABELS = {
    "retrain-random": "retrain, random features (control)",
    "retrain-random-cached": "retrain-cached, random features (control)",
}
CONTROL = "retrain-random"  # the variant of Table III's and the time table's control column
BAND_ALPHA = 0.15  # Figure 5's min-max band across seeds
LR_DROP_STYLE = {"color": "0.35", "linestyle": ":", "linewidth": 1.0}


@dataclass(frozen=True)
class PaperRow:
    """One dataset's row of the paper's Table III, with what its text says about convergence."""

    full: float
    retrain: float
    state_of_the_art: float
    citation: str
    epochs_to_match: int | None  # "about N epochs" (Section IV); None where the paper is silent


PAPER = {
    "mnist": PaperRow(99.68, 99.54, 99.79, "[22]", None),
    "cifar10": PaperRow(89.99, 89.14, 91.78, "[23]", 8),
    "cifar100": PaperRow(63.65, 67.68, 65.43, "[23]", 10),
}
TOP_K = 5  # top-5 accuracy: "n/a" for a run of at most this many classes, where it is always 100 %
PAPER_PRETRAIN_TOP1 = 59.23
PAPER_PRETRAIN_TOP5 = 83.58

NO_HISTORIES_HINT = (
    "`paper-repro reproduce --preset mini` (or `paper-repro train EXPERIMENT`) writes them"
)

# (preset, dataset, variant) -> its runs, one per seed in seed order, each as (path relative to the
# histories directory, history); the variant is the mode, "retrain-random" for the control, with
# "-cached" for a retraining on cached features (``--cache-features``).
_Run = tuple[str, History]
_Runs = tuple[_Run, ...]
_Index = dict[tuple[str, str, str], _Runs]


def regenerate_tables(
    histories_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
    target: float | None = None,
) -> list[Path]:
    """``paper-repro regenerate-tables``: Table III, the time-to-accuracy table and (for runs
    that recorded it) the time-by-phase table from every history below ``histories_dir``."""
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
    """``paper-repro regenerate-figures``: Figure 5 from every history below ``histories_dir``."""
    return write_figure5(load_histories(histories_dir), out_dir, allow_mixed_presets)


def load_histories(directory: str | os.PathLike[str]) -> dict[str, History]:
    """Every history below a directory, keyed by its POSIX path relative to that directory.

    Relative keys let the outputs name their sources without the machine-specific absolute path.
    """
    root = Path(directory)
    paths = find_histories(root)
    if not paths:
        raise UserError(
            f"no run histories found under {root} (looked for history.json and *.history.json);"
            f" {NO_HISTORIES_HINT}"
        )
    return {path.relative_to(root).as_posix(): load_history(path) for path in paths}


def _index(histories: Mapping[str, History], allow_mixed_presets: bool) -> _Index:
    """One run per (preset, dataset, variant, seed), refusing what would make a table ambiguous."""
    if not histories:
        raise UserError(f"no run histories given; {NO_HISTORIES_HINT}")
    presets = _presets(histories)
    if len(presets) > 1 and not allow_mixed_presets:
        examples = ", ".join(
            f"{preset} ({min(s for s, h in histories.items() if h.preset == preset)})"
            for preset in presets
        )
        raise UserError(
            f"histories of different presets would be mixed in one table or figure: {examples};"
            " point --histories at one preset's runs or pass --allow-mixed-presets"
        )
    grouped: dict[tuple[str, str, str], list[_Run]] = {}
    for source, history in sorted(histories.items()):
        key = (history.preset, history.dataset, _variant(history))
        runs = grouped.setdefault(key, [])
        twin = next((s for s, h in runs if h.seed == history.seed), None)
        if twin is not None:
            raise UserError(
                f"two {key[2]} histories for {history.dataset} in preset {history.preset}"
                f" with seed {history.seed}: {twin} and {source}; keep one run per experiment"
                " and seed"
            )
        runs.append((source, history))
    return {key: tuple(sorted(runs, key=lambda r: r[1].seed)) for key, runs in grouped.items()}


def _variant(history: History) -> str:
    mode = CONTROL if history.start == "random-features" else history.mode
    return f"{mode}-cached" if history.cache else mode


def _has_control(index: _Index) -> bool:
    return any(variant in (CONTROL, f"{CONTROL}-cached") for _, _, variant in index)


def _shown(index: _Index, preset: str, dataset: str, variant: str) -> _Runs | None:
    """A retraining variant's runs as the tables show them: on the images, else on cached
    features (mini retrains and runs its control on cached features only)."""
    return index.get((preset, dataset, variant)) or index.get(
        (preset, dataset, f"{variant}-cached")
    )


def _cached_only(index: _Index) -> bool:
    """Whether some dataset's retraining ran on cached features only (Table III shows those)."""
    return any(v == "retrain-cached" and (p, d, "retrain") not in index for p, d, v in index)


def _presets(histories: Mapping[str, History]) -> list[str]:
    return sorted({history.preset for history in histories.values()})


def _dataset_order(dataset: str) -> tuple[int, str]:
    """The paper's datasets first, in its order, then any other dataset by name."""
    paper = PAPER_DATASETS.index(dataset) if dataset in PAPER_DATASETS else len(PAPER_DATASETS)
    return paper, dataset


def _display(dataset: str) -> str:
    return DISPLAY_NAMES.get(dataset, dataset)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def _train_seconds(history: History) -> float:
    """Training time of a run: the epochs' seconds and, on cached features, the caches' build,
    without the final multi-crop evaluation."""
    cache = history.cache.build_seconds if history.cache else 0.0
    return cache + sum(epoch.wall_seconds for epoch in history.epochs)


def _timed_at(history: History) -> str:
    """Where a run's seconds were measured: the code's commit, the device and the host."""
    recorded = history.provenance
    commit = recorded.git_commit or "unknown"
    short = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
    return f"commit {short}, {recorded.device}, host {recorded.host}"


def _places(*groups: _Runs | None) -> list[str]:
    """The distinct places (``_timed_at``) where these runs were timed, in order."""
    return sorted({_timed_at(h) for runs in groups if runs for _, h in runs})


def _mixed_note(*groups: _Runs | None) -> str:
    """The note of a value that combines seconds from several places; empty when one."""
    places = _places(*groups)
    if len(places) < 2:
        return ""
    return "combines seconds from different machines or code versions: " + "; ".join(places)


def _sources(*groups: _Runs | None) -> tuple[str, ...]:
    return tuple(source for runs in groups if runs for source, _ in runs)


def _accuracy_curve(runs: _Runs) -> seeds.Curve:
    """Center-crop test accuracy per epoch across a variant's seeds."""
    return seeds.mean_curve([[e.test_accuracy for e in h.epochs] for _, h in runs])


# --- Table III -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cell:
    """A table value as text; empty text is shown as a dash, explained by ``note`` if given.
    ``spread`` is (n, min, max) of a value measured once per seed, for the CSV."""

    text: str = ""
    note: str = ""
    spread: tuple[str, str, str] = ("", "", "")


def _summary_cell(values: Sequence[float], number=lambda value: f"{value:.2f}") -> _Cell:
    """One value per seed: ``mean ± std (n=N)``, or the value alone for one seed."""
    summary = seeds.summarize(values)
    return _Cell(seeds.text(summary, number), spread=seeds.spread(summary, number))


@dataclass(frozen=True)
class _Row:
    dataset: str
    preset: str
    cells: tuple[_Cell, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class _Section:
    name: str
    header: tuple[str, ...]
    rows: tuple[_Row, ...]


TRANSFER_HEADER = (
    "Dataset",
    "Preset",
    "Crops",
    "Full training",
    "Full training (paper)",
    "Retraining",
    "Retraining (paper)",
    "State of the art (cited)",
    "Epochs for full training to match retraining's epoch 1",
    "Epochs to match (paper)",
    "Wall-clock full / retrain",
)
CONTROL_COLUMN = "Retraining, random features (control)"
CONTROL_AFTER = "Retraining (paper)"  # the control column follows this one
PRETRAIN_HEADER = (
    "Pretraining dataset",
    "Preset",
    "Crops",
    "Top-1",
    "Top-1 (paper, ILSVRC-12)",
    "Top-5",
    "Top-5 (paper, ILSVRC-12)",
    "Top-1, centre crop",
    "Top-5, centre crop",
)
CAPTION = (
    "Table III, reproduced: test accuracy (%) after training. Reproduced values are the multi-crop"
    " top-1 accuracy of each run's final evaluation (crops column; the paper uses 10 crops, 5 for"
    " MNIST). The paper states two further results only in words: the epochs full training needs"
    " to reach the center-crop test accuracy that retraining has after one epoch (about 8 for"
    " CIFAR-10, about 10 for CIFAR-100), and that retraining is much faster; the wall-clock ratio"
    " is the total training seconds of the full run over those of the retrain run. A dash in a"
    " paper column: the paper gives no value."
)
CACHED_CAPTION = (
    " Where a dataset's retraining ran on cached features only, its retraining and control values"
    " are those runs' (the classifier trained on stored pool5 values of fixed crops, its training"
    " seconds including the caches' build; the final evaluation on the images)."
)
CONTROL_CAPTION = (
    " The control column retrains the same classifier on frozen, untrained (randomly"
    " initialised) features: what retraining gains over it is what the pretrained features bring."
)


def _caption(base: str, index: _Index, histories: Mapping[str, History], control: str) -> str:
    """A table's caption, with the control's and the seeds' sentences where they apply."""
    return base + (control if _has_control(index) else "") + seeds.caption(histories.values())


def write_table3(
    histories: Mapping[str, History],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
) -> list[Path]:
    """Write ``table3.md``, ``table3.tex`` and ``table3.csv``; return their paths.

    ``histories`` maps each history's path relative to the histories directory to the history;
    the tables name those paths as their sources.
    """
    index = _index(histories, allow_mixed_presets)
    sections = (_transfer_section(index), _pretrain_section(index))
    presets = _presets(histories)
    cached = CACHED_CAPTION if _cached_only(index) else ""
    caption = _caption(CAPTION + cached, index, histories, CONTROL_CAPTION)
    contents = {
        "table3.md": _markdown(sections, presets, histories, caption=caption),
        "table3.tex": _latex(sections, presets, histories, caption),
        "table3.csv": _csv(sections),
    }
    files = {name: text.encode("utf-8") for name, text in contents.items()}
    return _write_all(Path(out_dir), files)


def _write_all(out_dir: Path, files: Mapping[str, bytes]) -> list[Path]:
    paths = []
    for name, data in files.items():
        write_atomic(out_dir / name, data)
        paths.append(out_dir / name)
    return paths


def _transfer_section(index: _Index) -> _Section:
    """A row per preset and dataset: every paper dataset, plus any other dataset that was run;
    the control column only when some control was run."""
    control = _has_control(index)
    rows = []
    for preset in sorted({key[0] for key in index}):
        run_datasets = {d for p, d, mode in index if p == preset and mode in LINESTYLES}
        for dataset in sorted(run_datasets | set(PAPER_DATASETS), key=_dataset_order):
            runs = {
                "full": index.get((preset, dataset, "full")),
                **{v: _shown(index, preset, dataset, v) for v in ("retrain", CONTROL)},
            }
            rows.append(_transfer_row(preset, dataset, runs, control))
    header = _with_control(TRANSFER_HEADER, CONTROL_COLUMN, control)
    return _Section("transfer", header, tuple(rows))


def _with_control(cells: tuple, control_cell: _Cell | str | None, control: bool) -> tuple:
    """``cells`` with the control's inserted after ``CONTROL_AFTER``'s position, if shown."""
    if not control:
        return cells
    at = TRANSFER_HEADER.index(CONTROL_AFTER) + 1
    return (*cells[:at], control_cell, *cells[at:])


def _transfer_row(
    preset: str, dataset: str, runs: Mapping[str, _Runs | None], control: bool
) -> _Row:
    paper = PAPER.get(dataset)
    full, retrain = runs["full"], runs["retrain"]
    controls = runs[CONTROL] if control else None
    cells = (
        _Cell(_display(dataset)),
        _Cell(preset),
        _crops_cell(full, retrain, controls),
        _final_cell(full, "full", dataset, preset),
        _Cell(f"{paper.full:.2f}" if paper else ""),
        _final_cell(retrain, "retrain", dataset, preset),
        _Cell(f"{paper.retrain:.2f}" if paper else ""),
        _Cell(f"{paper.state_of_the_art:.2f} {paper.citation}" if paper else ""),
        _epochs_to_match_cell(full, retrain, dataset, preset),
        _Cell(f"≈{paper.epochs_to_match}" if paper and paper.epochs_to_match else ""),
        _wall_ratio_cell(
            full, retrain, _absent(full, "full", dataset, preset)
            or _absent(retrain, "retrain", dataset, preset)
        ),
    )  # fmt: skip
    control_cell = _final_cell(controls, CONTROL, dataset, preset) if control else None
    cells = _with_control(cells, control_cell, control)
    return _Row(dataset, preset, cells, _sources(full, retrain, controls))


def _absent(runs: _Runs | None, mode: str, dataset: str, preset: str) -> str:
    """Why a variant has no final evaluation to show, as a footnote; empty when every seed's run
    has one (a seed still running holds back the whole value: a mean of some seeds would not
    compare with the others')."""
    if not runs:
        return f"no {mode} history for {dataset} in preset {preset}"
    running = [(source, h) for source, h in runs if h.final is None]
    if running:
        source, history = running[0]
        return f"{source} is still running ({len(history.epochs)} epochs recorded)"
    return ""


def _final_cell(runs: _Runs | None, mode: str, dataset: str, preset: str) -> _Cell:
    """Multi-crop top-1 (%) across the variant's seeds."""
    absent = _absent(runs, mode, dataset, preset)
    if absent:
        return _Cell(note=absent)
    return _summary_cell([100 * h.final.top1 for _, h in runs])


def _crops_cell(*groups: _Runs | None) -> _Cell:
    crops = sorted({h.final.crops for runs in groups if runs for _, h in runs if h.final})
    return _Cell(" / ".join(str(c) for c in crops))


def _epochs_to_match_cell(
    full: _Runs | None, retrain: _Runs | None, dataset: str, preset: str
) -> _Cell:
    """The first epoch at which full training reaches retraining's accuracy after one epoch
    (over several seeds: full training's mean curve against retraining's mean epoch 1).

    Needs only the per-epoch records, so a run still in progress already gives an answer.
    """
    for mode, runs in (("full", full), ("retrain", retrain)):
        if not runs:
            return _Cell(note=_absent(runs, mode, dataset, preset))
        empty = next((source for source, h in runs if not h.epochs), None)
        if empty is not None:
            return _Cell(note=f"{empty} has no epochs yet")
    target = statistics.fmean(h.epochs[0].test_accuracy for _, h in retrain)
    curve = _accuracy_curve(full)
    reached = next(
        (e for e, value in zip(curve.epochs, curve.mean, strict=True) if value >= target), None
    )
    return _Cell(str(reached) if reached else f"not reached in {len(curve.epochs)}")


def _wall_ratio_cell(full: _Runs | None, retrain: _Runs | None, absent: str) -> _Cell:
    """Total training seconds (means over seeds) compare like with like only when every run is
    finished."""
    if absent:
        return _Cell(note=absent)
    retrain_seconds = statistics.fmean(_train_seconds(h) for _, h in retrain)
    if retrain_seconds == 0:
        return _Cell(note=f"{retrain[0][0]} records no training time")
    ratio = statistics.fmean(_train_seconds(h) for _, h in full) / retrain_seconds
    return _Cell(f"{ratio:.2f}", _mixed_note(full, retrain))


def _pretrain_section(index: _Index) -> _Section:
    """Every pretraining run; a preset without one gets a dash row, as any missing run does."""
    rows = []
    for preset in sorted({key[0] for key in index}):
        groups = sorted(
            (runs for (p, _, mode), runs in index.items() if p == preset and mode == "pretrain"),
            key=lambda runs: _dataset_order(runs[0][1].dataset),
        )
        stand_in = _given_weights(index, preset)
        rows.extend(_pretrain_row(preset, runs, stand_in) for runs in groups or [None])
    return _Section("pretrain", PRETRAIN_HEADER, tuple(rows))


def _given_weights(index: _Index, preset: str) -> str | None:
    """The weights a preset's retrainings started from, for a preset whose histories hold no
    pretraining run (``--weights``, such as an imported CaffeNet), as ``path (sha256 prefix)``."""
    given = sorted(
        {
            f"{h.provenance.weights.path} (sha256 {h.provenance.weights.sha256[:12]})"
            for (p, _, mode), runs in index.items()
            if p == preset and mode == "retrain"
            for _, h in runs
            if h.provenance.weights is not None
        }
    )
    return ", ".join(given) or None


def _pretrain_row(preset: str, runs: _Runs | None, stand_in: str | None = None) -> _Row:
    paper = (_Cell(f"{PAPER_PRETRAIN_TOP1:.2f}"), _Cell(f"{PAPER_PRETRAIN_TOP5:.2f}"))
    if runs is None:
        what = f"no pretrain history in preset {preset}"
        if stand_in:
            what += f"; its retrainings started from the weights {stand_in}"
        missing = _Cell(note=what)
        cells = (missing, _Cell(preset), _Cell(), missing, paper[0], missing, paper[1], missing,
                 missing)  # fmt: skip
        return _Row("", preset, cells, ())
    dataset = runs[0][1].dataset
    absent = _absent(runs, "pretrain", dataset, preset)
    if absent:
        top1 = top5 = center1 = center5 = _Cell(note=absent)
    else:
        finals = [h.final for _, h in runs]
        top1 = _summary_cell([100 * final.top1 for final in finals])
        top5 = _summary_cell([100 * final.top5 for final in finals])
        older = "kept only by histories written since the centre crop was recorded"
        center1, center5 = (
            _summary_cell([100 * v for v in values]) if None not in values else _Cell(note=older)
            for values in (
                [final.center_top1 for final in finals],
                [final.center_top5 for final in finals],
            )
        )
        classes = runs[0][1].num_classes
        if classes is not None and classes <= TOP_K:
            top5 = center5 = _Cell(
                "n/a", f"{classes} classes: every image's class is among the top {TOP_K}"
            )
    crops = _crops_cell(runs)
    cells = (_Cell(_display(dataset)), _Cell(preset), crops, top1, paper[0], top5, paper[1],
             center1, center5)  # fmt: skip
    return _Row(dataset, preset, cells, _sources(runs))


def _footnotes(sections: Sequence[_Section]) -> dict[str, int]:
    """Number each distinct note in reading order, so equal notes share one footnote."""
    numbers: dict[str, int] = {}
    for section in sections:
        for row in section.rows:
            for cell in row.cells:
                if cell.note and cell.note not in numbers:
                    numbers[cell.note] = len(numbers) + 1
    return numbers


def _source_lines(histories: Mapping[str, History]) -> list[tuple[str, str]]:
    """(path, description) of every history the table came from, in path order."""
    return [
        (
            source,
            f"{_variant(h)} {h.dataset}, experiment {h.experiment}, preset {h.preset},"
            f" seed {h.seed}, {len(h.epochs)} epochs, {h.status}, device {h.provenance.device}",
        )
        for source, h in sorted(histories.items())
    ]


def _markdown(
    sections: Sequence[_Section],
    presets: Sequence[str],
    histories: Mapping[str, History],
    title: str = "Table III (reproduced)",
    caption: str = CAPTION,
) -> str:
    notes = _footnotes(sections)

    def cell(value: _Cell) -> str:
        text = (value.text or "—") + (f"[^{notes[value.note]}]" if value.note else "")
        return text.replace("|", "\\|")

    lines = [f"# {title}", "", caption, "", f"Preset: {', '.join(presets)}.", ""]
    for section in sections:
        lines.append("| " + " | ".join(section.header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(section.header) - 2)) + "|")
        lines.extend("| " + " | ".join(cell(c) for c in row.cells) + " |" for row in section.rows)
        lines.append("")
    lines.append("Histories (paths relative to the histories directory):")
    lines.append("")
    lines.extend(f"- `{source}`: {text}" for source, text in _source_lines(histories))
    lines.append("")
    lines.extend(f"[^{number}]: {note}" for note, number in notes.items())
    return "\n".join(lines).rstrip("\n") + "\n"


_TEX_ESCAPES = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "≈": r"$\approx$",
        "—": "---",
    }
)


def _tex(text: str) -> str:
    return text.translate(_TEX_ESCAPES)


def _latex(
    sections: Sequence[_Section],
    presets: Sequence[str],
    histories: Mapping[str, History],
    caption: str = CAPTION,
) -> str:
    notes = _footnotes(sections)

    def cell(value: _Cell) -> str:
        marker = rf"\textsuperscript{{{notes[value.note]}}}" if value.note else ""
        return (_tex(value.text) or "---") + marker

    lines = [
        "% Table III reproduced by paper_repro from run histories; needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(caption)} Preset: {_tex(', '.join(presets))}.}}",
        r"\label{tab:table3-reproduced}",
        r"\small",
    ]
    for section in sections:
        lines.append(r"\begin{tabular}{ll" + "r" * (len(section.header) - 2) + "}")
        lines.append(r"\toprule")
        lines.append(" & ".join(_tex(h) for h in section.header) + r" \\")
        lines.append(r"\midrule")
        lines.extend(" & ".join(cell(c) for c in row.cells) + r" \\" for row in section.rows)
        lines.append(r"\bottomrule")
        lines.append(r"\end{tabular}")
        lines.append(r"\medskip")
        lines.append("")
    lines.append(r"\footnotesize")
    lines.extend(rf"\textsuperscript{{{n}}} {_tex(note)}\\" for note, n in notes.items())
    sources = "; ".join(
        rf"\texttt{{{_tex(source)}}} ({_tex(text)})" for source, text in _source_lines(histories)
    )
    lines.append(f"Histories (relative to the histories directory): {sources}.")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _csv(sections: Sequence[_Section]) -> str:
    """One line per table cell (long format): every value with its note and its histories, and
    for a value measured per seed its number of seeds, minimum and maximum.

    The two sections have different columns; the long form holds both in one file and keeps each
    footnote next to the value it explains. A dash is an empty value.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ("section", "dataset", "preset", "column", "value", "note", "histories", "seeds", "min",
         "max")
    )  # fmt: skip
    for section in sections:
        for row in section.rows:
            for column, value in zip(section.header[2:], row.cells[2:], strict=True):
                sources = " ".join(row.sources)
                writer.writerow(
                    (section.name, row.dataset, row.preset, column, value.text, value.note, sources,
                     *value.spread)
                )  # fmt: skip
    return buffer.getvalue()


# --- Time to accuracy ------------------------------------------------------------------------

TIME_VARIANTS = ("full", "retrain", "retrain-cached")
TIME_HEADER = (
    "Dataset",
    "Preset",
    "Target (%)",
    "Full training: s (epoch)",
    "Retraining: s (epoch)",
    "Cached retraining: s (epoch)",
    "Of which cache build (s)",
    "Full / retrain",
    "Full / cached",
)
TIME_CAPTION = (
    "Time to accuracy: the wall-clock seconds each mode needs before its center-crop test"
    " accuracy first reaches the target, and the epoch where it does. Seconds are the runs' own"
    " training seconds per epoch, summed (per-epoch testing excluded, as in Table III); cached"
    " retraining adds the time its feature caches took to build, also when a run reused them."
    " Pretraining is excluded: both retraining modes start from the same pretrained network."
    " The target is the highest accuracy that every mode shown reaches (its lowest best epoch),"
    " unless one was given."
)
TIME_CONTROL_COLUMN = "Retraining, random features (control): s (epoch)"
TIME_CONTROL_CAPTION = (
    " The control column (the same retraining on frozen, untrained features) is timed to the same"
    " target, which is chosen without it."
)
# A time per seed: (seconds, epoch), or None where that seed never reaches the target.
_Time = tuple[float, int] | None


def write_time_to_accuracy(
    histories: Mapping[str, History],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
    target: float | None = None,
) -> list[Path]:
    """Write ``time_to_accuracy.md`` and ``.csv``: the paper's "retraining is faster" claim as
    seconds to reach one accuracy. ``target`` is a fraction; default: see ``TIME_CAPTION``."""
    index = _index(histories, allow_mixed_presets)
    control = _has_control(index)
    header = (*TIME_HEADER, TIME_CONTROL_COLUMN) if control else TIME_HEADER
    timed = [
        _with_epochs(runs)
        for (_, _, v), runs in index.items()
        if v in (*TIME_VARIANTS, CONTROL, f"{CONTROL}-cached")
    ]
    places = _places(*timed)
    rows = tuple(_time_rows(index, target, control, mixed=len(places) > 1))
    section = _Section("time_to_accuracy", header, rows)
    title = "Time to accuracy (reproduced)"
    caption = _caption(TIME_CAPTION, index, histories, TIME_CONTROL_CAPTION) + _places_caption(
        places
    )
    files = {
        "time_to_accuracy.md": _markdown([section], _presets(histories), histories, title, caption),
        "time_to_accuracy.csv": _csv([section]),
    }
    return _write_all(Path(out_dir), {n: t.encode("utf-8") for n, t in files.items()})


def _places_caption(places: Sequence[str]) -> str:
    """The caption's word on where the seconds were measured: one place, named, or several,
    each time then footnoted with its own (seconds of different machines or code versions are
    not compared silently)."""
    if len(places) == 1:
        return f" Every time was measured at {places[0]}."
    return (
        f" The times come from {len(places)} different machines or code versions, so they compare"
        " the places as well as the modes: each time's footnote names where it was measured, and"
        " a ratio of times from different places says so."
    )


def _time_rows(index: _Index, target: float | None, control: bool, mixed: bool) -> Iterator[_Row]:
    """A row per preset and dataset with at least two of the modes run (the control aside);
    ``mixed``: the table's times come from several places, each time cell names its own."""
    shown = (*TIME_VARIANTS, CONTROL) if control else TIME_VARIANTS
    for preset, dataset in sorted(
        {(p, d) for p, d, _ in index}, key=lambda k: (k[0], _dataset_order(k[1]))
    ):
        runs = {
            v: _with_epochs(
                _shown(index, preset, dataset, v)
                if v == CONTROL
                else index.get((preset, dataset, v))
            )
            for v in shown
        }
        runs = {v: group for v, group in runs.items() if group}
        if len([v for v in runs if v in TIME_VARIANTS]) < 2:
            continue
        goal = target if target is not None else _default_target(runs)
        times = {v: [_time_to(h, goal) for _, h in group] for v, group in runs.items()}
        cached = runs.get("retrain-cached")
        cells = (
            _Cell(_display(dataset)),
            _Cell(preset),
            _Cell(_percent(goal)),
            *(_time_cell(runs.get(v), times.get(v), mixed) for v in TIME_VARIANTS),
            _summary_cell([h.cache.build_seconds for _, h in cached], _seconds)
            if cached
            else _Cell(),
            *(
                _ratio_cell(runs.get("full"), runs.get(other), times.get("full"), times.get(other))
                for other in ("retrain", "retrain-cached")
            ),
            *([_time_cell(runs.get(CONTROL), times.get(CONTROL), mixed)] if control else []),
        )
        yield _Row(dataset, preset, cells, _sources(*runs.values()))


def _with_epochs(runs: _Runs | None) -> _Runs:
    return tuple(run for run in runs or () if run[1].epochs)


def _default_target(runs: Mapping[str, _Runs]) -> float:
    """The highest accuracy every run of the compared modes reaches (the control excluded)."""
    return min(
        max(e.test_accuracy for e in h.epochs)
        for v, group in runs.items()
        if v in TIME_VARIANTS
        for _, h in group
    )


def _seconds(value: float) -> str:
    return f"{value:.0f}"


def _time_to(history: History, goal: float) -> _Time:
    """(seconds, epoch) when the history first reaches ``goal``; None if it never does."""
    seconds = history.cache.build_seconds if history.cache else 0.0
    for epoch in history.epochs:
        seconds += epoch.wall_seconds
        if epoch.test_accuracy >= goal:
            return seconds, epoch.epoch
    return None


def _time_cell(runs: _Runs | None, times: Sequence[_Time] | None, mixed: bool) -> _Cell:
    """``seconds (epoch)`` over the seeds that reach the target (mean ± std, epochs min-max);
    a seed that does not is named in a note, and so, in a table of ``mixed`` places, is where
    the seconds shown were measured."""
    if not runs:
        return _Cell()
    missed = [
        f"{source} does not reach the target in {len(h.epochs)} epochs"
        for (source, h), time in zip(runs, times, strict=True)
        if time is None
    ]
    timed = tuple(run for run, time in zip(runs, times, strict=True) if time is not None)
    if not timed:
        return _Cell(note="; ".join(missed))
    where = ["timed at " + " and ".join(_places(timed))] if mixed else []
    reached = [time for time in times if time is not None]
    seconds = seeds.summarize([time[0] for time in reached])
    epochs = seeds.range_text(seeds.summarize([time[1] for time in reached]), _seconds)
    return _Cell(
        f"{seeds.text(seconds, _seconds)} ({epochs})",
        "; ".join([*missed, *where]),
        seeds.spread(seconds, _seconds),
    )


def _ratio_cell(
    full_runs: _Runs | None,
    other_runs: _Runs | None,
    full: Sequence[_Time] | None,
    other: Sequence[_Time] | None,
) -> _Cell:
    """Mean seconds of full training over another mode's, where every seed of both reaches;
    noted where the two were timed at different places."""
    if not full or not other or None in full or None in other:
        return _Cell()
    other_seconds = statistics.fmean(time[0] for time in other)
    if other_seconds <= 0:
        return _Cell()
    ratio = statistics.fmean(time[0] for time in full) / other_seconds
    return _Cell(f"{ratio:.2f}", _mixed_note(full_runs, other_runs))


# --- Figure 5 --------------------------------------------------------------------------------


def build_figure5(histories: Mapping[str, History], allow_mixed_presets: bool = False) -> Figure:
    """Figure 5 as a matplotlib Figure (Agg canvas, no pyplot state): one line per full,
    retrain or control variant, center-crop test accuracy per epoch, and the learning-rate drop
    marked. A variant run with several seeds is drawn as its mean curve inside a min-max band.

    Pretraining runs are not drawn: the paper's figure compares full training with retraining.
    A line's gid names its histories (space-separated), its band's the same plus " band".
    """
    runs = _curves(_index(histories, allow_mixed_presets))
    if not runs:
        raise UserError(f"no full or retrain history to plot among {', '.join(sorted(histories))}")
    colours = _colours(sorted({key[1] for key, _ in runs}, key=_dataset_order))
    presets = sorted({key[0] for key, _ in runs})
    with deterministic_style():
        figure = Figure(figsize=(9.6, 4.4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for (preset, dataset, variant), group in runs:
            label = f"{_display(dataset)} {LABELS.get(variant, variant)}" + (
                f" ({preset})" if len(presets) > 1 else ""
            )
            curve, gid = _accuracy_curve(group), " ".join(_sources(group))
            if curve.n > 1:
                axes.fill_between(
                    curve.epochs, [100 * v for v in curve.low], [100 * v for v in curve.high],
                    color=colours[dataset], alpha=BAND_ALPHA, linewidth=0, gid=f"{gid} band",
                )  # fmt: skip
            axes.plot(
                list(curve.epochs),
                [100 * value for value in curve.mean],
                color=colours[dataset],
                linestyle=LINESTYLES[variant],
                label=label,
                gid=gid,
            )
        for number, epoch in enumerate(_lr_drops([h for _, group in runs for _, h in group])):
            label = "learning-rate drop" if number == 0 else "_nolegend_"
            axes.axvline(epoch, label=label, **LR_DROP_STYLE)
        axes.set_xlabel("Epoch")
        axes.set_ylabel("Test accuracy, center crop (%)")
        title = f"Figure 5 (reproduced), preset {', '.join(presets)}"
        axes.set_title(title + seeds.title(h for _, group in runs for _, h in group))
        axes.xaxis.get_major_locator().set_params(integer=True)
        # Outside the axes, right of them: inside, some placement always hides a curve.
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        figure.tight_layout()
    return figure


def _curves(index: _Index) -> list[tuple[tuple[str, str, str], _Runs]]:
    """The variants drawn, in legend order: dataset as in the paper, preset, full first."""
    modes = list(LINESTYLES)
    return sorted(
        ((key, run) for key, run in index.items() if key[2] in LINESTYLES),
        key=lambda item: (_dataset_order(item[0][1]), item[0][0], modes.index(item[0][2])),
    )


def _colours(datasets: Sequence[str]) -> dict[str, str]:
    """The paper's colours for its datasets; the others take further colours in name order."""
    others = [d for d in datasets if d not in COLOURS]
    further = {d: FURTHER_COLOURS[i % len(FURTHER_COLOURS)] for i, d in enumerate(others)}
    return {d: COLOURS[d] if d in COLOURS else further[d] for d in datasets}


def _lr_drops(histories: Sequence[History]) -> list[int]:
    """Epochs after which the learning rate fell, read from the histories, not assumed.

    A drop between epochs 20 and 21 is drawn at x = 20: the curve's points at x <= 20 were
    trained at the old rate only.
    """
    return sorted(
        {
            before.epoch
            for history in histories
            for before, after in zip(history.epochs, history.epochs[1:], strict=False)
            if after.lr < before.lr
        }
    )


def write_figure5(
    histories: Mapping[str, History],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
) -> list[Path]:
    """Write ``figure5.png`` and ``figure5.pdf``, free of timestamps and version stamps."""
    return save_figure(build_figure5(histories, allow_mixed_presets), out_dir, "figure5")
