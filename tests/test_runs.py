"""Run directories: names, discovery, the pretrained model a run starts from, atomic writes."""

import os

import pytest

from paper_repro.errors import UserError
from paper_repro.experiments import resolve
from paper_repro.runs import (
    MODEL_NAME,
    RunPaths,
    find_histories,
    model_file,
    pretrained_model,
    replace_atomic,
    run_directory,
    write_atomic,
)


def test_run_directories_are_named_by_preset_experiment_cache_and_seed(tmp_path):
    assert run_directory(tmp_path, "mini", "full-mnist", 0) == tmp_path / "mini" / "full-mnist"
    cached = run_directory(tmp_path, "mini", "retrain-mnist", 3, cached=True)
    assert cached == tmp_path / "mini" / "retrain-mnist-cached-seed3"
    paths = RunPaths(cached)
    assert [paths.history.name, paths.checkpoint.name, paths.model.name, paths.logs.name] == [
        "history.json", "checkpoint.keras", "model.keras", "logs",
    ]  # fmt: skip


def test_a_retraining_starts_from_its_presets_pretraining_run_or_the_given_weights(tmp_path):
    retrain, full = resolve("retrain-mnist", "smoke"), resolve("full-mnist", "smoke")
    assert pretrained_model(full, None, tmp_path, "smoke") is None
    with pytest.raises(UserError, match="paper-repro train pretrain-imagenet --preset smoke"):
        pretrained_model(retrain, None, tmp_path, "smoke")
    pretrained = run_directory(tmp_path, "smoke", "pretrain-imagenet", 0) / MODEL_NAME
    pretrained.parent.mkdir(parents=True)
    pretrained.write_bytes(b"")
    assert pretrained_model(retrain, None, tmp_path, "smoke") == pretrained
    assert pretrained_model(full, str(pretrained.parent), tmp_path, "smoke") == pretrained
    with pytest.raises(UserError, match=r"--weights nowhere\.keras: no such model file"):
        pretrained_model(retrain, "nowhere.keras", tmp_path, "smoke")


def test_a_runs_model_is_the_final_one_else_the_checkpoint(tmp_path):
    with pytest.raises(UserError, match="holds no trained model"):
        model_file(tmp_path)
    (tmp_path / "checkpoint.keras").write_bytes(b"")
    assert model_file(tmp_path) == tmp_path / "checkpoint.keras"
    (tmp_path / "model.keras").write_bytes(b"")
    assert model_file(tmp_path) == tmp_path / "model.keras"
    assert model_file(tmp_path / "model.keras") == tmp_path / "model.keras"
    with pytest.raises(UserError, match=r"neither a run directory nor a \.keras file"):
        model_file(tmp_path / "model.h5")


def test_replace_atomic_hands_a_fresh_sibling_with_the_suffix_and_returns_its_result(tmp_path):
    target = tmp_path / "out" / "model.keras"
    seen = []

    def write(path):
        seen.append(path)
        path.write_bytes(b"new")
        return 7

    assert replace_atomic(target, write) == 7
    assert seen[0].parent == target.parent and seen[0].suffix == ".keras"
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


def test_replace_atomic_replaces_a_directory_and_cleans_up_after_a_failing_writer(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_bytes(b"old")

    def write_tree(path):
        (path / "variables").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"new")

    replace_atomic(target, write_tree)
    assert sorted(p.name for p in target.iterdir()) == ["saved_model.pb", "variables"]

    def failing(path):
        path.mkdir()
        (path / "half").write_bytes(b"")
        raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        replace_atomic(target, failing)
    assert [p.name for p in tmp_path.iterdir()] == ["saved_model"]
    assert (target / "saved_model.pb").read_bytes() == b"new"


def test_write_atomic_leaves_the_old_file_and_no_temporary_when_the_rename_fails(
    tmp_path, monkeypatch
):
    target = tmp_path / "table3.md"
    write_atomic(target, b"old")

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table3.md"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_write_atomic_gives_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "history.json", b"{}")
    finally:
        os.umask(previous)
    # A temporary file from tempfile.mkstemp would be 0o600, unreadable by the rest of a team.
    assert (tmp_path / "history.json").stat().st_mode & 0o777 == 0o644


def test_find_histories_finds_both_names_in_a_fixed_order(tmp_path):
    for name in [
        "b/run.history.json",
        "a/history.json",
        "nested/z/history.json",
        "c/other.json",
        "c/xhistory.json",
        "d/.history.json.1a2b3c4d.tmp",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = [p.relative_to(tmp_path).as_posix() for p in find_histories(tmp_path)]
    assert found == ["a/history.json", "b/run.history.json", "nested/z/history.json"]
