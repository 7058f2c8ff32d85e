"""The options several commands share, declared once as argparse parents.

Help texts here define options; they are not messages (``tests/test_messages.py`` reads only
the ``raise`` statements of the command-line modules as messages).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Sequence
from typing import NoReturn

from paper_repro.experiments import PRESETS, RunConfig

# The preset train and reproduce default to: the CPU-sized analog that runs on MNIST and CIFAR-10.
DEFAULT_PRESET = "mini"
PRESET_HELP = (
    f"{', '.join(PRESETS)} (default: {DEFAULT_PRESET}: the CPU-sized analog; "
    "paper for the paper's settings, on a GPU)"
)
DATA_DIR_HELP = "tfds data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"


class Parser(argparse.ArgumentParser):
    """argparse, with each refusal in one line: ``paper-repro CMD: error: ...; see ...``.

    argparse prints its usage lines before the error, a dozen for ``train``, which push the one
    line that says what was wrong away from the prompt; the hint names the help that has them.
    Subcommands are made with this class too (argparse's default for ``add_subparsers``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:
        """As argparse's, but an unknown flag is refused by the command it was given to (its
        prog and help), with the flags it resembles, not by ``paper-repro`` itself."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command(parsed)
            close = _close_flags(extras, command)
            command.error(f"unrecognized arguments: {' '.join(extras)}{close}")
        return parsed

    def _command(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The subcommand's parser that ``parsed`` went through, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None), self)
        return self


def _close_flags(extras: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """`` (did you mean --seeds?)`` for unknown flags that resemble the parser's."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    close = [
        match
        for extra in extras
        if extra.startswith("--")
        for match in difflib.get_close_matches(extra.partition("=")[0], flags, n=1)
    ]
    return f" (did you mean {', '.join(close)}?)" if close else ""


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
    sub: argparse._SubParsersAction,
    name: str,
    about: str,
    *parents: argparse.ArgumentParser,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand that runs TensorFlow: it takes ``--quiet`` and ``--verbose`` (``main``
    imports TensorFlow for it, quietly unless ``--verbose``, when its ``uses_tensorflow(args)``
    says so: by default always; ``study`` with no cells only writes tables)."""
    parser = sub.add_parser(name, parents=[log_options(), *parents], help=about, epilog=epilog)
    parser.set_defaults(uses_tensorflow=lambda args: True)
    return parser


def settings_epilog() -> str:
    """The end of a training command's ``--help``: every ``--set`` key, named where the flag is
    read, and the command that says what each one takes."""
    keys = ", ".join(field.name for field in dataclasses.fields(RunConfig))
    return f"--set keys: {keys}. `paper-repro settings` gives each one's type, default and meaning."


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
        help=f"change a setting of {which}; `paper-repro settings` lists every key with its "
        "type, default and meaning",
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
