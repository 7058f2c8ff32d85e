"""The documentation stays true to the code and the repository: no TensorFlow, no training.

- every command of ``paper-repro`` and every flag of each is in the command-line reference,
  read from the parser itself;
- every relative link and every repository path the README, the docs and the notes beside the
  artifacts name exists (and every anchor of a link to a Markdown file);
- every module of the package is in the architecture page's layout, and every page is in the
  site's nav;
- the README is a front page: short, with the CI's test command, and without issue numbers or
  commit hashes.
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from pathlib import Path

import pytest

from paper_repro.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
CLI_PAGE = DOCS / "cli.md"
ARCHITECTURE = DOCS / "architecture.md"
NOTES = [
    REPO / "figures" / "README.md",
    REPO / "figures" / "first-mini" / "README.md",
    REPO / "figures" / "mini-lr-0.001" / "README.md",
    REPO / "figures" / "study" / "README.md",
    REPO / "benchmarks" / "results" / "README.md",
]
PAGES = sorted(DOCS.glob("*.md"))
DOCUMENTS = [README, *PAGES, *NOTES]
README_MAX_LINES = 260

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^(```|~~~).*?^(```|~~~)[^\n]*$", re.MULTILINE | re.DOTALL)
# A placeholder in a path: RUNS_DIR, CELL, PRESET, N, or a pattern.
_PLACEHOLDER = re.compile(r"(^|/)[A-Z][A-Z0-9_]*(-[A-Z0-9_]+)*(/|$|\.)|[*<>{}]|\.\.\.")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


def _prose(path: Path) -> str:
    """The file without its fenced code blocks (commands and logs, not links)."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _cli_sections() -> dict[str, str]:
    """The reference page's sections by command: ``## `paper-repro NAME` `` up to the next
    ``## `` heading."""
    sections, name = {}, None
    for line in CLI_PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            match = re.fullmatch(r"## `paper-repro ([\w-]+)`", line.strip())
            name = match.group(1) if match else None
            if name:
                sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


# ---------------------------------------------------------------------- (a) the CLI reference


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_and_flag_is_in_the_cli_reference(command):
    sections = _cli_sections()
    assert command in sections, f"docs/cli.md has no section '## `paper-repro {command}`'"
    text = sections[command]
    flags = {
        flag
        for action in _subcommands()[command]._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }
    missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert not missing, f"docs/cli.md, section `paper-repro {command}`, lacks {missing}"


def test_the_cli_reference_has_no_command_the_parser_lacks():
    assert sorted(_cli_sections()) == sorted(_subcommands())


@pytest.mark.parametrize("path", DOCUMENTS, ids=_rel)
def test_every_command_written_in_the_docs_has_the_flags_it_uses(path):
    """`paper-repro CMD ... --flag`, in code or prose: CMD has that flag."""
    commands = _subcommands()
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    wrong = []
    for match in re.finditer(r"paper-repro ([a-z][\w-]*)([^`\n|]*)", text):
        command, rest = match.groups()
        if command not in commands:
            wrong.append(f"no command {command!r}: {match.group(0)}")
            continue
        known = {f for action in commands[command]._actions for f in action.option_strings}
        wrong += [
            f"{command} has no {flag}: {match.group(0)}"
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
            if flag not in known
        ]
    assert not wrong, f"{_rel(path)}: {wrong}"


def test_the_top_level_flags_are_in_the_cli_reference():
    text = CLI_PAGE.read_text(encoding="utf-8")
    top = {f for a in build_parser()._actions for f in a.option_strings if f not in ("-h",)}
    assert all(flag in text for flag in top), top


# ---------------------------------------------------------------------- (b) links and paths


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading (MkDocs' is the same for the headings used here)."""
    text = unicodedata.normalize("NFKC", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in _prose(path).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(_prose(path))]


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        where, _, anchor = target.partition("#")
        resolved = (path.parent / where).resolve() if where else path
        if target.startswith("/") or not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif where.endswith("/") and not resolved.is_dir():
            broken.append(f"{target} (not a folder)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading '#{anchor}' in {_rel(resolved)})")
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=_rel)
def test_every_relative_link_exists(path):
    assert path.exists(), _rel(path)
    broken = _broken_links(path)
    assert not broken, f"{_rel(path)}: {broken}"


def _named_paths(path: Path) -> list[str]:
    """Code spans that name a repository path: their first part is a top-level entry of the
    repository (``paper_repro/cli.py``, ``figures/table3.md``, ``tox.ini``)."""
    top = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    named = []
    for span in _CODE_SPAN.findall(_prose(path)):
        span = span.strip()
        if " " in span or "=" in span or span.startswith("-"):
            continue
        first = span.split("/", 1)[0]
        if first in top and (("/" in span) or "." in span or (REPO / span).is_dir()):
            named.append(span)
    return named


@pytest.mark.parametrize("path", DOCUMENTS, ids=_rel)
def test_every_repository_path_named_exists(path):
    missing = [
        span
        for span in _named_paths(path)
        if not (REPO / span).exists() and not _PLACEHOLDER.search(span)
    ]
    assert not missing, f"{_rel(path)} names paths the repository lacks: {missing}"


def test_every_module_is_in_the_layout():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    package = REPO / "paper_repro"
    modules = sorted(
        p.relative_to(package).as_posix()
        for p in [*package.rglob("*.py"), *package.rglob("*.cc")]
        if "__pycache__" not in p.parts
    )
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md's layout lacks {missing}"


def test_every_page_is_in_the_site_nav():
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    nav = re.findall(r"^\s+- (?:[^:\n]+: )?([\w./-]+\.md)\s*$", config, re.MULTILINE)
    assert sorted(nav) == sorted(p.name for p in PAGES)


# ---------------------------------------------------------------------- (c) the front page

_ISSUE = re.compile(r"(?<!TensorFlow )\bissues?\s+#?\d+|(?<![\w/&])#\d+\b", re.IGNORECASE)
_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def test_the_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines (front page: < {README_MAX_LINES})"
    )
    assert "pip install tox && tox" in text.splitlines(), "CI runs the README's test command"
    assert not _ISSUE.findall(text), _ISSUE.findall(text)
    assert not _HASH.findall(text), _HASH.findall(text)


@pytest.mark.parametrize("path", [*PAGES, *NOTES], ids=_rel)
def test_the_docs_and_notes_name_no_issue_numbers(path):
    found = [m.group(0) for m in _ISSUE.finditer(path.read_text(encoding="utf-8"))]
    assert not found, f"{_rel(path)}: {found}"


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The patterns themselves: an issue number, a commit hash, a broken link and anchor."""
    assert _ISSUE.search("see issue 13") and _ISSUE.search("fixed in #12")
    assert not _ISSUE.search("TensorFlow issue 97697") and not _ISSUE.search("`C#1`x")
    assert _HASH.search("commit a784a61 and 0af5f6e") and not _HASH.search("2,066 s, 1710.02286")
    assert not _HASH.search("float16 decade deadbeef 1234567")
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](nowhere.md) [anchor](#elsewhere)\n", "utf-8")
    assert _broken_links(page) == [
        "nowhere.md (no such file)",
        "#elsewhere (no heading '#elsewhere' in page.md)",
    ]
