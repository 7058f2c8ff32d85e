"""Rule B in the study's table: the linear probes kept under ``figures/study/probe/CELL/``.

``paper-repro probe RUN_DIR ... --out OUT/probe/CELL/NAME.md`` writes a probe of a cell's
finished runs, and its rows as ``NAME.json`` beside it (``probe.report``). The models a probe
reads are not kept from one working session to the next, so a cell's probes are made in several
sittings, whenever some of its seeds' runs exist; this module reads every JSON file of a cell's
folder together. The probe is deterministic, so the same run probed twice gives the same
numbers: two that disagree come from two settings, and are refused rather than averaged. A grid
cell's frozen blocks do not depend on its learning rate, so one rate's runs stand for the grid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from paper_repro import arms, experiments, study
from paper_repro.errors import UserError

PROBES = "probe"
ARMS = (arms.RETRAIN, arms.CONTROL, arms.ORACLE)  # the arms with a frozen block
# The settings that make a frozen block and the images it is probed on: a row must have the
# cell's, so that a probe of another cell's runs is not filed under this one.
BLOCK_SETTINGS = ("dataset", "classes", "crop", "features_end", "random_rms")


def probes(out: str | os.PathLike[str]) -> study.Results:
    """Every cell's probes under ``OUT/probe/CELL/*.json``: the chosen fit's validation accuracy,
    per experiment and seed."""
    root = Path(out) / PROBES
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return {folder.name: _cell_probes(folder) for folder in folders}


def _cell_probes(folder: Path) -> dict[str, dict[int, float]]:
    if folder.name not in study.CELLS:
        raise UserError(
            f"{folder}: not a study cell's folder; name it after the cell whose runs were probed "
            f"({', '.join(study.CELLS)})"
        )
    found: dict[str, dict[int, float]] = {}
    for path, row in _rows(folder):
        _check_block(folder.name, path, row)
        seed, accuracy = row["seed"], row["result"]["chosen"]["validation_accuracy"]
        seen = found.setdefault(row["experiment"], {})
        if seen.get(seed, accuracy) != accuracy:
            raise UserError(
                f"{path}: {row['experiment']} seed {seed} probed at {100 * accuracy:.2f} %, "
                f"another probe in {folder} at {100 * seen[seed]:.2f} %: the same run gives the "
                "same probe, so these are two settings; keep one setting's probes in a folder"
            )
        seen[seed] = accuracy
    return found


def _rows(folder: Path) -> Iterator[tuple[Path, dict]]:
    for path in sorted(folder.glob("*.json")):
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: not a probe's rows ({error})") from error
        if not isinstance(rows, list):
            raise UserError(f"{path}: not a probe's rows (a list was expected)")
        yield from ((path, row) for row in rows)


def _check_block(cell: str, path: Path, row: dict) -> None:
    """A row belongs in ``cell``'s folder when it probes one of the cell's frozen arms, with the
    cell's settings for its block (``BLOCK_SETTINGS``)."""
    experiment = row.get("experiment")
    frozen = [a.experiment(t) for a in ARMS for t in study.TARGETS]
    if experiment not in study.cell(cell).runs or experiment not in frozen:
        raise UserError(
            f"{path}: {experiment} is no frozen run of study cell {cell}; probe its runs "
            f"({', '.join(e for e in study.cell(cell).runs if e in frozen) or 'none'})"
        )
    config = experiments.resolve(experiment, study.PRESET, study.settings(cell, experiment))
    expected = config.to_dict()
    changed = [key for key in BLOCK_SETTINGS if row["config"].get(key) != expected[key]]
    if changed:
        raise UserError(
            f"{path}: the probed run of {experiment} has other settings ({', '.join(changed)}) "
            f"than study cell {cell}'s; file it under the cell it belongs to"
        )
