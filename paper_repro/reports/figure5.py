"""Figure 5 of the paper, reproduced: test accuracy per epoch of every transfer variant, each
dataset in its colour and each arm in its line style (``paper_repro.arms``), the control dotted,
named in the legend in plain words.

Beside the curves, right of the last epoch, a short mark per arm at the paper's final accuracy
(Table III), in the dataset's colour, so that where a curve ends can be read against where the
paper's did. Curves that run together stay apart to the eye: each variant has its own marker as
well as its line style, and the solid lines lie under the broken ones, whose gaps show them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from paper_repro import arms, datasets, seeds
from paper_repro.errors import UserError
from paper_repro.history import History
from paper_repro.plotting import deterministic_style, save_figure
from paper_repro.reports.index import Index, Runs, accuracy_curve, group, sources

BAND_ALPHA = 0.15  # the min-max band across seeds
LR_DROP_STYLE = {"color": "0.35", "linestyle": ":", "linewidth": 1.0}
MARKER_SIZE = 4.5
# A variant on precomputed (cached) features: its marker hollow and larger, so that where it runs
# along the same arm on the images, the filled marker shows inside the hollow one.
HOLLOW = {"markerfacecolor": "none", "markersize": 7.0, "markeredgewidth": 1.2}
MARKS_PER_CURVE = 12  # at most: a long run marks every few epochs, not every one
# The paper's final values: a thick short tick per arm, in a shaded strip right of the epochs.
PAPER_LABEL = "the paper's final accuracy (Table III)"
PAPER_STYLE = {"linewidth": 3.0, "solid_capstyle": "butt"}
PAPER_STRIP = {"color": "0.94", "linewidth": 0}
PAPER_VALUES: dict[arms.Arm, Callable[[datasets.PaperRow], float]] = {
    arms.FULL: lambda paper: paper.full,
    arms.RETRAIN: lambda paper: paper.retrain,
}

# Each variant drawn, in legend order, with its legend name and line style.
STYLES = {
    arms.variant(arm, cached): (
        arms.label(arm, cached),
        arm.cached_linestyle if cached else arm.linestyle,
    )
    for arm in arms.ARMS
    for cached in (False, True)
}
MARKERS = dict(zip(STYLES, "oPsD^vX*", strict=True))  # a marker of its own per variant
ARM_OF = {arms.variant(arm, cached): arm for arm in arms.ARMS for cached in (False, True)}
CACHED = {arms.variant(arm, True) for arm in arms.ARMS}
# A curve to draw: its (preset, dataset, variant) and its runs, one per seed.
Curve = tuple[tuple[str, str, str], Runs]


def build_figure5(histories: Mapping[str, History], allow_mixed_presets: bool = False) -> Figure:
    """Figure 5 as a matplotlib Figure (Agg canvas, no pyplot state): one line per full,
    retrain or control variant, centre-crop test accuracy per epoch, the learning-rate drop
    marked, and the paper's final values beside them. A variant run with several seeds is drawn
    as its mean curve inside a min-max band.

    Pretraining runs are not drawn: the paper's figure compares full training with retraining.
    A line's gid names its histories (space-separated), its band's the same plus " band"; a
    mark of the paper's is ``paper DATASET ARM``.
    """
    runs = _curves(group(histories, allow_mixed_presets))
    if not runs:
        raise UserError(f"no full or retrain history to plot among {', '.join(sorted(histories))}")
    colours = datasets.colours(sorted({key[1] for key, _ in runs}, key=datasets.order))
    presets = sorted({key[0] for key, _ in runs})
    with deterministic_style():
        figure = Figure(figsize=(9.6, 6.4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        last = 1
        for (preset, dataset, variant), found in runs:
            label = f"{datasets.display(dataset)} {STYLES[variant][0]}" + (
                f" ({preset})" if len(presets) > 1 else ""
            )
            last = max(last, _draw_curve(axes, found, variant, colours[dataset], label))
        drawn = [h for _, found in runs for _, h in found]
        for number, epoch in enumerate(_lr_drops(drawn)):
            label = "learning-rate drop" if number == 0 else "_nolegend_"
            axes.axvline(epoch, label=label, **LR_DROP_STYLE)
        columns = _draw_paper_marks(axes, runs, colours, last)
        _set_ticks(axes, last, columns)
        axes.set_xlabel("Epoch" + ("; right: the paper's final accuracy" if columns else ""))
        axes.set_ylabel("Test accuracy, centre crop (%)")
        title = f"Figure 5 (reproduced), preset {', '.join(presets)}"
        axes.set_title(title + seeds.title(drawn))
        _legend(axes, paper_marked=bool(columns))
        figure.tight_layout()
    return figure


def _legend(axes: Axes, paper_marked: bool) -> None:
    """The curves' names, the learning-rate drop and, once for all of them, the paper's marks.

    Outside the axes, under them: inside, some placement always hides a curve, and beside them
    the plain-words names would leave the curves half the width.
    """
    handles, labels = axes.get_legend_handles_labels()
    if paper_marked:
        handles.append(Line2D([], [], color="0.3", **PAPER_STYLE))
        labels.append(PAPER_LABEL)
    axes.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2,
        fontsize="small", borderaxespad=0.0,
    )  # fmt: skip


def _draw_curve(axes: Axes, found: Runs, variant: str, colour: str, label: str) -> int:
    """One variant's mean curve (and its min-max band over several seeds); its last epoch.

    Solid lines (full training) lie lowest and each variant's marker is its own (hollow on
    precomputed features), so that a curve running along another one still shows, through the
    other's gaps and by its markers.
    """
    linestyle, order = STYLES[variant][1], list(STYLES).index(variant)
    curve, gid = accuracy_curve(found), " ".join(sources(found))
    if curve.n > 1:
        axes.fill_between(
            curve.epochs, [100 * v for v in curve.low], [100 * v for v in curve.high],
            color=colour, alpha=BAND_ALPHA, linewidth=0, gid=f"{gid} band",
        )  # fmt: skip
    axes.plot(
        list(curve.epochs),
        [100 * value for value in curve.mean],
        color=colour,
        linestyle=linestyle,
        marker=MARKERS[variant],
        markevery=max(1, math.ceil(len(curve.epochs) / MARKS_PER_CURVE)),
        zorder=2 + order / 100,
        label=label,
        gid=gid,
        **(HOLLOW if variant in CACHED else {"markersize": MARKER_SIZE}),
    )
    return curve.epochs[-1] if curve.epochs else 1


def _draw_paper_marks(
    axes: Axes, runs: Sequence[Curve], colours: Mapping[str, str], last: int
) -> dict[float, str]:
    """A short thick mark at the paper's final accuracy for each arm drawn on a dataset of the
    paper's, in the dataset's colour, one column per arm right of the last epoch (full training
    and retraining end within a point of each other in the paper: side by side, neither hides
    the other). Returns the columns' x positions with their arms' names, for the ticks."""
    marks = sorted(
        {
            (dataset, ARM_OF[variant])
            for (_, dataset, variant), _ in runs
            if ARM_OF[variant] in PAPER_VALUES and datasets.paper_row(dataset)
        },
        key=lambda mark: (datasets.order(mark[0]), arms.ARMS.index(mark[1])),
    )
    if not marks:
        return {}
    arms_marked = [arm for arm in PAPER_VALUES if any(a is arm for _, a in marks)]
    step = _column_width(last)
    x = {arm: last + step * (i + 1) for i, arm in enumerate(arms_marked)}
    axes.axvspan(last + step / 2, last + step * (len(arms_marked) + 0.5), **PAPER_STRIP)
    for dataset, arm in marks:
        value = PAPER_VALUES[arm](datasets.paper_row(dataset))
        axes.plot(
            [x[arm] - 0.35 * step, x[arm] + 0.35 * step], [value, value],
            color=colours[dataset], zorder=3, label="_nolegend_",
            gid=f"paper {dataset} {arm.name}", **PAPER_STYLE,
        )  # fmt: skip
    return {x[arm]: arm.label for arm in arms_marked}


def _column_width(last: int) -> float:
    """A column of the paper's marks: an epoch and a half wide, room for its arm's name under
    it, or a sixth of the epochs in a longer run (as wide as in the 9-epoch mini figure)."""
    return max(1.5, last / 6)


def _set_ticks(axes: Axes, last: int, columns: Mapping[float, str]) -> None:
    """Whole epochs (every run's first is 1) on the x axis, then under each column of the
    paper's marks its arm."""
    epochs = [
        int(tick)
        for tick in MaxNLocator(nbins=10, integer=True).tick_values(1, last)
        if 1 <= tick <= last
    ]
    axes.set_xticks([*epochs, *columns], [*map(str, epochs), *columns.values()])
    if columns:
        axes.set_xlim(right=max(columns) + _column_width(last) / 2)


def _curves(index: Index) -> list[Curve]:
    """The variants drawn, in legend order: dataset as in the paper, preset, full first."""
    order = list(STYLES)
    return sorted(
        ((key, runs) for key, runs in index.items() if key[2] in STYLES),
        key=lambda item: (datasets.order(item[0][1]), item[0][0], order.index(item[0][2])),
    )


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
