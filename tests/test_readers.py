"""What a reader of the figures and tables meets: plain words, the paper's values beside the
curves, no curve hidden by another, a short caption with the cited works named, one spelling,
and the time tables keyed by experiment and seed."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from paper_repro import arms, datasets
from paper_repro.history import PHASES, CacheRecord
from paper_repro.job_time import run_name, run_names, time_by_phase
from paper_repro.reports import build_figure5, load_histories, write_table3
from paper_repro.reports.figure5 import MARKERS, PAPER_LABEL, STYLES
from paper_repro.reports.time_to_accuracy import write_time_to_accuracy

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "histories"
FIRST_MINI = REPO / "figures" / "first-mini" / "histories" / "mini"
CACHE = CacheRecord("mnist-train", "mnist-test", build_seconds=30.0, reused=False)


@pytest.fixture
def histories():
    return load_histories(FIXTURES)


@pytest.fixture
def with_cached(histories):
    """The fixture's runs plus a retraining and a control on cached features, on MNIST."""
    retrain = histories["retrain-mnist/history.json"]
    histories["retrain-mnist-cached.history.json"] = replace(retrain, cache=CACHE)
    control = replace(retrain, experiment="retrain-random-mnist", start="random-features")
    histories["retrain-random-mnist-cached.history.json"] = replace(control, cache=CACHE)
    return histories


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def paper_marks(figure) -> dict[str, float]:
    """The paper's marks by gid (``paper DATASET ARM``), each at its one y."""
    marks = {}
    for line in figure.axes[0].get_lines():
        if (line.get_gid() or "").startswith("paper "):
            (y,) = set(line.get_ydata())
            marks[line.get_gid()] = y
    return marks


def curves(figure) -> dict[str, object]:
    return {
        line.get_gid(): line
        for line in figure.axes[0].get_lines()
        if line.get_gid() and not line.get_gid().startswith("paper ")
    }


# Figure 5 --------------------------------------------------------------------------------------


def test_the_legend_names_every_variant_in_plain_words(with_cached):
    labels = legend_texts(build_figure5(with_cached))
    assert "MNIST retraining on precomputed features" in labels
    assert "MNIST retraining, precomputed random features (control)" in labels
    assert "MNIST full training" in labels and "MNIST retraining" in labels
    for label in labels:
        assert "cached" not in label, label
        # No variant or experiment names (retrain-cached, retrain-random): words, not hyphens.
        assert not re.search(r"\b(full|retrain|pretrain)-", label), label


def test_every_declared_variant_has_plain_words_and_a_marker_of_its_own():
    assert len(set(MARKERS.values())) == len(STYLES)
    labels = [label for label, _ in STYLES.values()]
    assert len(set(labels)) == len(labels)
    assert not [label for label in labels if "cached" in label or "retrain-" in label]


def test_the_papers_final_values_are_marked_once_in_the_legend(histories):
    figure = build_figure5(histories)
    paper = {name: datasets.paper_row(name) for name in ("mnist", "cifar10")}
    assert paper_marks(figure) == {
        "paper mnist full": paper["mnist"].full,
        "paper mnist retrain": paper["mnist"].retrain,
        "paper cifar10 full": paper["cifar10"].full,
        "paper cifar10 retrain": paper["cifar10"].retrain,
    }
    assert legend_texts(figure).count(PAPER_LABEL) == 1
    # The marks stand right of the last epoch, each arm in its own column, named under it.
    axes = figure.axes[0]
    last = max(max(line.get_xdata()) for line in curves(figure).values())
    columns = {t.get_text(): t.get_position()[0] for t in axes.get_xticklabels()}
    assert last < columns[arms.FULL.label] < columns[arms.RETRAIN.label]
    for gid in paper_marks(figure):
        (line,) = [line for line in axes.get_lines() if line.get_gid() == gid]
        arm = arms.BY_NAME[gid.split()[-1]]
        assert min(line.get_xdata()) < columns[arm.label] < max(line.get_xdata())


def test_a_dataset_the_paper_does_not_have_gets_no_mark(histories):
    full = histories["full-mnist/history.json"]
    figure = build_figure5({"full-svhn.history.json": replace(full, dataset="svhn")})
    assert paper_marks(figure) == {}
    assert PAPER_LABEL not in legend_texts(figure)
    epochs = [str(epoch.epoch) for epoch in full.epochs]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == epochs


def test_curves_that_run_together_stay_apart_to_the_eye():
    """The first mini's CIFAR-10 retraining on the images and on precomputed features end within
    0.1 points of each other: other markers, the precomputed one hollow and on top."""
    figure = build_figure5(load_histories(FIRST_MINI))
    lines = curves(figure)
    images = lines["retrain-cifar10.history.json"]
    precomputed = lines["retrain-cifar10-cached.history.json"]
    assert abs(images.get_ydata()[-1] - precomputed.get_ydata()[-1]) < 0.1
    assert images.get_marker() != precomputed.get_marker()
    assert precomputed.get_markerfacecolor() == "none" and images.get_markerfacecolor() != "none"
    assert precomputed.get_zorder() > images.get_zorder()
    # Full training's solid lines lie under every broken one, whose gaps then show them.
    full = [line for gid, line in lines.items() if gid.startswith("full-")]
    broken = [line for gid, line in lines.items() if not gid.startswith("full-")]
    assert max(line.get_zorder() for line in full) < min(line.get_zorder() for line in broken)


# Table III -------------------------------------------------------------------------------------


def caption(markdown: str) -> str:
    return markdown.split("\n\n")[1]


def header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| Dataset"))
    return [cell.strip() for cell in line.strip("| ").split(" | ")]


def test_one_preset_is_said_once_not_in_a_column(tmp_path, histories):
    write_table3(histories, tmp_path)
    write_time_to_accuracy(histories, tmp_path)
    for name in ("table3.md", "time_to_accuracy.md"):
        markdown = (tmp_path / name).read_text(encoding="utf-8")
        assert "Preset" not in header(markdown) and "Preset: mini." in markdown
        assert "| mini |" not in markdown
    other = replace(histories["full-mnist/history.json"], preset="paper")
    mixed = {**histories, "paper/full-mnist.history.json": other}
    write_table3(mixed, tmp_path, allow_mixed_presets=True)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert header(markdown)[:2] == ["Dataset", "Preset"]


def test_a_paper_dataset_without_runs_has_no_row_but_a_note(tmp_path, histories):
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert not re.search(r"^\| CIFAR-100 ", markdown, re.MULTILINE)
    assert "cifar100" not in (tmp_path / "table3.csv").read_text(encoding="utf-8")
    assert "Not run here, so not shown: CIFAR-100 (the paper: full training 63.65," in markdown


def test_the_caption_is_short_and_the_cited_works_are_named(tmp_path, histories):
    write_table3(histories, tmp_path)
    markdown = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert len(caption(markdown).split()) <= 40  # it was 170 words before the notes
    assert "Notes:" in markdown and "Epochs to match:" in markdown
    for reference in (datasets.DROPCONNECT, datasets.DSN):
        assert reference.full in markdown
    cells = [row for row in markdown.splitlines() if row.startswith("| MNIST ")]
    assert "99.79, Wan et al. 2013 [22]" in cells[0]
    # Every reference number shown is named: none stands alone.
    named = ("Wan et al. 2013 [22]", "Lee et al. 2015 [23]", "[22] Wan", "[23] Lee")
    for text in named:
        markdown = markdown.replace(text, "")
    assert "[22]" not in markdown and "[23]" not in markdown
    tex = (tmp_path / "table3.tex").read_text(encoding="utf-8")
    assert "Regularization of neural networks using DropConnect" in tex


def test_one_spelling_centre_in_the_tables_and_the_figure(tmp_path, histories):
    write_table3(histories, tmp_path)
    write_time_to_accuracy(histories, tmp_path)
    for name in ("table3.md", "table3.tex", "table3.csv", "time_to_accuracy.md"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert not re.search(r"\bcenter\b", text, re.IGNORECASE), name
    assert "centre" in (tmp_path / "table3.md").read_text(encoding="utf-8")
    axes = build_figure5(histories).axes[0]
    words = " ".join([axes.get_xlabel(), axes.get_ylabel(), axes.get_title()])
    assert "centre" in words and "center" not in words


# The time tables -------------------------------------------------------------------------------


def with_phases(history, seed, cache=None):
    phases = dict.fromkeys(PHASES, 1.0) | {"total": 100.0}
    return replace(history, seed=seed, phases=phases, cache=cache)


def test_run_names_are_experiment_and_seed(histories):
    full = histories["full-mnist/history.json"]
    assert run_name(replace(full, seed=1)) == "full-mnist, seed 1"
    retrain = histories["retrain-mnist/history.json"]
    assert run_name(replace(retrain, cache=CACHE)) == "retrain-mnist (precomputed features), seed 0"
    names = run_names(
        {
            "a/full-mnist.history.json": full,
            "b/full-mnist.history.json": full,  # the same run kept twice
            "full-mnist-smoke.history.json": replace(full, preset="smoke"),
        }
    )
    assert names == {
        "a/full-mnist.history.json": "full-mnist, seed 0, preset mini (a/full-mnist.history.json)",
        "b/full-mnist.history.json": "full-mnist, seed 0, preset mini (b/full-mnist.history.json)",
        "full-mnist-smoke.history.json": "full-mnist, seed 0, preset smoke",
    }


def test_the_time_by_phase_table_is_keyed_by_experiment_and_seed(histories):
    full, retrain = histories["full-mnist/history.json"], histories["retrain-mnist/history.json"]
    runs = {
        "full-mnist-seed10.history.json": with_phases(full, 10),
        "full-mnist-seed2.history.json": with_phases(full, 2),
        "full-mnist.history.json": with_phases(full, 0),
        "retrain-mnist-cached.history.json": with_phases(retrain, 0, CACHE),
        "retrain-mnist.history.json": with_phases(retrain, 0),
    }
    table = time_by_phase(runs)
    # Caption, blank, header, alignment, then a row per run and the job's two rows.
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[4:-2]]
    assert rows == [
        "full-mnist, seed 0",
        "full-mnist, seed 2",
        "full-mnist, seed 10",
        "retrain-mnist, seed 0",
        "retrain-mnist (precomputed features), seed 0",
    ]
    assert ".json" not in table


def test_the_committed_time_tables_name_no_files():
    """The committed tables, as regenerated, key their rows and notes by experiment and seed."""
    for table in REPO.glob("figures/**/time_by_phase.md"):
        rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
        assert not [row for row in rows if ".json" in row], table
    for table in REPO.glob("figures/**/time_to_accuracy.md"):
        text = table.read_text(encoding="utf-8")
        footnotes = [line for line in text.splitlines() if line.startswith("[^")]
        assert not [note for note in footnotes if ".json" in note], table
