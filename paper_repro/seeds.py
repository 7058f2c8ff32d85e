"""Aggregation across seeds: what Table III, the time-to-accuracy table and Figure 5 show when an
experiment was run with several seeds (``reproduce --seeds 0,1,2``).

A value measured once per seed is shown as its mean ± the sample standard deviation (ddof=1: the
seeds are a sample of the runs one could make), with its minimum, maximum and count kept for the
CSV; a value measured once is shown as itself, so that one seed's tables are the tables of
before. A curve (Figure 5) is the per-epoch mean over the seeds with a min-max band, over the
epochs every seed has reached. A margin between two arms, read per seed (the transfer study), is
shown with its 95 % Student-t interval. Nothing here imports TensorFlow, nor matplotlib, nor
SciPy: the reports (``paper_repro.reports``) draw what this module computes.

Only seeds of one experiment are summarized together (``check_alike``): runs that differ in a
setting, or one run counted twice, are refused by name before any mean is taken.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from paper_repro import experiments
from paper_repro.errors import UserError
from paper_repro.history import History

# Settings that say where and how a run's computation ran, not what it computed: the Caffe
# augmentation of the same per-example keys on the host or inside the step, the same step with or
# without XLA. Runs that differ only in them (or in their wall times, machines and paths, which are
# no settings) are seeds of one experiment; every other setting changes the numbers.
PLACEMENT = ("augment_on", "jit_compile")
# A run as the reports name it: (its path relative to the histories directory, its history).
Run = tuple[str, History]


@dataclass(frozen=True)
class Summary:
    """One value across seeds: its mean, sample standard deviation (None for one value), range
    and count."""

    mean: float
    std: float | None
    low: float
    high: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation (ddof=1), min and max of one value per seed."""
    if not values:
        raise ValueError("summarize needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Summary(statistics.fmean(values), std, min(values), max(values), len(values))


def text(summary: Summary, number: Callable[[float], str]) -> str:
    """``mean ± std (n=N)`` with ``number`` formatting both, or the one value alone."""
    if summary.std is None:
        return number(summary.mean)
    return f"{number(summary.mean)} ± {number(summary.std)} (n={summary.n})"


def spread(summary: Summary, number: Callable[[float], str]) -> tuple[str, str, str]:
    """(count, min, max) as text, the CSV's columns for a value measured per seed."""
    return str(summary.n), number(summary.low), number(summary.high)


# Student's t distribution's 97.5th percentile (the two-sided 95 % interval's) for 1 .. 30 degrees
# of freedom, as the standard tables give it to 4 decimals (SciPy's t.ppf(0.975, df), rounded).
# Beyond 30 the value at 30 is used: 2.0423 against 1.9600 for infinitely many, an interval
# slightly wider than exact, never narrower.
T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_quantile(degrees_of_freedom: int) -> float:
    """Student's t 97.5th percentile for ``degrees_of_freedom`` >= 1 (``T_975``)."""
    if degrees_of_freedom < 1:
        raise ValueError(
            f"a t quantile needs at least 1 degree of freedom, got {degrees_of_freedom}"
        )
    return T_975[min(degrees_of_freedom, len(T_975)) - 1]


def half_width(summary: Summary) -> float | None:
    """The half-width of the 95 % Student-t interval of the mean of the values ``summary``
    summarizes (n - 1 degrees of freedom: the seeds are a sample); None for one value."""
    if summary.std is None:
        return None
    return t_quantile(summary.n - 1) * summary.std / math.sqrt(summary.n)


def interval_text(summary: Summary, number: Callable[[float], str]) -> str:
    """``mean ± half-width (n=N)`` of the 95 % t-interval, or ``mean (n=1)`` for one value."""
    half = half_width(summary)
    spread = "" if half is None else f" ± {number(half)}"
    return f"{number(summary.mean)}{spread} (n={summary.n})"


def range_text(summary: Summary, number: Callable[[float], str]) -> str:
    """``value`` when every seed gives the same, else ``min-max`` (epochs, for instance)."""
    low, high = number(summary.low), number(summary.high)
    return low if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class Curve:
    """A per-epoch value across seeds: the mean and the min-max band at each epoch."""

    epochs: tuple[int, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    n: int


def mean_curve(curves: Sequence[Sequence[float]]) -> Curve:
    """The per-epoch mean, min and max of one curve per seed (epoch 1 first), over the epochs
    every seed has reached: a seed still running does not pull the later epochs' mean."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    length = min(len(curve) for curve in curves)
    columns = [summarize([curve[i] for curve in curves]) for i in range(length)]
    return Curve(
        epochs=tuple(range(1, length + 1)),
        mean=tuple(c.mean for c in columns),
        low=tuple(c.low for c in columns),
        high=tuple(c.high for c in columns),
        n=len(curves),
    )


def found(histories: Iterable[History]) -> list[int]:
    """The seeds of the transfer runs (the pretraining's are among them, or it ran once, with
    seed 0, for all of them)."""
    return sorted({h.seed for h in histories if h.mode != "pretrain"} or {0})


def caption(histories: Iterable[History]) -> str:
    """A table caption's sentence naming the seeds, when there are several; empty for one."""
    seeds = found(histories)
    if len(seeds) < 2:
        return ""
    return (
        f" Seeds: {', '.join(map(str, seeds))}. A value over several seeds is their mean ± sample"
        " standard deviation (n = its number of runs); the CSV adds each value's count, minimum"
        " and maximum. Derived columns (epochs to match, ratios, targets) use the means."
    )


def title(histories: Iterable[History]) -> str:
    """Figure 5's title line for several seeds; empty for one."""
    seeds = found(histories)
    return f"\nmean over seeds {', '.join(map(str, seeds))}, band min-max" if len(seeds) > 1 else ""


def settings(history: History) -> dict[str, Any]:
    """What a run's numbers depend on besides its seed: its experiment and its recorded settings
    (those added since it was written at their defaults, which it had), ``PLACEMENT`` aside."""
    recorded = experiments.recorded_settings(history.config, history.dataset, history.mode)
    kept = {key: value for key, value in recorded.items() if key not in PLACEMENT}
    return {"experiment": history.experiment, **kept}


def differences(one: History, other: History) -> list[str]:
    """``setting one's vs other's`` for each setting (``settings``) in which two runs differ."""
    a, b = settings(one), settings(other)
    return [
        f"{key} {json.dumps(a.get(key))} vs {json.dumps(b.get(key))}"
        for key in dict.fromkeys([*a, *b])
        if a.get(key) != b.get(key)
    ]


def check_alike(runs: Sequence[Run], fix: str) -> None:
    """Refuse runs that a mean over seeds would wrongly combine, naming two of them: runs that
    differ in a setting (their mean would compare nothing: a table keeps one setting per row),
    and one seed twice, which the mean would count twice however alike the two are (a copy, or
    a run repeated elsewhere). ``fix`` says how to keep one setting's runs only."""
    ordered = sorted(runs, key=lambda run: (run[1].seed, run[0]))  # the lowest seed first
    (first, reference), seen = ordered[0], {}
    for source, history in ordered:
        changed = differences(reference, history)
        if changed:
            raise UserError(
                f"{first} and {source} are runs of {reference.experiment} with different"
                f" settings ({', '.join(changed)}), which a mean over seeds would mix; {fix}"
            )
        if history.seed in seen:
            raise UserError(
                f"{seen[history.seed]} and {source} are both seed {history.seed} of"
                f" {history.experiment} with the same settings: one run twice, which a mean over"
                " seeds would count twice; keep one of the two files"
            )
        seen[history.seed] = source


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """A study's or reproduction's seeds: at least one, each valid (``experiments.check_seed``)
    and named once (a seed twice would train one run twice and count it twice in a mean)."""
    if not seeds:
        raise UserError("no seed given: pass --seeds as a comma list such as 0,1,2")
    for seed in seeds:
        experiments.check_seed(seed)
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise UserError(f"--seeds {','.join(map(str, seeds))} repeats {repeated}: name each once")
    return list(seeds)
