"""The transfer study's cells and table (figures/study/PLAN.md): what each cell trains, where its
retraining starts, and the table's numbers and rule, from generated histories."""

import dataclasses
from pathlib import Path

import pytest

from paper_repro import arms, experiments, study, study_table
from paper_repro.errors import UserError
from paper_repro.history import EpochRecord, save_history
from paper_repro.reports import load_histories

FIXTURES = Path(__file__).parent / "fixtures" / "histories"
BASELINE_KEPT = Path(__file__).parents[1] / "figures" / "study" / "histories" / "baseline"


def test_every_cell_resolves_and_changes_one_thing_from_the_baseline():
    baseline = study.CELLS[study.BASELINE].runs
    oracles = {arms.ORACLE.experiment(target) for target in study.TARGETS}
    for name, cell in study.CELLS.items():
        for experiment in cell.runs:
            config = experiments.resolve(experiment, study.PRESET, study.settings(name, experiment))
            assert config.test_split.startswith("train[")  # never a test split
            assert experiment in baseline or experiment in oracles
        if name != study.BASELINE:
            assert {tuple(o) for o in cell.runs.values()} != {()} or study.SOURCE in cell.runs


def test_study_preset_holds_out_part_of_each_training_split():
    for name, config in experiments.PRESETS[study.PRESET].items():
        mini = experiments.PRESETS["first-mini"][name]
        train, held = config.train_split, config.test_split
        count = train.removeprefix("train[:").removesuffix("]")
        assert count.isdigit() and held == f"train[{count}:]"
        assert dataclasses.replace(config, train_split="train", test_split="test") == mini


def test_mini_is_the_first_mini_with_what_the_rules_chose_on_the_committed_study():
    """PLAN.md's rules on the committed histories give the cells mini takes and each frozen
    arm's rate (rule F: rule A's choice for its arm and target, 0.001 where rule A chose none);
    mini is the first mini with those changes at its 9 epochs, retraining on cached features as
    the study did."""
    found = study.results(BASELINE_KEPT.parent)
    taken = study.mini_cells(found)
    assert taken == ["no-dropout"]  # one cell: rule 2's combination is that cell
    changes = study.combine(taken).runs
    rates = study.rule_a_from(BASELINE_KEPT.parent)
    for name, config in experiments.MINI.items():
        first = experiments.FIRST_MINI[name]
        arm, target = arms.split_experiment(name) or (None, "")
        # The oracle came after the study chose: it takes retraining's recipe.
        recipe = arms.RETRAIN.experiment(target) if arm is arms.ORACLE else name
        expected = experiments.apply_overrides(first, changes.get(recipe, ()))
        if config.mode == "retrain":
            choice = rates[name]
            rate = float(choice.rate) if choice else 0.001
            expected = dataclasses.replace(expected, cache_features=True, base_lr=rate)
        assert config == expected, name
    assert {config.epochs for config in experiments.MINI.values()} == {9}
    assert experiments.MINI["retrain-oracle-mnist"].base_lr == 0.01  # not retraining's rate
    assert experiments.MINI["retrain-random-cifar10"].dropout == 0.0
    assert experiments.MINI["full-cifar10"] == experiments.FIRST_MINI["full-cifar10"]


def test_a_cell_borrows_its_bases_sources_unless_it_trains_its_own():
    assert study.source_cell("fresh-fc67") == study.BASELINE
    assert study.source_cell("source-30-epochs") == "source-30-epochs"
    assert study.source_cell("crop-131-control-rms-1") == "crop-131"
    assert study.sources_read("fresh-fc67") == [study.SOURCE]
    assert study.sources_read("crop-131-control-rms-1") == []
    assert study.run_order("crop-99")[0] == study.SOURCE
    assert study.run_order("no-dropout")[-1].startswith("retrain-random")
    with pytest.raises(UserError, match="unknown study cell 'nope'; cells: baseline"):
        study.cell("nope")


def _save(directory: Path, template, experiment: str, seed: int, accuracy: float) -> None:
    last = dataclasses.replace(template.epochs[-1], test_accuracy=accuracy)
    history = dataclasses.replace(
        template, experiment=experiment, seed=seed, epochs=(*template.epochs[:-1], last)
    )
    name = experiment + (f"-seed{seed}" if seed else "")
    save_history(history, directory / f"{name}.history.json")


def test_the_table_names_the_runs_that_did_not_train(tmp_path):
    """A run whose last training loss is at or above a uniform guess's, ln(classes), is named
    under the table, and the figure's results leave it out; one just below it is kept."""
    template = next(iter(load_histories(FIXTURES).values()))
    for seed, loss in enumerate((2.316, 2.290)):  # ln 10 = 2.303
        last = dataclasses.replace(template.epochs[-1], train_loss=loss)
        history = dataclasses.replace(
            template, experiment="full-mnist", seed=seed, epochs=(*template.epochs[:-1], last),
            class_names=tuple("0123456789"),
        )  # fmt: skip
        save_history(history, tmp_path / "crop-131" / f"full-mnist-seed{seed}.history.json")
    assert study.did_not_train(tmp_path) == ["crop-131 full-mnist seed 0 (2.316 >= ln 10 = 2.303)"]
    assert "did not train" in study_table.table(tmp_path) and "crop-131 full-mnist seed 0" in (
        study_table.table(tmp_path)
    )
    assert study.did_not_train(tmp_path / "nothing-here") == []
    # The gap figure reads the runs that trained: seed 1 alone.
    assert set(study.results(tmp_path)["crop-131"]["full-mnist"]) == {0, 1}
    assert set(study.results(tmp_path, trained_only=True)["crop-131"]["full-mnist"]) == {1}


def test_table_reads_the_last_epochs_and_applies_the_rule(tmp_path):
    template = next(iter(load_histories(FIXTURES).values()))
    assert isinstance(template.epochs[-1], EpochRecord) and template.status == "finished"
    accuracy = {  # cell: {experiment: per-seed accuracy}
        "baseline": {
            "pretrain-imagenet": (0.70, 0.72, 0.74),
            "full-mnist": (0.98, 0.99, 0.97),
            "retrain-mnist": (0.80, 0.82, 0.84),
            "retrain-random-mnist": (0.90, 0.90, 0.90),
            "full-cifar10": (0.86, 0.86, 0.86),
            "retrain-cifar10": (0.70, 0.70, 0.70),
            "retrain-random-cifar10": (0.66, 0.66, 0.66),
        },
        "fresh-fc67": {"retrain-mnist": (0.90, 0.91, 0.92), "retrain-cifar10": (0.72,) * 3},
        "target-mean": {"retrain-mnist": (0.81, 0.83, 0.85), "retrain-cifar10": (0.70,) * 3},
        "crop-99": {"pretrain-imagenet": (0.75,), "retrain-mnist": (0.85,)},  # part run
        "crop-131": {
            "pretrain-imagenet": (0.76, 0.76),
            "full-mnist": (0.98, 0.96),
            "retrain-mnist": (0.90, 0.90),
            "retrain-random-mnist": (0.10, 0.45),
        },
        "crop-131-control-rms-1": {"retrain-random-mnist": (0.93, 0.80)},
    }
    for cell, runs in accuracy.items():
        for experiment, values in runs.items():
            for seed, value in enumerate(values):
                _save(tmp_path / cell, template, experiment, seed, value)
    text = study_table.write_table(tmp_path, tmp_path / "out").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    # The main table's columns without the oracle's (no oracle ran): the indices below.
    oracle = [study_table.HEADER.index("oracle"), study_table.HEADER.index("oracle - retraining")]
    rows = [[c for i, c in enumerate(row) if i not in oracle] for row in rows if len(row) == 12]
    table = {tuple(row[:3]): row for row in rows}
    cells = table.__getitem__
    base = cells(("baseline", "the first mini", "mnist"))
    assert base[3:8] == [
        "72.00 ± 2.00 (n=3)", "98.00 ± 1.00 (n=3)", "82.00 ± 2.00 (n=3)", "90.00 ± 0.00 (n=3)",
        "16.00 ± 2.65 (n=3)",
    ]  # fmt: skip
    assert base[8] == "-8.00 ± 2.00 (n=3)"
    fresh = cells(("fresh-fc67", "fc6, fc7 drawn fresh", "mnist"))
    assert fresh[3] == "72.00 ± 2.00 (n=3) (baseline)" and fresh[4].endswith("(baseline)")
    assert fresh[6].endswith("(baseline)") and fresh[9].startswith("chosen (+5.50 vs ±1.00)")
    mean = cells(("target-mean", "the target's own mean", "mnist"))
    assert mean[9].startswith("not chosen (+0.50 vs ±1.00)")
    crop = cells(("crop-99", "crop 99 (resize 112), every run", "mnist"))
    assert crop[3:7] == ["75.00", "–", "85.00", "–"]  # its own full and control: not run yet
    assert crop[7] == "–" and crop[9] == "needs 2+ seeds"
    rule = "Rule 1 per knob: keep_fc67: fresh-fc67; mean: the baseline's; dropout: not run yet;"
    assert rule in text
    # A control cell borrows the rest from its base, crop-131, not from the baseline at 67 px.
    control = cells(("crop-131-control-rms-1", study.CELLS["crop-131-control-rms-1"].knob, "mnist"))
    assert control[3:6] == ["76.00 ± 0.00 (n=2) (crop-131)", "97.00 ± 1.41 (n=2) (crop-131)",
                            "90.00 ± 0.00 (n=2) (crop-131)"]  # fmt: skip
    assert control[6] == "86.50 ± 9.19 (n=2)" and control[8] == "3.50 ± 9.19 (n=2)"
    assert control[9] == ""  # rule 1 weighs retraining recipes; a control cell has none


def test_combining_cells_gives_each_run_every_change_that_reaches_it():
    both = study.combine(["fresh-fc67", "crop-99"])
    assert both.runs["retrain-mnist"] == ("keep_fc67=false", "resize=112", "crop=99")
    assert both.runs[study.SOURCE] == both.runs["full-cifar10"] == ("resize=112", "crop=99")
    assert study.SOURCE in both.runs and set(both.runs) == set(study.CELLS[study.BASELINE].runs)
    recipe = study.combine(["fresh-fc67", "source-30-epochs"])
    assert recipe.runs[study.SOURCE] == ("epochs=30", "drop_epochs=20")
    assert recipe.runs["retrain-cifar10"] == ("keep_fc67=false",)
    assert "full-mnist" not in recipe.runs  # the baseline's
    with pytest.raises(UserError, match="source saw CIFAR-10's classes 5-9"):
        study.combine(["source-10-classes", "fresh-fc67"])


def test_the_gap_figure_draws_each_cell_where_its_numbers_are(tmp_path):
    """Top row: one point per cell and target at (source accuracy, full - retraining), in points;
    the baseline's control and the paper's gap as lines. Bottom row: the baseline and the crop
    cells at their input size, retraining's gap and the control's, each with its number of seeds,
    a control cell's at its size, and the paper's at 227 pixels. Files written by ``study``
    itself."""
    from paper_repro.datasets import paper_row
    from paper_repro.study_figure import build_gap_figure, regenerate_study

    template = next(iter(load_histories(FIXTURES).values()))
    runs = {"pretrain-imagenet": (0.70, 0.74), "full-mnist": (0.98, 0.99),
            "retrain-mnist": (0.80, 0.83), "retrain-random-mnist": (0.90, 0.91)}  # fmt: skip
    for experiment, values in runs.items():
        for seed, value in enumerate(values):
            _save(tmp_path / "histories" / "baseline", template, experiment, seed, value)
    figure = build_gap_figure(tmp_path / "histories")
    mnist, mnist_by_size, cifar, cifar_by_size = figure.axes
    (point,) = [line for line in mnist.get_lines() if line.get_marker() == "o"]
    assert list(point.get_xydata()[0]) == pytest.approx([72.0, 17.0])
    assert "baseline" in [text.get_text() for text in mnist.get_legend().get_texts()]
    lines = [line for line in mnist.get_lines() if line.get_linestyle() in ("--", ":")]
    levels = sorted(line.get_ydata()[0] for line in lines)
    mnist_gap = paper_row("mnist").full - paper_row("mnist").retrain
    assert levels == pytest.approx(sorted([8.0, mnist_gap]))
    assert not [line for line in cifar.get_lines() if line.get_marker() == "o"]
    paper_gap = paper_row("cifar10").full - paper_row("cifar10").retrain
    assert [line.get_xydata().tolist() for line in cifar_by_size.get_lines()] == [
        [[227, pytest.approx(paper_gap)]]
    ]
    crop_99 = {"pretrain-imagenet": (0.6, 0.6), "full-mnist": (0.97, 0.98, 0.99),
               "retrain-mnist": (0.87, 0.88, 0.89),
               "retrain-random-mnist": (0.57, 0.58)}  # fmt: skip
    no_dropout = {"retrain-mnist": (0.8, 0.83), "retrain-cifar10": (0.6, 0.7),
                  "full-cifar10": (0.8, 0.9)}  # fmt: skip
    for cell, cell_runs in (("crop-99", crop_99), ("no-dropout", no_dropout)):
        for experiment, values in cell_runs.items():
            for seed, value in enumerate(values):
                _save(tmp_path / "histories" / cell, template, experiment, seed, value)
    mnist, mnist_by_size, cifar, _ = build_gap_figure(tmp_path / "histories").axes
    by_size = {line.get_gid(): line.get_xydata().ravel().tolist()
               for line in mnist_by_size.get_lines() if line.get_linestyle() == "-"}  # fmt: skip
    assert by_size["retrain"] == pytest.approx([67, 17.0, 99, 10.0])
    assert by_size["retrain-random"] == pytest.approx([67, 8.0, 99, 40.0])
    seeds = {arm: [t.get_text() for t in mnist_by_size.texts if t.get_gid() == f"{arm} seeds"]
             for arm in ("retrain", "retrain-random")}  # fmt: skip
    assert seeds == {"retrain": ["n=2", "n=3"], "retrain-random": ["n=2", "n=2"]}
    colors = [{line.get_gid(): line.get_color() for line in ax.get_children()
               if line.get_gid()} for ax in (mnist, cifar)]  # fmt: skip
    assert colors[1]["no-dropout"] == colors[0]["no-dropout"] != colors[0]["baseline"]
    # A control cell at a source's scale: its own point at its size, against its base's full
    # runs; one whose base (no-dropout) is not on the size row is not drawn there.
    extra = {"crop-131": {"full-mnist": (0.98, 0.97)},
             "crop-131-control-rms-1": {"retrain-random-mnist": (0.90, 0.93)},
             "no-dropout-control-rms-1": {"retrain-random-mnist": (0.5, 0.5)}}  # fmt: skip
    for cell, cell_runs in extra.items():
        for experiment, values in cell_runs.items():
            for seed, value in enumerate(values):
                _save(tmp_path / "histories" / cell, template, experiment, seed, value)
    mnist_by_size = build_gap_figure(tmp_path / "histories").axes[1]
    drawn = [line for line in mnist_by_size.get_lines() if line.get_marker() == "D"]
    (diamond,) = [line for line in drawn if line.get_gid() == "crop-131-control-rms-1"]
    assert diamond.get_xydata().tolist() == [[131, pytest.approx(6.0)]]
    paths = regenerate_study(tmp_path)
    assert [p.name for p in paths] == ["table.md", "gap.png", "gap.pdf"]
    assert paths[1].read_bytes() == regenerate_study(tmp_path)[1].read_bytes()


def test_a_kept_finished_run_is_not_trained_again_but_a_missing_source_is(tmp_path):
    """On a new machine the run directories are gone: the kept histories say what finished."""
    from paper_repro.reproduce import _kept_and_finished
    from paper_repro.runs import RunPaths, run_directory

    kept, runs = tmp_path / "kept", tmp_path / "runs"
    kept.mkdir()
    for name in ("retrain-mnist-cached", study.SOURCE):
        history = f"{name}.history.json"
        (kept / history).write_bytes((BASELINE_KEPT / history).read_bytes())

    def kept_and_finished(experiment: str, seed: int = 0, overrides: tuple = ()) -> bool:
        runs_of = [*study.cell(study.BASELINE).runs[experiment], *overrides]
        config = experiments.resolve(experiment, study.PRESET, runs_of)
        return _kept_and_finished(kept, study.BASELINE, runs, experiment, config, seed)

    assert kept_and_finished("retrain-mnist")
    assert not kept_and_finished("retrain-mnist", seed=1)  # none kept for seed 1 here
    assert not kept_and_finished("retrain-mnist", overrides=("epochs=3",))  # other settings
    assert not kept_and_finished("retrain-cifar10")
    # The source's model file is what retraining starts from: without it, the source trains.
    assert not kept_and_finished(study.SOURCE)
    model = RunPaths(run_directory(runs, study.PRESET, study.SOURCE, 0)).model
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    assert kept_and_finished(study.SOURCE)


def _grid(means: dict[str, float], run: str = "retrain-mnist") -> study.Results:
    """Grid results where ``run`` at each rate scores its mean (+-0.01 over seeds 0-2)."""
    found = {name: {} for name in study.CELLS}
    for rate, mean in means.items():
        found[study.grid_cell(rate)][run] = {0: mean - 0.01, 1: mean, 2: mean + 0.01}
    return found


def test_rule_a_takes_the_rate_with_the_best_mean_over_seeds_0_to_2():
    found = _grid({"0.001": 0.80, "0.003": 0.86, "0.01": 0.84, "0.03": 0.30})
    converged = {study.grid_cell("0.003"): {"retrain-mnist": {0: True, 1: True, 2: True}}}
    choice = study.rule_a(found, converged)["retrain-mnist"]
    assert (choice.rate, round(choice.mean, 6), choice.met_c) == ("0.003", 0.86, 3)
    assert not choice.needs_60_epochs
    assert study.rule_a(found, converged)["retrain-cifar10"] is None  # no grid run of it


def test_rule_a_gives_an_exact_tie_to_the_smaller_rate():
    found = _grid({"0.001": 0.5, "0.003": 0.9, "0.01": 0.9, "0.03": 0.9})
    assert study.rule_a(found, {})["retrain-mnist"].rate == "0.003"


def test_rule_a_gives_60_epochs_unless_every_seed_at_the_chosen_rate_met_criterion_c():
    found = _grid({"0.001": 0.9, "0.003": 0.8, "0.01": 0.7, "0.03": 0.6})
    for met in ({0: True, 1: False, 2: True}, {0: True, 1: True}):  # one failed; one unrecorded
        converged = {study.grid_cell("0.001"): {"retrain-mnist": met}}
        assert study.rule_a(found, converged)["retrain-mnist"].needs_60_epochs


def test_rule_a_waits_for_every_rate_and_seed_and_says_which_are_missing():
    found = _grid({"0.001": 0.9, "0.003": 0.8, "0.01": 0.7})
    found[study.grid_cell("0.03")]["retrain-mnist"] = {0: 0.99}  # best so far, on one seed
    assert study.rule_a(found, {})["retrain-mnist"] is None
    assert study.rule_a_lacking(found, "retrain-mnist") == ["lr 0.03 seeds 1, 2"]
    line = study_table._rates(found, {}, {})[0]
    assert line == "retrain-mnist: not decided yet (needs lr 0.03 seeds 1, 2)"


def test_rule_a_counts_a_diverged_run_as_done_and_chooses_no_rate_at_which_one_diverged():
    """lr 0.03 has its best mean over the seeds that trained, but seed 1 diverged there."""
    found = _grid({"0.001": 0.80, "0.003": 0.86, "0.01": 0.84})
    found[study.grid_cell("0.03")]["retrain-mnist"] = {0: 0.95, 2: 0.95}
    diverged = {study.grid_cell("0.03"): {"retrain-mnist": {1: 1.0}}}
    assert study.rule_a_lacking(found, "retrain-mnist") == ["lr 0.03 seed 1"]
    assert study.rule_a_lacking(found, "retrain-mnist", diverged) == []
    assert study.rule_a(found, {}, diverged)["retrain-mnist"].rate == "0.003"
    everywhere = {study.grid_cell(r): {"retrain-mnist": {1: 1.0}} for r in study.RULE_A_RATES}
    assert study.rule_a(found, {}, everywhere)["retrain-mnist"] is None
    line = study_table._rates(found, {}, everywhere)[0]
    assert line == "retrain-mnist: none (a run diverged at every rate)"


CHOSEN = study.RateChoice("0.003", 0.9, 3)


def test_a_cell_at_rule_as_recipe_trains_at_the_chosen_rate_and_epochs():
    choices = {run: CHOSEN for run in study.FROZEN_RUNS}
    longer = {**choices, "retrain-mnist": study.RateChoice("0.01", 0.8, 2)}  # C met by 2 of 3
    mnist = experiments.resolve(
        "retrain-mnist", study.PRESET, study.settings("relu5", "retrain-mnist", longer)
    )
    assert (mnist.base_lr, mnist.epochs, mnist.drop_epochs) == (0.01, 60, (40.0,))
    assert (mnist.features_end, mnist.keep_fc67, mnist.dropout) == ("relu5", False, 0.0)
    cifar = experiments.resolve(
        "retrain-cifar10", study.PRESET, study.settings("relu5", "retrain-cifar10", longer)
    )
    assert (cifar.base_lr, cifar.epochs, cifar.drop_epochs) == (0.003, 30, (20.0,))
    near = study.settings("target-mnist-5-9", "retrain-random-mnist", choices)
    assert "classes=5,6,7,8,9" in near and "base_lr=0.003" in near  # MNIST's choice (PLAN.md)
    assert study.RULE_A not in study.settings("relu5", "retrain-mnist")  # the rest, for checks
    with pytest.raises(UserError, match="relu5 trains retrain-mnist at the rate rule A chooses"):
        study.settings("relu5", "retrain-mnist", {**choices, "retrain-mnist": None})


def test_a_cell_at_rule_as_recipe_is_refused_until_rule_a_decides_unless_the_grid_runs_first(
    tmp_path,
):
    with pytest.raises(UserError, match=r"frozen-30-lr-0\.001 .* --seeds 0,1,2` first"):
        study.check_rule_a(["baseline", study.FROZEN_CHOSEN], tmp_path)
    study.check_rule_a([study.grid_cell("0.03"), study.FROZEN_CHOSEN], tmp_path)
    study.check_rule_a([study.BASELINE, "no-dropout"], tmp_path)  # no cell at rule A's recipe


def test_a_run_rule_a_has_decided_for_may_run_while_the_grid_lacks_another_arms_runs(tmp_path):
    """``--only`` keeps the runs a command trains, and only those are held to rule A."""
    template = next(iter(load_histories(FIXTURES).values()))
    for rate in study.RULE_A_RATES:
        for seed in study.RULE_A_SEEDS:
            directory = tmp_path / study.grid_cell(rate)
            _save(directory, template, "retrain-oracle-mnist", seed, 0.9)
    decided = ["retrain-oracle-mnist"]
    study.check_rule_a([study.FROZEN_CHOSEN], tmp_path, decided)
    with pytest.raises(UserError, match="frozen-chosen trains retrain-mnist at the rate"):
        study.check_rule_a([study.FROZEN_CHOSEN], tmp_path, [*decided, "retrain-mnist"])
    with pytest.raises(UserError, match="at the rate rule A chooses"):
        study.check_rule_a([study.FROZEN_CHOSEN], tmp_path)  # every run of the cell


def test_the_near_source_cells_read_the_mnist_source_and_their_own_full_runs():
    assert study.source_cell("mnist-0-4-to-5-9") == "source-mnist-0-4"
    assert study.source_cell("target-mnist-5-9") == study.BASELINE
    assert study.source_cell("target-mnist-5-9", "full-mnist") == "target-mnist-5-9"
    assert study.source_cell("mnist-0-4-to-5-9", "full-mnist") == "target-mnist-5-9"
    assert study.source_cell("source-mnist-0-4", "full-cifar10") == study.FULL_30_EPOCHS
    source = experiments.resolve(
        study.SOURCE, study.PRESET, study.settings("source-mnist-0-4", study.SOURCE)
    )
    assert (source.dataset, source.classes, source.mirror) == ("mnist", (0, 1, 2, 3, 4), False)
    assert source.test_split == "train[50000:]"  # validation digits, never the test split
