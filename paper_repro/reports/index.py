"""The histories behind every table and figure, loaded and grouped once.

A history is one run; the reports compare variants: an arm (``paper_repro.arms``) on a dataset in
a preset, with ``-cached`` where the classifier trained on cached features. The index groups the
histories by (preset, dataset, variant), one run per seed, refusing what would make a table
ambiguous (two presets mixed unasked, runs of one variant with different settings, two runs of
one seed: ``seeds.check_alike``). What a group of runs says about itself beyond its numbers (its
sources, where its seconds were measured, its mean curve) is here too, since every report names
them the same way; so is ``paper-repro list``'s line per run, which names a damaged history
instead of refusing it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from paper_repro import arms, seeds
from paper_repro.errors import UserError
from paper_repro.history import History, HistoryError, load_history
from paper_repro.runs import HISTORY_NAME, find_histories

PRETRAIN = "pretrain"  # the variant of a pretraining run, which belongs to no arm
NO_HISTORIES_HINT = (
    "`paper-repro reproduce --preset mini` (or `paper-repro train EXPERIMENT`) writes them"
)
ONE_SETTING_HINT = (
    "keep one setting's runs under --histories (move the others to a folder of their own), or"
    " reproduce each setting into its own --out"
)

# A variant's runs, one per seed in seed order, each as (path relative to the histories
# directory, history); the index maps (preset, dataset, variant) to them.
Run = seeds.Run
Runs = tuple[Run, ...]
Index = dict[tuple[str, str, str], Runs]


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


def run_lines(paths: Iterable[Path]) -> Iterator[str]:
    """``paper-repro list``'s line per run: its directory, status, epochs and final top-1, then
    the dataset and preset it ran (a directory's name need not say: ``--set dataset=...`` and
    ``--runs-dir`` change them), or what is wrong with its history. A damaged history is named
    in its place and the others are still listed, where stopping at the first would list none (a
    table refuses it instead: a table without one of its runs would be wrong). A run is named
    by its directory, a kept history (``RUN.history.json``) by its file, as several share one
    folder."""
    for path in paths:
        run = path.parent if path.name == HISTORY_NAME else path
        try:
            history = load_history(path)
        except HistoryError as error:
            yield f"  {run}: not listed, its history cannot be read: {error}"
            continue
        final = f", top-1 {history.final.top1:.2%}" if history.final else ""
        yield (
            f"  {run}: {history.status}, {len(history.epochs)} epochs{final}; "
            f"{history.dataset}, preset {history.preset}"
        )


def group(histories: Mapping[str, History], allow_mixed_presets: bool) -> Index:
    """One run per (preset, dataset, variant, seed), refusing what would make a table ambiguous.

    Runs of one variant with different settings are refused rather than shown as rows of their
    own: a row is a preset and dataset beside the paper's numbers, and which of two settings is
    "the" reproduction is the user's choice, made by keeping one setting's runs in the folder.
    """
    if not histories:
        raise UserError(f"no run histories given; {NO_HISTORIES_HINT}")
    found = presets_of(histories)
    if len(found) > 1 and not allow_mixed_presets:
        examples = ", ".join(
            f"{preset} ({min(s for s, h in histories.items() if h.preset == preset)})"
            for preset in found
        )
        raise UserError(
            f"histories of different presets would be mixed in one table or figure: {examples};"
            " point --histories at one preset's runs or pass --allow-mixed-presets"
        )
    grouped: dict[tuple[str, str, str], list[Run]] = {}
    for source, history in sorted(histories.items()):
        key = (history.preset, history.dataset, variant(history))
        grouped.setdefault(key, []).append((source, history))
    for runs in grouped.values():
        seeds.check_alike(runs, ONE_SETTING_HINT)
    return {key: tuple(sorted(runs, key=lambda r: r[1].seed)) for key, runs in grouped.items()}


def variant(history: History) -> str:
    """The run's arm, ``-cached`` where its classifier trained on cached features; a
    pretraining run's is ``PRETRAIN``."""
    arm = arms.of_run(history.mode, history.start)
    return PRETRAIN if arm is None else arms.variant(arm, cached=bool(history.cache))


def arms_run(index: Index) -> frozenset[arms.Arm]:
    """The arms with any run among the histories: the tables show a control's column only then."""
    variants = {key[2] for key in index}
    return frozenset(
        arm for arm in arms.ARMS if {arms.variant(arm, False), arms.variant(arm, True)} & variants
    )


def shown(index: Index, preset: str, dataset: str, arm: arms.Arm) -> Runs | None:
    """An arm's runs as the tables show them: on the images, else on cached features (mini
    retrains and runs its control on cached features only)."""
    return index.get((preset, dataset, arms.variant(arm, False))) or index.get(
        (preset, dataset, arms.variant(arm, True))
    )


def cached_only(index: Index) -> bool:
    """Whether some dataset's retraining ran on cached features only (Table III shows those)."""
    retrain, cached = arms.variant(arms.RETRAIN, False), arms.variant(arms.RETRAIN, True)
    return any(v == cached and (p, d, retrain) not in index for p, d, v in index)


def presets_of(histories: Mapping[str, History]) -> list[str]:
    return sorted({history.preset for history in histories.values()})


def sources(*groups: Runs | None) -> tuple[str, ...]:
    """The histories of these runs, in order: what a row or a line was made from."""
    return tuple(source for runs in groups if runs for source, _ in runs)


def accuracy_curve(runs: Runs) -> seeds.Curve:
    """Center-crop test accuracy per epoch across a variant's seeds."""
    return seeds.mean_curve([[e.test_accuracy for e in h.epochs] for _, h in runs])


def timed_at(history: History) -> str:
    """Where a run's seconds were measured: the code's commit, the device and the host."""
    recorded = history.provenance
    commit = recorded.git_commit or "unknown"
    short = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
    return f"commit {short}, {recorded.device}, host {recorded.host}"


def places(*groups: Runs | None) -> list[str]:
    """The distinct places (``timed_at``) where these runs were timed, in order."""
    return sorted({timed_at(h) for runs in groups if runs for _, h in runs})


def mixed_note(*groups: Runs | None) -> str:
    """The note of a value that combines seconds from several places; empty when one."""
    found = places(*groups)
    if len(found) < 2:
        return ""
    return "combines seconds from different machines or code versions: " + "; ".join(found)
