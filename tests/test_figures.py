"""Table III and Figure 5 from fixture histories: values, dashes, refusals, styles, determinism."""

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from paper_repro.errors import UserError
from paper_repro.history import PHASES, CacheRecord, EpochRecord, save_history
from paper_repro.job_time import write_time_by_phase
from paper_repro.reports import (
    build_figure5,
    load_histories,
    regenerate_figures,
    regenerate_tables,
    write_figure5,
    write_table3,
    write_time_to_accuracy,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "histories"
TABLES = ["table3.md", "table3.tex", "table3.csv", "time_to_accuracy.md", "time_to_accuracy.csv"]
OUTPUTS = [*TABLES, "figure5.png", "figure5.pdf"]


@pytest.fixture
def histories():
    return load_histories(FIXTURES)


def csv_values(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    """(section, dataset, preset, column) -> the CSV line."""
    with path.open(newline="", encoding="utf-8") as file:
        return {
            (r["section"], r["dataset"], r["preset"], r["column"]): r for r in csv.DictReader(file)
        }


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ")]


def row_of(markdown: str, *start: str) -> list[str]:
    """The cells of the first Markdown table row that begins with these cells."""
    rows = [[cell.strip() for cell in row.strip("| ").split(" | ")] for row in table_rows(markdown)]
    return next(row for row in rows if row[: len(start)] == list(start))


def footnote(markdown: str, text: str) -> str:
    """The marker of the footnote with this text, e.g. "[^2]"."""
    (line,) = [line for line in markdown.splitlines() if line.endswith(f"]: {text}")]
    return line.split(":")[0]


def test_table_values_equal_those_in_the_histories(tmp_path, histories):
    write_table3(histories, tmp_path)
    values = csv_values(tmp_path / "table3.csv")
    columns = {"full": ("Full training",), "retrain": ("Retraining",), "pretrain": ("Top-1",)}
    for source, history in histories.items():
        section = "pretrain" if history.mode == "pretrain" else "transfer"
        for column in columns[history.mode]:
            line = values[(section, history.dataset, history.preset, column)]
            assert float(line["value"]) == pytest.approx(100 * history.final.top1, abs=0.005)
            assert source in line["histories"].split()
    top5 = values[("pretrain", "cifar10", "mini", "Top-5")]
    assert (top5["value"], top5["note"]) == ("n/a", FIVE_CLASSES)


FIVE_CLASSES = "5 classes: every image's class is among the top 5"


def test_top5_is_na_for_a_run_of_at_most_5_classes_only(tmp_path, histories):
    """The pretraining on CIFAR-10's classes 0-4 scores 100 % top-5 whatever it learnt."""
    key = "pretrain-cifar10-0to4.history.json"
    write_table3(histories, tmp_path)
    assert (
        csv_values(tmp_path / "table3.csv")[("pretrain", "cifar10", "mini", "Top-5")]["value"]
        == "n/a"
    )
    for ten_classes in (
        replace(histories[key], config={**histories[key].config, "classes": None}),
        replace(histories[key], class_names=tuple("abcdefghij")),
    ):
        write_table3({**histories, key: ten_classes}, tmp_path)
        top5 = csv_values(tmp_path / "table3.csv")[("pretrain", "cifar10", "mini", "Top-5")]
        assert top5["value"] == f"{100 * ten_classes.final.top5:.2f}"


def test_table_rows_match_hand_computed_values_and_the_paper(tmp_path, histories):
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    # Epochs to match: MNIST retrain has 96.04 after epoch 1, full reaches 98.15 at epoch 2;
    # CIFAR-10 67.10, full 68.71 at epoch 5. Ratios: 2463.3 s / 725.9 s, 2323.1 s / 569.7 s.
    mnist_rest = ["99.68", "97.71", "99.54", "99.79, Wan et al. 2013 [22]", "2", "—", "3.39"]
    assert row_of(markdown, "MNIST", "5", "99.15")[3:] == mnist_rest
    cifar10_rest = ["89.99", "73.98", "89.14", "91.78, Lee et al. 2015 [23]", "5", "≈8", "4.08"]
    assert row_of(markdown, "CIFAR-10", "10", "70.12")[3:] == cifar10_rest
    na = f"n/a{footnote(markdown, FIVE_CLASSES)}"
    pretrain = ["CIFAR-10", "10", "67.95", "59.23", na, "83.58"]
    older = footnote(markdown, "kept only by histories written since the centre crop was recorded")
    pretrain_row = row_of(markdown, "CIFAR-10", "10", "67.95")
    assert pretrain_row == [*pretrain, f"—{older}", na]
    # CIFAR-100 was not run: no row of dashes, but a note with the paper's values.
    assert not [row for row in table_rows(markdown) if row.startswith("| CIFAR-100 ")]
    assert "Not run here, so not shown: CIFAR-100 (the paper: full training 63.65" in markdown


def test_a_missing_run_is_a_dash_with_a_footnote(tmp_path, histories):
    del histories["retrain-mnist/history.json"]
    del histories["pretrain-cifar10-0to4.history.json"]
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    marker = footnote(markdown, "no retrain history for mnist in preset mini")
    dash = f"—{marker}"
    assert row_of(markdown, "MNIST")[2:] == [
        "99.15", "99.68", dash, "99.54", "99.79, Wan et al. 2013 [22]", dash, "—", dash
    ]  # fmt: skip
    weights = histories["retrain-cifar10/history.json"].provenance.weights
    stand_in = f"the weights {weights.path} (sha256 {weights.sha256[:12]})"
    note = f"no pretrain history in preset mini; its retrainings started from {stand_in}"
    none = f"—{footnote(markdown, note)}"
    assert row_of(markdown, none) == [none, "—", none, "59.23", none, "83.58", none, none]
    line = csv_values(tmp_path / "table3.csv")[("transfer", "mnist", "mini", "Retraining")]
    assert (line["value"], line["note"]) == ("", "no retrain history for mnist in preset mini")
    assert r"---\textsuperscript{" in (tmp_path / "table3.tex").read_text(encoding="utf-8")


def test_a_diverged_run_is_footnoted_as_diverged_with_no_final_numbers(tmp_path, histories):
    key = "full-cifar10/history.json"
    full = histories[key]
    histories[key] = replace(
        full, epochs=full.epochs[:2], final=None, status="diverged", diverged="loss nan"
    )
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert footnote(markdown, "full-cifar10, seed 0 diverged (2 epochs recorded)").startswith("[^")


def test_a_run_in_progress_shows_its_epochs_but_no_final_numbers(tmp_path, histories):
    key = "full-cifar10/history.json"
    full = histories[key]
    histories[key] = replace(full, epochs=full.epochs[:3], final=None, status="running")
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    marker = footnote(markdown, "full-cifar10, seed 0 is still running (3 epochs recorded)")
    # 48.20, 56.30, 61.15 never reach retraining's 67.10 after one epoch.
    assert row_of(markdown, "CIFAR-10", "10", f"—{marker}")[3:] == [
        "89.99", "73.98", "89.14", "91.78, Lee et al. 2015 [23]", "not reached in 3", "≈8",
        f"—{marker}",
    ]  # fmt: skip


def test_no_histories_says_where_it_looked_and_which_command_makes_them(tmp_path):
    empty = tmp_path / "histories"
    empty.mkdir()
    for regenerate in (regenerate_tables, regenerate_figures):
        with pytest.raises(UserError) as caught:
            regenerate(empty, tmp_path / "out")
        assert str(empty) in str(caught.value)
        assert "paper-repro reproduce --preset mini" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_mixed_presets_are_refused_unless_allowed(tmp_path, histories):
    mnist = histories["full-mnist/history.json"]
    histories["paper/full-mnist/history.json"] = replace(mnist, preset="paper")
    for write in (write_table3, write_figure5):
        with pytest.raises(UserError, match=r"mini .*paper .*--allow-mixed-presets"):
            write(histories, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    write_table3(histories, tmp_path, allow_mixed_presets=True)
    rows = table_rows((tmp_path / "table3.md").read_text(encoding="utf-8"))
    assert any(row.startswith("| MNIST | mini | 5 | 99.15 |") for row in rows)
    assert any(row.startswith("| MNIST | paper | 5 | 99.15 |") for row in rows)
    labels = build_figure5(histories, allow_mixed_presets=True).axes[0].get_legend_handles_labels()
    assert "MNIST full training (paper)" in labels[1] and "MNIST full training (mini)" in labels[1]


def test_regenerate_tables_passes_the_mixed_presets_flag(tmp_path, histories):
    for source, history in histories.items():
        save_history(history, tmp_path / "in" / source)
        save_history(replace(history, preset="smoke"), tmp_path / "in" / "smoke" / source)
    with pytest.raises(UserError, match="--allow-mixed-presets"):
        regenerate_tables(tmp_path / "in", tmp_path / "out")
    paths = regenerate_tables(tmp_path / "in", tmp_path / "out", allow_mixed_presets=True)
    assert [p.name for p in paths] == TABLES
    assert "smoke/full-mnist/history.json" in paths[0].read_text(encoding="utf-8")


def test_two_runs_of_one_experiment_are_refused(tmp_path, histories):
    histories["again/full-mnist/history.json"] = histories["full-mnist/history.json"]
    message = "again/full-mnist/history.json and full-mnist/history.json"
    with pytest.raises(UserError, match=re.escape(message)):
        write_table3(histories, tmp_path)


def test_a_malformed_history_is_named_with_its_field(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "histories")
    path = tmp_path / "histories" / "full-mnist" / "history.json"
    data = json.loads(path.read_text())
    data["epochs"][3]["test_accuracy"] = "abc"
    path.write_text(json.dumps(data))
    expected = f'{path}: epochs[3].test_accuracy must be a number in [0, 1], got "abc"'
    for regenerate in (regenerate_tables, regenerate_figures):
        with pytest.raises(UserError) as caught:
            regenerate(tmp_path / "histories", tmp_path / "out")
        assert str(caught.value) == expected


def test_the_table_names_its_histories_relative_and_its_preset(tmp_path, histories):
    write_table3(histories, tmp_path)
    for name in ["table3.md", "table3.tex"]:
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert all(source in text for source in histories)
        assert str(FIXTURES.resolve()) not in text and str(tmp_path) not in text
    assert "Preset: mini." in (tmp_path / "table3.md").read_text(encoding="utf-8")
    tex = (tmp_path / "table3.tex").read_text(encoding="utf-8")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"Test accuracy (\%)" in tex


def _curves(figure):
    """The run lines of Figure 5 by source (the vertical learning-rate markers have no gid, the
    paper's marks one of their own)."""
    return {
        line.get_gid(): line
        for line in figure.axes[0].get_lines()
        if line.get_gid() and not line.get_gid().startswith("paper ")
    }


def _legend(figure) -> list[str]:
    """What the legend says, as drawn (its handles include the paper's, which no line has)."""
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_the_figure_has_one_line_per_run_in_the_papers_styles(histories):
    figure = build_figure5(histories)
    curves = _curves(figure)
    expected = {
        "full-mnist/history.json": ("red", "-"),
        "retrain-mnist/history.json": ("red", "--"),
        "full-cifar10/history.json": ("blue", "-"),
        "retrain-cifar10/history.json": ("blue", "--"),
    }
    assert sorted(curves) == sorted(expected)  # the pretraining run is not a curve of Figure 5
    for source, (colour, linestyle) in expected.items():
        line = curves[source]
        assert (to_hex(line.get_color()), line.get_linestyle()) == (to_hex(colour), linestyle)
        epochs = histories[source].epochs
        assert list(line.get_xdata()) == [e.epoch for e in epochs]
        assert list(line.get_ydata()) == pytest.approx([100 * e.test_accuracy for e in epochs])
    assert _legend(figure) == [
        "MNIST full training",
        "MNIST retraining",
        "CIFAR-10 full training",
        "CIFAR-10 retraining",
        "learning-rate drop",
        "the paper's final accuracy (Table III)",
    ]
    assert "Epoch" in figure.axes[0].get_xlabel() and "%" in figure.axes[0].get_ylabel()


def _drops(figure) -> list[float]:
    lines = [line for line in figure.axes[0].get_lines() if not line.get_gid()]
    assert all(line.get_linestyle() == ":" for line in lines)
    return [line.get_xdata()[0] for line in lines]


def test_the_learning_rate_drop_is_read_from_the_histories(histories):
    assert _drops(build_figure5(histories)) == [4]
    for source, history in histories.items():
        lrs = [0.01, 0.01, 0.001, 0.001, 0.001, 0.0001]
        epochs = tuple(replace(e, lr=lr) for e, lr in zip(history.epochs, lrs, strict=True))
        histories[source] = replace(history, epochs=epochs)
    assert _drops(build_figure5(histories)) == [2, 5]


def test_further_datasets_take_further_colours_and_follow_the_papers_rows(tmp_path, histories):
    full = histories["full-mnist/history.json"]
    for dataset in ["svhn", "cifar100", "my_set"]:
        histories[f"full-{dataset}/history.json"] = replace(full, dataset=dataset)
    curves = _curves(build_figure5(histories))
    colours = {source: to_hex(line.get_color()) for source, line in curves.items()}
    assert colours["full-cifar100/history.json"] == to_hex("green")
    further = {colours["full-svhn/history.json"], colours["full-my_set/history.json"]}
    assert len(further) == 2 and not further & {to_hex(c) for c in ("red", "blue", "green")}

    write_table3(histories, tmp_path)
    datasets = [row.split(" | ")[0] for row in table_rows((tmp_path / "table3.md").read_text())]
    transfer = datasets[1 : datasets.index("| Pretraining dataset")]
    assert transfer == ["| MNIST", "| CIFAR-10", "| CIFAR-100", "| my_set", "| svhn"]
    assert r"my\_set & 5 & " in (tmp_path / "table3.tex").read_text(encoding="utf-8")
    assert "Not run here" not in (tmp_path / "table3.md").read_text()  # every paper dataset ran


def _regenerate(out: Path) -> dict[str, bytes]:
    regenerate_tables(FIXTURES, out)
    regenerate_figures(FIXTURES, out)
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def test_regenerating_gives_byte_identical_files_and_prints_nothing(tmp_path, capsys):
    first = _regenerate(tmp_path / "a")
    second = _regenerate(tmp_path / "b")
    again = _regenerate(tmp_path / "a")
    assert first == second == again
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(OUTPUTS)
    assert b"CreationDate" not in first["figure5.pdf"] and b"Producer" not in first["figure5.pdf"]
    assert b"Software" not in first["figure5.png"]
    assert capsys.readouterr() == ("", "")


SUBPROCESS = """
import sys

class RefuseTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError("figures must not import " + name)

sys.meta_path.insert(0, RefuseTensorFlow())
from paper_repro.reports import regenerate_figures, regenerate_tables

regenerate_tables(sys.argv[1], sys.argv[2])
regenerate_figures(sys.argv[1], sys.argv[2])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
assert not loaded, loaded
"""


def test_figures_work_without_tensorflow_and_ignore_hash_seed_and_matplotlibrc(tmp_path):
    config = tmp_path / "mplconfig"
    config.mkdir()
    (config / "matplotlibrc").write_text("lines.linewidth: 6\nfont.size: 20\nfigure.dpi: 40\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONHASHSEED": "12345",
        "MPLCONFIGDIR": str(config),
    }
    out = tmp_path / "subprocess"
    subprocess.run(
        [sys.executable, "-c", SUBPROCESS, str(FIXTURES), str(out)],
        env=env,
        cwd=tmp_path,
        check=True,
    )
    here = _regenerate(tmp_path / "here")
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == here


def _with_accuracies(history, accuracies, seconds, cache=None):
    epochs = tuple(
        EpochRecord(i + 1, 0.001, 1.0, 0.5, accuracy, seconds)
        for i, accuracy in enumerate(accuracies)
    )
    return replace(history, epochs=epochs, cache=cache)


def test_time_to_accuracy_counts_epochs_and_cache_build_until_the_target(tmp_path, histories):
    full = histories["full-mnist/history.json"]
    retrain = histories["retrain-mnist/history.json"]
    cache = CacheRecord("mnist-train", "mnist-test", build_seconds=30.0, reused=True)
    runs = {
        "full.history.json": _with_accuracies(full, [0.5, 0.9, 0.95], 100.0),
        "retrain.history.json": _with_accuracies(retrain, [0.7, 0.8, 0.85], 40.0),
        "cached.history.json": _with_accuracies(retrain, [0.6, 0.82, 0.84], 5.0, cache),
    }
    write_time_to_accuracy(runs, tmp_path)
    markdown = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    # Target: the best accuracy every mode reaches, 84 % (cached). Full reaches it in epoch 2
    # (200 s), retrain in epoch 3 (120 s), cached in epoch 3 (30 + 15 s).
    assert row_of(markdown, "MNIST") == [
        "MNIST", "84.00", "200 (2)", "120 (3)", "45 (3)", "30", "1.67", "4.44",
    ]  # fmt: skip
    write_time_to_accuracy(runs, tmp_path, target=0.9)
    markdown = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    row = row_of(markdown, "MNIST")
    assert row[2] == "200 (2)" and row[3].startswith("—[^") and row[7] == "—"
    # Named by experiment and seed, not by the file its history is in.
    assert "retrain-mnist, seed 0 does not reach the target in 3 epochs" in markdown
    assert "retrain.history.json does not reach" not in markdown


def test_times_from_one_place_are_said_to_be_and_several_are_marked(tmp_path, histories):
    """Seconds from other machines or commits are never compared silently."""
    write_time_to_accuracy(histories, tmp_path)
    markdown = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    here = "commit 4a8a614, CPU (2 cores), host fixture-host"
    assert f"Every time was measured at {here}." in markdown and "timed at" not in markdown
    key = "retrain-mnist/history.json"
    other = replace(histories[key].provenance, git_commit="0123456789abcdef+dirty", host="other")
    histories[key] = replace(histories[key], provenance=other)
    write_time_to_accuracy(histories, tmp_path)
    markdown = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    there = "commit 0123456+dirty, CPU (2 cores), host other"
    assert "The times come from 2 different machines or code versions" in markdown
    full, retrain, ratio = (row_of(markdown, "MNIST")[i] for i in (2, 3, 6))
    assert full.endswith(footnote(markdown, f"timed at {here}"))
    assert retrain.endswith(footnote(markdown, f"timed at {there}"))
    mixed = f"combines seconds from different machines or code versions: {there}; {here}"
    assert ratio.endswith(footnote(markdown, mixed))
    assert not row_of(markdown, "CIFAR-10")[6].endswith("]")  # its runs share one place
    write_table3(histories, tmp_path)
    table3 = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert row_of(table3, "MNIST")[-1].endswith(footnote(table3, mixed))


def test_a_cached_retraining_is_its_own_curve_and_not_table_iiis_retraining(tmp_path, histories):
    retrain = histories["retrain-mnist/history.json"]
    cache = CacheRecord("mnist-train", "mnist-test", build_seconds=30.0, reused=False)
    histories["retrain-mnist-cached.history.json"] = replace(
        retrain, final=replace(retrain.final, top1=0.5), cache=cache
    )
    write_table3(histories, tmp_path)
    table = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert row_of(table, "MNIST")[4] == f"{100 * retrain.final.top1:.2f}"
    labels = _legend(build_figure5(histories))
    assert "MNIST retraining on precomputed features" in labels and "MNIST retraining" in labels
    assert "retraining ran on cached features only" not in table


def test_a_retraining_run_on_cached_features_only_is_table_iiis_with_its_build_time(
    tmp_path, histories
):
    """Mini retrains (and runs its control) on cached features only: Table III shows those runs,
    says so, and times them with their caches' build."""
    full = histories["full-mnist/history.json"]
    retrain = histories.pop("retrain-mnist/history.json")
    cache = CacheRecord("mnist-train", "mnist-test", build_seconds=30.0, reused=False)
    cached = _with_accuracies(retrain, [0.7, 0.8], 35.0, cache)
    histories["retrain-mnist-cached.history.json"] = replace(
        cached, final=replace(retrain.final, top1=0.5)
    )
    control = _with_accuracies(retrain, [0.3, 0.4], 35.0, cache)
    control = replace(control, start="random-features", final=replace(retrain.final, top1=0.25))
    histories["retrain-random-mnist-cached.history.json"] = control
    histories["full-mnist/history.json"] = _with_accuracies(full, [0.75, 0.9], 100.0)
    write_table3(histories, tmp_path)
    table = (tmp_path / "table3.md").read_text(encoding="utf-8")
    retraining, control_value, ratio = (row_of(table, "MNIST")[i] for i in (4, 6, -1))
    # Full: 200 s of epochs; cached: 30 s of build + 70 s of epochs.
    assert (retraining, control_value, ratio) == ("50.00", "25.00", "2.00")
    assert "retraining ran on cached features only" in " ".join(table.split())
    write_time_to_accuracy(histories, tmp_path)
    times = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    # Target 80 %: full at epoch 2 (200 s), cached at epoch 2 (100 s), the control never.
    row = row_of(times, "MNIST")
    assert (row[2], row[4], row[7]) == ("200 (2)", "100 (2)", "2.00")
    assert row[8].startswith("—[^")


def test_pretraining_shows_the_centre_crop_beside_the_multi_crop_accuracy(tmp_path, histories):
    """Caffe's TEST phase scores the centre crop: the paper's 59.23 % most likely is one."""
    key = "pretrain-cifar10-0to4.history.json"
    final = dataclasses.replace(histories[key].final, center_top1=0.6125, center_top5=0.98)
    histories[key] = dataclasses.replace(histories[key], final=final)
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    na = f"n/a{footnote(markdown, FIVE_CLASSES)}"  # top-5 of 5 classes
    assert row_of(markdown, "CIFAR-10", "10", "67.95")[6:] == ["61.25", na]
    line = csv_values(tmp_path / "table3.csv")[
        ("pretrain", "cifar10", "mini", "Top-1, centre crop")
    ]
    assert line["value"] == "61.25"


def _seeded(history, seed, top1, accuracies, seconds=10.0):
    """A copy of ``history`` as the run of another seed, with its own numbers."""
    epochs = tuple(
        EpochRecord(i + 1, 0.001, 1.0, 0.5, accuracy, seconds)
        for i, accuracy in enumerate(accuracies)
    )
    return replace(history, seed=seed, epochs=epochs, final=replace(history.final, top1=top1))


@pytest.fixture
def three_seeds(histories):
    """MNIST full and retrain, seeds 0-2, with hand-made numbers (the others left as they are)."""
    full, retrain = histories["full-mnist/history.json"], histories["retrain-mnist/history.json"]
    runs = {k: h for k, h in histories.items() if "mnist" not in k}
    for seed, top1, curve in ((0, 0.90, [0.5, 0.8, 0.9]), (1, 0.92, [0.6, 0.7, 0.95]),
                              (2, 0.97, [0.4, 0.9, 0.97])):  # fmt: skip
        runs[f"full-mnist-seed{seed}.history.json"] = _seeded(full, seed, top1, curve, 100.0)
    for seed, top1, curve in ((0, 0.80, [0.70, 0.8, 0.8]), (1, 0.84, [0.74, 0.84, 0.84]),
                              (2, 0.82, [0.72, 0.82, 0.82])):  # fmt: skip
        runs[f"retrain-mnist-seed{seed}.history.json"] = _seeded(retrain, seed, top1, curve)
    return runs


def test_seeds_give_mean_sample_std_range_and_count(tmp_path, three_seeds):
    write_table3(three_seeds, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    row = row_of(markdown, "MNIST")
    # Full: 90, 92, 97 -> mean 93, sample std sqrt(13) = 3.61. Retrain: 80, 84, 82 -> 82 ± 2.
    assert (row[2], row[4]) == ("93.00 ± 3.61 (n=3)", "82.00 ± 2.00 (n=3)")
    # Full's mean curve 50, 80, 94 reaches retraining's mean epoch 1 (72) at epoch 2; 300 / 30 s.
    assert (row[7], row[9]) == ("2", "10.00")
    assert "Seeds: 0, 1, 2." in markdown
    line = csv_values(tmp_path / "table3.csv")[("transfer", "mnist", "mini", "Full training")]
    assert (line["seeds"], line["min"], line["max"]) == ("3", "90.00", "97.00")
    cifar = csv_values(tmp_path / "table3.csv")[("transfer", "cifar10", "mini", "Retraining")]
    assert (cifar["value"], cifar["seeds"]) == ("73.98", "1")  # one seed: the plain value


def test_time_to_accuracy_over_seeds(tmp_path, three_seeds):
    write_time_to_accuracy(three_seeds, tmp_path)
    markdown = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    # Target: the lowest best accuracy of any run, 80 % (retrain seed 0). Full: 200, 300, 200 s
    # (epochs 2, 3, 2); retrain: 20, 20, 20 s (epoch 2 each).
    row = row_of(markdown, "MNIST")
    assert row[1:4] == ["80.00", "233 ± 58 (n=3) (2-3)", "20 ± 0 (n=3) (2)"]
    assert row[6] == f"{(700 / 3) / 20:.2f}"
    cell = csv_values(tmp_path / "time_to_accuracy.csv")[
        ("time_to_accuracy", "mnist", "mini", "Full training: s (epoch)")
    ]
    assert (cell["seeds"], cell["min"], cell["max"]) == ("3", "200", "300")
    write_time_to_accuracy(three_seeds, tmp_path, target=0.95)
    markdown = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    assert row_of(markdown, "MNIST")[2].startswith("300 ± 0 (n=2) (3)[^")  # seed 0 misses it
    assert "full-mnist, seed 0 does not reach the target in 3 epochs" in markdown


def test_the_figure_draws_the_mean_over_seeds_in_a_min_max_band(three_seeds):
    figure = build_figure5(three_seeds)
    sources = " ".join(f"full-mnist-seed{seed}.history.json" for seed in range(3))
    line = _curves(figure)[sources]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx([50.0, 80.0, 94.0])
    (band,) = [c for c in figure.axes[0].collections if c.get_gid() == f"{sources} band"]
    vertices = {tuple(v) for v in band.get_paths()[0].vertices.round(6)}
    assert {(1, 40), (2, 70), (3, 90), (1, 60), (2, 90), (3, 97)} <= vertices
    assert to_hex(band.get_facecolor()[0][:3]) == to_hex("red")
    assert "mean over seeds 0, 1, 2, band min-max" in figure.axes[0].get_title()
    cifar = _curves(figure)["full-cifar10/history.json"]  # one seed: its own line, no band
    assert not [c for c in figure.axes[0].collections if "cifar10" in (c.get_gid() or "")]
    assert cifar.get_linestyle() == "-"


def test_the_random_features_control_has_its_column_and_dotted_line(tmp_path, histories):
    retrain = histories["retrain-mnist/history.json"]
    control = replace(
        retrain, experiment="retrain-random-mnist", start="random-features",
        final=replace(retrain.final, top1=0.889),
    )  # fmt: skip
    histories["retrain-random-mnist.history.json"] = control
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    header = row_of(markdown, "Dataset")
    column = header.index("Retraining, random features (control)")
    assert header[column - 1] == "Retraining (paper)"
    assert row_of(markdown, "MNIST")[column] == "88.90"
    assert row_of(markdown, "MNIST")[4] == f"{100 * retrain.final.top1:.2f}"  # unchanged
    assert row_of(markdown, "CIFAR-10")[column].startswith("—[^")
    assert "no retrain-random history for cifar10 in preset mini" in markdown
    assert "untrained" in markdown.split("\n\n")[1]  # the caption says what the control is
    line = _curves(build_figure5(histories))["retrain-random-mnist.history.json"]
    assert (to_hex(line.get_color()), line.get_linestyle()) == (to_hex("red"), ":")
    assert line.get_label() == "MNIST retraining, random features (control)"
    write_time_to_accuracy(histories, tmp_path)
    times = (tmp_path / "time_to_accuracy.md").read_text(encoding="utf-8")
    assert row_of(times, "Dataset")[-1] == "Retraining, random features (control): s (epoch)"
    assert re.fullmatch(r"\d+ \(\d\)", row_of(times, "MNIST")[-1])


# Each mini's committed outputs folder, its histories under histories/mini: the current one in
# figures/, the earlier recipes' in folders of their own beside it.
COMMITTED = [
    folder
    for folder in (REPO / "figures", *sorted((REPO / "figures").iterdir()))
    if (folder / "histories" / "mini").is_dir()
]


@pytest.mark.parametrize("out", COMMITTED, ids=lambda folder: folder.name)
def test_the_legend_hides_no_data_of_the_committed_figure(out):
    """Its box, on the drawn canvas, overlaps the extent of no curve, band or marker line."""
    figure = build_figure5(load_histories(out / "histories" / "mini"))
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    (axes,) = figure.axes
    legend = axes.get_legend().get_window_extent(renderer)
    drawn = [*axes.lines, *axes.collections]
    assert len(axes.lines) >= 7  # the mini figure's curves and its learning-rate drop
    hidden = [a.get_label() for a in drawn if legend.overlaps(a.get_window_extent(renderer))]
    assert not hidden


@pytest.mark.parametrize("out", COMMITTED, ids=lambda folder: folder.name)
def test_the_committed_outputs_regenerate_byte_for_byte(tmp_path, out):
    """Every committed table and figure is what its committed histories regenerate."""
    regenerate_tables(out / "histories" / "mini", tmp_path)
    regenerate_figures(out / "histories" / "mini", tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_weights_that_stand_in_for_pretraining_are_named_in_its_row(tmp_path, histories):
    """`reproduce --weights caffenet.keras`: no pretraining run; its row says what replaced it."""
    del histories["pretrain-cifar10-0to4.history.json"]
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    weights = histories["retrain-mnist/history.json"].provenance.weights
    note = (
        f"no pretrain history in preset mini; its retrainings started from the weights "
        f"{weights.path} (sha256 {weights.sha256[:12]})"
    )
    assert row_of(markdown, f"—{footnote(markdown, note)}")


def test_time_by_phase_puts_each_runs_phases_beside_its_training(tmp_path, histories):
    full = histories["full-mnist/history.json"]  # the fixture has no phase record
    assert write_time_by_phase({"full": full}, tmp_path) == []
    epochs = tuple(replace(e, wall_seconds=10.0) for e in full.epochs)
    training = 10.0 * len(epochs)
    phases = dict.fromkeys(PHASES, 1.0) | {"cache": 0.0, "total": training + 20.0}
    timed = replace(full, epochs=epochs, final=replace(full.final, wall_seconds=5.0),
                    phases=phases)  # fmt: skip
    write_time_by_phase({"b.history.json": timed, "a.history.json": full}, tmp_path)
    markdown = (tmp_path / "time_by_phase.md").read_text(encoding="utf-8")
    # data, model, cache, training steps, epoch tests, checkpoints, final evaluation (5), model
    # save, other (the total less the 10 s of the rest), total; a run without phases is left out.
    assert row_of(markdown, "full-mnist, seed 0")[1:] == [
        "1.0", "1.0", "0.0", f"{training:.1f}", "1.0", "1.0", "5.0", "1.0", "10.0",
        f"{training + 20:.1f}",
    ]  # fmt: skip
    share = row_of(markdown, "share of the job")[4]
    assert share == f"{100 * training / (training + 20):.1f}%"
    assert "history.json" not in markdown and "**all 1 runs**" in markdown
