"""``paper-repro reproduce``: every run of a preset, then Table III and Figure 5 from their records.

The pipeline over a preset, on top of the trainer and the figures: the one module that imports
both, so that training never imports the figures (made without TensorFlow) nor they the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from paper_repro import experiments, figures
from paper_repro.runs import HISTORY_SUFFIX, RunPaths, run_directory, write_atomic
from paper_repro.train import train


def reproduce(
    preset: str,
    *,
    weights: str | None = None,
    data_dir: str | None = None,
    runs_dir: str | os.PathLike = "runs",
    out: str | os.PathLike = "figures",
    seed: int = 0,
    overrides: Iterable[str] = (),
    force: bool = False,
    cache_features: bool = False,
    download: bool = False,
    verbose: int = 1,
) -> list[Path]:
    """Every experiment of a preset in dependency order, then Table III and Figure 5.

    Finished runs are skipped and interrupted ones resumed, so rerunning after a crash costs only
    the unfinished work (``force`` trains every run again). ``overrides`` (``key=value``) apply to
    every run of the preset. With ``weights`` (e.g. an imported CaffeNet) pretraining is skipped
    and every retraining starts from them; the full runs still start from scratch. With
    ``cache_features`` the retrain runs train on cached features (runs of their own,
    ``retrain-*-cached``). The histories are copied to ``OUT/histories/PRESET`` next to the table
    and figure made from them, so the three can be committed together.
    """
    overrides = list(overrides)
    configs = {
        name: experiments.resolve(name, preset, overrides)
        for name in experiments.dependency_order(preset)
    }
    # The weights stand in for pretraining: only the retrain runs start from them; full runs
    # train from scratch, as in the paper.
    names = [name for name in configs if not (weights and configs[name].mode == "pretrain")]
    kept = Path(out) / "histories" / preset
    for number, name in enumerate(names, 1):
        if verbose:
            print(f"[{number}/{len(names)}] {name} ({preset})", flush=True)
        retrain = configs[name].mode == "retrain"
        cached = cache_features and retrain
        train(name, preset, weights=weights if retrain else None, data_dir=data_dir,
              runs_dir=runs_dir, seed=seed,
              overrides=[*overrides, *(["cache_features=true"] if cached else [])], force=force,
              download=download, verbose=verbose)  # fmt: skip
        run = run_directory(runs_dir, preset, name, seed, cached)
        write_atomic(kept / f"{run.name}{HISTORY_SUFFIX}", RunPaths(run).history.read_bytes())
    return [*figures.regenerate_tables(kept, out), *figures.regenerate_figures(kept, out)]
