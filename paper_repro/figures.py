"""Table III and Figure 5 of the paper, regenerated from saved run histories alone.

Nothing here imports TensorFlow or Keras: the table and the figure can be remade on any machine
with matplotlib, from the histories committed under ``figures/``. Outputs are byte-for-byte
reproducible (no timestamps, no absolute paths, no hash-ordered iteration, matplotlib's own
defaults instead of a user's matplotlibrc) and written atomically, so regenerating shows a diff
only when a number changed.

Over 500 lines, for a reason: Table III, Figure 5 and the time-to-accuracy table are three views
of one grouping of histories (preset, dataset, mode, seeds) and share its checks and formatting;
split apart, each would import the others' private helpers.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rc_context, style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paper_repro.errors import UserError
from paper_repro.history import History, load_history
from paper_repro.runs import find_histories, write_atomic

PAPER_DATASETS = ("mnist", "cifar10", "cifar100")
DISPLAY_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
# Figure 5's colours for the paper's datasets; any other dataset takes the next further colour.
COLOURS = {"mnist": "red", "cifar10": "blue", "cifar100": "green"}
FURTHER_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
LINESTYLES = {"full": "-", "retrain": "--", "retrain-cached": "-."}
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
PAPER_PRETRAIN_TOP1 = 59.23
PAPER_PRETRAIN_TOP5 = 83.58

NO_HISTORIES_HINT = (
    "`paper-repro reproduce --preset mini` (or `paper-repro train EXPERIMENT`) writes them"
)

# (preset, dataset, variant) -> (path relative to the histories directory, history); the variant
# is the mode, or "retrain-cached" for a retraining on cached features (``--cache-features``).
_Run = tuple[str, History]
_Index = dict[tuple[str, str, str], _Run]


def regenerate_tables(
    histories_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
    target: float | None = None,
) -> list[Path]:
    """``paper-repro regenerate-tables``: Table III and the time-to-accuracy table from every
    history below ``histories_dir``."""
    histories = load_histories(histories_dir)
    return [
        *write_table3(histories, out_dir, allow_mixed_presets),
        *write_time_to_accuracy(histories, out_dir, allow_mixed_presets, target),
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
    """One run per (preset, dataset, mode), refusing what would make the table ambiguous."""
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
    index: _Index = {}
    for source, history in sorted(histories.items()):
        key = (history.preset, history.dataset, _variant(history))
        if key in index:
            raise UserError(
                f"two {key[2]} histories for {history.dataset} in preset {history.preset}:"
                f" {index[key][0]} and {source}; keep one run per experiment"
            )
        index[key] = (source, history)
    return index


def _variant(history: History) -> str:
    return f"{history.mode}-cached" if history.cache else history.mode


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
    """Training time of a run: the epochs' seconds, without the final multi-crop evaluation."""
    return sum(epoch.wall_seconds for epoch in history.epochs)


# --- Table III -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cell:
    """A table value as text; empty text is shown as a dash, explained by ``note`` if given."""

    text: str = ""
    note: str = ""


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
    contents = {
        "table3.md": _markdown(sections, presets, histories),
        "table3.tex": _latex(sections, presets, histories),
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
    """A row per preset and dataset: every paper dataset, plus any other dataset that was run."""
    rows = []
    for preset in sorted({key[0] for key in index}):
        run_datasets = {d for p, d, mode in index if p == preset and mode in LINESTYLES}
        for dataset in sorted(run_datasets | set(PAPER_DATASETS), key=_dataset_order):
            full = index.get((preset, dataset, "full"))
            retrain = index.get((preset, dataset, "retrain"))
            rows.append(_transfer_row(preset, dataset, full, retrain))
    return _Section("transfer", TRANSFER_HEADER, tuple(rows))


def _transfer_row(preset: str, dataset: str, full: _Run | None, retrain: _Run | None) -> _Row:
    paper = PAPER.get(dataset)
    full_absent = _absent(full, "full", dataset, preset)
    retrain_absent = _absent(retrain, "retrain", dataset, preset)
    cells = (
        _Cell(_display(dataset)),
        _Cell(preset),
        _crops_cell(full, retrain),
        _Cell(note=full_absent) if full_absent else _Cell(_percent(full[1].final.top1)),
        _Cell(f"{paper.full:.2f}" if paper else ""),
        _Cell(note=retrain_absent) if retrain_absent else _Cell(_percent(retrain[1].final.top1)),
        _Cell(f"{paper.retrain:.2f}" if paper else ""),
        _Cell(f"{paper.state_of_the_art:.2f} {paper.citation}" if paper else ""),
        _epochs_to_match_cell(full, retrain, dataset, preset),
        _Cell(f"≈{paper.epochs_to_match}" if paper and paper.epochs_to_match else ""),
        _wall_ratio_cell(full, retrain, full_absent or retrain_absent),
    )
    sources = tuple(run[0] for run in (full, retrain) if run)
    return _Row(dataset, preset, cells, sources)


def _absent(run: _Run | None, mode: str, dataset: str, preset: str) -> str:
    """Why a run has no final evaluation to show, as a footnote; empty when it has one."""
    if run is None:
        return f"no {mode} history for {dataset} in preset {preset}"
    source, history = run
    if history.final is None:
        return f"{source} is still running ({len(history.epochs)} epochs recorded)"
    return ""


def _crops_cell(*runs: _Run | None) -> _Cell:
    crops = sorted({run[1].final.crops for run in runs if run and run[1].final})
    return _Cell(" / ".join(str(c) for c in crops))


def _epochs_to_match_cell(
    full: _Run | None, retrain: _Run | None, dataset: str, preset: str
) -> _Cell:
    """The first epoch at which full training reaches retraining's accuracy after one epoch.

    Needs only the per-epoch records, so a run still in progress already gives an answer.
    """
    for mode, run in (("full", full), ("retrain", retrain)):
        if run is None:
            return _Cell(note=_absent(run, mode, dataset, preset))
        if not run[1].epochs:
            return _Cell(note=f"{run[0]} has no epochs yet")
    target = retrain[1].epochs[0].test_accuracy
    reached = next((e.epoch for e in full[1].epochs if e.test_accuracy >= target), None)
    return _Cell(str(reached) if reached else f"not reached in {len(full[1].epochs)}")


def _wall_ratio_cell(full: _Run | None, retrain: _Run | None, absent: str) -> _Cell:
    """Total training seconds compare like with like only when both runs are finished."""
    if absent:
        return _Cell(note=absent)
    retrain_seconds = _train_seconds(retrain[1])
    if retrain_seconds == 0:
        return _Cell(note=f"{retrain[0]} records no training time")
    return _Cell(f"{_train_seconds(full[1]) / retrain_seconds:.2f}")


def _pretrain_section(index: _Index) -> _Section:
    """Every pretraining run; a preset without one gets a dash row, as any missing run does."""
    rows = []
    for preset in sorted({key[0] for key in index}):
        runs = sorted(
            (
                run
                for (p, dataset, mode), run in index.items()
                if p == preset and mode == "pretrain"
            ),
            key=lambda run: _dataset_order(run[1].dataset),
        )
        rows.extend(_pretrain_row(preset, run) for run in runs or [None])
    return _Section("pretrain", PRETRAIN_HEADER, tuple(rows))


def _pretrain_row(preset: str, run: _Run | None) -> _Row:
    paper = (_Cell(f"{PAPER_PRETRAIN_TOP1:.2f}"), _Cell(f"{PAPER_PRETRAIN_TOP5:.2f}"))
    if run is None:
        missing = _Cell(note=f"no pretrain history in preset {preset}")
        cells = (missing, _Cell(preset), _Cell(), missing, paper[0], missing, paper[1], missing,
                 missing)  # fmt: skip
        return _Row("", preset, cells, ())
    source, history = run
    final = history.final
    if final is None:
        top1 = top5 = center1 = center5 = _Cell(
            note=_absent(run, "pretrain", history.dataset, preset)
        )
    else:
        top1, top5 = _Cell(_percent(final.top1)), _Cell(_percent(final.top5))
        older = "kept only by histories written since the centre crop was recorded"
        center1, center5 = (
            _Cell(_percent(value)) if value is not None else _Cell(note=older)
            for value in (final.center_top1, final.center_top5)
        )
    crops = _Cell(str(final.crops) if final else "")
    cells = (_Cell(_display(history.dataset)), _Cell(preset), crops, top1, paper[0], top5, paper[1],
             center1, center5)  # fmt: skip
    return _Row(history.dataset, preset, cells, (source,))


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
    sections: Sequence[_Section], presets: Sequence[str], histories: Mapping[str, History]
) -> str:
    notes = _footnotes(sections)

    def cell(value: _Cell) -> str:
        marker = rf"\textsuperscript{{{notes[value.note]}}}" if value.note else ""
        return (_tex(value.text) or "---") + marker

    lines = [
        "% Table III reproduced by paper_repro from run histories; needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(CAPTION)} Preset: {_tex(', '.join(presets))}.}}",
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
    """One line per table cell (long format): every value with its note and its histories.

    The two sections have different columns; the long form holds both in one file and keeps each
    footnote next to the value it explains. A dash is an empty value.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("section", "dataset", "preset", "column", "value", "note", "histories"))
    for section in sections:
        for row in section.rows:
            for column, value in zip(section.header[2:], row.cells[2:], strict=True):
                sources = " ".join(row.sources)
                writer.writerow(
                    (section.name, row.dataset, row.preset, column, value.text, value.note, sources)
                )
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


def write_time_to_accuracy(
    histories: Mapping[str, History],
    out_dir: str | os.PathLike[str],
    allow_mixed_presets: bool = False,
    target: float | None = None,
) -> list[Path]:
    """Write ``time_to_accuracy.md`` and ``.csv``: the paper's "retraining is faster" claim as
    seconds to reach one accuracy. ``target`` is a fraction; default: see ``TIME_CAPTION``."""
    index = _index(histories, allow_mixed_presets)
    section = _Section("time_to_accuracy", TIME_HEADER, tuple(_time_rows(index, target)))
    title = "Time to accuracy (reproduced)"
    files = {
        "time_to_accuracy.md": _markdown(
            [section], _presets(histories), histories, title, TIME_CAPTION
        ),
        "time_to_accuracy.csv": _csv([section]),
    }
    return _write_all(Path(out_dir), {n: t.encode("utf-8") for n, t in files.items()})


def _time_rows(index: _Index, target: float | None) -> Iterator[_Row]:
    """A row per preset and dataset with at least two of the modes run."""
    for preset, dataset in sorted(
        {(p, d) for p, d, _ in index}, key=lambda k: (k[0], _dataset_order(k[1]))
    ):
        runs = {
            v: index[(preset, dataset, v)] for v in TIME_VARIANTS if (preset, dataset, v) in index
        }
        runs = {v: run for v, run in runs.items() if run[1].epochs}
        if len(runs) < 2:
            continue
        goal = (
            target
            if target is not None
            else min(max(e.test_accuracy for e in run[1].epochs) for run in runs.values())
        )
        times = {v: _time_to(run[1], goal) for v, run in runs.items()}
        cached = runs.get("retrain-cached")
        cells = (
            _Cell(_display(dataset)),
            _Cell(preset),
            _Cell(_percent(goal)),
            *(_time_cell(times.get(v), runs.get(v)) for v in TIME_VARIANTS),
            _Cell(f"{cached[1].cache.build_seconds:.0f}" if cached else ""),
            _ratio_cell(times.get("full"), times.get("retrain")),
            _ratio_cell(times.get("full"), times.get("retrain-cached")),
        )
        yield _Row(dataset, preset, cells, tuple(run[0] for run in runs.values()))


def _time_to(history: History, goal: float) -> tuple[float, int] | None:
    """(seconds, epoch) when the history first reaches ``goal``; None if it never does."""
    seconds = history.cache.build_seconds if history.cache else 0.0
    for epoch in history.epochs:
        seconds += epoch.wall_seconds
        if epoch.test_accuracy >= goal:
            return seconds, epoch.epoch
    return None


def _time_cell(time: tuple[float, int] | None, run: _Run | None) -> _Cell:
    if run is None:
        return _Cell()
    if time is None:
        return _Cell(note=f"{run[0]} does not reach the target in {len(run[1].epochs)} epochs")
    return _Cell(f"{time[0]:.0f} ({time[1]})")


def _ratio_cell(full: tuple[float, int] | None, other: tuple[float, int] | None) -> _Cell:
    return _Cell(f"{full[0] / other[0]:.2f}") if full and other and other[0] > 0 else _Cell()


# --- Figure 5 --------------------------------------------------------------------------------

# matplotlib's defaults, not the user's matplotlibrc, so every machine draws the same figure;
# svg.hashsalt fixes the ids matplotlib would otherwise randomise should an SVG ever be written.
_RC = {"svg.hashsalt": "paper_repro", "savefig.dpi": 150}
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


@contextmanager
def _style() -> Iterator[None]:
    with style.context("default"), rc_context(_RC):
        yield


def build_figure5(histories: Mapping[str, History], allow_mixed_presets: bool = False) -> Figure:
    """Figure 5 as a matplotlib Figure (Agg canvas, no pyplot state): one line per full or
    retrain run, center-crop test accuracy per epoch, and the learning-rate drop marked.

    Pretraining runs are not drawn: the paper's figure compares full training with retraining.
    """
    runs = _curves(_index(histories, allow_mixed_presets))
    if not runs:
        raise UserError(f"no full or retrain history to plot among {', '.join(sorted(histories))}")
    colours = _colours(sorted({key[1] for key, _ in runs}, key=_dataset_order))
    presets = sorted({key[0] for key, _ in runs})
    with _style():
        figure = Figure(figsize=(6.4, 4.4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for (preset, dataset, mode), (source, history) in runs:
            label = f"{_display(dataset)} {mode}" + (f" ({preset})" if len(presets) > 1 else "")
            axes.plot(
                [epoch.epoch for epoch in history.epochs],
                [100 * epoch.test_accuracy for epoch in history.epochs],
                color=colours[dataset],
                linestyle=LINESTYLES[mode],
                label=label,
                gid=source,
            )
        for number, epoch in enumerate(_lr_drops([run[1] for _, run in runs])):
            label = "learning-rate drop" if number == 0 else "_nolegend_"
            axes.axvline(epoch, label=label, **LR_DROP_STYLE)
        axes.set_xlabel("Epoch")
        axes.set_ylabel("Test accuracy, center crop (%)")
        axes.set_title(f"Figure 5 (reproduced), preset {', '.join(presets)}")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend(loc="best")
        figure.tight_layout()
    return figure


def _curves(index: _Index) -> list[tuple[tuple[str, str, str], _Run]]:
    """The full and retrain runs in legend order: dataset as in the paper, preset, full first."""
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
    figure = build_figure5(histories, allow_mixed_presets)
    files = {}
    with _style():
        for fmt in ("png", "pdf"):
            buffer = io.BytesIO()
            figure.savefig(buffer, format=fmt, metadata=_METADATA[fmt])
            files[f"figure5.{fmt}"] = buffer.getvalue()
    return _write_all(Path(out_dir), files)
