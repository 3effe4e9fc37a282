"""The README and docs/*.md link only to files of this repository, and every such link resolves.

A relative link or image must name an existing file or folder inside the repository; a
``#section`` must name a heading of the target page (GitHub's anchor for it). Absolute paths,
``file:`` URLs and relative paths that climb out of the repository are refused: the pages are
read on GitHub and in other checkouts, where nothing outside the repository exists. Web links
(``http(s)://``) are not checked here (no network in the tests). Text in code spans and code
blocks is not a link, so it is not checked as one, but no page may name the workspace's
``../shared`` folder or a ``/work/`` path anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", flags=re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold code spans and brackets one deep.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", flags=re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", flags=re.IGNORECASE)
WEB_SCHEME = re.compile(r"^(https?|mailto):", flags=re.IGNORECASE)
OUTSIDE_MENTION = re.compile(r"\.\./shared\b|(?<![\w.])/work/")


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page
        return f"{page}:{self.line}: {self.target}"


def without_code(text: str) -> str:
    """The text with code blocks and code spans blanked out, keeping line numbers."""

    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    return CODE_SPAN.sub(blank, FENCED_BLOCK.sub(blank, text))


def links(page: Path) -> list[Link]:
    text = without_code(page.read_text())
    found = []
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION, HTML_LINK):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            found.append(Link(page, line, match.group(1)))
    return sorted(found, key=lambda link: link.line)


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... on repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCED_BLOCK.sub("", page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def link_problem(link: Link, repo: Path = REPO) -> str | None:
    """Why the link does not resolve inside the repository, or None when it does."""
    target = link.target
    if WEB_SCHEME.match(target):
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target):
        return "not a repository path (a URL scheme other than http(s)/mailto)"
    path_part, _, fragment = target.partition("#")
    if path_part.startswith("/"):
        return "an absolute path: write it relative to the page"
    if not path_part:  # a section of the same page
        target_path = link.page
    else:
        # Judge containment on the path as written, then where it really leads (symlinks).
        written = Path(os.path.normpath(link.page.parent / path_part))
        if not written.is_relative_to(repo):
            return "points outside the repository"
        if not written.exists():
            return "no such file or folder"
        if not written.resolve().is_relative_to(repo.resolve()):
            return "a link inside the repository that leads outside it"
        target_path = written
    if fragment and target_path.suffix == ".md" and fragment not in heading_anchors(target_path):
        return f"no heading with anchor #{fragment} in {target_path.name}"
    return None


def test_every_page_has_links_and_every_relative_link_resolves_inside_the_repository():
    all_links = [link for page in PAGES for link in links(page)]
    # The README links to the docs pages, and the pages to code and to each other.
    assert len(all_links) >= len(PAGES), [str(link) for link in all_links]
    problems = [f"{link}: {problem}" for link in all_links if (problem := link_problem(link))]
    assert not problems, "links that do not resolve inside the repository:\n" + "\n".join(problems)


def test_no_page_names_a_path_outside_the_repository():
    mentions = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if OUTSIDE_MENTION.search(line):
                mentions.append(f"{page.relative_to(REPO)}:{number}: {line.strip()}")
    assert not mentions, "pages that name a path outside the repository:\n" + "\n".join(mentions)


def test_readme_links_every_docs_page_and_shows_the_closed_loop_figure():
    readme = REPO / "README.md"
    linked = {Path(os.path.normpath(REPO / link.target.partition("#")[0])) for link in links(readme)}
    docs_pages = {page for page in PAGES if page.parent == REPO / "docs"}
    assert docs_pages, "no docs/*.md pages"
    unlinked = sorted(str(page.relative_to(REPO)) for page in docs_pages - linked)
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"
    assert REPO / "docs" / "closed_loop.png" in linked


def test_link_check_reports_broken_outside_and_absolute_links(tmp_path):
    """The checker itself: each kind of bad link is caught, good ones pass."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "code.py").write_text("")
    (repo / "docs" / "other.md").write_text("# Other page\n\n## The `config` section (v2)\n")
    (tmp_path / "outside.md").write_text("# Outside\n")
    (repo / "docs" / "escape").symlink_to(tmp_path / "outside.md")
    page = repo / "docs" / "page.md"
    page.write_text(
        "# Page\n"
        "[ok](../code.py) [ok](other.md#the-config-section-v2) [ok](#page) [web](https://example.org)\n"
        "`[in code](missing.md)`\n"
        "[broken](missing.md) [up](../../outside.md) [abs](/etc/hosts) [file](file:///etc/hosts)\n"
        "[anchor](other.md#no-such-heading) [link out](escape)\n"
    )
    results = {link.target: link_problem(link, repo=repo) for link in links(page)}
    assert "missing.md" not in {link.target for link in links(page) if link.line == 3}
    assert results["../code.py"] is None
    assert results["other.md#the-config-section-v2"] is None
    assert results["#page"] is None
    assert results["https://example.org"] is None
    assert results["missing.md"] == "no such file or folder"
    assert results["../../outside.md"] == "points outside the repository"
    assert results["/etc/hosts"] == "an absolute path: write it relative to the page"
    assert results["file:///etc/hosts"].startswith("not a repository path")
    assert results["other.md#no-such-heading"] == "no heading with anchor #no-such-heading in other.md"
    assert results["escape"] == "a link inside the repository that leads outside it"
