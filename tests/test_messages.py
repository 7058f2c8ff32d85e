"""What a user reads: every option has a help line, and every hint names only flags that exist.

The hints are read from the source: every string of the package's modules that names a flag
(``--name``) is a message or part of one, and must name options of the commands that can show it.
A flag inside backticks belongs to the command quoted there (`paper-repro train ... --preset P`),
or to another tool's (`tfds build ... --data_dir`), which is not checked.
"""

import argparse
import ast
import re
from pathlib import Path

import pytest

from paper_repro import cli

PACKAGE = Path(cli.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w])")
QUOTED = re.compile(r"`([^`]*)`")
RUN_COMMANDS = ("train", "reproduce")
# The commands whose handlers reach each module's messages. cli.py's and cli_options.py's own
# messages are those of their ``raise`` statements (their other strings define the options);
# provenance.py holds git's arguments, no messages.
REACHED_BY = {
    "augment.py": RUN_COMMANDS,
    "cache.py": RUN_COMMANDS,
    "caffe.py": ("import-caffe",),
    "cli.py": ("reproduce",),
    "cli_options.py": (),
    "quiet_tensorflow.py": (),
    "data/experiment.py": (*RUN_COMMANDS, "evaluate"),
    "data/pipelines.py": (*RUN_COMMANDS, "evaluate"),
    "data/reader_image_folder.py": (*RUN_COMMANDS, "evaluate"),
    "data/reader_tfds.py": (*RUN_COMMANDS, "evaluate"),
    "data/selection.py": (*RUN_COMMANDS, "evaluate"),
    "data/source.py": (*RUN_COMMANDS, "evaluate"),
    "errors.py": (),
    "evaluate.py": ("evaluate",),
    "experiments.py": RUN_COMMANDS,
    "cluster.py": ("train",),
    "plotting.py": (),
    "study_figure.py": ("study",),
    "export.py": ("export",),
    "reports/figure5.py": ("regenerate-tables", "regenerate-figures"),
    "reports/index.py": ("regenerate-tables", "regenerate-figures"),
    "reports/regenerate.py": ("regenerate-tables", "regenerate-figures"),
    "reports/table.py": ("regenerate-tables", "regenerate-figures"),
    "reports/table3.py": ("regenerate-tables", "regenerate-figures"),
    "reports/time_to_accuracy.py": ("regenerate-tables", "regenerate-figures"),
    "history.py": (),
    "job_time.py": (),
    "markdown.py": (),
    "arms.py": (),
    "datasets.py": (),
    "model.py": (*RUN_COMMANDS, "evaluate", "export"),
    "reproduce.py": ("reproduce", "study"),
    "runs.py": RUN_COMMANDS,
    "seeds.py": ("reproduce", "study"),
    "solver.py": RUN_COMMANDS,
    "fused_update.py": RUN_COMMANDS,
    "update_choice.py": RUN_COMMANDS,
    "feature_activity.py": ("feature-activity",),
    "probe.py": ("probe",),
    "run_features.py": ("feature-activity", "probe"),
    "study.py": ("study",),
    "study_table.py": ("study",),
    "study_probe.py": ("study",),
    "convergence.py": (),
    "trainee.py": RUN_COMMANDS,
    "training/callbacks.py": RUN_COMMANDS,
    "training/context.py": RUN_COMMANDS,
    "training/finish.py": RUN_COMMANDS,
    "training/fit.py": RUN_COMMANDS,
    "training/network.py": RUN_COMMANDS,
    "training/run.py": RUN_COMMANDS,
}
NOT_MESSAGES = {"provenance.py", "__init__.py"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(command: str) -> set[str]:
    return {flag for action in _subcommands()[command]._actions for flag in action.option_strings}


def test_every_option_of_every_command_has_a_help_line():
    missing = [
        f"{name} {action.dest}"
        for name, parser in _subcommands().items()
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert not missing


def _docstrings(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _strings(node: ast.AST, skip: set[int]) -> list[str]:
    """The string literals below ``node``; an f-string as one text, ``{}`` for its fields."""
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) and id(node) not in skip else []
    return [text for child in ast.iter_child_nodes(node) for text in _strings(child, skip)]


def _messages(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if path.name in ("cli.py", "cli_options.py"):
        tree = ast.Module([n for n in ast.walk(tree) if isinstance(n, ast.Raise)], [])
    return [text for text in _strings(tree, _docstrings(tree)) if "--" in text]


def _hint_problems(module: str, text: str) -> list[str]:
    """Each flag of ``text`` that a command able to show it lacks. A message that opens with a
    flag is about a flag the user gave, so one command having it is enough."""
    commands = REACHED_BY[module]
    problems = []
    for quoted in QUOTED.findall(text):
        words = quoted.split()
        if words[:1] == ["paper-repro"]:
            options = _options(words[1])
            problems += [f"{words[1]} {f}" for f in FLAG.findall(quoted) if f not in options]
    outside = QUOTED.sub("", text)
    for flag in FLAG.findall(outside):
        having = [command for command in commands if flag in _options(command)]
        enough = having if outside.startswith(flag) else commands
        if not having or set(having) != set(enough):
            problems.append(f"{sorted(set(commands) - set(having))} {flag}")
    return [f"{module}: {text[:70]!r}: {problem}" for problem in problems]


def test_every_flag_a_message_names_is_an_option_of_the_commands_that_show_it():
    modules = {
        p.relative_to(PACKAGE).as_posix(): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name not in NOT_MESSAGES
    }
    assert set(modules) == set(REACHED_BY), "a new module: say which commands reach it"
    checked = [(name, text) for name, p in modules.items() for text in _messages(p)]
    assert len(checked) > 40  # the scan finds the messages (it found 60 when written)
    problems = [problem for module, text in checked for problem in _hint_problems(module, text)]
    assert not problems


@pytest.mark.parametrize(
    ("module", "text", "wrong"),
    [
        ("evaluate.py", "rerun with --force", "['evaluate'] --force"),
        ("training/run.py", "use `paper-repro evaluate RUN --seed 1`", "evaluate --seed"),
        ("training/callbacks.py", "--tensorboard needs TensorBoard", None),
        ("data/reader_tfds.py", "`tfds build mnist --data_dir D`", None),
    ],
)
def test_the_hint_check_finds_a_flag_the_command_lacks(module, text, wrong):
    problems = _hint_problems(module, text)
    assert (problems[0].endswith(wrong) and len(problems) == 1) if wrong else not problems
