"""One trainer for every experiment: fit with the paper's solver, record, checkpoint, resume.

A run lives in a run directory (``paper_repro.runs``: its layout and atomic writer); its history
is rewritten after every epoch, then its checkpoint, and its final model once it has finished.

Distributed (``--strategy mirrored`` or ``multi-worker``, ``paper_repro.cluster``), every worker
runs this same trainer on its part of each global batch. Only the chief writes the run directory;
each other worker writes the same files to a temporary directory of its own, removed when it ends
(tf.distribute's advice: saving may take part in collectives, so every worker saves), and resumes
from the chief's checkpoint, so every worker needs to read the chief's run directory (one
``--runs-dir`` on a shared file system; on one machine, the same folder).

Resuming needs no saved random state: the augmentation, the shuffling and the dropout masks of
epoch ``e`` are all keyed by ``(seed, e)``, and the epoch to continue from is the optimizer's
iteration count in the checkpoint. So a run killed at any moment and rerun with the same command
produces the same history as one that was never interrupted (on CPU, where ops are deterministic).

The modules, in the order a run meets them: ``run`` (the life of a run around its fit: settings,
run directory, resume), ``network`` (the network assembled for the run's arm), ``fit`` (data,
feature cache, Keras' fit), ``callbacks`` (the record and checkpoint after every epoch, the phase
clock), ``finish`` (final evaluation and saved model); ``context`` holds the resolved run they
all read.
"""

from paper_repro.training.callbacks import TrainingDiverged
from paper_repro.training.run import settings_changed, train

__all__ = ["TrainingDiverged", "settings_changed", "train"]
