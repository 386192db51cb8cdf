"""README.md and docs/ stay true: their Python examples run, their links resolve, the code's "DESIGN x.y" exist.

- Every ```python block of README.md and docs/*.md runs as written, in a temporary directory.
- Every relative link and image points to a file of the repository, and every ``#anchor`` to a heading of its page
  (GitHub's rule: lowercase, punctuation dropped except hyphens and underscores, spaces to hyphens, ``-1``, ``-2``
  for repeats).
- Every "DESIGN x.y", "DESIGN n" or "DESIGN section n" cited in the code, tests, scripts and configs names a numbered
  heading of docs/design.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DESIGN = DOCS / "design.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250

# where code cites the design, and the files there that can hold a citation
CITING_DIRS = ("python", "kernels", "csrc", "benchmarks", "scripts", "tests", "examples")
CITING_ROOT_FILES = ("CMakeLists.txt", "Makefile", "pyproject.toml")
CITING_SUFFIXES = {".py", ".h", ".hpp", ".cpp", ".cu", ".cuh", ".yaml", ".yml", ".sh", ".toml", ".txt", ".md", ".cfg"}

FENCE = re.compile(r"^```.*?^```[ \t]*$", flags=re.S | re.M)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```[ \t]*$", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`]+`")  # a code span may wrap onto the next line
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", flags=re.M)
HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
CITATION = re.compile(r"\bDESIGN(?:\s+section)?\s+(\d+(?:\.\d+)*)")
SECTION_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?\s")


def prose(text: str) -> str:
    """The markdown outside fenced blocks and inline code spans, where links and headings are read."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(FENCE.sub("", page.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``page`` whose file or anchor does not exist, as 'target: why'."""
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix != ".md":
            problems.append(f"{target}: an anchor into a file that is not markdown")
        elif anchor and anchor not in anchors(path):
            problems.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    return problems


def design_sections(design: Path = DESIGN) -> set[str]:
    """The section numbers of design.md's headings ("## 1. The methods", "### 1.2 The follower ...")."""
    numbers = set()
    for match in HEADING.finditer(FENCE.sub("", design.read_text())):
        number = SECTION_NUMBER.match(match.group(2))
        if number:
            numbers.add(number.group(1))
    return numbers


def citing_files(root: Path = ROOT) -> list[Path]:
    files = [root / name for name in CITING_ROOT_FILES if (root / name).is_file()]
    for folder in CITING_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in CITING_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def dangling_citations(root: Path = ROOT, design: Path = DESIGN) -> list[str]:
    """Each "DESIGN x.y" in the code that names no section of design.md, as 'file:line: DESIGN x.y'."""
    sections = design_sections(design)
    problems = []
    for path in citing_files(root):
        text = path.read_text(errors="replace")
        for match in CITATION.finditer(text):
            if match.group(1) not in sections:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(root)}:{line}: {match.group(0)}")
    return problems


BLOCKS = [(page, i, code) for page in PAGES for i, code in enumerate(PYTHON_BLOCK.findall(page.read_text()))]


@pytest.mark.parametrize("page, index, code", BLOCKS, ids=[f"{p.relative_to(ROOT)}[{i}]" for p, i, _ in BLOCKS])
def test_python_block_runs(page, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"{page.relative_to(ROOT)}[python block {index}]"
    exec(compile(code, name, "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_plain_markdown_without_html(page):
    assert HTML_TAG.findall(prose(page.read_text())) == []


def test_every_docs_page_is_in_the_readme_index():
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in LINK.findall(prose(README.read_text()))
    }
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES}, the rest in docs/"


def test_every_design_citation_in_the_code_exists():
    assert CITATION.search("see DESIGN 1.2") and CITATION.search("DESIGN section 3"), "the citation pattern"
    assert len([m for p in citing_files() for m in CITATION.finditer(p.read_text(errors="replace"))]) > 10
    assert dangling_citations() == []


def test_a_citation_of_a_missing_section_is_reported(tmp_path):
    design = tmp_path / "docs" / "design.md"
    design.parent.mkdir()
    design.write_text("# Design\n\n## 1. Methods\n\n### 1.2 The follower\n\n```text\n## 7. not a heading\n```\n")
    code = tmp_path / "python" / "module.py"
    code.parent.mkdir()
    word = "DESIGN"  # spelled apart, so this file cites nothing itself
    cited = [f"{word} 1.2", f"{word} section 1", f"{word} 1.3", f"{word} section 7"]
    code.write_text("".join(f"# {c}\n" for c in cited))
    assert design_sections(design) == {"1", "1.2"}
    assert dangling_citations(tmp_path, design) == [
        f"python/module.py:3: {cited[2]}",
        f"python/module.py:4: {cited[3]}",
    ]


def test_broken_links_and_anchors_are_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Use with `TRL`: step 1\n\n## Use with `TRL`: step 1\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#use-with-trl-step-1) [repeat](other.md#use-with-trl-step-1-1) [self](#page)\n"
        "[gone](missing.md) [no anchor](other.md#nope) [up](../outside.md) `[code](missing.md)`\n\n# Page\n"
    )
    assert broken_links(page, tmp_path) == [
        "missing.md: no such file",
        "other.md#nope: no heading with anchor #nope in other.md",
        "../outside.md: outside the repository",
    ]


@pytest.mark.parametrize(
    "heading, expected",
    [
        (
            "1.2 The follower: the worst case in an epsilon-Wasserstein ball",
            "12-the-follower-the-worst-case-in-an-epsilon-wasserstein-ball",
        ),
        ("Install check: `--quick`", "install-check---quick"),
        ("Kernel resources on sm_80 and sm_90", "kernel-resources-on-sm_80-and-sm_90"),
        ("At the hidden track's settings (seeds 1 and 2)", "at-the-hidden-tracks-settings-seeds-1-and-2"),
    ],
)
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_readme_names_the_test_command_that_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()
