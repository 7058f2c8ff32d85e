"""MkDocs hook: links from the docs to repository files outside docs/.

The pages link to the results beside their artifacts (``../figures/README.md``) with relative
links, which work where the Markdown is read in the repository. MkDocs only knows the files under
docs/, so it would report each such link as "not found". This hook checks those links itself:
a target that does not exist is a warning (so ``mkdocs build --strict`` fails on it, as it does
on a broken link between pages), and one that exists is rendered as its repository path, or as a
link into the repository when ``repo_url`` is set in mkdocs.yml.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("mkdocs.hooks.repo_links")

# [text](target) and ![alt](target), the target without spaces.
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _outside_docs(target: str, page_dir: str, docs_dir: str) -> str | None:
    """The repository path of a relative link that leaves docs/, else None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = os.path.normpath(os.path.join(page_dir, target.split("#", 1)[0]))
    if os.path.commonpath([path, docs_dir]) == docs_dir:
        return None
    return path


def on_page_markdown(markdown, page, config, files):
    docs_dir = os.path.abspath(config["docs_dir"])
    repo_root = os.path.dirname(docs_dir)
    page_dir = os.path.dirname(os.path.join(docs_dir, page.file.src_path))
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def replace(match: re.Match) -> str:
        bang, text, target = match.groups()
        path = _outside_docs(target, page_dir, docs_dir)
        if path is None:
            return match.group(0)
        relative = os.path.relpath(path, repo_root).replace(os.sep, "/")
        if not os.path.exists(path):
            log.warning(
                "Doc file '%s' links to '%s', which is not in the repository.",
                page.file.src_path,
                relative,
            )
            return match.group(0)
        if repo_url:
            anchor = "#" + target.split("#", 1)[1] if "#" in target else ""
            kind = "tree" if os.path.isdir(path) else "blob"
            return f"{bang}[{text}]({repo_url}/{kind}/main/{relative}{anchor})"
        if text.strip("`") in (relative, os.path.basename(relative)):
            return f"`{relative}`"
        return f"{text} (`{relative}`)"

    # Leave fenced code blocks alone: even parts are prose, odd parts code.
    parts = re.split(r"(^(?:```|~~~).*?^(?:```|~~~)[^\n]*$)", markdown, flags=re.MULTILINE | re.S)
    return "".join(
        part if index % 2 else _LINK.sub(replace, part) for index, part in enumerate(parts)
    )
