"""The linear probe: on generated features, C chosen as a direct scikit-learn fit chooses it,
ties to the smaller C, separable features read perfectly and label-free ones at chance, the
validation carve disjoint from the fit, the same result twice; for a run, through the command,
the images and blocks it names, every run directory checked before the first is measured."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from paper_repro import cli, data, probe, run_features
from paper_repro.errors import UserError
from paper_repro.model import load_model

ONE_EPOCH = [*TINY, "epochs=1", "drop_epochs=1"]


def _three(signal: float, seed: int = 0, classes: int = 4) -> list[probe.Features]:
    """Training, validation and test features: Gaussian values whose mean moves with the label
    by ``signal`` times a class centre (0: label-independent)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    sets = []
    for images in (400, 200, 200):
        labels = np.arange(images) % classes
        values = rng.normal(size=(images, 16)) + signal * centres[labels]
        sets.append(probe.Features(values.astype(np.float32), labels))
    return sets


def test_the_chosen_c_and_accuracies_are_those_of_a_direct_scikit_learn_fit():
    train, validation, test = _three(signal=0.4)
    result = probe.probe(train, validation, test)
    scaler = StandardScaler().fit(train.values)
    scores = {}
    for c in probe.C_GRID:
        model = LogisticRegression(C=c, max_iter=probe.MAX_ITER).fit(
            scaler.transform(train.values), train.labels
        )
        scores[c] = (
            model.score(scaler.transform(validation.values), validation.labels),
            model.score(scaler.transform(test.values), test.labels),
        )
    best = max(scores.values(), key=lambda pair: pair[0])[0]
    chosen = min(c for c, (accuracy, _) in scores.items() if accuracy == best)
    assert [fit.c for fit in result.fits] == sorted(probe.C_GRID)
    assert [fit.validation_accuracy for fit in result.fits] == pytest.approx(
        [scores[c][0] for c in sorted(probe.C_GRID)]
    )
    assert result.chosen.c == chosen
    assert result.test_accuracy == pytest.approx(scores[chosen][1])
    assert result.converged_text() == "yes"


def test_separable_features_read_perfectly_and_label_free_ones_at_chance():
    separable = probe.probe(*_three(signal=10.0))
    assert separable.chosen.validation_accuracy == separable.test_accuracy == 1.0
    chance = probe.probe(*_three(signal=0.0, classes=4))
    assert abs(chance.test_accuracy - 0.25) < 0.1


def test_a_tie_goes_to_the_smaller_c():
    # Perfectly separable: every C of the grid reads the validation split perfectly.
    result = probe.probe(*_three(signal=10.0))
    assert {fit.validation_accuracy for fit in result.fits} == {1.0}
    assert result.chosen.c == min(probe.C_GRID)


def test_the_same_features_give_the_same_probe_twice():
    assert probe.probe(*_three(signal=0.4, seed=3)) == probe.probe(*_three(signal=0.4, seed=3))


def test_the_validation_carve_is_the_last_tenth_disjoint_from_the_fit():
    values = np.arange(50, dtype=np.float32)[:, None]  # each image's value is its position
    fit, validation = probe.carve(probe.Features(values, np.arange(50) % 2))
    assert fit.values[:, 0].tolist() == list(range(45))
    assert validation.values[:, 0].tolist() == list(range(45, 50))
    assert validation.labels.tolist() == [1, 0, 1, 0, 1]


def test_too_few_images_to_carve_is_one_line():
    with pytest.raises(UserError, match="too few to carve"):
        probe.carve(probe.Features(np.zeros((9, 2), np.float32), np.zeros(9, np.int64)))


def test_an_unconverged_fit_is_reported(monkeypatch):
    monkeypatch.setattr(probe, "MAX_ITER", 1)
    result = probe.probe(*_three(signal=0.4))
    assert not any(fit.converged for fit in result.fits)
    assert result.converged_text() == "no at C = " + ", ".join(f"{c:g}" for c in probe.C_GRID)


def _cells(table: str, line: int) -> list[str]:
    return table.splitlines()[line].strip("| ").split(" | ")


def _pool5(model, split, splits) -> probe.Features:
    batches = list(run_features.pool5_batches(model, run_features.centre_crops(split, splits)))
    return probe.Features(
        np.concatenate([values.reshape(len(values), -1) for values, _ in batches]),
        np.concatenate([labels for _, labels in batches]),
    )


def _with_history(run, to, **changes):
    """A copy of run directory ``run`` at ``to`` whose history has ``changes`` (config: merged)."""
    shutil.copytree(run, to)
    recorded = json.loads((to / "history.json").read_text())
    recorded["config"].update(changes.pop("config", {}))
    (to / "history.json").write_text(json.dumps({**recorded, **changes}))
    return to


@pytest.mark.slow
def test_a_run_through_the_command(mock_tfds, tmp_path, capsys):
    runs, sets = tmp_path / "runs", [a for o in ONE_EPOCH for a in ("--set", o)]
    train = ["train", "full-mnist", "--preset", "smoke", "--runs-dir", str(runs), "--quiet"]
    run = runs / "smoke" / "full-mnist"
    # The same network as if it had trained on a carved split: the probe then validates on the
    # run's test split and tests on the dataset's own.
    carved = {"train_split": "train[:300]", "test_split": "train[300:]"}
    out = tmp_path / "probe.md"
    with mock_tfds(num_examples=400):
        assert cli.main([*train, *sets]) == 0
        on_carved = _with_history(run, tmp_path / "carved", config=carved)
        capsys.readouterr()
        argv = ["probe", str(run), str(on_carved), "--quiet", "--out", str(out)]
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out
        assert cli.main(argv) == 0
        assert capsys.readouterr().out == printed  # the same result twice

        splits = data.load_experiment_data(
            run_features.run_config(run_features.finished_history(run))
        )
        model = load_model(run / "model.keras")
        expected = probe.probe(
            *probe.carve(_pool5(model, splits.train, splits)), _pool5(model, splits.test, splits)
        )
    table, rows = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert printed == f"{table}wrote {out}\nwrote {out.with_suffix('.json')}\n"
    # The JSON holds what the table shows, every fit, and the run's settings.
    assert [row["run"] for row in rows] == [str(run), str(on_carved)]
    assert rows[0]["result"]["test_accuracy"] == expected.test_accuracy
    assert rows[0]["result"]["chosen"]["c"] == expected.chosen.c
    assert [fit["c"] for fit in rows[0]["result"]["fits"]] == sorted(probe.C_GRID)
    assert rows[0]["images"] == [144, 16, 80]
    assert rows[1]["config"]["test_split"] == "train[300:]"
    assert table.splitlines()[0] == "| " + " | ".join(probe.HEADER) + " |"
    assert _cells(table, 2) == [
        str(run), "full-mnist", "0", "full", "256", "144 / 16 / 80", "last 10 % of train",
        f"{expected.chosen.c:g}", f"{100 * expected.chosen.validation_accuracy:.2f}",
        f"{100 * expected.test_accuracy:.2f}", expected.converged_text(),
    ]  # fmt: skip
    # Validation: the run's 80 images of train[300:]; test: the 400 of the dataset's test split.
    assert _cells(table, 3)[:7] == [
        str(on_carved),
        "full-mnist",
        "0",
        "full",
        "256",
        "160 / 80 / 400",
        "train[300:]",
    ]

    # Every directory is checked before the first is measured: nothing printed.
    unfinished = _with_history(run, tmp_path / "unfinished", status="running", final=None)
    assert cli.main(["probe", str(run), str(unfinished)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unfinished: not a finished run (its history says running)" in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize("what", ["missing", "empty", "no model"])
def test_bad_run_directories_exit_2_with_one_line(what, tmp_path, capsys):
    run = tmp_path / "run"
    if what != "missing":
        run.mkdir()
    if what == "no model":
        (run / "history.json").write_text("{}")
    assert cli.main(["probe", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run}: not a finished run directory" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["probe", ".", "--images", "0"], "--images takes a positive number"),
        (["probe", ".", "--out", "no-such-dir/probe.md"], "--out no-such-dir/probe.md: no such"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
