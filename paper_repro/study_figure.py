"""The transfer study's figure: the gap between full training and retraining, per cell, against
the accuracy of the source the retraining started from.

One panel per target. A point is a cell (mean over its seeds, bars one sample standard deviation
each way); the dashed line is the baseline's control (full training minus retraining on random
features), so a point above it retrains worse on its pretrained features than on random ones; the
dotted line is the paper's gap, with ILSVRC-12 as its source. ``paper-repro study`` draws it
beside the table, from the same histories.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paper_repro import study
from paper_repro.errors import UserError
from paper_repro.figures import DISPLAY_NAMES, PAPER
from paper_repro.plotting import deterministic_style, save_figure

FIGURE_STEM = "gap"
TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10 classes 5-9"}


def _points(found: study.Results, target: str) -> list[tuple[str, tuple[float, ...]]]:
    """(cell, (source mean, source std, gap mean, gap std)) in points, for every cell that has
    retrained on this target with a known source and full run."""
    points = []
    for name in study.CELLS:
        if f"retrain-{target}" not in found[name]:
            continue
        source, _ = study.arm(found, name, study.SOURCE)
        full, _ = study.arm(found, name, f"full-{target}")
        gap = study.difference(full, found[name][f"retrain-{target}"])
        source = study.summary(source)
        if gap is None or source is None:
            continue
        values = (source.mean, source.std or 0.0, gap.mean, gap.std or 0.0)
        points.append((name, tuple(100 * v for v in values)))
    return points


def cell_color(name: str) -> str:
    """A cell's colour, the same in every panel: its place among the study's cells."""
    return f"C{list(study.CELLS).index(name) % 10}"


def has_points(histories_dir: str | os.PathLike[str]) -> bool:
    found = study.results(histories_dir)
    return any(_points(found, target) for target in study.TARGETS)


def build_gap_figure(histories_dir: str | os.PathLike[str]) -> Figure:
    found = study.results(histories_dir)
    panels = {target: _points(found, target) for target in study.TARGETS}
    if not any(panels.values()):
        raise UserError(
            f"no study cell in {histories_dir} has a retraining, its source and a full run yet"
        )
    with deterministic_style():
        figure = Figure(figsize=(10.0, 4.4))
        FigureCanvasAgg(figure)
        for number, (target, points) in enumerate(panels.items(), 1):
            axes = figure.add_subplot(1, len(panels), number)
            for name, (x, x_std, y, y_std) in points:
                # Named in the legend, not beside the point: cells on one source share an x.
                axes.errorbar(x, y, xerr=x_std, yerr=y_std, fmt="o", capsize=3, gid=name,
                              label=name, color=cell_color(name))  # fmt: skip
            full, _ = study.arm(found, study.BASELINE, f"full-{target}")
            control = study.difference(full, found[study.BASELINE].get(f"retrain-random-{target}"))
            if control is not None:
                axes.axhline(100 * control.mean, color="0.4", linestyle="--",
                             label="random features (control), baseline")  # fmt: skip
            paper = PAPER[target]
            axes.axhline(paper.full - paper.retrain, color="0.4", linestyle=":",
                         label="paper (ILSVRC-12 source)")  # fmt: skip
            axes.set_title(f"{TITLES.get(target, DISPLAY_NAMES[target])} (validation)")
            axes.set_xlabel("source's validation accuracy (%)")
            axes.set_ylabel("full training - retraining (points)")
            axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.18), fontsize=8, ncols=2)
        figure.tight_layout()
    return figure


def regenerate_study(out: str | os.PathLike[str]) -> list[Path]:
    """``OUT/table.md`` and, once some cell can be drawn, ``OUT/gap.png`` and ``.pdf``, from the
    histories under ``OUT/histories``."""
    histories = Path(out) / study.HISTORIES
    paths = [study.write_table(histories, out)]
    if has_points(histories):
        paths += save_figure(build_gap_figure(histories), out, FIGURE_STEM)
    return paths
