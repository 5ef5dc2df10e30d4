"""The README is a front door and the manual lives in docs/: the README stays under 200 lines,
every page it links exists, and every relative link in the README and docs/ reaches an existing
file and, with an anchor, an existing heading of that file (GitHub's heading slugs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def links(page: Path) -> list[tuple[str, str]]:
    """(target path, anchor) of every relative Markdown link outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        out.append((path, anchor))
    return out


def test_slug_matches_github():
    assert slug("With Flower's CLI") == "with-flowers-cli"
    assert slug("Memory budgets and sparse updates") == "memory-budgets-and-sparse-updates"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines"
    linked = {p for p, _ in links(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in linked, f"README does not link docs/{page.name}"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for path, anchor in links(page):
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {path}")
                continue
            if anchor and target.suffix == ".md":
                headings = {slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)}
                if anchor not in headings:
                    broken.append(f"{page.name}: {path}#{anchor}")
    assert broken == [], broken
