"""The transfer study's figure: the gap between full training and retraining, per cell, against
the two things that make a source: its accuracy on its own task, and the input size.

One column per target. Top row: a point is a cell at its source's accuracy (mean over its seeds,
bars one sample standard deviation each way); the dashed line is the baseline's control (full
training minus retraining on random features), so a point above it retrains worse on its
pretrained features than on random ones; the dotted line is the paper's gap, with ILSVRC-12 as its
source. Bottom row: the baseline and the crop cells against their input size, retraining's gap
beside the control's at each size (each point marked with its number of seeds), the control cells
of these cells (random features at a source's scale) as open diamonds at their size, and the
paper's gap at its 227 pixels, the scale the analog points toward. A run that did not train (its
last training loss at or above a uniform guess's; the table lists them) measures a failed
optimization, not a gap, so the figure leaves it and its seed's pair out. ``paper-repro study``
draws it beside the table, from the same histories.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paper_repro import arms, datasets, experiments, study, study_table
from paper_repro.errors import UserError
from paper_repro.plotting import deterministic_style, save_figure
from paper_repro.seeds import Summary

FIGURE_STEM = "gap"
SIZE_CELLS = (study.BASELINE, *study.KNOBS["crop"])  # the bottom row's lines


def _title(target: str) -> str:
    """The target as the study's runs train on it: its name, and its class subset where they
    take one ("CIFAR-10 classes 5-9")."""
    name = datasets.display(target)
    classes = experiments.resolve(arms.FULL.experiment(target), study.PRESET).classes
    if not classes:
        return name
    if classes == tuple(range(classes[0], classes[-1] + 1)):
        return f"{name} classes {classes[0]}-{classes[-1]}"
    return f"{name} classes {', '.join(map(str, classes))}"


def _gap(
    found: study.Results, name: str, target: str, arm: arms.Arm = arms.RETRAIN
) -> Summary | None:
    """A cell's full training - ``arm`` on ``target``, per seed (None until both have run)."""
    full, _ = study.arm(found, name, arms.FULL.experiment(target))
    trained, _ = study.arm(found, name, arm.experiment(target))
    return study.difference(full, trained)


def _points(found: study.Results, target: str) -> list[tuple[str, tuple[float, ...]]]:
    """(cell, (source mean, source std, gap mean, gap std)) in points, for every cell that has
    retrained on this target with a known source and full run."""
    points = []
    for name in study.CELLS:
        if arms.RETRAIN.experiment(target) not in found[name]:
            continue
        source = study.summary(study.arm(found, name, study.SOURCE)[0])
        gap = _gap(found, name, target)
        if gap is None or source is None:
            continue
        values = (source.mean, source.std or 0.0, gap.mean, gap.std or 0.0)
        points.append((name, tuple(100 * v for v in values)))
    return points


def _by_size(
    found: study.Results, target: str, arm: arms.Arm, names: Sequence[str] = SIZE_CELLS
) -> list[tuple[int, float, float, int]]:
    """(input size, gap mean, gap std, seeds) in points, of the named cells."""
    points = []
    for name in names:
        gap = _gap(found, name, target, arm)
        if gap is not None:
            size = study.input_size(name)
            points.append((size, 100 * gap.mean, 100 * (gap.std or 0.0), gap.n))
    return sorted(points)


def cell_color(name: str) -> str:
    """A cell's colour, the same in every panel: its place among the study's cells."""
    return f"C{list(study.CELLS).index(name) % 10}"


def has_points(histories_dir: str | os.PathLike[str]) -> bool:
    found = study.results(histories_dir, trained_only=True)
    return any(_points(found, target) for target in study.TARGETS)


def _draw_against_source(axes, found: study.Results, target: str, points) -> None:
    for name, (x, x_std, y, y_std) in points:
        # Named in the legend, not beside the point: cells on one source share an x.
        axes.errorbar(x, y, xerr=x_std, yerr=y_std, fmt="o", capsize=3, gid=name, label=name,
                      color=cell_color(name))  # fmt: skip
    control = _gap(found, study.BASELINE, target, arms.CONTROL)
    if control is not None:
        axes.axhline(100 * control.mean, color="0.4", linestyle="--",
                     label="random features (control), baseline")  # fmt: skip
    paper = datasets.paper_row(target)
    axes.axhline(paper.full - paper.retrain, color="0.4", linestyle=":",
                 label="paper (ILSVRC-12 source)")  # fmt: skip
    axes.set_title(f"{_title(target)} (validation)")
    axes.set_xlabel("source's validation accuracy (%)")
    axes.set_ylabel("full training - retraining (points)")
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.18), fontsize=8, ncols=2)


def _draw_against_size(axes, found: study.Results, target: str) -> None:
    for arm, label, marker in ((arms.RETRAIN, "retraining", "o"),
                               (arms.CONTROL, "random features (control)", "s")):  # fmt: skip
        points = _by_size(found, target, arm)
        if points:
            sizes, gaps, stds, _ = zip(*points, strict=True)
            axes.errorbar(sizes, gaps, yerr=stds, fmt=f"{marker}-", capsize=3, gid=arm.name,
                          label=label, color="C0" if arm is arms.RETRAIN else "0.5")  # fmt: skip
            _annotate_seeds(axes, points, f"{arm.name} seeds")
    # Only the controls of the cells on this row: another recipe's would not compare.
    for name in (n for n in study.control_cells() if study.CELLS[n].base in SIZE_CELLS):
        points = _by_size(found, target, arms.CONTROL, [name])
        for size, gap, std, _ in points:
            axes.errorbar([size], [gap], yerr=[std], fmt="D", capsize=3, gid=name,
                          label=f"random features, {name}", color="0.5", mfc="none")  # fmt: skip
        _annotate_seeds(axes, points, f"{name} seeds")
    paper = datasets.paper_row(target)
    size = experiments.resolve(arms.RETRAIN.experiment(target), "paper").crop
    axes.plot([size], [paper.full - paper.retrain], "*", markersize=12, color="k", gid="paper",
              label=f"paper (ILSVRC-12 source, {size} px)")  # fmt: skip
    axes.set_title(f"{_title(target)}: against the input size")
    axes.set_xlabel("crop (pixels; the source trains at it too)")
    axes.set_ylabel("full training - retraining (points)")
    axes.legend(loc="best", fontsize=8)


def _annotate_seeds(axes, points: Sequence[tuple[int, float, float, int]], gid: str) -> None:
    """Each point's seed count: a point of one seed has no bar, which is not a spread of zero."""
    for size, gap, _, count in points:
        axes.annotate(f"n={count}", (size, gap), xytext=(5, 4), textcoords="offset points",
                      fontsize=7, gid=gid)  # fmt: skip


def build_gap_figure(histories_dir: str | os.PathLike[str]) -> Figure:
    found = study.results(histories_dir, trained_only=True)
    panels = {target: _points(found, target) for target in study.TARGETS}
    if not any(panels.values()):
        raise UserError(
            f"no study cell in {histories_dir} has a retraining, its source and a full run yet"
        )
    with deterministic_style():
        figure = Figure(figsize=(10.0, 8.8))
        FigureCanvasAgg(figure)
        columns = len(panels)
        for number, (target, points) in enumerate(panels.items(), 1):
            _draw_against_source(figure.add_subplot(2, columns, number), found, target, points)
            _draw_against_size(figure.add_subplot(2, columns, columns + number), found, target)
        figure.tight_layout()
    return figure


def regenerate_study(out: str | os.PathLike[str]) -> list[Path]:
    """``OUT/table.md`` and, once some cell can be drawn, ``OUT/gap.png`` and ``.pdf``, from the
    histories under ``OUT/histories``. With none finished there, nothing is written: a table of
    dashes would more likely come from a mistyped ``--out`` than from a study not yet begun."""
    histories = Path(out) / study.HISTORIES
    if not any(study.finished(histories).values()):
        raise UserError(
            f"no finished study run under {histories}/CELL (cells: {', '.join(study.CELLS)});"
            " `paper-repro study baseline` trains the first, or give the --out that holds them"
        )
    paths = [study_table.write_table(histories, out)]
    if has_points(histories):
        paths += save_figure(build_gap_figure(histories), out, FIGURE_STEM)
    return paths
