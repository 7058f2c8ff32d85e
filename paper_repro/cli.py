"""``paper-repro``: one command line for the whole reproduction.

Subcommands only parse their arguments and call one library function; the work lives in the
modules. Imports happen inside the handlers so that ``--help`` and the TensorFlow-free commands
(tables, figures, list, settings) start fast. A ``UserError`` becomes one line on stderr and exit
status 2, as an argparse refusal does (``cli_options.Parser``). A command's ``check`` resolves its
settings and seeds before TensorFlow is imported, so that a mistyped setting, experiment or seed
costs a fraction of a second, not the seconds TensorFlow takes to load.

Output, as Keras' own ``verbose`` levels: progress bars on a terminal, one line per epoch and per
evaluation when stdout is a file or a pipe (a log stays readable and small), nothing with
``--quiet``. TensorFlow's start-up lines (absl, oneDNN, CPU features) are hidden unless
``--verbose``: see :func:`paper_repro.quiet_tensorflow.import_tensorflow`. The options several
commands share are declared in ``cli_options``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from paper_repro import __version__, experiments
from paper_repro.cli_options import (
    DATA_DIR_HELP,
    DEFAULT_PRESET,
    Parser,
    finished_runs_options,
    progress,
    run_options,
    settings_epilog,
    shared_run_options,
    tensorflow_command,
)
from paper_repro.errors import UserError
from paper_repro.experiments import CROPS, JOIN_TIMEOUT, STRATEGIES
from paper_repro.quiet_tensorflow import import_tensorflow
from paper_repro.seeds import check_seeds

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(
        sub,
        "train",
        "train one experiment of the paper (full, retrain, pretrain)",
        run_options(which="the run"),
        epilog=settings_epilog(),
    )
    p.add_argument("experiment", help="e.g. retrain-cifar10; `paper-repro list` shows them all")
    p.add_argument("--weights", help="pretrained model to retrain from: a run dir or a .keras")
    p.add_argument(
        "--strategy",
        default="default",
        choices=STRATEGIES,
        help="default: one device (batches prefetched to the GPU when there is one); mirrored: "
        "every local device; multi-worker: the machines of TF_CONFIG, each running this same "
        "command (docs/many-machines.md); all with the run's global batch",
    )
    p.add_argument(
        "--join-timeout",
        type=float,
        default=JOIN_TIMEOUT,
        metavar="SECONDS",
        help=f"multi-worker: how long to wait for every worker of TF_CONFIG to start "
        f"({JOIN_TIMEOUT:g})",
    )
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to the run")
    p.set_defaults(handler=_train, check=_check_train)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` pairs, with ``--cache-features`` as the setting it stands for."""
    return [*args.overrides, *(["cache_features=true"] if args.cache_features else [])]


def _check_train(args: argparse.Namespace) -> None:
    """The run's settings and seed, as ``train`` resolves them, before TensorFlow loads."""
    experiments.resolve(args.experiment, args.preset, _train_overrides(args))
    experiments.check_seed(0 if args.seed is None else args.seed)


def _train(args: argparse.Namespace) -> None:
    from paper_repro.training import train

    train(
        args.experiment,
        args.preset,
        weights=args.weights,
        data_dir=args.data_dir,
        runs_dir=args.runs_dir,
        seed=0 if args.seed is None else args.seed,
        overrides=_train_overrides(args),
        force=args.force,
        strategy=args.strategy,
        tensorboard=args.tensorboard,
        download=args.download,
        verbose=progress(args),
        join_timeout=args.join_timeout,
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(sub, "evaluate", "multi-crop test accuracy of a run or a .keras model")
    p.add_argument("source", help="a run directory or a .keras file")
    p.add_argument("--dataset", help="tfds name or image folder (default: the run's)")
    p.add_argument("--crops", type=int, choices=CROPS, help="default: the run's (10 or 5)")
    p.add_argument("--split", help="default: the run's test split")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--download", action="store_true", help="let tfds download a dataset that is missing"
    )
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> None:
    from paper_repro.evaluate import evaluate_source, top5_text

    scores = evaluate_source(
        args.source,
        dataset=args.dataset,
        crops=args.crops,
        split=args.split,
        data_dir=args.data_dir,
        download=args.download,
        verbose=progress(args),
    )
    print(
        f"{args.source}: {scores['crops']}-crop top-1 {scores['top1']:.2%}, "
        f"top-5 {top5_text(scores['top5'], scores['num_classes'])} on {scores['num_examples']} "
        "images"
    )


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="existing runs, then every preset's experiments")
    p.add_argument("--runs-dir", default="runs", help="where to look for runs (default: runs)")
    p.set_defaults(handler=_list)


def _list(args: argparse.Namespace) -> None:
    """The runs first, what a user looks for most; then the experiments there are to run."""
    from pathlib import Path

    from paper_repro.reports.index import run_lines
    from paper_repro.runs import find_histories

    found = find_histories(args.runs_dir) if Path(args.runs_dir).is_dir() else []
    print(f"run directories under {Path(args.runs_dir).as_posix()}/:{'' if found else ' none'}")
    for line in run_lines(found):
        print(line)
    print("experiments, by preset (`paper-repro train EXPERIMENT --preset PRESET` runs one):")
    for line in _experiment_lines():
        print(line)


def _experiment_lines() -> list[str]:
    """A line per experiment of every preset: dataset, mode, epochs, crop and subset."""
    width = max(len(name) for runs in experiments.PRESETS.values() for name in runs)
    lines = []
    for preset, runs in experiments.PRESETS.items():
        lines.append(f"preset {preset}:")
        for name, config in runs.items():
            subset = f", {config.train_subset} images" if config.train_subset else ""
            lines.append(
                f"  {name:<{width}} {config.dataset:<13} {config.mode:<8} {config.epochs:>3} "
                f"epochs, crop {config.crop}{subset}"
            )
    return lines


def _add_settings(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("settings", help="every --set key of a run: its type, default and meaning")
    p.add_argument(
        "experiment",
        nargs="?",
        help="show this experiment's values in --preset instead of the defaults, e.g. "
        "retrain-cifar10",
    )
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, help=f"EXPERIMENT's preset (default: {DEFAULT_PRESET})"
    )
    p.set_defaults(handler=_settings)


def _settings(args: argparse.Namespace) -> None:
    """``RunConfig``'s fields as ``--set`` takes them: the one list of what a run can change."""
    experiments.preset_runs(args.preset)  # an unknown --preset is refused either way
    config = experiments.resolve(args.experiment, args.preset) if args.experiment else None
    where = f"{args.experiment} in preset {args.preset}" if config else "default"
    print(
        "settings of a run: --set KEY=VALUE on train, reproduce and study; --set KEY=none "
        "clears one that can be none, --set drop_epochs= the drops"
    )
    if config is None:
        print(
            "defaults: the paper's transfer runs' (each preset changes some: `paper-repro "
            "settings EXPERIMENT --preset PRESET` shows a run's)"
        )
    table = experiments.settings_table(config)
    rows = [(key, value, f"{kind} - {meaning}") for key, kind, value, meaning in table]
    for line in _aligned([("key", where, "type - meaning"), *rows]):
        print(line)


def _aligned(rows: list[tuple[str, str, str]]) -> list[str]:
    """Rows of three columns, the first two padded to their widest."""
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(
        sub,
        "reproduce",
        "every experiment of a preset, then Table III + Fig. 5",
        run_options(which="every run of the preset"),
        epilog=settings_epilog(),
    )
    p.add_argument(
        "--out",
        default="figures",
        help="where the tables, the figure and the histories they come from go (default: "
        "figures, the committed ones: give a scratch folder to keep them)",
    )
    p.add_argument(
        "--weights",
        help="pretrained model for every retraining on pretrained features (skips "
        "pretraining; full runs and random-features controls start from scratch, the oracles "
        "from their full runs)",
    )
    p.add_argument(
        "--seeds",
        metavar="N,N,...",
        help="run every transfer experiment once per seed, e.g. 0,1,2 (tables: mean ± std)",
    )
    p.set_defaults(handler=_reproduce, check=_check_reproduce)


def _check_reproduce(args: argparse.Namespace) -> None:
    """The seeds, and every run's settings in the preset, before TensorFlow loads."""
    _seeds(args.seed, args.seeds)
    for name in experiments.dependency_order(args.preset):
        experiments.resolve(name, args.preset, args.overrides)


def _reproduce(args: argparse.Namespace) -> None:
    from paper_repro.reproduce import reproduce, summary

    paths = reproduce(
        args.preset,
        weights=args.weights,
        data_dir=args.data_dir,
        runs_dir=args.runs_dir,
        out=args.out,
        seeds=_seeds(args.seed, args.seeds),
        overrides=args.overrides,
        force=args.force,
        cache_features=args.cache_features,
        download=args.download,
        verbose=progress(args),
    )
    for line in summary(paths, args.out, args.preset):
        print(line)


def _add_study(sub: argparse._SubParsersAction) -> None:
    from paper_repro.study import CELLS

    shared = shared_run_options(
        which="every run (for a quick try: the table then mixes settings)",
        runs_dir="runs/study",
        runs_dir_help="runs go to RUNS_DIR/CELL, feature caches to RUNS_DIR/feature-cache",
    )
    p = tensorflow_command(
        sub,
        "study",
        "the transfer study's cells (figures/study/PLAN.md), then its table",
        shared,
        epilog=settings_epilog(),
    )
    p.add_argument(
        "cells",
        nargs="*",
        metavar="CELL",
        help=f"cells to train: {', '.join(CELLS)} (none: only the table and figure again)",
    )
    p.add_argument("--seeds", default="0,1,2", metavar="N,N,...", help="default: 0,1,2")
    p.add_argument(
        "--only",
        type=_names,
        metavar="EXPERIMENT,...",
        help="train only the cells' runs of these experiments, e.g. full-mnist,"
        "retrain-oracle-mnist (default: every run of each cell)",
    )
    p.add_argument(
        "--out",
        default="figures/study",
        help="histories, table.md and gap.png (default: figures/study)",
    )
    p.set_defaults(
        handler=_study, check=_check_study, uses_tensorflow=lambda args: bool(args.cells)
    )


def _check_study(args: argparse.Namespace) -> None:
    """The seeds, the cells and every run's settings in them, before TensorFlow loads."""
    from paper_repro import study

    _seeds(None, args.seeds)
    study.check_only(args.cells, args.only)
    for name in args.cells:
        for experiment in study.cell(name).runs:
            overrides = study.settings(name, experiment)
            experiments.resolve(experiment, study.PRESET, [*overrides, *args.overrides])
    study.check_rule_a(args.cells, os.path.join(args.out, study.HISTORIES), args.only)


def _study(args: argparse.Namespace) -> None:
    if not args.cells:
        from paper_repro.study_figure import regenerate_study

        _print_paths(regenerate_study(args.out))
        return
    from paper_repro.reproduce import reproduce_study

    paths = reproduce_study(
        args.cells,
        seeds=_seeds(None, args.seeds),
        overrides=args.overrides,
        data_dir=args.data_dir,
        runs_dir=args.runs_dir,
        out=args.out,
        force=args.force,
        download=args.download,
        verbose=progress(args),
        only=args.only,
    )
    _print_paths(paths)


def _names(value: str) -> list[str]:
    """A comma-separated list of names, empty ones left out; at least one."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"needs at least one name, got {value!r}")
    return names


def _seeds(seed: int | None, seeds: str | None) -> list[int]:
    """``--seed N`` or ``--seeds N,N,...`` (not both) as a list; seed 0 when neither is given."""
    if seeds is None:
        return [0 if seed is None else seed]
    if seed is not None:
        raise UserError(f"--seed {seed} and --seeds {seeds} both given: keep one")
    parts = [part.strip() for part in seeds.split(",")]
    if not all(part.isdigit() for part in parts):
        raise UserError(f"--seeds {seeds}: expected a comma list of seeds >= 0, such as 0,1,2")
    return check_seeds([int(part) for part in parts])


def _add_feature_activity(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(
        sub,
        "feature-activity",
        "how many of a run's frozen pool5 values its validation images reach",
        finished_runs_options("the first N validation images"),
    )
    p.set_defaults(handler=_feature_activity)


def _feature_activity(args: argparse.Namespace) -> None:
    from paper_repro.feature_activity import table

    for line in table(args.runs, data_dir=args.data_dir, limit=args.images):
        print(line, flush=True)


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(
        sub,
        "probe",
        "a linear probe (L-BFGS logistic regression, C chosen on validation) of runs' frozen pool5",
        finished_runs_options("the first N images of each split"),
    )
    p.add_argument(
        "--out",
        metavar="FILE.md",
        help="also write the table to this file, and its rows as JSON to FILE.json",
    )
    p.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> None:
    from paper_repro.probe import report

    written = report(
        args.runs, data_dir=args.data_dir, limit=args.images, out=args.out,
        verbose=progress(args),
    )  # fmt: skip
    _print_paths(written)


def _add_regenerate(sub: argparse._SubParsersAction) -> None:
    for what in ("tables", "figures"):
        p = sub.add_parser(
            f"regenerate-{what}", help=f"Table III / Figure 5 ({what}) from histories"
        )
        p.add_argument(
            "--histories",
            default="figures/histories",
            help="folder searched for history.json / *.history.json (default: figures/histories)",
        )
        p.add_argument("--out", default="figures", help="where they are written (default: figures)")
        p.add_argument(
            "--allow-mixed-presets",
            action="store_true",
            help="accept histories of several presets (each row and line then names its preset)",
        )
        if what == "tables":
            p.add_argument(
                "--target",
                type=_percent,
                help="time-to-accuracy target, in %% (default: the best accuracy all modes reach)",
            )
        p.set_defaults(handler=_regenerate_tables if what == "tables" else _regenerate_figures)


def _percent(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return value / 100


def _regenerate_tables(args: argparse.Namespace) -> None:
    from paper_repro.reports import regenerate_tables

    paths = regenerate_tables(args.histories, args.out, args.allow_mixed_presets, args.target)
    _print_paths(paths)


def _regenerate_figures(args: argparse.Namespace) -> None:
    from paper_repro.reports import regenerate_figures

    _print_paths(regenerate_figures(args.histories, args.out, args.allow_mixed_presets))


def _print_paths(paths) -> None:
    for path in paths:
        print(f"wrote {path}")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(sub, "export", "export a trained model (.keras, SavedModel, ONNX)")
    p.add_argument("source", help="a run directory or a .keras file")
    p.add_argument(
        "--format",
        choices=("keras", "saved_model", "onnx"),
        default="keras",
        help="keras: a .keras file; saved_model: a directory for TF Serving, raw images in, "
        "class names out; onnx: a .onnx file (extra onnx) (default: keras)",
    )
    p.add_argument("--out", required=True, help="the file or directory to write")
    p.add_argument(
        "--data-dir",
        help="tfds data directory, read only for the class names of a run that predates their "
        "recording (default: $TFDS_DATA_DIR)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    from paper_repro.export import export_model

    _print_paths(
        [export_model(args.source, args.format, args.out, force=args.force, data_dir=args.data_dir)]
    )


def _add_import_caffe(sub: argparse._SubParsersAction) -> None:
    p = tensorflow_command(sub, "import-caffe", "CaffeNet weights from a .caffemodel into .keras")
    p.add_argument("caffemodel", help="BVLC CaffeNet's .caffemodel (either of Caffe's formats)")
    p.add_argument(
        "--out", default="caffenet.keras", help="the .keras file to write (default: caffenet.keras)"
    )
    p.add_argument(
        "--mean",
        help="per-channel mean: ilsvrc_2012_mean.npy averaged (default: Caffe's 104/117/123 BGR)",
    )
    p.add_argument(
        "--mean-image",
        help="ilsvrc_2012_mean.npy (or .binaryproto) subtracted per pixel, centre-cropped, as "
        "Caffe's TEST phase does",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(handler=_import_caffe)


def _import_caffe(args: argparse.Namespace) -> None:
    from paper_repro.caffe import import_caffe

    _print_paths(
        [
            import_caffe(
                args.caffemodel, args.out, force=args.force, mean=args.mean,
                mean_image=args.mean_image,
            )
        ]
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="paper-repro",
        description="Reproduce Table III and Figure 5 of the CaffeNet retraining paper.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_train,
        _add_evaluate,
        _add_list,
        _add_settings,
        _add_reproduce,
        _add_study,
        _add_feature_activity,
        _add_probe,
        _add_regenerate,
        _add_export,
        _add_import_caffe,
    ):
        add(sub)
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM (``kill``, a scheduler ending a job) stops the command as Ctrl-C does, through
    SIGINT's handler: where a step defers Ctrl-C (``runs.deferred_interrupt``) it defers SIGTERM
    too, and everything written stays whole. Python's default for SIGTERM ends the process at
    once, without a word. The list given to the block records the SIGTERMs received, so that
    the last line says which signal stopped it. Outside the main thread nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def terminate(signum: int, frame) -> None:
        received.append(signum)
        on_interrupt = signal.getsignal(signal.SIGINT)
        if not callable(on_interrupt):  # SIGINT ignored (a background job) or the OS default
            raise KeyboardInterrupt
        on_interrupt(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _terminate_as_interrupt() as terminated:
        try:
            if hasattr(args, "check"):  # settings and seeds first: a mistake costs no import
                args.check(args)
            if hasattr(args, "verbose") and args.uses_tensorflow(args):  # a ``tensorflow_command``
                import_tensorflow(args.verbose)
            args.handler(args)
            sys.stdout.flush()  # a pipe's buffer: its reader may have left before it was written
        except UserError as error:
            print(f"paper-repro {args.command}: error: {error}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            stopped = "terminated (SIGTERM)" if terminated else "interrupted"
            print(f"{stopped}: rerun the same command to resume", file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader left (``paper-repro list | head``): not an error
            _silence_stdout()
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left of it at exit does not raise
    a second BrokenPipeError (the recipe of Python's signal documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
