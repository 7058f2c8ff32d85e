"""The options several commands share, declared once as argparse parents.

Help texts here define options; they are not messages (``tests/test_messages.py`` reads only
the ``raise`` statements of the command-line modules as messages).
"""

from __future__ import annotations

import argparse
import sys

from paper_repro.experiments import PRESETS

# The preset train and reproduce default to: the CPU-sized analog that runs on MNIST and CIFAR-10.
DEFAULT_PRESET = "mini"
PRESET_HELP = (
    f"{', '.join(PRESETS)} (default: {DEFAULT_PRESET}: the CPU-sized analog; "
    "paper for the paper's settings, on a GPU)"
)
DATA_DIR_HELP = "tfds data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"


def log_options() -> argparse.ArgumentParser:
    """``--quiet`` / ``--verbose``, for the commands that run TensorFlow, as an argparse parent."""
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet", action="store_true", help="no progress output (results and errors still print)"
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="let TensorFlow's start-up and info messages (absl, oneDNN) through to stderr",
    )
    return p


def tensorflow_command(
    sub: argparse._SubParsersAction, name: str, about: str, *parents: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """A subcommand that runs TensorFlow: it takes ``--quiet`` and ``--verbose`` (``main``
    imports TensorFlow for it, quietly unless ``--verbose``)."""
    return sub.add_parser(name, parents=[log_options(), *parents], help=about)


def progress(args: argparse.Namespace) -> int:
    """Keras' ``verbose`` for this run: a progress bar on a terminal, one line per epoch (and per
    evaluation) in a file or pipe, where a bar's carriage returns would make megabytes, or none."""
    if args.quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def shared_run_options(
    *, which: str, runs_dir: str = "runs", runs_dir_help: str = "where run directories go"
) -> argparse.ArgumentParser:
    """The flags of every command that trains (``train``, ``reproduce``, ``study``), as an
    argparse parent.

    A new parent per command: argparse shares a parent's actions with its children, so a change
    to one child's option would otherwise change the other's. ``which`` names the runs they apply
    to.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--runs-dir", default=runs_dir, help=f"{runs_dir_help} (default: {runs_dir})")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help=f"change a setting of {which}",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="train again, also when finished")
    p.add_argument(
        "--download", action="store_true", help="let tfds download a dataset that is missing"
    )
    return p


def run_options(*, which: str) -> argparse.ArgumentParser:
    """The flags ``train`` and ``reproduce`` share beyond those of every training command."""
    p = argparse.ArgumentParser(add_help=False, parents=[shared_run_options(which=which)])
    p.add_argument("--preset", default=DEFAULT_PRESET, help=PRESET_HELP)
    p.add_argument("--seed", type=int, help="the runs' seed (default: 0)")
    p.add_argument(
        "--cache-features",
        action="store_true",
        help="retrain runs: compute the frozen features once per view (10 crops) and train the "
        "classifier on them (cache under RUNS_DIR/feature-cache; --set cache_dtype=float16, "
        "--set cache_views=5)",
    )
    return p


def finished_runs_options(images: str) -> argparse.ArgumentParser:
    """The flags of the commands that measure finished runs (``feature-activity``, ``probe``);
    ``images`` says which images ``--images N`` takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    p.add_argument("--images", type=int, metavar="N", help=f"{images} (default: all)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    return p
