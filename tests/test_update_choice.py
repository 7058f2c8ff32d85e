"""The solver's update kernel is chosen by measuring it once per machine, kept, and recorded.

Which kernel is faster is never asserted (it is the machine's answer); what is: a forced kernel
is the one that runs and gives the same bits as the other, a measured choice is kept and read
back at no cost, a damaged or foreign file is measured again, and the history records the choice.
"""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY

from paper_repro import fused_update, update_choice
from paper_repro.errors import UserError
from paper_repro.history import History, HistoryError, UpdateRecord, load_history
from paper_repro.solver import CaffeSGD

BATCH = 8
FIXTURES = Path(__file__).parent / "fixtures" / "histories"


def _model(seed: int = 3) -> keras.Model:
    """Two dense layers large enough for the kernels to split the work between threads."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((30,)), keras.layers.Dense(300, "relu"), keras.layers.Dense(200)]
    )


@pytest.fixture
def kernel_built():
    if fused_update.kernel() is None:
        pytest.skip("the fused Caffe update could not be built here (no C++ compiler?)")


@pytest.fixture
def choice_dir(kernel_built, monkeypatch, tmp_path):
    """Choices kept in ``tmp_path`` (the kernel is built, and loaded, before the move)."""
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    monkeypatch.delenv(update_choice.ENV, raising=False)
    return tmp_path


@pytest.fixture
def measured(monkeypatch):
    """``update_choice.measure`` replaced by timings that make TensorFlow's kernel the faster:
    the list of its calls."""
    calls = []

    def fake(optimizer, shapes, kernels, batch):
        calls.append((tuple(map(tuple, shapes)), tuple(kernels), batch))
        return {"caffe": 2e-3, "tensorflow": 1e-3}

    monkeypatch.setattr(update_choice, "measure", fake)
    return calls


def _train(setting: str, monkeypatch) -> tuple[update_choice.Choice, list[str], list]:
    """Three steps of ``_model`` with ``$PAPER_REPRO_UPDATE=setting``: the choice, the kernels
    that ran the decayed weights' updates, and the weights."""
    monkeypatch.setenv(update_choice.ENV, setting)
    model = _model()
    optimizer = CaffeSGD(0.01)
    model.compile(optimizer, "mse")
    choice = update_choice.choose(optimizer, model.trainable_variables, BATCH)
    ran = []
    op = fused_update.kernel()
    monkeypatch.setattr(
        fused_update, "kernel", lambda: lambda **kw: ran.append("caffe") or op(**kw)
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3 * BATCH, 30)), rng.normal(size=(3 * BATCH, 200))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    monkeypatch.setattr(fused_update, "kernel", lambda: op)
    return choice, ran, model.get_weights()


def test_forcing_either_kernel_runs_that_kernel_with_the_same_bits(choice_dir, monkeypatch):
    caffe, ran_caffe, caffe_weights = _train("caffe", monkeypatch)
    tensorflow, ran_tensorflow, tensorflow_weights = _train("tensorflow", monkeypatch)
    assert (caffe.kernel, caffe.seconds) == ("caffe", 0.0)
    assert (tensorflow.kernel, tensorflow.seconds) == ("tensorflow", 0.0)
    assert ran_caffe and not ran_tensorflow  # traced once per decayed weight
    for got, want in zip(tensorflow_weights, caffe_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not list(choice_dir.glob("update-choice-*"))  # forced: nothing measured or kept


def test_the_first_choice_is_measured_and_kept_then_read_back_for_free(choice_dir):
    model, optimizer = _model(), CaffeSGD(0.01)
    first = update_choice.choose(optimizer, model.trainable_variables, BATCH)
    assert first.seconds > 0 and set(first.timings) == {"caffe", "tensorflow"}
    assert first.kernel == min(first.timings, key=first.timings.get)
    assert all(seconds > 0 for seconds in first.timings.values())
    (kept,) = choice_dir.glob("update-choice-*.json")
    saved = json.loads(kept.read_text())
    assert saved["kernel"] == first.kernel and saved["shapes"] == [[30, 300], [300, 200]]
    again = CaffeSGD(0.01)
    again.update_kernel = "neither"
    second = update_choice.choose(again, model.trainable_variables, BATCH)
    assert (second.kernel, second.seconds, second.timings) == (first.kernel, 0.0, {})
    assert again.update_kernel == first.kernel


def test_other_shapes_or_batches_are_measured_apart(choice_dir, measured):
    optimizer = CaffeSGD(0.01)
    update_choice.choose(optimizer, _model().trainable_variables, BATCH)
    update_choice.choose(optimizer, _model().trainable_variables, BATCH)
    update_choice.choose(optimizer, _model().trainable_variables, 2 * BATCH)
    other = keras.Sequential([keras.Input((30,)), keras.layers.Dense(7)])
    choice = update_choice.choose(optimizer, other.trainable_variables, BATCH)
    assert [call[1:] for call in measured] == [(("caffe", "tensorflow"), BATCH),
                                               (("caffe", "tensorflow"), 2 * BATCH),
                                               (("caffe", "tensorflow"), BATCH)]  # fmt: skip
    assert measured[2][0] == ((30, 7),)  # the weights alone: a bias has no decay
    assert choice.kernel == "tensorflow" == optimizer.update_kernel
    assert len(list(choice_dir.glob("update-choice-*.json"))) == 3


# A kept choice damaged, or written elsewhere: the text it is replaced by.
DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "not-json": lambda text: "\x00" + text,
    "another-cpu": lambda text: json.dumps({**json.loads(text), "cpu": "another CPU"}),
    "another-version": lambda text: json.dumps({**json.loads(text), "tensorflow": "1.0.0"}),
    "not-the-faster": lambda text: json.dumps({**json.loads(text), "kernel": "caffe"}),
    "a-timing-missing": lambda text: json.dumps({**json.loads(text), "timings": {"caffe": 1}}),
    "negative": lambda text: json.dumps(
        {**json.loads(text), "timings": {"caffe": -1, "tensorflow": 0}}
    ),
    "a-key-more": lambda text: json.dumps({**json.loads(text), "extra": 1}),
    "an-array": lambda text: "[]",
}


@pytest.mark.parametrize("damage", list(DAMAGES.values()), ids=list(DAMAGES))
def test_a_damaged_or_foreign_choice_file_is_measured_again(choice_dir, measured, damage):
    variables = _model().trainable_variables
    update_choice.choose(CaffeSGD(0.01), variables, BATCH)
    (kept,) = choice_dir.glob("update-choice-*.json")
    kept.write_text(damage(kept.read_text()))
    choice = update_choice.choose(CaffeSGD(0.01), variables, BATCH)
    assert len(measured) == 2 and choice.seconds > 0 and choice.kernel == "tensorflow"
    assert update_choice.choose(CaffeSGD(0.01), variables, BATCH).seconds == 0  # rewritten
    assert len(measured) == 2


def test_with_one_kernel_there_is_nothing_to_measure(choice_dir, measured, monkeypatch):
    monkeypatch.setattr(fused_update, "usable", lambda variable: False)
    optimizer = CaffeSGD(0.01)
    choice = update_choice.choose(optimizer, _model().trainable_variables, BATCH)
    monkeypatch.setenv(update_choice.ENV, "caffe")  # forced, but it cannot serve
    forced = update_choice.choose(optimizer, _model().trainable_variables, BATCH)
    assert choice == forced == update_choice.Choice("tensorflow", 0.0, {})
    assert not measured and not list(choice_dir.glob("*.json"))


def test_an_unknown_setting_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(update_choice.ENV, "fastest")
    with pytest.raises(UserError, match=r"^PAPER_REPRO_UPDATE must be one of auto, caffe, "
                                        r"tensorflow, got 'fastest'$"):  # fmt: skip
        update_choice.choose(CaffeSGD(0.01), _model().trainable_variables, BATCH)


def test_a_choice_that_cannot_be_kept_is_said_once_and_training_goes_on(
    kernel_built, measured, monkeypatch, tmp_path, caplog
):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(blocked / "cache"))
    choice = update_choice.choose(CaffeSGD(0.01), _model().trainable_variables, BATCH)
    assert choice.kernel == "tensorflow" and choice.seconds > 0
    said = [r.getMessage() for r in caplog.records if "could not be kept" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]


def test_the_history_records_the_choice_and_older_histories_still_load():
    record = update_choice.record(update_choice.Choice("caffe", 1.5, {}), None)
    resumed = update_choice.record(update_choice.Choice("tensorflow", 0.0, {}), record)
    assert resumed == UpdateRecord(kernel="tensorflow", choice_seconds=1.5)
    old = load_history(FIXTURES / "full-mnist" / "history.json")
    assert old.update is None and "update" not in old.to_dict()
    new = dataclasses.replace(old, update=resumed)
    data = new.to_dict()
    assert data["update"] == {"kernel": "tensorflow", "choice_seconds": 1.5}
    assert History.from_dict(data) == new
    with pytest.raises(HistoryError, match=r"update\.kernel must be one of"):
        History.from_dict({**data, "update": {"kernel": "fastest", "choice_seconds": 0}})


@pytest.mark.slow
@pytest.mark.usefixtures("tfds_dir")
def test_a_run_records_its_kernel_and_either_kernel_trains_the_same_run(
    choice_dir, monkeypatch, tmp_path
):
    from paper_repro.training import train

    histories = {}
    for kernel in ("caffe", "tensorflow"):
        monkeypatch.setenv(update_choice.ENV, kernel)
        histories[kernel] = train(
            "retrain-random-mnist", "smoke", runs_dir=tmp_path / kernel, verbose=0,
            overrides=[*TINY, "epochs=1", "drop_epochs=1", "cache_features=true"],
        )  # fmt: skip
        assert histories[kernel].update == UpdateRecord(kernel=kernel, choice_seconds=0.0)

    def numbers(history):
        return [dataclasses.replace(e, wall_seconds=0.0) for e in history.epochs], history.final

    caffe, tensorflow = numbers(histories["caffe"]), numbers(histories["tensorflow"])
    assert caffe[0] == tensorflow[0]
    assert (caffe[1].top1, caffe[1].top5) == (tensorflow[1].top1, tensorflow[1].top5)


def test_under_mixed_precision_the_wrapped_solver_takes_the_choice(choice_dir, measured):
    """Keras wraps the solver in a LossScaleOptimizer to scale the loss; the solver inside
    updates, so the choice is its own."""
    solver = CaffeSGD(0.01)
    wrapped = keras.optimizers.LossScaleOptimizer(solver)
    choice = update_choice.choose(wrapped, _model().trainable_variables, BATCH)
    assert choice.kernel == "tensorflow" == solver.update_kernel and len(measured) == 1
