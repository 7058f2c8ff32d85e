"""The fast tier's end-to-end canary: train, retrain from it, and table both, on tfds' mock MNIST.

The slow tier checks every road on the real data; this one keeps the whole chain (the command
line, the pipelines, the solver, the history, the table) under the development loop's two
minutes, and runs on a fresh clone without any prepared data.
"""

import csv

import pytest
from conftest import TINY

from paper_repro import cli
from paper_repro.history import load_history

ONE_EPOCH = [*TINY, "epochs=1", "drop_epochs=1"]


def _train(experiment: str, runs, *flags: str) -> int:
    sets = [a for o in ONE_EPOCH for a in ("--set", o)]
    command = ["train", experiment, "--preset", "smoke", "--runs-dir", str(runs), "--quiet"]
    return cli.main([*command, *sets, *flags])


def test_train_retrain_and_regenerate_the_table(mock_tfds, tmp_path, capsys):
    runs = tmp_path / "runs"
    with mock_tfds(num_examples=400):
        assert _train("full-mnist", runs) == 0
        source = runs / "smoke" / "full-mnist" / "model.keras"
        assert _train("retrain-mnist", runs, "--weights", str(source)) == 0
    full = load_history(runs / "smoke" / "full-mnist" / "history.json")
    retrain = load_history(runs / "smoke" / "retrain-mnist" / "history.json")
    assert full.status == retrain.status == "finished"
    assert (full.start, retrain.start) == ("scratch", "pretrained-features")
    assert retrain.provenance.weights.path == str(source)
    capsys.readouterr()

    out = tmp_path / "tables"
    assert cli.main(["regenerate-tables", "--histories", str(runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "table3.csv").open()))
    mnist = {r["column"]: r["value"] for r in rows if r["dataset"] == "mnist"}
    assert float(mnist["Full training"]) == pytest.approx(100 * full.final.top1, abs=0.005)
    assert float(mnist["Retraining"]) == pytest.approx(100 * retrain.final.top1, abs=0.005)
