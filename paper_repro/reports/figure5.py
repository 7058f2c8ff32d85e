"""Figure 5 of the paper, reproduced: test accuracy per epoch of every transfer variant, each
dataset in its colour and each arm in its line style (``paper_repro.arms``), the control dotted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from paper_repro import arms, datasets, seeds
from paper_repro.errors import UserError
from paper_repro.history import History
from paper_repro.plotting import deterministic_style, save_figure
from paper_repro.reports.index import Index, Runs, accuracy_curve, group, sources

BAND_ALPHA = 0.15  # the min-max band across seeds
LR_DROP_STYLE = {"color": "0.35", "linestyle": ":", "linewidth": 1.0}


def _label(arm: arms.Arm, cached: bool) -> str:
    """The legend's name of a variant: the arm's label, with its mode marked ``-cached`` where
    the classifier trained on cached features ("retrain-cached, random features (control)")."""
    return arm.label.replace(arm.mode, arm.mode + arms.CACHED, 1) if cached else arm.label


# Each variant drawn, in legend order, with its legend name and line style.
STYLES = {
    arms.variant(arm, cached): (
        _label(arm, cached),
        arm.cached_linestyle if cached else arm.linestyle,
    )
    for arm in arms.ARMS
    for cached in (False, True)
}


def build_figure5(histories: Mapping[str, History], allow_mixed_presets: bool = False) -> Figure:
    """Figure 5 as a matplotlib Figure (Agg canvas, no pyplot state): one line per full,
    retrain or control variant, center-crop test accuracy per epoch, and the learning-rate drop
    marked. A variant run with several seeds is drawn as its mean curve inside a min-max band.

    Pretraining runs are not drawn: the paper's figure compares full training with retraining.
    A line's gid names its histories (space-separated), its band's the same plus " band".
    """
    runs = _curves(group(histories, allow_mixed_presets))
    if not runs:
        raise UserError(f"no full or retrain history to plot among {', '.join(sorted(histories))}")
    colours = datasets.colours(sorted({key[1] for key, _ in runs}, key=datasets.order))
    presets = sorted({key[0] for key, _ in runs})
    with deterministic_style():
        figure = Figure(figsize=(9.6, 4.4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for (preset, dataset, variant), found in runs:
            name, linestyle = STYLES[variant]
            label = f"{datasets.display(dataset)} {name}" + (
                f" ({preset})" if len(presets) > 1 else ""
            )
            curve, gid = accuracy_curve(found), " ".join(sources(found))
            if curve.n > 1:
                axes.fill_between(
                    curve.epochs, [100 * v for v in curve.low], [100 * v for v in curve.high],
                    color=colours[dataset], alpha=BAND_ALPHA, linewidth=0, gid=f"{gid} band",
                )  # fmt: skip
            axes.plot(
                list(curve.epochs),
                [100 * value for value in curve.mean],
                color=colours[dataset],
                linestyle=linestyle,
                label=label,
                gid=gid,
            )
        drawn = [h for _, found in runs for _, h in found]
        for number, epoch in enumerate(_lr_drops(drawn)):
            label = "learning-rate drop" if number == 0 else "_nolegend_"
            axes.axvline(epoch, label=label, **LR_DROP_STYLE)
        axes.set_xlabel("Epoch")
        axes.set_ylabel("Test accuracy, center crop (%)")
        title = f"Figure 5 (reproduced), preset {', '.join(presets)}"
        axes.set_title(title + seeds.title(drawn))
        axes.xaxis.get_major_locator().set_params(integer=True)
        # Outside the axes, right of them: inside, some placement always hides a curve.
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        figure.tight_layout()
    return figure


def _curves(index: Index) -> list[tuple[tuple[str, str, str], Runs]]:
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
