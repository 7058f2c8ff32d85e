"""Whether a run's training converged: criterion C of figures/study/PLAN.md (rule A.2).

A run converged when its epoch-mean training loss fell by less than ``TOLERANCE`` of its value
over the ``WINDOW`` epochs before the first learning-rate drop: ``(L[d-3] - L[d]) / L[d-3] <
0.01``, ``L[k]`` epoch k's mean training loss (1-based) and ``d`` the last epoch before the drop.
The criterion reads the epochs before the drop because the drop itself flattens any curve; a run
without a drop is read at its last epoch. It reads training loss alone, never an accuracy, so it
can be recorded without looking at a validation split.

This module imports nothing from TensorFlow: the trainer records the criterion in the history
when a run finishes, and the study's table reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TOLERANCE = 0.01  # the relative fall below which the loss counts as flat
WINDOW = 3  # epochs over which the fall is read


def epoch_before_drop(drop_epochs: Sequence[float], epochs: int) -> int:
    """The last epoch trained wholly at the first learning rate: the whole epochs before the
    first drop (a drop after epoch 6.5 leaves 6), or ``epochs`` for a run that never drops."""
    return min(math.floor(min(drop_epochs)), epochs) if drop_epochs else epochs


def converged(losses: Sequence[float], drop_epochs: Sequence[float]) -> bool | None:
    """Criterion C on a run's epoch-mean training losses (epoch 1 first) and its ``drop_epochs``
    (``RunConfig``); None when fewer than ``WINDOW + 1`` epochs precede the drop, too few to read
    a fall over ``WINDOW`` epochs. A loss already at 0 cannot fall further: converged."""
    last = epoch_before_drop(drop_epochs, len(losses))
    if last < WINDOW + 1:
        return None
    before, after = losses[last - 1 - WINDOW], losses[last - 1]
    return before == 0 or (before - after) / before < TOLERANCE
