"""The oracle (figures/study/PLAN.md's positive control): its experiments in every preset, the
network it starts from, its order and weights in reproduce and the study, and its place in the
tables, the figure and the study's table."""

import csv
import dataclasses
import math
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from paper_repro import arms, cli, convergence, experiments, seeds, study, study_table
from paper_repro import reproduce as reproduce_module
from paper_repro.errors import UserError
from paper_repro.history import load_history, save_history
from paper_repro.reports import build_figure5, load_histories, write_table3, write_time_to_accuracy
from paper_repro.reports.figure5 import STYLES
from paper_repro.runs import MODEL_NAME, pretrained_model, run_directory
from paper_repro.training import TrainingDiverged

FIXTURES = Path(__file__).parent / "fixtures" / "histories"
ORACLE_COLUMN = "Retraining, oracle features (positive control)"


def test_every_preset_has_an_oracle_per_target_on_retrainings_recipe():
    """The oracle differs from retraining in its block alone, but for the mini's step size,
    where rule F gives each frozen arm its own (tests/test_study.py holds it)."""
    for preset, runs in experiments.PRESETS.items():
        targets = [
            c.dataset for c in runs.values() if (c.mode, c.features) == ("retrain", "pretrained")
        ]
        assert targets, preset
        for target in targets:
            oracle = runs[f"retrain-oracle-{target}"]
            assert (oracle.features, oracle.pretrained, oracle.keep_fc67) == (
                "oracle", f"full-{target}", False,
            )  # fmt: skip
            retrain = runs[f"retrain-{target}"]
            same = dataclasses.replace(
                oracle, features="pretrained", pretrained=retrain.pretrained, keep_fc67=True,
                base_lr=retrain.base_lr,
            )  # fmt: skip
            assert same == retrain, f"{preset}: the oracle differs from retraining beyond its block"
            assert preset == "mini" or oracle.base_lr == retrain.base_lr, preset
    assert experiments.MINI["retrain-oracle-mnist"].dropout == 0.0  # the mini's retraining's
    assert experiments.MINI["retrain-oracle-mnist"].cache_features


def test_the_oracle_comes_after_the_full_run_it_reads_and_takes_no_weights():
    for preset in experiments.PRESETS:
        order = experiments.dependency_order(preset)
        for name in order:
            arm, target = arms.split_experiment(name) or (None, "")
            if arm is arms.ORACLE:
                assert order.index(arms.FULL.experiment(target)) < order.index(name)
                assert not experiments.pretrains(
                    preset, experiments.resolve(name, preset).pretrained
                )
    # Its full run is per seed in every preset, also where the seeds share one pretraining.
    assert experiments.source_seed("paper", 2, "full-mnist") == 2
    assert experiments.source_seed("paper", 2, "pretrain-imagenet") == 0
    assert experiments.source_seed("mini", 2, "pretrain-imagenet") == 2
    with pytest.raises(UserError, match="features=oracle freezes the features of a full training"):
        experiments.resolve("full-mnist", "smoke", ["features=oracle"])
    with pytest.raises(UserError, match="target_mean replaces a pretrained network's mean"):
        experiments.resolve("retrain-oracle-mnist", "smoke", ["target_mean=true"])


def _record_training(monkeypatch) -> list[tuple[str, int, str | None]]:
    """``reproduce``'s trainings, recorded as (experiment, seed, weights) instead of run."""
    trained = []
    monkeypatch.setattr(
        reproduce_module, "_train_and_keep",
        lambda experiment, preset, seed, kept, overrides, **options: trained.append(
            (experiment, seed, options["weights"])
        ),
    )  # fmt: skip
    return trained


def test_reproduce_trains_the_oracle_after_its_seeds_full_run_and_without_the_weights(
    tmp_path, monkeypatch
):
    trained = _record_training(monkeypatch)
    monkeypatch.setattr(reproduce_module.reports, "regenerate_tables", lambda *a, **k: [])
    monkeypatch.setattr(reproduce_module.reports, "regenerate_figures", lambda *a, **k: [])
    reproduce_module.reproduce("smoke", weights="caffenet.keras", seeds=(0, 1), out=tmp_path)
    assert trained == [
        (name, seed, "caffenet.keras" if name == "retrain-mnist" else None)
        for seed in (0, 1)
        for name in ("full-mnist", "retrain-random-mnist", "retrain-mnist", "retrain-oracle-mnist")
    ]


def test_the_oracle_reads_its_seeds_full_run_or_names_the_command_that_makes_it(tmp_path):
    oracle = experiments.resolve("retrain-oracle-mnist", "paper")
    with pytest.raises(UserError) as refused:
        pretrained_model(oracle, None, tmp_path, "paper", 2)
    message = str(refused.value)
    assert "run `paper-repro train full-mnist --preset paper --seed 2` first" in message
    assert "full-mnist-seed2" in message and "\n" not in message
    model = run_directory(tmp_path, "paper", "full-mnist", 2) / MODEL_NAME
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    assert pretrained_model(oracle, None, tmp_path, "paper", 2) == model
    given = tmp_path / "given.keras"
    given.write_bytes(b"")
    assert pretrained_model(oracle, str(given), tmp_path, "paper", 2) == given


def test_training_an_oracle_without_its_full_run_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "retrain-oracle-mnist", "--preset", "smoke", "--runs-dir",
                     str(tmp_path), "--seed", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "`paper-repro train full-mnist --preset smoke --seed 1` first" in err


def test_list_shows_the_oracle_in_every_preset(tmp_path, capsys):
    assert cli.main(["list", "--runs-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert listed.count("retrain-oracle-mnist ") == len(experiments.PRESETS)
    assert "retrain-oracle-cifar100 cifar100" in listed


def test_the_oracles_network_is_the_full_runs_block_and_mean_under_the_controls_classifier():
    """Built from a stand-in full network: conv1 .. pool5 and the mean are the full network's
    bit for bit, fc6 .. fc8 those the filler draws with the run's seed (the control's), the
    features frozen; the history says it started from oracle features."""
    from paper_repro.model import CLASSIFIER, FEATURES, PREPROCESS, build_alexnet
    from paper_repro.training import network

    config = experiments.resolve("retrain-oracle-mnist", "smoke")
    full = build_alexnet(10, 67, mean=(11.0, 22.0, 33.0), init="xavier", seed=7)
    splits = types.SimpleNamespace(num_classes=10, channel_mean=(1.0, 2.0, 3.0))
    oracle = network.initial_model(config, splits, full, seed=3)
    control = build_alexnet(10, 67, init="xavier", seed=3)
    for block, expected in ((FEATURES, full), (CLASSIFIER, control)):
        pairs = zip(expected.get_layer(block).get_weights(), oracle.get_layer(block).get_weights(),
                    strict=True)  # fmt: skip
        for want, got in pairs:
            np.testing.assert_array_equal(want, got)
    assert oracle.get_layer(PREPROCESS).mean == [11.0, 22.0, 33.0]
    assert not oracle.get_layer(FEATURES).trainable
    assert network.start(config, Path("full.keras")) == "oracle-features"
    control_config = experiments.resolve("retrain-random-mnist", "smoke")
    assert network.start(control_config, None) == "random-features"
    retrain = experiments.resolve("retrain-mnist", "smoke")
    assert network.start(retrain, Path("source.keras")) == "pretrained-features"


# The reports ---------------------------------------------------------------------------------


def _oracle_history(histories, top1: float = 0.95):
    retrain = histories["retrain-mnist/history.json"]
    return dataclasses.replace(
        retrain, experiment="retrain-oracle-mnist", start="oracle-features",
        final=dataclasses.replace(retrain.final, top1=top1),
    )  # fmt: skip


def _header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| Dataset"))
    return [cell.strip() for cell in line.strip("| ").split(" | ")]


def _row(markdown: str, first: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first} "))
    return [cell.strip() for cell in line.strip("| ").split(" | ")]


def test_table_iii_shows_the_oracle_column_only_with_an_oracle_history(tmp_path):
    histories = load_histories(FIXTURES)
    write_table3(histories, tmp_path / "without")
    without = (tmp_path / "without" / "table3.md").read_text(encoding="utf-8")
    assert ORACLE_COLUMN not in without and "oracle" not in without
    histories["retrain-oracle-mnist.history.json"] = _oracle_history(histories)
    write_table3(histories, tmp_path / "with")
    markdown = (tmp_path / "with" / "table3.md").read_text(encoding="utf-8")
    header = _header(markdown)
    column = header.index(ORACLE_COLUMN)
    assert header[column - 1] == "Retraining (paper)"  # no control ran: after retraining
    assert _row(markdown, "MNIST")[column] == "95.00"
    assert "no retrain-oracle history for cifar10 in preset mini" in markdown
    assert "oracle column (a positive control)" in markdown.split("\n\n")[1]
    with (tmp_path / "with" / "table3.csv").open(newline="", encoding="utf-8") as file:
        lines = list(csv.DictReader(file))
    (oracle,) = [line for line in lines if line["column"] == ORACLE_COLUMN and line["value"]]
    assert (oracle["dataset"], oracle["value"]) == ("mnist", "95.00")


def test_the_oracle_has_its_line_and_its_time_to_accuracy_column(tmp_path):
    histories = load_histories(FIXTURES)
    histories["retrain-oracle-mnist.history.json"] = _oracle_history(histories)
    lines = {line.get_gid(): line for line in build_figure5(histories).axes[0].get_lines()}
    line = lines["retrain-oracle-mnist.history.json"]
    assert line.get_label() == "MNIST retraining, oracle features (positive control)"
    # Each variant its own line style (matplotlib names every dash pattern "--": read ours).
    assert STYLES["retrain-oracle"] == (
        "retraining, oracle features (positive control)",
        arms.ORACLE.linestyle,
    )
    styles = [style for variant, (_, style) in STYLES.items() if variant != "full-cached"]
    assert len({str(style) for style in styles}) == len(styles)
    write_time_to_accuracy(histories, tmp_path)
    times = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    assert _header(times)[-1] == f"{ORACLE_COLUMN}: s (epoch)"
    assert "oracle column" in times


# The study -----------------------------------------------------------------------------------


def test_rule_as_grid_cells_resolve_and_read_the_full_runs_of_full_30_epochs():
    for rate in study.RULE_A_RATES:
        name = f"frozen-30-lr-{rate}"
        spec = study.cell(name)
        assert set(spec.runs) == {
            a.experiment(t)
            for a in (arms.RETRAIN, arms.CONTROL, arms.ORACLE)
            for t in study.TARGETS
        }
        for experiment, overrides in spec.runs.items():
            config = experiments.resolve(experiment, study.PRESET, overrides)
            assert (config.epochs, config.drop_epochs, config.dropout) == (30, (20,), 0.0)
            assert config.base_lr == float(rate)
        assert study.source_cell(name, "full-mnist") == study.FULL_30_EPOCHS
        assert study.source_cell(name) == study.BASELINE  # the sources
        assert study.sources_read(name) == ["full-cifar10", "full-mnist", study.SOURCE]
        assert study.run_order(name)[-1].startswith("retrain-oracle-")
    full = experiments.resolve(
        "full-mnist", study.PRESET, study.cell(study.FULL_30_EPOCHS).runs["full-mnist"]
    )
    assert (full.epochs, full.drop_epochs, full.base_lr) == (30, (20,), 0.001)
    assert study.is_source(study.FULL_30_EPOCHS, "full-mnist")
    assert not study.is_source(study.BASELINE, "full-mnist")  # no oracle reads the baseline's
    assert study.is_source(study.BASELINE, study.SOURCE)


def test_a_cell_with_full_runs_and_oracles_runs_each_oracle_after_them():
    both = study.Cell("full and oracle", {"retrain-oracle-mnist": (), "full-mnist": ()})
    study.CELLS["test-both"] = both
    try:
        assert study.run_order("test-both") == ["full-mnist", "retrain-oracle-mnist"]
        assert study.source_cell("test-both", "full-mnist") == "test-both"
    finally:
        del study.CELLS["test-both"]


def _grid_starts(runs: Path, seeds: tuple[int, ...]) -> None:
    """Stand-ins for the models the grid's runs start from: the baseline's sources and the full
    runs of full-30-epochs (the study checks that they exist, the recorded training reads none)."""
    for owner, experiment in ((study.BASELINE, study.SOURCE), (study.FULL_30_EPOCHS, "full-mnist"),
                              (study.FULL_30_EPOCHS, "full-cifar10")):  # fmt: skip
        for seed in seeds:
            model = run_directory(runs / owner, study.PRESET, experiment, seed) / MODEL_NAME
            model.parent.mkdir(parents=True, exist_ok=True)
            model.write_bytes(b"")


def test_the_study_gives_the_oracle_its_seeds_full_model_from_full_30_epochs(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    cell = "frozen-30-lr-0.003"
    missing = (
        r"the full-30-epochs cell's full-cifar10 runs, not trained for seeds 0,1 .*"
        r"`paper-repro study full-30-epochs --seeds 0,1` first"
    )
    with pytest.raises(UserError, match=missing):
        reproduce_module.reproduce_study([cell], seeds=(0, 1), runs_dir=runs, out=tmp_path)
    _grid_starts(runs, seeds=(0, 1))
    trained = _record_training(monkeypatch)
    monkeypatch.setattr(reproduce_module, "regenerate_study", lambda out: [])
    reproduce_module.reproduce_study([cell], seeds=(0, 1), runs_dir=runs, out=tmp_path)
    weights = {(experiment, seed): w for experiment, seed, w in trained}
    source = run_directory(runs / study.BASELINE, study.PRESET, study.SOURCE, 1) / MODEL_NAME
    full = run_directory(runs / study.FULL_30_EPOCHS, study.PRESET, "full-mnist", 1) / MODEL_NAME
    assert weights[("retrain-mnist", 1)] == str(source)
    assert weights[("retrain-oracle-mnist", 1)] == str(full)
    assert weights[("retrain-random-mnist", 1)] is None
    assert [e for e, s, _ in trained if s == 0][-2:] == ["retrain-oracle-mnist",
                                                          "retrain-oracle-cifar10"]  # fmt: skip


def test_only_trains_a_seeds_full_runs_and_every_rates_oracles_without_the_sources(
    tmp_path, monkeypatch
):
    """``--only``: the full runs and the oracles that read them, with no source trained or
    needed (the retraining that would read it is left out), full runs before their oracles."""
    runs = tmp_path / "runs"
    trained = _record_training(monkeypatch)
    monkeypatch.setattr(reproduce_module, "regenerate_study", lambda out: [])
    cells = [study.FULL_30_EPOCHS, *map(study.grid_cell, study.RULE_A_RATES)]
    only = ["full-mnist", "retrain-oracle-mnist"]
    reproduce_module.reproduce_study(cells, seeds=(0,), runs_dir=runs, out=tmp_path, only=only)
    assert [e for e, _, _ in trained] == ["full-mnist"] + ["retrain-oracle-mnist"] * 4
    full = run_directory(runs / study.FULL_30_EPOCHS, study.PRESET, "full-mnist", 0) / MODEL_NAME
    assert {w for e, _, w in trained if e != "full-mnist"} == {str(full)}


def test_only_still_refuses_runs_whose_starting_models_it_leaves_out(tmp_path, monkeypatch):
    """The full runs' cell is named but its runs are not among ``--only``: the oracles would
    find no model, so the study is refused before any run, naming the command that trains them."""
    trained = _record_training(monkeypatch)
    cells = [study.FULL_30_EPOCHS, study.grid_cell("0.01")]
    with pytest.raises(UserError, match=r"full-mnist runs, not trained for seeds 0 .*: add "
                                        r"full-mnist to `paper-repro study --only`$"):  # fmt: skip
        reproduce_module.reproduce_study(
            cells, seeds=(0,), runs_dir=tmp_path / "runs", out=tmp_path,
            only=["retrain-oracle-mnist"],
        )  # fmt: skip
    with pytest.raises(UserError, match=r"run `paper-repro study full-30-epochs --seeds 0` first"):
        reproduce_module.reproduce_study(
            cells[1:], seeds=(0,), runs_dir=tmp_path / "runs", out=tmp_path,
            only=["retrain-oracle-mnist"],
        )  # fmt: skip
    assert trained == []


def test_only_names_the_experiments_of_the_cells_when_it_names_none_of_them():
    unknown = r"--only full-mnsit: .* theirs are full-cifar10,full-mnist"
    with pytest.raises(UserError, match=unknown):
        study.check_only([study.FULL_30_EPOCHS], ["full-mnsit"])
    study.check_only([study.FULL_30_EPOCHS], ["full-mnist"])
    study.check_only([study.FULL_30_EPOCHS], None)


def test_a_run_of_the_grid_that_diverges_is_kept_as_such_and_the_study_goes_on(
    tmp_path, monkeypatch, capsys
):
    """A rate too high for an arm is a result: the diverged history is kept, the next runs
    train, and a rerun of the study does not train it again (it would diverge again)."""
    template = load_history(FIXTURES / "retrain-mnist" / "history.json")
    calls = []

    def fake_train(experiment, preset, *, runs_dir, seed, overrides, **options):
        calls.append((experiment, seed))
        config = experiments.resolve(experiment, preset, overrides)
        status = "diverged" if (experiment, seed) == ("retrain-random-mnist", 0) else "finished"
        history = dataclasses.replace(
            template, experiment=experiment, dataset=config.dataset, mode=config.mode,
            seed=seed, config=config.to_dict(), status=status,
            final=template.final if status == "finished" else None,
            diverged="the training loss became nan in epoch 2, batch 5" if status != "finished"
            else None,
        )  # fmt: skip
        run = run_directory(runs_dir, preset, experiment, seed, config.cache_features)
        save_history(history, run / "history.json")
        if status == "diverged":
            raise TrainingDiverged(f"the training loss became nan; {run} keeps the last epoch")

    monkeypatch.setattr(reproduce_module, "train", fake_train)
    monkeypatch.setattr(reproduce_module, "regenerate_study", lambda out: [])
    cell, only = study.grid_cell("0.03"), ["retrain-random-mnist", "retrain-random-cifar10"]
    study_runs = dict(seeds=(0, 1), runs_dir=tmp_path / "runs", out=tmp_path, only=only)
    reproduce_module.reproduce_study([cell], **study_runs)
    assert len(calls) == 4
    assert "retrain-random-mnist (seed 0) diverged, its history kept" in capsys.readouterr().out
    kept = tmp_path / study.HISTORIES / cell
    assert load_history(kept / "retrain-random-mnist-cached.history.json").status == "diverged"
    assert study.diverged(tmp_path / study.HISTORIES) == {cell: {"retrain-random-mnist": {0: 1.0}}}
    assert set(study.results(tmp_path / study.HISTORIES)[cell]["retrain-random-mnist"]) == {1}
    reproduce_module.reproduce_study([cell], **study_runs)
    assert len(calls) == 4
    assert "retrain-random-mnist (seed 0) already diverged" in capsys.readouterr().out


def test_the_studys_cells_share_one_feature_cache_folder(tmp_path, monkeypatch):
    """Each cell trains in its own folder, but their caches go to the study's root: the grid's
    four rates retrain on the same features, built once."""
    runs, seen = tmp_path / "runs", []
    monkeypatch.setattr(
        reproduce_module, "_train_and_keep",
        lambda experiment, preset, seed, kept, overrides, **options: seen.append(
            (options["runs_dir"], options["cache_root"])
        ),
    )  # fmt: skip
    monkeypatch.setattr(reproduce_module, "regenerate_study", lambda out: [])
    cells = [study.BASELINE, "no-dropout"]
    reproduce_module.reproduce_study(cells, seeds=(0,), runs_dir=runs, out=tmp_path)
    assert {folder for folder, _ in seen} == {runs / cell for cell in cells}
    assert {root for _, root in seen} == {runs}


def test_frozen_chosen_keeps_the_grids_runs_at_the_chosen_rate_instead_of_training_them(
    tmp_path, monkeypatch
):
    """Seed 0 of each frozen run is the grid's run at the chosen rate (same settings, seed and
    start): its history is kept in the cell, not trained again; seed 1 has no twin: trained."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    choice = study.RateChoice("0.003", 0.9, 3)
    monkeypatch.setattr(study, "rule_a_from", lambda _: dict.fromkeys(study.FROZEN_RUNS, choice))
    template = load_history(FIXTURES / "retrain-mnist" / "history.json")
    grid = out / study.HISTORIES / study.grid_cell("0.003")
    for experiment in study.FROZEN_RUNS:
        settings = study.settings(study.grid_cell("0.003"), experiment)
        config = experiments.resolve(experiment, study.PRESET, [*settings, "cache_features=true"])
        history = dataclasses.replace(
            template, experiment=experiment, dataset=config.dataset, mode=config.mode, seed=0,
            config=config.to_dict(),
        )  # fmt: skip
        save_history(history, grid / f"{experiment}-cached.history.json")
    _grid_starts(runs, seeds=(0, 1))
    trained = _record_training(monkeypatch)
    monkeypatch.setattr(reproduce_module, "regenerate_study", lambda out: [])
    reproduce_module.reproduce_study([study.FROZEN_CHOSEN], seeds=(0, 1), runs_dir=runs, out=out)
    assert sorted(e for e, s, _ in trained) == sorted(study.FROZEN_RUNS)
    assert {s for _, s, _ in trained} == {1}
    kept = out / study.HISTORIES / study.FROZEN_CHOSEN
    for experiment in study.FROZEN_RUNS:
        copy = kept / f"{experiment}-cached.history.json"
        assert copy.read_bytes() == (grid / copy.name).read_bytes()


def test_a_run_with_the_same_settings_from_another_source_is_trained_not_kept(
    tmp_path, monkeypatch
):
    """MNIST digits 5-9 retrained from the MNIST source has the settings of its retraining from
    the CIFAR-10 source: only the model it starts from differs, so it is no twin."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    choice = study.RateChoice("0.003", 0.9, 3)
    monkeypatch.setattr(study, "rule_a_from", lambda _: dict.fromkeys(study.FROZEN_RUNS, choice))
    choices = dict.fromkeys(study.FROZEN_RUNS, choice)
    settings = study.settings("target-mnist-5-9", "retrain-mnist", choices)
    assert settings == study.settings("mnist-0-4-to-5-9", "retrain-mnist", choices)
    config = experiments.resolve("retrain-mnist", study.PRESET, [*settings, "cache_features=true"])
    template = load_history(FIXTURES / "retrain-mnist" / "history.json")
    history = dataclasses.replace(template, config=config.to_dict(), seed=0)
    save_history(
        history, out / study.HISTORIES / "target-mnist-5-9" / "retrain-mnist-cached.history.json"
    )
    source = run_directory(runs / "source-mnist-0-4", study.PRESET, study.SOURCE, 0) / MODEL_NAME
    source.parent.mkdir(parents=True)
    source.write_bytes(b"")
    trained = _record_training(monkeypatch)
    monkeypatch.setattr(reproduce_module, "regenerate_study", lambda out: [])
    reproduce_module.reproduce_study(["mnist-0-4-to-5-9"], seeds=(0,), runs_dir=runs, out=out)
    assert trained == [("retrain-mnist", 0, str(source))]


def _save(directory: Path, template, experiment: str, seed: int, centre: float, final: float,
          converged: bool | None = None) -> None:  # fmt: skip
    last = dataclasses.replace(template.epochs[-1], test_accuracy=centre)
    history = dataclasses.replace(
        template, experiment=experiment, seed=seed, epochs=(*template.epochs[:-1], last),
        final=dataclasses.replace(template.final, top1=final), converged=converged,
    )  # fmt: skip
    save_history(history, directory / f"{experiment}-seed{seed}.history.json")


def test_the_study_table_shows_the_oracle_its_intervals_and_the_convergence_counts(tmp_path):
    template = next(iter(load_histories(FIXTURES).values()))
    grid = "frozen-30-lr-0.01"
    runs = {  # cell: experiment: per seed (centre, multi-crop, converged)
        study.BASELINE: {study.SOURCE: [(0.7, 0.7, None)] * 3},
        study.FULL_30_EPOCHS: {"full-mnist": [(0.99, 0.99, True)] * 3},
        grid: {
            "retrain-mnist": [(0.80, 0.82, False), (0.84, 0.85, True), (0.82, 0.86, True)],
            "retrain-random-mnist": [(0.90, 0.91, True), (0.91, 0.92, True), (0.92, 0.93, None)],
            "retrain-oracle-mnist": [(0.97, 0.98, True), (0.98, 0.99, True), (0.99, 0.99, True)],
        },
    }
    for cell, experiments_run in runs.items():
        for experiment, values in experiments_run.items():
            for seed, (centre, final, converged) in enumerate(values):
                _save(tmp_path / cell, template, experiment, seed, centre, final, converged)
    text = study_table.table(tmp_path)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    main = {tuple(r[:3]): r for r in rows if len(r) == len(study_table.HEADER)}
    row = dict(zip(study_table.HEADER, main[(grid, study.CELLS[grid].knob, "mnist")], strict=True))
    assert row["oracle"] == "98.00 ± 1.00 (n=3)"
    assert row["oracle - retraining"] == "16.00 ± 1.73 (n=3)"  # 17, 14, 17
    assert row["full"] == f"99.00 ± 0.00 (n=3) ({study.FULL_30_EPOCHS})"
    assert row["source"].endswith(f"({study.BASELINE})") and row["rule"] == ""
    intervals = next(r for r in rows if r[:2] == [grid, "mnist"])
    margins = [100 * (o - r) for o, r in ((0.97, 0.80), (0.98, 0.84), (0.99, 0.82))]
    summary = seeds.summarize(margins)
    half = seeds.t_quantile(2) * summary.std / math.sqrt(3)
    assert intervals[6] == f"{summary.mean:.2f} ± {half:.2f} (n=3)"  # oracle - retraining, centre
    multi = seeds.summarize([100 * (o - r) for o, r in ((0.98, 0.82), (0.99, 0.85), (0.99, 0.86))])
    assert intervals[7] == seeds.interval_text(multi, lambda v: f"{v:.2f}")
    counts = next(r for r in rows if r[:2] == [grid, "mnist"] and len(r) == 6)
    assert counts[2:] == [f"3/3 ({study.FULL_30_EPOCHS})", "2/3", "2/2", "3/3"]
    assert "No history records criterion C yet." in study_table.table(tmp_path / "none")


# A real oracle ------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_oracle_trains_on_its_full_runs_frozen_block_and_records_convergence(
    mock_tfds, tmp_path
):
    """On tfds' mock MNIST: full training, then its oracle (cached, 5 epochs, drop after 4). The
    saved oracle has the full network's features and mean bit for bit, and its history records
    where it started and whether it met criterion C."""
    import keras

    from paper_repro.model import FEATURES, PREPROCESS

    runs = tmp_path / "runs"
    one_epoch = [a for o in (*TINY, "epochs=1", "drop_epochs=1") for a in ("--set", o)]
    five = [a for o in (*TINY, "epochs=5", "drop_epochs=4") for a in ("--set", o)]
    command = ["--preset", "smoke", "--runs-dir", str(runs), "--seed", "2", "--quiet"]
    with mock_tfds(num_examples=400):
        assert cli.main(["train", "full-mnist", *command, *one_epoch]) == 0
        assert cli.main(["train", "retrain-oracle-mnist", *command, *five, "--cache-features"]) == 0
    full_model = run_directory(runs, "smoke", "full-mnist", 2) / MODEL_NAME
    oracle_dir = run_directory(runs, "smoke", "retrain-oracle-mnist", 2, cached=True)
    history = load_history(oracle_dir / "history.json")
    assert history.status == "finished" and history.start == "oracle-features"
    assert history.provenance.weights.path == str(full_model)
    losses = [epoch.train_loss for epoch in history.epochs]
    assert history.converged is not None
    assert history.converged == convergence.converged(losses, (4,))
    full, oracle = (
        keras.saving.load_model(full_model),
        keras.saving.load_model(oracle_dir / MODEL_NAME),
    )
    for want, got in zip(full.get_layer(FEATURES).get_weights(),
                         oracle.get_layer(FEATURES).get_weights(), strict=True):  # fmt: skip
        np.testing.assert_array_equal(want, got)
    assert oracle.get_layer(PREPROCESS).mean == full.get_layer(PREPROCESS).mean
