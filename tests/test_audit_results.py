"""The audit of what reads histories: unknown keys, tables that compare like with like, the
study's verdict, and damaged histories. Each case breaks one principle on purpose, on committed
histories copied and tampered with, and checks that the command refuses in one line (or lists
what it can) rather than writing a silent wrong number or a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from paper_repro import cli, study, study_table
from paper_repro.errors import UserError
from paper_repro.history import History, HistoryError, load_history
from paper_repro.reports import (
    build_figure5,
    load_histories,
    regenerate_tables,
    write_table3,
    write_time_to_accuracy,
)
from paper_repro.reports.index import run_lines
from paper_repro.runs import find_histories

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / "figures" / "mini-lr-0.001" / "histories" / "mini"
STUDY = REPO / "figures" / "study" / "histories"
DEEP = 200_000


def mini(name: str = "full-mnist", seed: int = 0) -> dict:
    """A committed mini history as JSON, to tamper with."""
    suffix = f"-seed{seed}" if seed else ""
    return json.loads((MINI / f"{name}{suffix}.history.json").read_text())


def write(folder: Path, name: str, data: dict | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the command line; it must fail with exit status 2 and one line on stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def tables(histories: Path, out: Path) -> list[str]:
    return ["regenerate-tables", "--histories", str(histories), "--out", str(out)]


# --- Principle 3: a key this version does not know is refused, never dropped -----------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("learning_rate", ""), ("base_lrr", "did you mean base_lr"), ("Epochs", "did you mean")],
)
def test_an_unknown_setting_is_refused_naming_it_and_the_file(tmp_path, key, suggestion):
    data = mini()
    data["config"][key] = 0.01
    path = write(tmp_path, "full-mnist.history.json", data)
    with pytest.raises(HistoryError) as caught:
        load_history(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: config.{key} is not a setting paper_repro 0.1.0 knows")
    assert suggestion in text and "\n" not in text and "newer" not in text


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (lambda d: d["config"], "config.warmup_schedule"),
        (lambda d: d, "warmup_schedule"),
        (lambda d: d["provenance"], "provenance.warmup_schedule"),
        (lambda d: d["final"], "final.warmup_schedule"),
        (lambda d: d["epochs"][2], "epochs[2].warmup_schedule"),
    ],
)
def test_an_unknown_key_written_by_a_newer_version_says_so(tmp_path, where, field):
    data = mini()
    data["provenance"]["package_version"] = "0.3.0"
    where(data)["warmup_schedule"] = "cosine"
    path = write(tmp_path, "h.history.json", data)
    with pytest.raises(HistoryError) as caught:
        load_history(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {field} is not a")
    assert "paper_repro 0.3.0 wrote this history, newer than this one (0.1.0)" in text


def test_a_newer_schema_says_which_version_reads_it(tmp_path):
    data = {**mini(), "schema": "paper_repro.history/2"}
    data["provenance"]["package_version"] = "1.0.0"
    with pytest.raises(HistoryError, match=r"schema must be .*read it with paper_repro 1\.0\.0"):
        load_history(write(tmp_path, "h.history.json", data))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", "9", 'config.epochs must be an integer, got "9"'),
        ("base_lr", "0.01", 'config.base_lr must be a number, got "0.01"'),
        ("mirror", 1, "config.mirror must be true or false, got 1"),
        ("drop_epochs", 6, "config.drop_epochs must be an array, got 6"),
        ("classes", ["cat"], 'config.classes[0] must be an integer, got "cat"'),
        ("train_subset", 1.5, "config.train_subset must be an integer, got 1.5"),
    ],
)
def test_a_setting_of_the_wrong_type_is_refused(tmp_path, key, value, message):
    """A setting the run could not have had (a resume would crash on it, a table would compare
    it as text) is refused where the history is read."""
    data = mini()
    data["config"][key] = value
    path = write(tmp_path, "h.history.json", data)
    with pytest.raises(HistoryError) as caught:
        load_history(path)
    assert str(caught.value) == f"{path}: {message}"


def test_regenerate_tables_refuses_an_unknown_setting_in_one_line(tmp_path, capsys):
    data = mini()
    data["config"]["lr_warmup"] = 1
    write(tmp_path / "h", "full-mnist.history.json", data)
    err = one_line_error(capsys, tables(tmp_path / "h", tmp_path / "out"))
    assert "full-mnist.history.json: config.lr_warmup is not a setting" in err
    assert not (tmp_path / "out").exists()


def test_the_first_histories_former_setting_names_are_still_read():
    fixture = Path(__file__).parent / "fixtures" / "histories" / "full-mnist" / "history.json"
    history = load_history(fixture)
    assert history.config["lr"] == 0.001 and history.config["lr_drop_after_epoch"] == 4


# --- Principle 5: a table compares like with like ---------------------------------------------


def two_seeds(folder: Path, change: Callable[[dict], None], name: str = "full-mnist") -> Path:
    """Seeds 0 and 1 of one committed run, seed 1's history changed by ``change``."""
    write(folder, f"{name}.history.json", mini(name))
    other = mini(name, seed=1)
    change(other)
    write(folder, f"{name}-seed1.history.json", other)
    return folder


def setting(key: str, value) -> Callable[[dict], None]:
    return lambda data: data["config"].__setitem__(key, value)


SETTINGS = {
    "learning rate": (setting("base_lr", 0.01), "base_lr 0.001 vs 0.01"),
    "batch size": (setting("batch_size", 40), "batch_size 80 vs 40"),
    "epochs": (setting("epochs", 12), "epochs 9 vs 12"),
    "subset": (setting("train_subset", 1000), "train_subset 12000 vs 1000"),
    "test crops": (setting("test_crops", 1), "test_crops 5 vs 1"),
    "classes": (setting("classes", [0, 1]), "classes null vs [0, 1]"),
    "a field added since, set": (setting("warmup_epochs", 1.0), "warmup_epochs 0.0 vs 1.0"),
}


@pytest.mark.parametrize(("change", "differs"), SETTINGS.values(), ids=SETTINGS)
def test_regenerate_tables_refuses_two_seeds_of_other_settings(tmp_path, capsys, change, differs):
    histories = two_seeds(tmp_path / "h", change)
    err = one_line_error(capsys, tables(histories, tmp_path / "out"))
    assert "full-mnist.history.json and full-mnist-seed1.history.json" in err
    assert f"different settings ({differs})" in err and "--histories" in err
    assert "n=2" not in err and not (tmp_path / "out").exists()


REPORTS = {
    "Table III": lambda histories, out: write_table3(histories, out),
    "time to accuracy": lambda histories, out: write_time_to_accuracy(histories, out),
    "Figure 5": lambda histories, out: build_figure5(histories),
}


@pytest.mark.parametrize("report", REPORTS.values(), ids=REPORTS)
def test_every_report_refuses_a_mean_of_other_settings(tmp_path, report):
    """The retraining of mini on cached features, seeds 0 and 1, seed 1 at another step size."""
    histories = load_histories(
        two_seeds(tmp_path / "h", setting("base_lr", 0.003), "retrain-mnist-cached")
    )
    with pytest.raises(UserError, match=r"different settings \(base_lr 0\.001 vs 0\.003\)"):
        report(histories, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _placed_elsewhere(data: dict) -> None:
    data["config"].update(augment_on="host", jit_compile=True)
    data["provenance"].update(host="elsewhere", device="GPU")
    data["provenance"]["weights"] = None


def _older(data: dict) -> None:
    """Written before ``features``, ``target_mean`` and ``warmup_epochs`` were recorded."""
    for key in ("features", "target_mean", "warmup_epochs"):
        data["config"].pop(key, None)


@pytest.mark.parametrize("change", [_placed_elsewhere, _older], ids=["placement", "older"])
def test_seeds_that_differ_only_in_where_they_ran_are_averaged(tmp_path, change):
    histories = two_seeds(tmp_path / "h", change)
    regenerate_tables(histories, tmp_path / "out")
    assert "| 98.75 ± 0.00 (n=2) |" in (tmp_path / "out" / "table3.md").read_text()


def test_the_same_seed_twice_is_one_run_counted_twice(tmp_path, capsys):
    histories = tmp_path / "h"
    write(histories, "full-mnist.history.json", mini())
    write(histories, "copy/full-mnist.history.json", mini())
    err = one_line_error(capsys, tables(histories, tmp_path / "out"))
    assert "copy/full-mnist.history.json and full-mnist.history.json are both seed 0" in err
    assert "the same settings: one run twice" in err


def test_the_same_seed_twice_with_other_settings_names_them(tmp_path, capsys):
    histories = tmp_path / "h"
    write(histories, "full-mnist.history.json", mini())
    other = mini()
    other["config"]["batch_size"] = 40
    write(histories, "rerun/full-mnist.history.json", other)
    err = one_line_error(capsys, tables(histories, tmp_path / "out"))
    assert "different settings (batch_size 80 vs 40)" in err


def test_two_reproduce_calls_into_one_out_refuse_and_keep_the_first_tables(tmp_path, capsys):
    """``reproduce`` keeps its histories under OUT/histories/PRESET and regenerates the tables
    from all of them: a second call with another setting and seed must not average it in."""
    out = tmp_path / "out"
    kept = out / "histories" / "mini"
    write(kept, "full-mnist.history.json", mini())
    regenerate_tables(kept, out)
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = mini(seed=1)
    other["config"]["base_lr"] = 0.01
    write(kept, "full-mnist-seed1.history.json", other)
    with pytest.raises(UserError, match=r"base_lr 0\.001 vs 0\.01.*own --out"):
        regenerate_tables(kept, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == first


# --- The study: like with like, and a verdict only on the histories it needs ------------------


def copy_cells(histories: Path, cells: dict[str, str]) -> Path:
    """Committed study cells copied to ``histories``, each keeping the files matching a glob."""
    for name, pattern in cells.items():
        for path in (STUDY / name).glob(pattern):
            write(histories / name, path.name, path.read_text())
    return histories


def test_study_over_an_empty_folder_writes_no_verdict(tmp_path, capsys):
    err = one_line_error(capsys, ["study", "--out", str(tmp_path)])
    assert "no finished study run under" in err and "paper-repro study baseline" in err
    assert not (tmp_path / "table.md").exists()
    text = study_table.table(tmp_path / "histories")  # the table alone says what is missing
    assert "The new mini takes" not in text and "baseline has 0 seeds with retrain-mnist" in text


def test_study_with_one_seed_per_cell_writes_no_verdict(tmp_path):
    histories = copy_cells(tmp_path, {"baseline": "*cached.history.json",
                                      "fresh-fc67": "*cached.history.json"})  # fmt: skip
    text = study_table.table(histories)
    assert "The new mini takes" not in text
    assert "No verdict on the new mini until rule 1 can weigh every other knob" in text
    assert "baseline has 1 seed with retrain-mnist and retrain-cifar10 finished" in text
    assert "keep_fc67: not decided yet (rule 1 needs 2 seeds: fresh-fc67 has 1 seed" in text


def test_study_with_some_knobs_run_writes_no_verdict(tmp_path):
    """Baseline and fresh-fc67 complete: one knob weighed, the others not run."""
    histories = copy_cells(tmp_path, {"baseline": "*", "fresh-fc67": "*"})
    text = study_table.table(histories)
    assert "keep_fc67: the baseline's; mean: not run yet" in text
    assert "The new mini takes" not in text and "target-mean has 0 seeds" in text
    assert study.mini_cells(study.results(histories)) is None


def test_a_cell_with_one_target_finished_gets_no_verdict(tmp_path):
    """fresh-fc67's MNIST retraining alone: rule 1 weighs the mean over both targets."""
    histories = copy_cells(tmp_path, {"baseline": "*", "fresh-fc67": "retrain-mnist*"})
    found = study.results(histories)
    assert study.verdict(found, "fresh-fc67") is None
    text = study_table.table(histories)
    assert "not decided yet (rule 1 needs 2 seeds: fresh-fc67 has 0 seeds" in text


def test_the_committed_study_still_gives_its_verdict():
    assert "The new mini takes: no-dropout." in study_table.table(STUDY)


def test_study_refuses_a_cell_whose_seeds_have_other_settings(tmp_path, capsys):
    histories = copy_cells(tmp_path / "histories", {"baseline": "*"})
    path = histories / "baseline" / "retrain-mnist-cached-seed1.history.json"
    data = json.loads(path.read_text())
    data["config"]["dropout"] = 0.0
    path.write_text(json.dumps(data))
    err = one_line_error(capsys, ["study", "--out", str(tmp_path)])
    assert "retrain-mnist-cached.history.json and " in err and str(path) in err
    assert "different settings (dropout 0.5 vs 0.0)" in err
    assert not (tmp_path / "table.md").exists()


def test_study_refuses_one_seed_kept_twice(tmp_path):
    histories = copy_cells(tmp_path, {"baseline": "*"})
    kept = histories / "baseline" / "retrain-mnist-cached-seed1.history.json"
    shutil.copy(kept, histories / "baseline" / "retrain-mnist-cached-copy.history.json")
    with pytest.raises(UserError, match="are both seed 1 of retrain-mnist with the same settings"):
        study_table.table(histories)


# --- Principle 7: one damaged history is named, never a traceback or an empty listing ---------


DAMAGED = {
    "truncated JSON": (lambda text: text[: len(text) // 2], "not valid JSON"),
    "empty file": (lambda text: "", "not valid JSON"),
    "wrong type": (
        lambda text: text.replace('"seed": 0', '"seed": "0"'),
        'seed must be an integer, got "0"',
    ),
    "nested 200,000 deep": (lambda text: "[" * DEEP + "]" * DEEP, "nested too deeply"),
    "unknown setting": (
        lambda text: text.replace('"epochs": 9,', '"epochs": 9, "epoch": 9,', 1),
        "config.epoch is not a setting",
    ),
}


@pytest.mark.parametrize(("damage", "problem"), DAMAGED.values(), ids=DAMAGED)
def test_one_damaged_history_does_not_hide_the_other_runs(tmp_path, damage, problem):
    runs = tmp_path / "runs" / "mini"
    for name in ("full-mnist", "pretrain-imagenet", "retrain-mnist-cached"):
        write(runs / name, "history.json", json.dumps(mini(name), indent=2))
    bad = runs / "pretrain-imagenet" / "history.json"
    bad.write_text(damage(bad.read_text()))
    lines = list(run_lines(find_histories(tmp_path / "runs")))
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert lines[0].startswith(f"  {runs / 'full-mnist'}: finished, 9 epochs, top-1 ")
    assert lines[1].startswith(f"  {runs / 'pretrain-imagenet'}: not listed, its history cannot")
    assert f"{bad}: " in lines[1] and problem in lines[1]
    assert lines[2].startswith(f"  {runs / 'retrain-mnist-cached'}: finished, 9 epochs")


def test_a_non_utf8_history_is_named(tmp_path):
    path = tmp_path / "history.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(HistoryError, match="cannot read the history file"):
        load_history(path)


@pytest.mark.parametrize("nesting", ["[", '{"a":'], ids=["arrays", "objects"])
def test_a_history_nested_200000_deep_is_one_line_everywhere(tmp_path, capsys, nesting):
    closing = "]" if nesting == "[" else "}"
    text = nesting * DEEP + "0" + closing * DEEP
    write(tmp_path / "h", "full-mnist.history.json", text)
    write(tmp_path / "study" / "histories" / "baseline", "full-mnist.history.json", text)
    for argv in (
        tables(tmp_path / "h", tmp_path / "out"),
        ["regenerate-figures", "--histories", str(tmp_path / "h"), "--out", str(tmp_path / "o")],
        ["study", "--out", str(tmp_path / "study")],
    ):
        assert "nested too deeply to be a history" in one_line_error(capsys, argv)


def test_a_setting_nested_just_under_the_parser_limit_is_one_line(tmp_path):
    """Deep enough for the validation (not the JSON parser) to reach Python's recursion limit."""
    text = json.dumps(mini()).replace('"epochs": 9,', '"epochs": ' + "[" * 900 + "]" * 900 + ",")
    path = write(tmp_path, "h.history.json", text)
    with pytest.raises(HistoryError) as caught:
        load_history(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{path}: ")


def test_from_dict_of_a_deep_structure_is_a_history_error():
    data = mini()
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    data["config"]["drop_epochs"] = deep
    with pytest.raises(HistoryError, match=r"^deep\.json: nested too deeply to be a history"):
        History.from_dict(data, source="deep.json")


# --- reproduce keeps a history only over the same run's ---------------------------------------


def test_a_kept_history_is_not_replaced_by_a_run_with_other_settings(tmp_path):
    """``reproduce``/``study`` copy each run's history into ``OUT/histories``: a run with other
    settings must not overwrite the kept one the tables were made from; the same run may."""
    from paper_repro.reproduce import _check_replaceable

    kept = write(tmp_path / "kept", "full-mnist.history.json", mini())
    before = kept.read_bytes()
    same = write(tmp_path / "run", "same.json", mini())
    _check_replaceable(kept, same)  # the same run, trained again: replaced
    other = mini()
    other["config"]["base_lr"] = 0.01
    with pytest.raises(UserError, match=r"keeps a run with other settings \(base_lr 0.001 vs 0.01"):
        _check_replaceable(kept, write(tmp_path / "run", "other.json", other))
    assert kept.read_bytes() == before
