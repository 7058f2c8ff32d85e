"""The transfer study's table (``figures/study/table.md``): every cell's arms and margins, its
rules' verdicts, the margins with their 95 % intervals, and how many runs converged.

A row per cell and target where the cell has a finished run of its own: each arm's last-epoch
centre-crop accuracy over seeds (its base cell's where the cell does not train it, marked so),
the margins between arms per seed, and rule 1's verdict for a knob's cell. Below it, rule E of
figures/study/PLAN.md: each margin as a paired per-seed difference with its 95 % Student-t
interval, under both protocols (the last epoch's centre crop, and the final multi-crop
evaluation), then criterion C (rule A.2) as the runs recorded it, then rule B's probes of the
frozen blocks (``study_probe``). ``paper-repro study`` writes it beside the figure, from the same
histories (``study``'s cells and readings) and the probes kept beside them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from paper_repro import arms, markdown, seeds, study, study_probe
from paper_repro.runs import write_atomic

TABLE_NAME = "table.md"
CAPTION = (
    "Transfer study (figures/study/PLAN.md): last-epoch centre-crop accuracy (%) on the "
    "validation splits carved from the training images (never a test split), mean ± sample "
    'standard deviation over seeds (n = runs). "(CELL)": that cell\'s runs, which this cell '
    "does not change (its base's: the baseline's, unless it names another). Source: its own "
    "validation accuracy (5 classes; 10 for source-10-classes). Oracle: retraining on the frozen "
    "block of the same seed's full training (PLAN.md's positive control). Differences are per "
    "seed, in points. Rule: PLAN.md's rule 1 on the retraining arms' mean over the targets, "
    "margin vs the larger std."
)
# Rule E's margins, each the first arm - the second, per seed.
MARGINS = {
    "full - retraining": (arms.FULL, arms.RETRAIN),
    "retraining - control": (arms.RETRAIN, arms.CONTROL),
    "oracle - retraining": (arms.ORACLE, arms.RETRAIN),
}
ARM_HEADERS = ("full", "retraining", "control (random)", "oracle")  # arms.ARMS's, in order
HEADER = ("cell", "knob", "target", "source", *ARM_HEADERS, *MARGINS, "rule")
# Rule E's two protocols, on the validation split: what each reads of a finished run.
PROTOCOLS = {"centre crop": study.centre_crop, "multi-crop": study.multi_crop}
INTERVALS_CAPTION = (
    "Margins with 95 % intervals (PLAN.md's rule E), in points: the mean of the paired per-seed "
    "differences ± the half-width of its Student-t interval (n - 1 degrees of freedom, the "
    "quantile to 4 decimals), over the seeds both arms have (n; one seed has no interval). "
    "Centre crop: the last epoch's, as above; multi-crop: the final evaluation's, on the same "
    "validation split. Runs that did not train count as they are."
)
CONVERGENCE_CAPTION = (
    "Criterion C (PLAN.md's rule A.2: the epoch-mean training loss fell by less than 1 % over "
    "the three epochs before the first learning-rate drop), as each run recorded it when it "
    'finished: runs that met it / runs that recorded it, per arm; "(CELL)" as above. Runs '
    "written before it was recorded, or with fewer than four epochs before the drop, are in "
    "neither count."
)
PROBE_CAPTION = (
    "Rule B, the linear probe (PLAN.md): validation accuracy (%) of a multinomial logistic "
    "regression (L-BFGS, its L2 strength chosen on validation) on each frozen block's "
    "standardised values, mean ± sample standard deviation over seeds (n = runs); the margins "
    "are paired per-seed differences ± the half-width of their 95 % Student-t interval, in "
    "points. From the probes kept under probe/CELL/ (`paper-repro probe RUN_DIR ... --out`), "
    "whose files also hold each probe's test accuracy, read once at the end. A grid cell's "
    "frozen blocks are the same at every rate."
)
PROBE_MARGINS = {
    "oracle - retraining": (arms.ORACLE, arms.RETRAIN),
    "retraining - control": (arms.RETRAIN, arms.CONTROL),
}
PROBE_HEADER = ("cell", "target", *(ARM_HEADERS[arms.ARMS.index(a)] for a in study_probe.ARMS),
                *PROBE_MARGINS)  # fmt: skip
RULE_A_CAPTION = (
    "Rule A per frozen run (PLAN.md: the rate of the grid with the highest mean centre-crop "
    "validation accuracy over seeds 0-2, a tie to the smaller; 60 epochs unless each of those "
    "runs met criterion C): "
)


def table(histories_dir: str | os.PathLike[str]) -> str:
    """The study's Markdown table from ``HISTORIES_DIR/CELL/*.history.json``."""
    finished = study.finished(histories_dir)
    by_protocol = {name: study.measured(finished, measure) for name, measure in PROTOCOLS.items()}
    found = by_protocol["centre crop"]
    lines = [CAPTION, "", markdown.table(HEADER, _rows(found))]
    stalled = study.did_not_train(histories_dir)
    lines += [
        "",
        "Runs that did not train (last epoch's training loss >= ln of the class count, a uniform "
        "guess's; counted in the means above as they are): " + ("; ".join(stalled) or "none") + ".",
    ]
    lines += ["", "Rule 1 per knob: " + "; ".join(_choices(found)) + "."]
    lines += ["", f"Rule 3 (the 45-minute job) excludes: {', '.join(study.TOO_SLOW_FOR_MINI)}. "
              + _mini(found)]  # fmt: skip
    lines += [
        "",
        "Runs that diverged (stopped at a non-finite loss or weight; kept, not in the means; "
        "rule A chooses no rate at which one of its seeds 0-2 diverged): "
        + ("; ".join(study.diverged_lines(histories_dir)) or "none") + ".",
    ]  # fmt: skip
    converged_by_run = study.measured(finished, study.criterion_c)
    rates = _rates(found, converged_by_run, study.diverged(histories_dir))
    lines += ["", RULE_A_CAPTION + "; ".join(rates) + "."]
    header = ("cell", "target", *(f"{m}, {p}" for m in MARGINS for p in PROTOCOLS))
    lines += ["", INTERVALS_CAPTION, "", markdown.table(header, _interval_rows(by_protocol))]
    converged = list(_convergence_rows(converged_by_run))
    lines += ["", CONVERGENCE_CAPTION]
    lines += ["", markdown.table(("cell", "target", *ARM_HEADERS), converged) if converged else
              "No history records criterion C yet."]  # fmt: skip
    probed = list(_probe_rows(study_probe.probes(Path(histories_dir).parent)))
    lines += ["", PROBE_CAPTION]
    lines += ["", markdown.table(PROBE_HEADER, probed) if probed else "No probe kept yet."]
    return "\n".join(lines) + "\n"


def write_table(histories_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """``OUT/table.md`` from the histories kept under ``HISTORIES_DIR``."""
    path = Path(out) / TABLE_NAME
    write_atomic(path, table(histories_dir).encode())
    return path


def _own_targets(found: study.Results) -> Iterator[tuple[str, str]]:
    """(cell, target) wherever the cell has a finished run of its own on the target."""
    for name, runs in found.items():
        for target in study.TARGETS:
            if any(a.experiment(target) in runs for a in arms.ARMS):
                yield name, target


def _rows(found: study.Results) -> Iterator[list[str]]:
    """A row per cell and target with a run of its own: the source, each arm (the base cell's
    where the cell does not train it), the margins and rule 1's verdict."""
    for name, target in _own_targets(found):
        source, source_from = study.arm(found, name, study.SOURCE)
        values, origin = {}, {}
        for a in arms.ARMS:
            values[a], origin[a] = study.arm(found, name, a.experiment(target))
        yield [
            name,
            study.CELLS[name].knob,
            target,
            _text(study.summary(source), _borrowed(name, source_from)),
            *(_text(study.summary(values[a]), _borrowed(name, origin[a])) for a in arms.ARMS),
            *(_difference(values[high], values[low]) for high, low in MARGINS.values()),
            _rule(found, name),
        ]


def _interval_rows(by_protocol: Mapping[str, study.Results]) -> Iterator[list[str]]:
    """Rule E: a row per cell and target with a run of its own, each margin under each protocol
    as its paired differences' mean ± 95 % t half-width."""
    for name, target in _own_targets(by_protocol["centre crop"]):
        cells = []
        for high, low in MARGINS.values():
            for found in by_protocol.values():
                a, _ = study.arm(found, name, high.experiment(target))
                b, _ = study.arm(found, name, low.experiment(target))
                margin = study.difference(a, b)
                cells.append("–" if margin is None else seeds.interval_text(margin, _percent))
        yield [name, target, *cells]


def _probe_rows(found: study.Results) -> Iterator[list[str]]:
    """Rule B: a row per probed cell and target, each frozen arm's probe over seeds and the
    margins between them."""
    for name, runs in found.items():
        for target in study.TARGETS:
            values = {a: runs.get(a.experiment(target)) for a in study_probe.ARMS}
            if not any(values.values()):
                continue
            margins = [study.difference(values[a], values[b]) for a, b in PROBE_MARGINS.values()]
            yield [
                name, target, *(_text(study.summary(v)) for v in values.values()),
                *("–" if m is None else seeds.interval_text(m, _percent) for m in margins),
            ]  # fmt: skip


def _convergence_rows(found: study.Results) -> Iterator[list[str]]:
    """Criterion C: a row per cell and target with a recorded run of its own, per arm the runs
    that met it / those that recorded it."""
    for name, target in _own_targets(found):
        counts = []
        for a in arms.ARMS:
            met, origin = study.arm(found, name, a.experiment(target))
            borrowed = f" ({origin})" if met and origin != name else ""
            counts.append(f"{sum(met.values())}/{len(met)}{borrowed}" if met else "–")
        yield [name, target, *counts]


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _text(summary: seeds.Summary | None, borrowed_from: str | None = None) -> str:
    if summary is None:
        return "–"
    return seeds.text(summary, _percent) + (f" ({borrowed_from})" if borrowed_from else "")


def _difference(a: Mapping[int, float] | None, b: Mapping[int, float] | None) -> str:
    """Mean ± std over the seeds both have of ``a - b``, in points."""
    summary = study.difference(a, b)
    return "–" if summary is None else seeds.text(summary, _percent)


def _borrowed(name: str, origin: str) -> str | None:
    """The cell a table entry borrows from, or None for the cell's own."""
    return None if origin == name else origin


def _rule(found: study.Results, name: str) -> str:
    """Rule 1's column: empty but for a cell that sets a knob (the baseline, a control, rule A's
    cells have no verdict)."""
    if not study.is_knob(name):
        return ""
    return str(study.verdict(found, name) or "needs 2+ seeds")


def _choices(found: study.Results) -> list[str]:
    """``knob: what rule 1 takes`` for every knob: a cell, the baseline's, not run yet, or not
    decided yet (and what it lacks) while only some of its cells can be weighed."""
    choice = study.chosen(found)
    return [f"{knob}: {_choice(found, knob, choice)}" for knob in study.KNOBS]


def _choice(found: study.Results, knob: str, choice: Mapping[str, str | None]) -> str:
    if knob in choice:
        return choice[knob] or "the baseline's"
    if not any(found[name] for name in study.KNOBS[knob]):
        return "not run yet"
    missing = "; ".join(study.lacking(found, study.undecided(found, knob)))
    return f"not decided yet (rule 1 needs 2 seeds: {missing})"


def _rates(found: study.Results, converged: study.Results, diverged: study.Results) -> list[str]:
    """``run: what rule A takes`` per frozen run, or what it still lacks."""
    said = []
    for experiment, choice in study.rule_a(found, converged, diverged).items():
        missing = "; ".join(study.rule_a_lacking(found, experiment, diverged))
        if choice is None and missing:
            said.append(f"{experiment}: not decided yet (needs {missing})")
            continue
        if choice is None:
            said.append(f"{experiment}: none (a run diverged at every rate)")
            continue
        epochs = 60 if choice.needs_60_epochs else 30
        said.append(
            f"{experiment}: lr {choice.rate} ({_percent(choice.mean)} %, criterion C met by "
            f"{choice.met_c} of {len(study.RULE_A_SEEDS)}), {epochs} epochs"
        )
    return said


def _mini(found: study.Results) -> str:
    """The verdict: the cells the new mini takes, written only once rule 1 can weigh every knob
    rule 3 leaves; until then, what it lacks."""
    taken = study.mini_cells(found)
    if taken is not None:
        return f"The new mini takes: {', '.join(taken) or 'the baseline'}."
    knobs = [k for k in study.KNOBS if k not in study.TOO_SLOW_FOR_MINI]
    cells = [name for knob in knobs for name in study.undecided(found, knob)]
    missing = "; ".join(study.lacking(found, cells))
    return (
        "No verdict on the new mini until rule 1 can weigh every other knob (2 seeds of each cell"
        f" and of the baseline): {missing}."
    )
