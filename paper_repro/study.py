"""The transfer study (figures/study/README.md): what closes the first mini's gap between
retraining and full training? Its cells as plain data, and what their histories say (per seed,
per cell, and rule 1's verdicts); ``study_table`` writes its table and ``study_figure`` its figure.

Commands (each resumable: finished runs are skipped, interrupted ones resumed)::

    paper-repro study baseline --seeds 0,1,2       # the first mini on validation splits
    paper-repro study fresh-fc67 --seeds 0,1,2     # one knob changed; needs baseline's sources
    paper-repro study full-30-epochs frozen-30-lr-0.003 --seeds 0,1,2   # rule A's grid
    paper-repro study frozen-chosen relu5 --seeds 0,1,2,3,4   # at rule A's choice, once made
    paper-repro study full-30-epochs frozen-30-lr-0.01 --seeds 0 \
        --only full-mnist,retrain-oracle-mnist      # a seed's full runs, the oracles reading them
    paper-repro study                              # only figures/study/table.md again

Expected: a table of validation accuracies (never test: figures/study/PLAN.md, the plan and
selection rule written before the first run) with, per cell and target, full training, retraining,
the random-features control and the oracle over seeds 0-2, the gap full - retraining and the
margins retraining - control and oracle - retraining, and whether the cell passes the selection
rule against the baseline; then those margins with their 95 % intervals under both protocols
(PLAN.md's rule E), and how many runs of each arm met the convergence criterion (rule A.2).

Every cell is the ``study`` preset (the first mini, training on ``train[:N]`` and reporting
accuracy on the held-out ``train[N:]``) with one thing changed. A cell trains only the runs its
knob changes; the others (the full runs, the control, the sources) are its base cell's (the
baseline's, unless it names another), shown as such. A cell that changes the source trains one
per seed, and its retraining with seed s starts from its source with seed s; the other cells'
retraining starts from their base's source of the same seed; so does an oracle from the full run
of its seed (rule A's grid cells read the full runs of ``full-30-epochs``). Retraining, the
control and the oracle train on cached features (``cache_features``), the cheap arms, so that the
CPU goes to the sources and the full runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from paper_repro import arms, datasets, experiments, seeds
from paper_repro.errors import UserError
from paper_repro.history import History, load_history
from paper_repro.runs import find_histories

PRESET = "study"
BASELINE = "baseline"
SOURCE = "pretrain-imagenet"
# The targets with a validation split carved from their training images, in Table III's order.
TARGETS = tuple(name for name, d in datasets.REGISTRY.items() if d.validation_from is not None)
# The cheap ones first; the oracle after the full run it reads.
ARMS_ORDER = (arms.RETRAIN, arms.CONTROL, arms.FULL, arms.ORACLE)


def _runs(
    arm: arms.Arm, overrides: Iterable[str] = (), targets: Sequence[str] = TARGETS
) -> dict[str, tuple[str, ...]]:
    return {arm.experiment(target): tuple(overrides) for target in targets}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One knob changed from a base cell (the baseline, unless named): the runs it trains, each
    with its ``--set`` changes; the runs it does not train are its base's."""

    knob: str  # what changes, in words, for the table
    runs: Mapping[str, tuple[str, ...]]
    base: str = BASELINE
    # The cell whose sources its retraining starts from, where not its base's (rule C's cell
    # that retrains MNIST digits 5-9 from the MNIST source of another cell).
    sources_from: str | None = None


_RETRAIN = (arms.RETRAIN,)
_RETRAINING = (arms.RETRAIN, arms.CONTROL)  # recipes that apply to the control as well
# The first mini's arms, which every cell before PLAN.md's "Features or optimiser?" trains.
_FIRST_ARMS = (arms.FULL, arms.RETRAIN, arms.CONTROL)
# That part's three frozen-feature arms, and rule A's grid of step sizes for them (A.1).
_FROZEN = (arms.RETRAIN, arms.CONTROL, arms.ORACLE)
RULE_A_RATES = ("0.001", "0.003", "0.01", "0.03")
_30_EPOCHS = ("epochs=30", "drop_epochs=20")  # the paper's schedule, in epochs
FULL_30_EPOCHS = "full-30-epochs"
# In a cell's overrides: the frozen run's learning rate and epochs as rule A chose them for its
# arm and target (``recipe``), once the grid has decided; every rate and seed of the grid first.
RULE_A = "rule-a"
FROZEN_CHOSEN = "frozen-chosen"
_FROZEN_RECIPE = ("dropout=0", RULE_A)  # the new mini's recipe at rule A's rate and epochs
_MNIST_5_9 = ("classes=5,6,7,8,9",)
# Rule C's near source: MNIST digits 0-4, all of them in the study's training images, unmirrored
# and tested on 5 crops as MNIST targets are; otherwise the study source's recipe.
_MNIST_SOURCE = (
    "dataset=mnist", "classes=0,1,2,3,4", "train_split=train[:50000]",
    "test_split=train[50000:]", "mirror=false", "test_crops=5",
)  # fmt: skip


def grid_cell(rate: str) -> str:
    """The grid's cell of one rate (A.1)."""
    return f"frozen-30-lr-{rate}"


def _arms(chosen: Sequence[arms.Arm], overrides: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    return {name: tuple(overrides) for arm in chosen for name in _runs(arm)}


def _everything(overrides: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    return {SOURCE: tuple(overrides), **_arms(_FIRST_ARMS, overrides)}


CELLS: dict[str, Cell] = {
    BASELINE: Cell("the first mini", _everything()),
    # The retraining recipe, on the baseline's sources.
    "fresh-fc67": Cell("fc6, fc7 drawn fresh", _arms(_RETRAIN, ["keep_fc67=false"])),
    "target-mean": Cell("the target's own mean", _arms(_RETRAIN, ["target_mean=true"])),
    "no-dropout": Cell("dropout 0 when retraining", _arms(_RETRAINING, ["dropout=0"])),
    "retrain-30-epochs": Cell(
        "30 retraining epochs, drop after 20", _arms(_RETRAINING, ["epochs=30", "drop_epochs=20"])
    ),
    # The source's training.
    "source-30-epochs": Cell(
        "source trained 30 epochs, drop after 20",
        {SOURCE: ("epochs=30", "drop_epochs=20"), **_arms(_RETRAIN)},
    ),
    "source-10-classes": Cell(
        "source on all 10 CIFAR-10 classes (MNIST target only)",
        {SOURCE: ("classes=0,1,2,3,4,5,6,7,8,9",), **_runs(arms.RETRAIN, targets=("mnist",))},
    ),
    "source-lr-0.01": Cell(
        "source at lr 0.01 with a 1-epoch warm-up",
        {SOURCE: ("base_lr=0.01", "warmup_epochs=1"), **_arms(_RETRAIN)},
    ),
    # The input size, for every run.
    "crop-99": Cell("crop 99 (resize 112), every run", _everything(["resize=112", "crop=99"])),
    "crop-131": Cell("crop 131 (resize 148), every run", _everything(["resize=148", "crop=131"])),
    # The control at a trained block's scale, added after crop-131's controls failed to optimize
    # (PLAN.md, "The control at a source's scale"): not a knob of the mini, a fairer control.
    "no-dropout-control-rms-1": Cell(
        "the control's pool5 scaled to RMS 1, a source's scale (the new mini's recipe, crop 67)",
        _arms((arms.CONTROL,), ["dropout=0", "random_rms=1"]),
        base="no-dropout",
    ),
    "crop-131-control-rms-1": Cell(
        "the control's pool5 scaled to RMS 1, a source's scale (crop 131)",
        _arms((arms.CONTROL,), ["resize=148", "crop=131", "random_rms=1"]),
        base="crop-131",
    ),
    # Rule A (PLAN.md, "Features or optimiser?"): full training at 30 epochs (A.5), the runs the
    # grid's margins and oracles read; each frozen arm at each rate of the grid (A.1), on the new
    # mini's recipe (dropout 0, cached), the sources the baseline's.
    FULL_30_EPOCHS: Cell("full training 30 epochs, drop after 20", _arms((arms.FULL,), _30_EPOCHS)),
    **{
        grid_cell(rate): Cell(
            f"frozen arms at lr {rate}, 30 epochs, drop after 20, dropout 0",
            _arms(_FROZEN, ["dropout=0", *_30_EPOCHS, f"base_lr={rate}"]),
            base=FULL_30_EPOCHS,
        )
        for rate in RULE_A_RATES
    },
    # Rule A's choice (A.3, A.4) for each frozen arm and target, seeds 0-4: seeds 0-2 are the
    # grid's runs at the chosen rate where it kept 30 epochs (their histories are copied).
    FROZEN_CHOSEN: Cell(
        "frozen arms at rule A's rate and epochs, dropout 0", _arms(_FROZEN, _FROZEN_RECIPE),
        base=FULL_30_EPOCHS,
    ),
    # Rule C, a 2x2 of sources and targets at rule A's recipe; CIFAR-10 classes 0-4 to 5-9 is
    # frozen-chosen's CIFAR-10 row.
    "target-mnist-5-9": Cell(
        "target MNIST digits 5-9, source CIFAR-10 classes 0-4",
        {
            arms.FULL.experiment("mnist"): (*_MNIST_5_9, *_30_EPOCHS),
            **{a.experiment("mnist"): (*_MNIST_5_9, *_FROZEN_RECIPE) for a in _FROZEN},
        },
        base=FROZEN_CHOSEN,
    ),
    "source-mnist-0-4": Cell(
        "source MNIST digits 0-4, target CIFAR-10 classes 5-9",
        {SOURCE: _MNIST_SOURCE, arms.RETRAIN.experiment("cifar10"): _FROZEN_RECIPE},
        base=FROZEN_CHOSEN,
    ),
    "mnist-0-4-to-5-9": Cell(
        "source MNIST digits 0-4, target MNIST digits 5-9",
        {arms.RETRAIN.experiment("mnist"): (*_MNIST_5_9, *_FROZEN_RECIPE)},
        base="target-mnist-5-9",
        sources_from="source-mnist-0-4",
    ),
    # Rule D: pool5's 3x3 layout at 67 pixels, every frozen arm at rule A's recipe.
    "relu5": Cell(
        "frozen block ends at relu5 (3x3x256), fc6, fc7 fresh, at rule A's recipe",
        _arms(_FROZEN, ["features_end=relu5", "keep_fc67=false", *_FROZEN_RECIPE]),
        base=FROZEN_CHOSEN,
    ),
}  # fmt: skip


def cell(name: str) -> Cell:
    if name not in CELLS:
        raise UserError(f"unknown study cell '{name}'; cells: {', '.join(CELLS)}")
    return CELLS[name]


def uses_rule_a(name: str) -> bool:
    """Whether some run of the cell trains at rule A's rate and epochs (``RULE_A``)."""
    return any(RULE_A in overrides for overrides in cell(name).runs.values())


def settings(
    name: str, experiment: str, choices: Mapping[str, RateChoice | None] | None = None
) -> list[str]:
    """A cell's ``--set`` changes for one run, ``RULE_A`` replaced by the recipe rule A chose
    for the run's arm and target (``choices``: ``rule_a``); without ``choices``, left out (for
    what does not depend on the rate or the epochs: the input size, the sources)."""
    overrides = list(cell(name).runs[experiment])
    if RULE_A not in overrides:
        return overrides
    at = overrides.index(RULE_A)
    if choices is None:
        return overrides[:at] + overrides[at + 1 :]
    choice = choices.get(experiment)
    if choice is None:
        raise UserError(
            f"study cell {name} trains {experiment} at the rate rule A chooses on the grid's "
            "seeds 0-2, not decided yet (the study table's Rule A line says which runs it lacks): "
            f"run `paper-repro study {' '.join(map(grid_cell, RULE_A_RATES))} --seeds 0,1,2` first"
        )
    return [*overrides[:at], *recipe(choice), *overrides[at + 1 :]]


def recipe(choice: RateChoice) -> tuple[str, ...]:
    """Rule A's settings for a frozen run: its rate, 30 epochs (drop after 20), or 60 (after 40)
    where A.4 asks for them."""
    epochs = ("epochs=60", "drop_epochs=40") if choice.needs_60_epochs else _30_EPOCHS
    return (f"base_lr={choice.rate}", *epochs)


def input_size(name: str) -> int:
    """The crop, in pixels, of a cell's runs (a crop cell trains every run at it)."""
    experiment = next(iter(cell(name).runs))
    return experiments.resolve(experiment, PRESET, settings(name, experiment)).crop


def source_cell(name: str, experiment: str = SOURCE) -> str:
    """The cell whose ``experiment`` runs a cell reads (its sources by default, which its
    retraining starts from; the full runs its oracles start from, its margins are read against):
    its own where it trains them, else the cell it names for its sources, else its base's."""
    spec = cell(name)
    if experiment in spec.runs or name == BASELINE:
        return name
    if experiment == SOURCE and spec.sources_from:
        return source_cell(spec.sources_from, experiment)
    return source_cell(spec.base, experiment)


def sources_read(name: str, only: Collection[str] | None = None) -> list[str]:
    """The experiments whose models a cell's runs (those of ``only``, where given) start from
    (``RunConfig.pretrained``: the pretraining for retraining, the full runs for the oracle)."""
    configs = [experiments.resolve(e, PRESET, settings(name, e)) for e in run_order(name, only)]
    return sorted({config.pretrained for config in configs if config.pretrained})


def is_source(name: str, experiment: str) -> bool:
    """Whether some cell's runs start from cell ``name``'s ``experiment`` runs (its sources, the
    full runs an oracle reads), whose model files must then exist."""
    return any(
        experiment in sources_read(other) and source_cell(other, experiment) == name
        for other in CELLS
    )


def control_cells() -> list[str]:
    """The cells that train only a control: another control beside their base's."""
    controls = set(_runs(arms.CONTROL))
    return [name for name, spec in CELLS.items() if set(spec.runs) <= controls]


def run_order(name: str, only: Collection[str] | None = None) -> list[str]:
    """The cell's runs (those of ``only``, where given), its source first (the retraining reads
    it), then the cheap arms, then the full runs, then the oracles that read them."""
    order = {
        SOURCE: 0,
        **{arm.experiment(t): 1 + ARMS_ORDER.index(arm) for arm in arms.ARMS for t in TARGETS},
    }
    runs = [e for e in cell(name).runs if only is None or e in only]
    return sorted(runs, key=order.__getitem__)


def check_only(cells: Sequence[str], only: Collection[str] | None) -> None:
    """``--only``'s experiments must each be a run of some named cell: a typo would train
    nothing, silently."""
    if only is None:
        return
    known = {experiment for name in cells for experiment in cell(name).runs}
    unknown = sorted(set(only) - known)
    if unknown:
        raise UserError(
            f"--only {','.join(unknown)}: no run of the cells named ({' '.join(cells) or 'none'})"
            f" is such an experiment; theirs are {','.join(sorted(known)) or 'none'}"
        )


# What the histories say ----------------------------------------------------------------------

HISTORIES = "histories"
ONE_SETTING_HINT = (
    "keep one setting's histories in the cell's folder (a quick try with --set belongs in another"
    " --out)"
)


def centre_crop(history: History) -> float:
    """The last epoch's centre-crop accuracy on the validation split (PLAN.md's measure)."""
    return history.epochs[-1].test_accuracy


def multi_crop(history: History) -> float:
    """The final multi-crop accuracy on the validation split (rule E's second protocol)."""
    return history.final.top1


def criterion_c(history: History) -> bool | None:
    """Whether the run met rule A.2's convergence criterion, as it recorded when it finished."""
    return history.converged


Measure = Callable[[History], Any]  # a run's value; None where it has none


def _finished(directory: Path, status: str = "finished") -> Iterator[seeds.Run]:
    """A cell's finished histories (or those of another ``status``), each with its path."""
    for path in find_histories(directory) if directory.is_dir() else ():
        history = load_history(path)
        if history.status == status:
            yield str(path), history


def finished(histories_dir: str | os.PathLike[str]) -> dict[str, list[History]]:
    """Every cell's finished histories, kept under ``HISTORIES_DIR/CELL``: of each run, seeds
    of one setting, each once (``seeds.check_alike``), since the table averages them."""
    found = {}
    for name in CELLS:
        kept = list(_finished(Path(histories_dir) / name))
        for experiment in dict.fromkeys(history.experiment for _, history in kept):
            same = [run for run in kept if run[1].experiment == experiment]
            seeds.check_alike(same, ONE_SETTING_HINT)
        found[name] = [history for _, history in kept]
    return found


def _by_run(histories: Iterable[History], measure: Measure, trained_only: bool) -> dict:
    """``{experiment: {seed: value}}`` of a cell's finished histories that have the value."""
    found: dict[str, dict[int, Any]] = {}
    for history in histories:
        value = measure(history)
        if value is not None and not (trained_only and _stalled(history)):
            found.setdefault(history.experiment, {})[history.seed] = value
    return found


def _stalled(history: History) -> bool:
    """Whether the last epoch's training loss is at or above ln(classes), the loss of a uniform
    guess: the run did not learn its task, so a gap computed from it measures a failed
    optimization, not transfer. Read on training loss alone, never on validation accuracy."""
    classes = history.num_classes
    return bool(classes) and history.epochs[-1].train_loss >= math.log(classes)


def diverged(histories_dir: str | os.PathLike[str]) -> Results:
    """The kept runs that diverged (stopped at a non-finite loss or weight), per cell,
    experiment and seed: rule A chooses no rate at which one of them did."""
    found: Results = {}
    for name in CELLS:
        for _, history in _finished(Path(histories_dir) / name, "diverged"):
            found.setdefault(name, {}).setdefault(history.experiment, {})[history.seed] = 1.0
    return found


def diverged_lines(histories_dir: str | os.PathLike[str]) -> list[str]:
    """The kept runs that diverged, each with what became non-finite."""
    return [
        f"{name} {history.experiment} seed {history.seed} ({history.diverged})"
        for name in CELLS
        for _, history in _finished(Path(histories_dir) / name, "diverged")
    ]


def did_not_train(histories_dir: str | os.PathLike[str]) -> list[str]:
    """The finished runs that did not train (``_stalled``), each with its loss."""
    return [
        f"{name} {history.experiment} seed {history.seed} ({history.epochs[-1].train_loss:.3f} "
        f">= ln {history.num_classes} = {math.log(history.num_classes):.3f})"
        for name in CELLS
        for _, history in _finished(Path(histories_dir) / name)
        if _stalled(history)
    ]


def summary(values: Mapping[int, float] | None) -> seeds.Summary | None:
    return seeds.summarize([values[s] for s in sorted(values)]) if values else None


def difference(
    a: Mapping[int, float] | None, b: Mapping[int, float] | None
) -> seeds.Summary | None:
    """``a - b`` per seed, over the seeds both have, summarized; None when they share none."""
    common = sorted(set(a or ()) & set(b or ()))
    return seeds.summarize([a[s] - b[s] for s in common]) if common else None


# cell: experiment: seed: accuracy (or whatever else was ``measured``)
Results = dict[str, dict[str, dict[int, float]]]


def measured(
    histories: Mapping[str, Iterable[History]], measure: Measure, trained_only: bool = False
) -> Results:
    """``measure`` of every cell's finished runs (``finished``), per seed; with
    ``trained_only``, without the runs that did not train."""
    return {name: _by_run(found, measure, trained_only) for name, found in histories.items()}


def results(histories_dir: str | os.PathLike[str], *, trained_only: bool = False) -> Results:
    """Every cell's finished runs under ``HISTORIES_DIR/CELL``, as accuracies per seed; with
    ``trained_only``, without the runs that did not train."""
    return measured(finished(histories_dir), centre_crop, trained_only)


def arm(found: Results, name: str, experiment: str) -> tuple[dict[int, float] | None, str]:
    """A cell's values of one run, and the cell they come from: its own, or its base's
    where the cell does not train the run. A run the cell trains but has not finished is None,
    never the base's: a crop cell's full runs are not the baseline's at another crop."""
    owner = name if found[name].get(experiment) else source_cell(name, experiment)
    return found[owner].get(experiment), owner


@dataclasses.dataclass(frozen=True)
class Verdict:
    """PLAN.md's rule 1 for one cell: the retrain arms' mean over the targets, per seed, against
    the baseline's; chosen when the cell's mean beats the baseline's by more than the larger of
    the two standard deviations."""

    mean: float  # the cell's
    margin: float  # its mean - the baseline's
    threshold: float  # the larger standard deviation

    @property
    def chosen(self) -> bool:
        return self.margin > self.threshold

    def __str__(self) -> str:
        verdict = "chosen" if self.chosen else "not chosen"
        return f"{verdict} ({self.margin * 100:+.2f} vs ±{self.threshold * 100:.2f})"


def _retrainings(name: str) -> list[str]:
    """The retraining runs rule 1 weighs for cell ``name``: every one it trains (every target's,
    unless it retrains on some only), never just those that happen to have finished."""
    runs = cell(name).runs
    return [arms.RETRAIN.experiment(t) for t in TARGETS if arms.RETRAIN.experiment(t) in runs]


def _per_seed(runs: Mapping[str, dict[int, float]], names: Sequence[str]) -> list[float]:
    """The mean over the runs ``names`` per seed, on the seeds where every one of them finished."""
    shared = set.intersection(*(set(runs.get(n, {})) for n in names)) if names else set()
    return [sum(runs[n][s] for n in names) / len(names) for s in sorted(shared)]


def verdict(found: Results, name: str) -> Verdict | None:
    """Rule 1 for cell ``name`` (None until both it and the baseline have 2+ seeds on which
    every retraining the cell trains finished)."""
    names = _retrainings(name)
    mine, theirs = _per_seed(found[name], names), _per_seed(found[BASELINE], names)
    if len(mine) < 2 or len(theirs) < 2:
        return None
    a, b = seeds.summarize(mine), seeds.summarize(theirs)
    return Verdict(a.mean, a.mean - b.mean, max(a.std, b.std))


def lacking(found: Results, names: Iterable[str]) -> list[str]:
    """What rule 1 still needs to weigh these cells: each of them (and the baseline) with fewer
    than 2 seeds on which every retraining it is weighed on finished, and how many it has."""
    needs = {}
    for name in names:
        runs = _retrainings(name)
        for which in (name, BASELINE):
            count = len(_per_seed(found[which], runs))
            if count < 2:
                seeds_with = f"{count} seed{'' if count == 1 else 's'} with"
                needs[f"{which} has {seeds_with} {' and '.join(runs)} finished"] = None
    return list(needs)


# Rule A (PLAN.md, "Features or optimiser?"): each frozen run's step size, chosen on validation.
RULE_A_SEEDS = (0, 1, 2)  # A.3: the seeds the grid's rates are compared on
FROZEN_RUNS = tuple(a.experiment(target) for a in _FROZEN for target in TARGETS)


@dataclasses.dataclass(frozen=True)
class RateChoice:
    """Rule A for one frozen run (an arm on a target): the rate A.3 chose, its runs' mean
    centre-crop validation accuracy over ``RULE_A_SEEDS``, and how many of them met criterion C;
    A.4 gives that arm and target 60 epochs unless every one did."""

    rate: str
    mean: float
    met_c: int

    @property
    def needs_60_epochs(self) -> bool:
        return self.met_c < len(RULE_A_SEEDS)


def rule_a(
    found: Results, converged: Results, diverged_runs: Results | None = None
) -> dict[str, RateChoice | None]:
    """Rule A.3 and A.4 per frozen run (``FROZEN_RUNS``), from the grid's accuracies (``found``)
    and criterion C as the runs recorded it (``converged``): the rate with the highest mean over
    ``RULE_A_SEEDS``, an exact tie going to the smaller rate, among the rates at which none of
    those runs diverged (``diverged_runs``); None until every rate of the grid has every one of
    those seeds finished or diverged (``rule_a_lacking`` says which), or where every rate had a
    run diverge. A run that recorded no criterion counts as not having met it."""
    diverged_runs = diverged_runs or {}
    choice: dict[str, RateChoice | None] = {}
    for experiment in FROZEN_RUNS:
        if rule_a_lacking(found, experiment, diverged_runs):
            choice[experiment] = None
            continue
        means = [
            (sum(found[grid_cell(r)][experiment][s] for s in RULE_A_SEEDS) / len(RULE_A_SEEDS), r)
            for r in RULE_A_RATES
            if not diverged_runs.get(grid_cell(r), {}).get(experiment)
        ]
        if not means:
            choice[experiment] = None
            continue
        mean, rate = max(means, key=lambda m: (m[0], -float(m[1])))
        met = converged.get(grid_cell(rate), {}).get(experiment, {})
        choice[experiment] = RateChoice(rate, mean, sum(bool(met.get(s)) for s in RULE_A_SEEDS))
    return choice


def rule_a_from(histories_dir: str | os.PathLike[str]) -> dict[str, RateChoice | None]:
    """``rule_a`` from the histories kept under ``HISTORIES_DIR/CELL``."""
    found = finished(histories_dir)
    return rule_a(
        measured(found, centre_crop), measured(found, criterion_c), diverged(histories_dir)
    )


def check_rule_a(
    cells: Sequence[str],
    histories_dir: str | os.PathLike[str],
    only: Collection[str] | None = None,
) -> None:
    """Refuse, before any run, a run at rule A's recipe that rule A has not decided for, unless
    a cell of the grid runs before it in the same command (it may decide it by then). Only the
    runs the command trains are read (``only``: ``run_order``'s): an arm and target that rule
    A has decided for can run while the grid still lacks another's runs."""
    grid = {grid_cell(rate) for rate in RULE_A_RATES}
    choices = None
    for index, name in enumerate(cells):
        if not uses_rule_a(name) or grid & set(cells[:index]):
            continue
        choices = rule_a_from(histories_dir) if choices is None else choices
        for experiment in run_order(name, only):
            settings(name, experiment, choices)


def rule_a_lacking(
    found: Results, experiment: str, diverged_runs: Results | None = None
) -> list[str]:
    """The grid's runs rule A still needs to choose ``experiment``'s rate (neither finished nor
    diverged): ``lr R seeds S``."""
    lacking = []
    for rate in RULE_A_RATES:
        done = {
            **found.get(grid_cell(rate), {}).get(experiment, {}),
            **(diverged_runs or {}).get(grid_cell(rate), {}).get(experiment, {}),
        }
        missing = [str(s) for s in RULE_A_SEEDS if s not in done]
        if missing:
            lacking.append(f"lr {rate} seed{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return lacking


# PLAN.md's knobs, each with the cells that set it otherwise than the baseline.
KNOBS: dict[str, tuple[str, ...]] = {
    "keep_fc67": ("fresh-fc67",),
    "mean": ("target-mean",),
    "dropout": ("no-dropout",),
    "retraining epochs": ("retrain-30-epochs",),
    "source epochs": ("source-30-epochs",),
    "source classes": ("source-10-classes",),
    "source learning rate": ("source-lr-0.01",),
    "crop": ("crop-99", "crop-131"),
}


def is_knob(name: str) -> bool:
    """Whether a cell sets one of PLAN.md's knobs (rule 1 weighs it against the baseline)."""
    return any(name in names for names in KNOBS.values())


def undecided(found: Results, knob: str) -> list[str]:
    """The cells of a knob that rule 1 cannot weigh yet (``verdict`` None)."""
    return [name for name in KNOBS[knob] if verdict(found, name) is None]


def chosen(found: Results) -> dict[str, str | None]:
    """Rule 1 per knob whose cells it can all weigh: of those it chooses, the one with the
    highest retrain mean; None keeps the baseline's setting. A knob with a cell rule 1 cannot
    weigh yet is left out: that cell might be the one chosen."""
    choice = {}
    for knob, names in KNOBS.items():
        if undecided(found, knob):
            continue
        passing = [(v.mean, n) for n in names if (v := verdict(found, n)) and v.chosen]
        choice[knob] = max(passing)[1] if passing else None
    return choice


# PLAN.md's rule 3 (the new mini fits the 45-minute main job): the knobs none of whose settings
# can. A crop of 99 costs 2.0-2.4 times the baseline's seconds per source epoch (57-67 s against
# 28; the cell runs everything at that size) and 131 about (131/67)^2 = 3.8 times, while the
# first mini's seven runs took 29 minutes at 67: one seed at 99 would take about an hour.
TOO_SLOW_FOR_MINI = ("crop",)


def mini_cells(found: Results) -> list[str] | None:
    """The cells the new mini takes: rule 1's choice per knob, but for the knobs rule 3 excludes;
    None until rule 1 can weigh every other knob (``lacking`` says what it needs), since an
    undecided knob would otherwise keep the baseline's setting unweighed. Rule 2 then combines
    them (``combine``), if there are several."""
    choice = chosen(found)
    weighed = [knob for knob in KNOBS if knob not in TOO_SLOW_FOR_MINI]
    if any(knob not in choice for knob in weighed):
        return None
    return [choice[knob] for knob in weighed if choice[knob]]


def combine(names: Sequence[str]) -> Cell:
    """Rule 2's candidate: the baseline with every named cell's changes at once. A run takes the
    changes of each cell that trains it, in the order named (a crop cell trains every run, so
    its crop reaches every run of the combination); the runs no named cell trains stay the
    baseline's. ``source-10-classes`` retrains MNIST only: a combination with it that retrains
    CIFAR-10 would start from a source that saw the target's classes, and is refused."""
    specs = [cell(name) for name in names]
    runs: dict[str, list[str]] = {}
    for spec in specs:
        for experiment, overrides in spec.runs.items():
            runs.setdefault(experiment, []).extend(overrides)
    if "source-10-classes" in names and any(e.endswith("-cifar10") for e in runs):
        raise UserError(
            "source-10-classes cannot be combined with a cell that trains CIFAR-10 runs: its "
            "source saw CIFAR-10's classes 5-9, the target's"
        )
    knob = " + ".join(spec.knob for spec in specs)
    return Cell(knob, {experiment: tuple(overrides) for experiment, overrides in runs.items()})
