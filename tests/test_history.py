"""The history record: exact round trip, atomic save, and errors that name the file and field."""

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from paper_repro.errors import UserError
from paper_repro.history import (
    PHASES,
    CacheRecord,
    History,
    HistoryError,
    load_history,
    save_history,
)
from paper_repro.runs import find_histories

FIXTURES = Path(__file__).parent / "fixtures" / "histories"
RETRAIN = FIXTURES / "retrain-cifar10" / "history.json"


def fixture_dict() -> dict:
    return json.loads(RETRAIN.read_text())


def test_every_fixture_round_trips_to_the_same_json():
    paths = find_histories(FIXTURES)
    assert len(paths) == 5
    for path in paths:
        assert load_history(path).to_dict() == json.loads(path.read_text())


def test_save_writes_the_file_that_load_reads_back(tmp_path):
    history = load_history(RETRAIN)
    target = tmp_path / "runs" / "retrain-cifar10" / "history.json"
    save_history(history, target)
    assert load_history(target) == history
    # Schema key order and two-space indent: a saved file diffs cleanly against a committed one.
    assert target.read_text() == RETRAIN.read_text()


def test_a_running_history_is_extended_epoch_by_epoch(tmp_path):
    finished = load_history(RETRAIN)
    target = tmp_path / "history.json"
    running = replace(finished, epochs=finished.epochs[:2], final=None, status="running")
    save_history(running, target)
    extended = replace(running, epochs=(*running.epochs, finished.epochs[2]))
    save_history(extended, target)
    loaded = load_history(target)
    assert [e.epoch for e in loaded.epochs] == [1, 2, 3]
    assert loaded.status == "running" and loaded.final is None


def test_save_refuses_an_invalid_history_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "history.json"
    good = load_history(RETRAIN)
    save_history(good, target)
    before = target.read_bytes()
    skips_epoch_one = replace(good, epochs=good.epochs[1:])
    with pytest.raises(UserError, match=r"epochs\[0\]\.epoch must be 1 "):
        save_history(skips_epoch_one, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def _set(path: str, value):
    """A mutation of the fixture dict at a dotted path with [i] indices, for the cases below."""

    def mutate(data):
        *parents, last = path.replace("[", ".").replace("]", "").split(".")
        for part in parents:
            data = data[int(part)] if isinstance(data, list) else data[part]
        if value is _DELETE:
            del data[last]
        else:
            data[int(last) if isinstance(data, list) else last] = value

    return mutate


_DELETE = object()

MALFORMED = [
    (
        _set("epochs[3].test_accuracy", "abc"),
        'epochs[3].test_accuracy must be a number in [0, 1], got "abc"',
    ),
    (_set("epochs[3].test_accuracy", 1.2), "epochs[3].test_accuracy must be a number in [0, 1]"),
    (_set("epochs[2].epoch", 4), "epochs[2].epoch must be 3 (epochs are numbered 1..n), got 4"),
    (_set("epochs[1].lr", _DELETE), "epochs[1].lr is missing"),
    (_set("epochs[0].lr", 0), "epochs[0].lr must be a finite number > 0, got 0"),
    (_set("epochs[0].wall_seconds", -1.0), "epochs[0].wall_seconds must be a finite number >= 0"),
    (_set("epochs[0].test_acc", 0.5), "epochs[0].test_acc is not a field of paper_repro.history/1"),
    (_set("epochs", {}), "epochs must be an array, got {}"),
    (_set("mode", "finetune"), 'mode must be one of "pretrain", "full", "retrain", got "finetune"'),
    (_set("schema", "paper_repro.history/2"), 'schema must be "paper_repro.history/1"'),
    (_set("seed", True), "seed must be an integer, got true"),
    (_set("preset", ""), 'preset must be a non-empty string, got ""'),
    (_set("final", None), 'final must be set exactly when status is "finished", got null'),
    (
        _set("diverged", "the loss became nan"),
        'diverged must be set exactly when status is "diverged"',
    ),
    (_set("final.crops", 3), "final.crops must be one of 1, 5, 10, got 3"),
    (_set("final.top5", 0.5), "final.top5 must be >= top1 (0.7398), got 0.5"),
    (_set("provenance.started", "yesterday"), "provenance.started must be an ISO-8601 time"),
    (_set("provenance.weights.sha256", "abc"), "provenance.weights.sha256 must be 64 lowercase"),
    (_set("provenance.versions.keras", 3), "provenance.versions.keras must be a non-empty string"),
    (_set("config", []), "config must be an object, got []"),
]


@pytest.mark.parametrize(("mutate", "message"), MALFORMED)
def test_a_malformed_history_is_refused_naming_the_file_and_the_field(tmp_path, mutate, message):
    data = fixture_dict()
    mutate(data)
    path = tmp_path / "runs" / "x" / "history.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        load_history(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {message}")
    assert "\n" not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ("[]", "the history must be an object, got []")],
)
def test_a_file_that_is_not_a_history_object_is_refused(tmp_path, content, message):
    path = tmp_path / "history.json"
    path.write_text(content)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}: {re.escape(message)}"):
        load_history(path)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such history file"):
        load_history(tmp_path / "history.json")


def test_a_diverged_loss_and_a_utc_z_time_are_valid(tmp_path):
    data = fixture_dict()
    data["epochs"][0]["train_loss"] = math.nan
    data["provenance"]["started"] = "2025-11-29T20:39:47Z"
    path = tmp_path / "history.json"
    path.write_text(json.dumps(data))
    history = load_history(path)
    save_history(history, path)
    assert math.isnan(load_history(path).epochs[0].train_loss)


def test_a_diverged_run_round_trips_without_a_final_evaluation(tmp_path):
    history = replace(
        load_history(RETRAIN), status="diverged", final=None, diverged="the loss became nan"
    )
    save_history(history, tmp_path / "h.json")
    assert load_history(tmp_path / "h.json") == history
    with pytest.raises(UserError, match='final must be set exactly when status is "finished"'):
        save_history(replace(history, final=load_history(RETRAIN).final), tmp_path / "h.json")


def test_a_cache_record_round_trips_and_is_validated(tmp_path):
    history = replace(
        load_history(RETRAIN), cache=CacheRecord("train-x", "test-x", 12.5, reused=True)
    )
    save_history(history, tmp_path / "h.json")
    assert load_history(tmp_path / "h.json") == history
    data = history.to_dict()
    data["cache"]["build_seconds"] = -1
    with pytest.raises(HistoryError, match=r"cache\.build_seconds must be a finite number >= 0"):
        History.from_dict(data)


def test_class_names_round_trip_are_validated_and_older_histories_lack_them(tmp_path):
    older = load_history(RETRAIN)  # written before the names were recorded
    assert older.class_names is None and "class_names" not in older.to_dict()
    history = replace(older, class_names=("dog", "frog"))
    save_history(history, tmp_path / "h.json")
    assert load_history(tmp_path / "h.json") == history
    assert json.loads((tmp_path / "h.json").read_text())["class_names"] == ["dog", "frog"]
    bad = [([], r"class_names must name at least one class"),
           (["dog", 3], r"class_names\[1\] must be a non-empty string")]  # fmt: skip
    for names, message in bad:
        with pytest.raises(HistoryError, match=message):
            History.from_dict({**history.to_dict(), "class_names": names})


def test_a_phase_record_round_trips_and_is_validated(tmp_path):
    older = load_history(RETRAIN)  # written before phases were recorded
    assert older.phases is None and "phases" not in older.to_dict()
    history = replace(older, phases=dict.fromkeys(PHASES, 2.5))
    save_history(history, tmp_path / "h.json")
    assert load_history(tmp_path / "h.json") == history
    data = history.to_dict()
    data["phases"]["checkpoints"] = -1
    with pytest.raises(HistoryError, match=r"phases\.checkpoints must be a finite number >= 0"):
        History.from_dict(data)
    del data["phases"]["checkpoints"]
    with pytest.raises(HistoryError, match=r"phases\.checkpoints is missing"):
        History.from_dict(data)
