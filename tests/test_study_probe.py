"""Rule B's probes in the study's table: probes made in several sittings read together, a run
probed twice counted once, two settings refused, the margins paired per seed."""

from pathlib import Path

import pytest

from paper_repro import experiments, probe, seeds, study, study_probe, study_table
from paper_repro.errors import UserError

GRID = study.grid_cell("0.001")


def _row(experiment: str, seed: int, accuracy: float, cell: str = GRID, **config) -> probe.Row:
    """A probe's row of ``cell``'s run, as ``paper-repro probe --out`` writes it."""
    resolved = experiments.resolve(experiment, study.PRESET, study.settings(cell, experiment))
    chosen = probe.Fit(c=0.1, validation_accuracy=accuracy, converged=True)
    return probe.Row(
        run=f"runs/{cell}/study/{experiment}-seed{seed}", experiment=experiment, seed=seed,
        arm="retrain", values=256, images=(12000, 10000, 10000), validation_split="train[50000:]",
        result=probe.Probe(fits=(chosen,), chosen=chosen, test_accuracy=0.5),
        config={**resolved.to_dict(), **config},
    )  # fmt: skip


def _keep(out: Path, name: str, rows: list[probe.Row], cell: str = GRID) -> None:
    folder = out / study_probe.PROBES / cell
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(probe.rows_json(rows))


def test_probes_of_several_sittings_are_read_together_a_run_probed_twice_once(tmp_path):
    _keep(tmp_path, "seed0-oracle", [_row("retrain-oracle-mnist", 0, 0.99)])
    _keep(tmp_path, "seeds0-1", [
        _row("retrain-mnist", 0, 0.90), _row("retrain-random-mnist", 0, 0.93),
        _row("retrain-mnist", 1, 0.80), _row("retrain-random-mnist", 1, 0.86),
    ])  # fmt: skip
    _keep(tmp_path, "seed0-again", [_row("retrain-mnist", 0, 0.90)])
    found = study_probe.probes(tmp_path)
    assert found == {
        GRID: {
            "retrain-oracle-mnist": {0: 0.99},
            "retrain-mnist": {0: 0.90, 1: 0.80},
            "retrain-random-mnist": {0: 0.93, 1: 0.86},
        }
    }
    rows = list(study_table._probe_rows(found))
    assert len(rows) == 1  # MNIST only: no CIFAR-10 probe
    cell, target, retraining, control, oracle, oracle_margin, control_margin = rows[0]
    assert (cell, target) == (GRID, "mnist")
    assert retraining == "85.00 ± 7.07 (n=2)"
    assert control == "89.50 ± 4.95 (n=2)"
    assert oracle == "99.00"
    assert oracle_margin == "9.00 (n=1)"  # seed 0 alone has both
    expected = seeds.summarize([0.90 - 0.93, 0.80 - 0.86])
    assert control_margin == seeds.interval_text(expected, lambda v: f"{100 * v:.2f}")
    assert control_margin.startswith("-4.50 ± ")


def test_the_study_table_shows_the_probes_kept_beside_its_histories(tmp_path):
    histories = tmp_path / study.HISTORIES
    histories.mkdir()
    assert "No probe kept yet." in study_table.table(histories)
    _keep(tmp_path, "seed0", [_row("retrain-oracle-cifar10", 0, 0.8)])
    table = study_table.table(histories)
    assert f"| {GRID} | cifar10 | – | – | 80.00 | – | – |" in table


def test_two_probes_of_one_run_that_disagree_are_two_settings_refused(tmp_path):
    _keep(tmp_path, "a", [_row("retrain-mnist", 0, 0.90)])
    _keep(tmp_path, "b", [_row("retrain-mnist", 0, 0.91)])
    with pytest.raises(UserError, match=r"b.json: retrain-mnist seed 0 probed at 91.00 %.*90.00"):
        study_probe.probes(tmp_path)


@pytest.mark.parametrize(
    ("row", "cell", "message"),
    [
        (_row("retrain-mnist", 0, 0.9, features_end="relu5"), GRID,
         r"other settings \(features_end\)"),
        (_row("full-mnist", 0, 0.9, cell=study.FULL_30_EPOCHS), study.FULL_30_EPOCHS,
         "full-mnist is no frozen run of study cell full-30-epochs; probe its runs \\(none\\)"),
        (_row("retrain-mnist", 0, 0.9), "relu5", r"other settings \(features_end\)"),
    ],
)  # fmt: skip
def test_a_probe_filed_under_another_cell_is_refused(tmp_path, row, cell, message):
    _keep(tmp_path, "seed0", [row], cell=cell)
    with pytest.raises(UserError, match=message):
        study_probe.probes(tmp_path)


def test_a_folder_named_after_no_cell_or_a_file_that_is_no_probe_is_one_line(tmp_path):
    (tmp_path / study_probe.PROBES / "grid").mkdir(parents=True)
    with pytest.raises(UserError, match="grid: not a study cell's folder"):
        study_probe.probes(tmp_path)
    (tmp_path / study_probe.PROBES / "grid").rmdir()
    _keep(tmp_path, "seed0", [])
    (tmp_path / study_probe.PROBES / GRID / "seed0.json").write_text("{}")
    with pytest.raises(UserError, match=r"seed0\.json: not a probe's rows"):
        study_probe.probes(tmp_path)
