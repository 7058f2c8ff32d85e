"""The tables' model and its three renderings: Markdown, LaTeX and a long-format CSV.

A table is sections of rows of cells. A section is declared as columns, each a header and the
function that computes its cell from one row's runs, so a header can never drift from the value
under it; a column may be a control's, shown only once some run of that control is among the
histories. A cell is text with an optional note, rendered as a footnote (a dash where the text is
empty), and, for a value measured once per seed, its spread, which only the CSV shows.

What a reader meets first is short: a caption of what the table shows, then the tables, then the
notes on how each number was computed, then the histories it came from. The preset is said once,
above the tables; a Preset column appears only where several presets share a table.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from paper_repro import arms, datasets, markdown, seeds
from paper_repro.history import History
from paper_repro.reports.index import Index, arms_run
from paper_repro.runs import write_atomic

PRETRAINING = "pretraining"  # a pretraining run's words where an arm's label would be


@dataclass(frozen=True)
class Cell:
    """A table value as text; empty text is shown as a dash, explained by ``note`` if given.
    ``spread`` is (n, min, max) of a value measured once per seed, for the CSV."""

    text: str = ""
    note: str = ""
    spread: tuple[str, str, str] = ("", "", "")


def summary_cell(values: Sequence[float], number=lambda value: f"{value:.2f}") -> Cell:
    """One value per seed: ``mean ± std (n=N)``, or the value alone for one seed."""
    summary = seeds.summarize(values)
    return Cell(seeds.text(summary, number), spread=seeds.spread(summary, number))


class RowRuns(Protocol):
    """What a row is computed from: the runs of one preset and dataset, and their histories."""

    @property
    def dataset(self) -> str: ...

    @property
    def preset(self) -> str: ...

    @property
    def sources(self) -> tuple[str, ...]: ...


R = TypeVar("R", bound=RowRuns)


@dataclass(frozen=True)
class Column(Generic[R]):
    """A column: its header and the function computing its cell from a row's runs."""

    header: str
    cell: Callable[[R], Cell]
    control: arms.Arm | None = None  # a control's column: shown only once that control was run
    # A key column names its row (left-aligned, leading): the CSV has it as a field of its own.
    key: bool = False


DATASET_COLUMN: Column = Column(
    "Dataset", lambda row: Cell(datasets.display(row.dataset)), key=True
)
PRESET_COLUMN: Column = Column("Preset", lambda row: Cell(row.preset), key=True)


@dataclass(frozen=True)
class Row:
    dataset: str
    preset: str
    cells: tuple[Cell, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    name: str
    header: tuple[str, ...]
    rows: tuple[Row, ...]
    keys: int  # the leading key columns (dataset, and the preset where several are shown)

    @property
    def align(self) -> str:
        """Key columns to the left, the values to the right (Markdown and LaTeX)."""
        return "l" * self.keys + "r" * (len(self.header) - self.keys)


def section(
    name: str,
    columns: Sequence[Column[R]],
    rows: Iterable[R],
    run: Collection[arms.Arm],
    presets: Sequence[str],
) -> Section:
    """The section of these columns, a row per item: a control's column only where that arm is
    ``run``, the preset's only where several ``presets`` share the table (one preset is said
    once above it, not repeated on every row)."""
    shown = [
        column
        for column in columns
        if column.control in (None, *run) and (column is not PRESET_COLUMN or len(presets) > 1)
    ]
    return Section(
        name,
        tuple(column.header for column in shown),
        tuple(
            Row(row.dataset, row.preset, tuple(column.cell(row) for column in shown), row.sources)
            for row in rows
        ),
        sum(column.key for column in shown),
    )


def caption(base: str, index: Index, controls: Mapping[arms.Arm, str]) -> str:
    """A table's caption: what it shows, with each control's sentence where that control was
    run. How the numbers were computed goes to the notes below the table (``notes``)."""
    run = arms_run(index)
    return base + "".join(text for arm, text in controls.items() if arm in run)


def notes(histories: Mapping[str, History], *said: str) -> tuple[str, ...]:
    """The notes under a table: each of ``said`` that is not empty, then the seeds' (what a
    value over several seeds is), when there are several."""
    return tuple(note.strip() for note in (*said, seeds.caption(histories.values())) if note)


def write_all(out_dir: str | os.PathLike[str], files: Mapping[str, str]) -> list[Path]:
    """Each text as UTF-8 under ``out_dir``, atomically, in the order given."""
    paths = []
    for name, text in files.items():
        path = Path(out_dir) / name
        write_atomic(path, text.encode("utf-8"))
        paths.append(path)
    return paths


def _footnotes(sections: Sequence[Section]) -> dict[str, int]:
    """Number each distinct note in reading order, so equal notes share one footnote."""
    numbers: dict[str, int] = {}
    for section in sections:
        for row in section.rows:
            for cell in row.cells:
                if cell.note and cell.note not in numbers:
                    numbers[cell.note] = len(numbers) + 1
    return numbers


def _what(history: History) -> str:
    """A run's arm in the legend's plain words ("retraining on precomputed features")."""
    arm = arms.of_run(history.mode, history.start)
    return PRETRAINING if arm is None else arms.label(arm, bool(history.cache))


def _source_lines(histories: Mapping[str, History]) -> list[tuple[str, str]]:
    """(path, description) of every history the table came from, in path order."""
    return [
        (
            source,
            f"{_what(h)}, {datasets.display(h.dataset)}, experiment {h.experiment}, preset"
            f" {h.preset}, seed {h.seed}, {len(h.epochs)} epochs, {h.status}, device"
            f" {h.provenance.device}",
        )
        for source, h in sorted(histories.items())
    ]


def render_markdown(
    sections: Sequence[Section],
    presets: Sequence[str],
    histories: Mapping[str, History],
    title: str,
    caption: str,
    notes: Sequence[str] = (),
) -> str:
    """Title, the short caption, each section's table, the notes, the histories named, then the
    footnotes."""
    footnotes = _footnotes(sections)

    def cell(value: Cell) -> str:
        text = (value.text or "—") + (f"[^{footnotes[value.note]}]" if value.note else "")
        return text.replace("|", "\\|")

    lines = [f"# {title}", "", caption, "", f"Preset: {', '.join(presets)}.", ""]
    for section in sections:
        rows = [[cell(c) for c in row.cells] for row in section.rows]
        lines += [markdown.table(section.header, rows, section.align), ""]
    if notes:
        lines += ["Notes:", "", *(f"- {note}" for note in notes), ""]
    lines.append("Histories (paths relative to the histories directory):")
    lines.append("")
    lines.extend(f"- `{source}`: {text}" for source, text in _source_lines(histories))
    lines.append("")
    lines.extend(f"[^{number}]: {note}" for note, number in footnotes.items())
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


def render_latex(
    sections: Sequence[Section],
    presets: Sequence[str],
    histories: Mapping[str, History],
    caption: str,
    notes: Sequence[str] = (),
) -> str:
    """Table III as a LaTeX table (booktabs): the short caption, the tabulars, then in small type
    the notes, the cells' superscript footnotes and the histories."""
    footnotes = _footnotes(sections)

    def cell(value: Cell) -> str:
        marker = rf"\textsuperscript{{{footnotes[value.note]}}}" if value.note else ""
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
        lines.append(r"\begin{tabular}{" + section.align + "}")
        lines.append(r"\toprule")
        lines.append(" & ".join(_tex(h) for h in section.header) + r" \\")
        lines.append(r"\midrule")
        lines.extend(" & ".join(cell(c) for c in row.cells) + r" \\" for row in section.rows)
        lines.append(r"\bottomrule")
        lines.append(r"\end{tabular}")
        lines.append(r"\medskip")
        lines.append("")
    lines.append(r"\footnotesize")
    lines.extend(rf"{_tex(note)}\\" for note in notes)
    lines.extend(rf"\textsuperscript{{{n}}} {_tex(note)}\\" for note, n in footnotes.items())
    sources = "; ".join(
        rf"\texttt{{{_tex(source)}}} ({_tex(text)})" for source, text in _source_lines(histories)
    )
    lines.append(f"Histories (relative to the histories directory): {sources}.")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_csv(sections: Sequence[Section]) -> str:
    """One line per table cell (long format): every value with its note and its histories, and
    for a value measured per seed its number of seeds, minimum and maximum.

    Sections have different columns; the long form holds them all in one file and keeps each
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
            values = zip(section.header[section.keys :], row.cells[section.keys :], strict=True)
            for column, value in values:
                sources = " ".join(row.sources)
                writer.writerow(
                    (section.name, row.dataset, row.preset, column, value.text, value.note, sources,
                     *value.spread)
                )  # fmt: skip
    return buffer.getvalue()
