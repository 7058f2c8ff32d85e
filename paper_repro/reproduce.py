"""``paper-repro reproduce``: every run of a preset, then Table III and Figure 5 from their records.

The pipeline over a preset, on top of the trainer and the figures: the one module that imports
both, so that training never imports the figures (made without TensorFlow) nor they the trainer.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

from paper_repro import arms, datasets, experiments, reports, seeds, study
from paper_repro.errors import UserError
from paper_repro.experiments import RunConfig
from paper_repro.history import load_history
from paper_repro.runs import HISTORY_SUFFIX, RunPaths, run_directory, write_atomic
from paper_repro.seeds import check_seeds
from paper_repro.study_figure import regenerate_study
from paper_repro.training import TrainingDiverged, settings_changed, train


def reproduce(
    preset: str,
    *,
    weights: str | None = None,
    data_dir: str | None = None,
    runs_dir: str | os.PathLike = "runs",
    out: str | os.PathLike = "figures",
    seeds: Sequence[int] = (0,),
    overrides: Iterable[str] = (),
    force: bool = False,
    cache_features: bool = False,
    download: bool = False,
    verbose: int = 1,
) -> list[Path]:
    """Every experiment of a preset in dependency order, for every seed, then Table III and
    Figure 5.

    Finished runs are skipped and interrupted ones resumed, so rerunning after a crash costs only
    the unfinished work (``force`` trains every run again). ``overrides`` (``key=value``) apply to
    every run of the preset. With ``weights`` (e.g. an imported CaffeNet) pretraining is skipped
    and every retraining on pretrained features starts from them; the full runs and the
    random-features controls still start from scratch, and the oracles from their full runs.
    With ``cache_features`` (or where the preset says so, as mini does) the retrain runs train on
    cached features (runs of their own, ``retrain-*-cached``). Each transfer experiment runs once
    per seed (``EXPERIMENT-seedN`` for N > 0), and the pretraining once per source that those
    seeds retrain from (``experiments.source_seed``: seed 0's for every seed in the paper preset,
    each seed's own in mini). The histories are copied to ``OUT/histories/PRESET`` under their
    run directory's name (seed kept) next to the table and figure made from them, so the three
    can be committed together.
    """
    seeds = check_seeds(seeds)
    overrides = list(overrides)
    configs = {
        name: experiments.resolve(name, preset, overrides)
        for name in experiments.dependency_order(preset)
    }
    runs = _plan(preset, configs, seeds, skip_pretraining=bool(weights))
    kept = _kept(out, preset)
    for number, (name, seed) in enumerate(runs, 1):
        if verbose:
            print(f"[{number}/{len(runs)}] {name} ({preset}, seed {seed})", flush=True)
        config = configs[name]
        _train_and_keep(
            name, preset, seed, kept, overrides,
            weights=weights if experiments.pretrains(preset, config.pretrained) else None,
            cached=config.mode == "retrain" and (cache_features or config.cache_features),
            runs_dir=runs_dir, data_dir=data_dir, force=force, download=download, verbose=verbose,
        )  # fmt: skip
    return [*reports.regenerate_tables(kept, out), *reports.regenerate_figures(kept, out)]


def _kept(out: str | os.PathLike, preset: str) -> Path:
    """Where ``reproduce`` keeps a preset's histories, beside the tables made from them."""
    return Path(out) / "histories" / preset


def summary(paths: Sequence[Path], out: str | os.PathLike, preset: str) -> list[str]:
    """``reproduce``'s last lines: Table III's transfer rows as its CSV holds them (the numbers a
    user ran it for, without opening a file), then the files written and the histories behind
    them. Read back from what the tables wrote, so the lines can never differ from them."""
    table = next((path for path in paths if path.name == "table3.csv"), None)
    rows = list(_table3_lines(table)) if table else []
    heading = [f"Table III, multi-crop test top-1 (%), {table.with_suffix('.md')}:"] if rows else []
    return [*heading, *rows, *_written(paths, _kept(out, preset))]


def _table3_lines(table: Path) -> Iterator[str]:
    """A line per dataset and preset with a result: each arm's value (a dash for one not
    finished; a control never run is left out, as the table leaves its column out), then the
    paper's."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    with table.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            if row["section"] == "transfer":
                cells.setdefault((row["dataset"], row["preset"]), {})[row["column"]] = row["value"]
    for (dataset, preset), values in cells.items():
        shown = [(arm.name, values[arm.column]) for arm in arms.ARMS if arm.column in values]
        if not any(value for _, value in shown):
            continue
        found = ", ".join(f"{name} {value or '—'}" for name, value in shown)
        paper = datasets.paper_row(dataset)
        said = f"; the paper: full {paper.full:.2f}, retrain {paper.retrain:.2f}" if paper else ""
        yield f"  {datasets.display(dataset)} ({preset}): {found}{said}"


def _written(paths: Sequence[Path], kept: Path) -> list[str]:
    """A line per folder written to, naming its files, then where the histories are kept."""
    folders: dict[Path, list[str]] = {}
    for path in paths:
        folders.setdefault(path.parent, []).append(path.name)
    lines = [f"wrote {folder}/: {', '.join(names)}" for folder, names in folders.items()]
    return [*lines, f"the histories they were made from: {kept}/"]


def _plan(
    preset: str, configs: dict[str, RunConfig], seeds: Sequence[int], skip_pretraining: bool
) -> list[tuple[str, int]]:
    """``(experiment, seed)`` in the order to train them: seed by seed, each seed's source
    (``experiments.source_seed``) before its first retraining unless an earlier seed trained it,
    so that an interrupted reproduce leaves whole seeds behind. With ``skip_pretraining`` (the
    weights stand in for it) no source is trained: only the retrain runs on pretrained features
    start from the weights; full runs and the random-features controls train from scratch. A run
    comes after the one it starts from (``experiments.dependency_order``: the oracle after its
    seed's full run)."""
    runs: list[tuple[str, int]] = []
    for seed in seeds:
        for name, config in configs.items():
            if config.mode != "pretrain":
                runs.append((name, seed))
                continue
            source = (name, experiments.source_seed(preset, seed, name))
            if not skip_pretraining and source not in runs:
                runs.append(source)
    return runs


def reproduce_study(
    cells: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    overrides: Iterable[str] = (),
    data_dir: str | None = None,
    runs_dir: str | os.PathLike = "runs/study",
    out: str | os.PathLike = "figures/study",
    force: bool = False,
    download: bool = False,
    verbose: int = 1,
    only: Collection[str] | None = None,
) -> list[Path]:
    """The transfer study's cells (``study.CELLS``), each for every seed, then its table and
    figure (``study_figure.regenerate_study``).

    Runs go to ``RUNS_DIR/CELL`` and their feature caches to ``RUNS_DIR/feature-cache``, shared
    by the cells (a cache is keyed by what it holds: the grid's rates retrain on the same features),
    histories are kept under ``OUT/histories/CELL``, and
    ``OUT/table.md`` (and ``OUT/gap.png``) are regenerated from every cell's kept histories. A
    seed's runs all finish before the next seed starts, so an interrupted study leaves whole
    seeds behind; rerunning resumes it. ``overrides`` apply to every run after the
    cell's own (for trying the pipeline at a tiny size; such runs do not belong in the table).
    ``only`` keeps the cells' runs of those experiments (``study.check_only``): the models
    runs start from are not kept between machines, so a session can train the runs that need
    one kind of them, e.g. every rate's oracles of a seed beside the full runs they read.
    """
    seeds, extra = check_seeds(seeds), list(overrides)
    kept_root = Path(out) / study.HISTORIES
    study.check_only(cells, only)
    study.check_rule_a(cells, kept_root, only)
    for name in cells:
        _check_sources(name, cells, seeds, runs_dir, only)
    for name in cells:
        # Read when the cell starts: the grid's cells may have run before it in this command.
        choices = study.rule_a_from(kept_root) if study.uses_rule_a(name) else None
        order = study.run_order(name, only)
        runs = [(experiment, seed) for seed in seeds for experiment in order]
        for number, (experiment, seed) in enumerate(runs, 1):
            if verbose:
                print(f"[{name} {number}/{len(runs)}] {experiment} (seed {seed})", flush=True)
            overrides = [*study.settings(name, experiment, choices), *extra]
            config = experiments.resolve(experiment, study.PRESET, overrides)
            kept, cell_runs = kept_root / name, Path(runs_dir) / name
            if not force and _kept_and_finished(kept, name, cell_runs, experiment, config, seed):
                if verbose:
                    status = load_history(_kept_path(kept, experiment, config, seed)).status
                    print(f"{kept}: {experiment} (seed {seed}) already {status}", flush=True)
                continue
            same = None if force else _same_run_kept(kept_root, name, experiment, config, seed)
            if same is not None:
                write_atomic(kept / same.name, same.read_bytes())
                if verbose:
                    print(
                        f"{kept}: {experiment} (seed {seed}) is the run kept in {same.parent} "
                        "(same settings, seed and start): its history kept here too",
                        flush=True,
                    )
                continue
            source = config.pretrained and _study_source(runs_dir, name, config.pretrained, seed)
            _train_and_keep(
                experiment, study.PRESET, seed, kept, overrides,
                weights=str(source) if source else None,
                cached=config.mode == "retrain", runs_dir=cell_runs, cache_root=runs_dir,
                keep_diverged=True, data_dir=data_dir, force=force, download=download,
                verbose=verbose,
            )  # fmt: skip
    return regenerate_study(out)


def _kept_and_finished(
    kept: Path, cell: str, runs_dir: Path, experiment: str, config: RunConfig, seed: int
) -> bool:
    """Whether the study already keeps this run's finished history, with the same settings.

    Run directories are not committed, so on another machine a finished study run is known
    only by its kept history: it is not trained again. A run that another starts from (a source,
    the full runs an oracle reads: ``study.is_source``) is, when its model file is missing (same
    seed, same bits: its history comes out the same but for the wall times).
    """
    run = run_directory(runs_dir, study.PRESET, experiment, seed, config.mode == "retrain")
    needed = study.is_source(cell, experiment) and not RunPaths(run).model.is_file()
    return not needed and _finished_as(_kept_path(kept, experiment, config, seed), config, seed)


def _kept_path(kept: Path, experiment: str, config: RunConfig, seed: int) -> Path:
    """Where the study keeps a run's history: under its run directory's name."""
    run = run_directory(Path(), study.PRESET, experiment, seed, config.mode == "retrain")
    return kept / f"{run.name}{HISTORY_SUFFIX}"


def _finished_as(history: Path, config: RunConfig, seed: int) -> bool:
    """Whether ``history`` is a finished (or diverged: runs are deterministic, so it would
    diverge again) run's with these settings and seed."""
    if not history.is_file():
        return False
    previous = load_history(history)
    settings = dataclasses.replace(config, cache_features=config.mode == "retrain")
    done = previous.status in ("finished", "diverged")
    return done and settings_changed(previous, settings, seed) is None


def _same_run_kept(
    kept_root: Path, cell: str, experiment: str, config: RunConfig, seed: int
) -> Path | None:
    """The kept history of this very run in another cell, if any: the same experiment, settings
    and seed, starting from the same cell's model (its source, or the full run its oracle reads),
    so the same bits (runs are deterministic). ``frozen-chosen``'s seeds 0-2 are the grid's runs
    at the chosen rate: kept, not trained twice. A run other runs start from is trained, since
    its model is needed, and so is one with no such twin."""
    if study.is_source(cell, experiment):
        return None
    start = config.pretrained and study.source_cell(cell, config.pretrained)
    for other in study.CELLS:
        if other == cell or experiment not in study.cell(other).runs:
            continue
        if config.pretrained and study.source_cell(other, config.pretrained) != start:
            continue
        history = _kept_path(kept_root / other, experiment, config, seed)
        if _finished_as(history, config, seed):
            return history
    return None


def _study_source(runs_dir: str | os.PathLike, cell: str, source: str, seed: int) -> Path:
    """The model of the experiment ``source`` that a study cell's run with ``seed`` starts from
    (the pretraining, or the oracle's full run), in the cell that trains it
    (``study.source_cell``)."""
    owner = study.source_cell(cell, source)
    return RunPaths(run_directory(Path(runs_dir) / owner, study.PRESET, source, seed)).model


def _check_sources(
    cell: str,
    cells: Sequence[str],
    seeds: Sequence[int],
    runs_dir,
    only: Collection[str] | None = None,
) -> None:
    """A cell whose runs start from its base's runs (its sources, the full runs its oracles
    read) needs them trained, or that cell named before it with those runs among ``only``:
    refused before any run starts, not after hours of others."""
    for source in study.sources_read(cell, only):
        owner = study.source_cell(cell, source)
        trained_here = owner == cell or owner in cells[: list(cells).index(cell)]
        if trained_here and (only is None or source in only):
            continue
        missing = [s for s in seeds if not _study_source(runs_dir, cell, source, s).is_file()]
        if missing:
            what = "sources" if source == study.SOURCE else f"{source} runs"
            fix = (
                f"add {source} to `paper-repro study --only`" if trained_here else
                f"run `paper-repro study {owner} --seeds {','.join(map(str, missing))}` first "
                f"(or name {owner} before {cell})"
            )  # fmt: skip
            raise UserError(
                f"study cell {cell} retrains from the {owner} cell's {what}, not trained for "
                f"seeds {','.join(map(str, missing))} in {runs_dir}: {fix}"
            )


def _train_and_keep(
    experiment: str,
    preset: str,
    seed: int,
    kept: Path,
    overrides: Sequence[str],
    *,
    weights: str | None,
    cached: bool,
    runs_dir: str | os.PathLike,
    keep_diverged: bool = False,
    **options,
) -> None:
    """Train one run (or skip it, finished; or resume it) and keep a copy of its history in
    ``kept`` under its run directory's name; with ``keep_diverged``, also that of a run that
    diverged, which is then said and not raised (a grid's rate may be too high for an arm: a
    result, not a reason to stop the study)."""
    cache = ["cache_features=true"] if cached else []
    try:
        train(experiment, preset, weights=weights, runs_dir=runs_dir, seed=seed,
              overrides=[*overrides, *cache], **options)  # fmt: skip
    except TrainingDiverged as error:
        if not keep_diverged:
            raise
        print(f"{experiment} (seed {seed}) diverged, its history kept: {error}", flush=True)
    run = run_directory(runs_dir, preset, experiment, seed, cached)
    target = kept / f"{run.name}{HISTORY_SUFFIX}"
    _check_replaceable(target, RunPaths(run).history)
    write_atomic(target, RunPaths(run).history.read_bytes())


def _check_replaceable(kept: Path, trained: Path) -> None:
    """A kept history is replaced only by the same run's (settings equal, wall times aside): a
    run with other settings would overwrite the one the tables were made from, unseen."""
    if not kept.is_file():
        return
    changed = seeds.differences(load_history(kept), load_history(trained))
    if changed:
        raise UserError(
            f"{kept} keeps a run with other settings ({', '.join(changed)}) than {trained}; "
            "both are kept: pass another --out for this run, or move the kept history away"
        )
