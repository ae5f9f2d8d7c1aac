"""The README and docs/: short README, every relative link resolves (files and #anchors), every page
reachable from the README in one click, no link out of the repository (../shared is not in a clone),
and the README's Python session example runs on the bundled model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*\bsrc=\"([^\"]+)\"|<a[^>]*\bhref=\"([^\"]+)\"")
FENCE = re.compile(r"```.*?```", re.S)


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [next(g for g in match.groups() if g) for match in LINK.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(page):
    found = [t for t in links(page) if relative(t)]
    assert found or page.name != "README.md", "a page without links"
    for target in found:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_relative_to(REPO), f"{page.name}: {target} leaves the repository"
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: {target}: no heading with that anchor in {file.name}"


def test_no_page_or_docstring_points_outside_the_repository():
    offenders = [str(p.relative_to(REPO)) for p in [*PAGES, *REPO.glob("alignx_demo/**/*.py"), REPO / "app.py"]
                 if "../shared/DESIGN" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


def test_the_readme_is_short_and_reaches_every_page_in_one_click():
    readme = REPO / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 150
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(readme) if relative(t) and t.partition("#")[0]}
    for page in DOCS.glob("*.md"):
        assert page.resolve() in linked, f"the README does not link {page.relative_to(REPO)}"
    for other in ("LICENSE", "SECURITY.md", "assets/demo-model/MODEL_CARD.md"):
        assert (REPO / other).resolve() in linked, other
    index = {(DOCS / t.partition("#")[0]).resolve() for t in links(DOCS / "README.md") if relative(t)}
    assert {p.resolve() for p in DOCS.glob("*.md") if p.name != "README.md"} <= index


def test_the_project_layout_names_real_paths():
    page = (DOCS / "development.md").read_text(encoding="utf-8")
    block = page.split("## Project layout", 1)[1].split("```", 2)[1]
    paths = [line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")]
    assert len(paths) >= 15
    for path in paths:
        assert (REPO / path).exists(), f"docs/development.md lists {path}, which does not exist"


def test_the_readme_python_session_example_runs_on_the_bundled_model(capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "load_mocae" in b)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) > 24 and "'helpful':" in printed[-1]  # prompt tokens, then the generated ones
