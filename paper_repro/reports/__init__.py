"""Table III and Figure 5 of the paper, regenerated from saved run histories alone.

Nothing here imports TensorFlow or Keras: the tables and the figure can be remade on any machine
with matplotlib, from the histories committed under ``figures/``. Outputs are byte-for-byte
reproducible (no timestamps, no absolute paths, no hash-ordered iteration, matplotlib's own
defaults instead of a user's matplotlibrc) and written atomically, so regenerating shows a diff
only when a number changed.

Table III (``table3``), the time-to-accuracy table (``time_to_accuracy``) and Figure 5
(``figure5``) are three views of one grouping of histories (``index``: preset, dataset, variant,
seeds); the tables share one model and its Markdown, LaTeX and CSV renderings (``table``). What
they show of several seeds (mean ± standard deviation, min-max bands) is computed in
``paper_repro.seeds``. Beside full training and retraining, each control (the random-features
control, and the oracle: ``paper_repro.arms``) gets a column in both tables and a line of its own
in Figure 5 as soon as any of its histories is present; without one, the tables stay as they were.
"""

from paper_repro.reports.figure5 import build_figure5, write_figure5
from paper_repro.reports.index import load_histories
from paper_repro.reports.regenerate import regenerate_figures, regenerate_tables
from paper_repro.reports.table3 import write_table3
from paper_repro.reports.time_to_accuracy import write_time_to_accuracy

__all__ = [
    "build_figure5",
    "load_histories",
    "regenerate_figures",
    "regenerate_tables",
    "write_figure5",
    "write_table3",
    "write_time_to_accuracy",
]
