"""Criterion C of figures/study/PLAN.md (rule A.2) on hand-made loss curves."""

import subprocess
import sys

import pytest

from paper_repro.convergence import converged, epoch_before_drop

# Epochs 17 .. 20 of a 30-epoch run dropping after epoch 20: PLAN.md's (L17 - L20) / L17.
FLAT = [2.0] * 16 + [0.500, 0.499, 0.498, 0.4960] + [0.40] * 10  # falls 0.8 %: converged
FALLING = [2.0] * 16 + [0.500, 0.490, 0.480, 0.4950] + [0.01] * 10  # falls 1.0 %: not


def test_a_flat_loss_before_the_drop_has_converged_and_the_drop_itself_is_not_read():
    assert converged(FLAT, (20,)) is True
    # What comes after the drop is never read: a steep fall there changes nothing.
    assert converged([*FLAT[:20], *[0.001] * 10], (20,)) is True


def test_a_fall_of_one_percent_or_more_over_the_three_epochs_before_the_drop_has_not():
    assert converged(FALLING, (20,)) is False  # exactly 1 %: the criterion is strict
    assert converged([1.0, 1.0, 1.0, 0.8], (4,)) is False
    assert converged([1.0, 0.9, 0.8, 0.7, 0.69], (4,)) is False  # L1 = 1.0 against L4 = 0.7


def test_too_few_epochs_before_the_drop_give_no_verdict():
    assert converged([1.0, 1.0, 1.0, 1.0, 1.0], (3,)) is None  # epochs 0 .. 3 do not exist
    assert converged([1.0, 1.0, 1.0], ()) is None
    assert converged([], (20,)) is None


def test_a_run_without_a_drop_is_read_at_its_last_epoch():
    assert converged([3.0, 2.0, 1.0, 1.0, 1.0, 0.999], ()) is True  # epochs 3 .. 6
    assert converged([3.0, 2.0, 1.0, 1.0, 1.0, 0.5], ()) is False
    # A drop beyond the run's last epoch (a run cut short) reads the last epoch too.
    assert converged([3.0, 2.0, 1.0, 1.0, 1.0, 0.999], (20,)) is True


def test_the_epoch_before_the_drop_is_the_last_whole_epoch_at_the_first_rate():
    assert epoch_before_drop((6,), 9) == 6
    assert epoch_before_drop((6.5, 8), 9) == 6  # the rate falls within epoch 7
    assert epoch_before_drop((20,), 9) == 9
    assert epoch_before_drop((), 9) == 9


def test_a_diverged_loss_is_not_converged_and_a_zero_loss_is():
    assert converged([1.0, 1.0, 1.0, 1.0, float("nan")], ()) is False
    assert converged([1.0, 0.0, 0.0, 0.0, 0.0], ()) is True


@pytest.mark.parametrize("module", ["paper_repro.convergence", "paper_repro.study_table"])
def test_the_criterion_and_the_study_table_import_no_tensorflow(module):
    code = f"import sys, {module}; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
