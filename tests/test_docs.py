"""The README and docs/: relative links resolve, and the benchmarks write where they should."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from bench.latency import update_results
from tests.conftest import REPO_ROOT

DOCUMENTS = (
    REPO_ROOT / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
    REPO_ROOT / "bench" / "README.md",
    REPO_ROOT / "comfyui_standin" / "README.md",
    REPO_ROOT / "workflows" / "README.md",
    REPO_ROOT / "tests" / "recordings" / "README.md",
)
BENCHMARKS = (
    "latency",
    "throughput",
    "failover",
    "scale",
    "soak",
    "upload_memory",
    "face_detection",
)

# The original description's two curl examples, which the README shows as they were written.
SEED_UPLOAD = """curl -X POST http://127.0.0.1:5000/upload-image \\
-F "image=@/path/to/your/image.jpg"
"""
SEED_GENERATE = """curl -X POST "http://127.0.0.1:5000/generate-avatar-by-image" \\
  -H "Content-Type: application/json" \\
  -d '{
    "imageName": "your_uploaded_image.jpg",
    "gender": "female",
    "width": 1024,
    "height": 1024
  }'
"""

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_INLINE_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_LINK.sub(r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(document: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 ... for repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(document.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(document: Path) -> list[str]:
    """The relative links of a markdown file whose file or heading does not exist."""
    problems = []
    for line in prose_lines(document.read_text(encoding="utf-8")):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto: ...
            path, _, anchor = target.partition("#")
            resolved = (document.parent / path).resolve() if path else document
            if not resolved.exists():
                problems.append(f"{target}: no file {path}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Safe retries: `Idempotency-Key`", "safe-retries-idempotency-key"),
        ("The command line: `avatar`", "the-command-line-avatar"),
        (
            "`POST /upload-image` (alias `POST /upload_image`)",
            "post-upload-image-alias-post-upload_image",
        ),
        ("Upload a photo, then generate", "upload-a-photo-then-generate"),
        ("Soak: nothing accumulates per job", "soak-nothing-accumulates-per-job"),
    ],
)
def test_slug_is_githubs(heading: str, expected: str):
    """Heading anchors are made as GitHub makes them."""
    assert slug(heading) == expected


def test_broken_links_are_found(tmp_path: Path):
    """A link to a missing file or a missing heading is reported; good ones are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-part) [ok](#page) [ok](https://example.com/x#y)\n"
        "[bad](missing.md) [bad](other.md#no-such-part) [bad](#nowhere)\n"
        "```\n[ignored](in-a-code-block.md)\n```\n`[ignored](inline-code.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no file missing.md",
        "other.md#no-such-part: no heading #no-such-part in other.md",
        "#nowhere: no heading #nowhere in page.md",
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_relative_links_resolve(document: Path):
    """Every relative link leads to a file that exists and, with #anchor, to one of its headings."""
    assert broken_links(document) == []


def test_readme_keeps_the_original_curl_examples():
    """The README shows the original description's upload and generate examples as written."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert SEED_UPLOAD in readme
    assert SEED_GENERATE in readme


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_markers_are_in_the_results_page(name: str):
    """Each benchmark's start and end markers are in docs/benchmarks.md once, in that order."""
    module = importlib.import_module(f"bench.{name}")
    page = (REPO_ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert page.count(module.MARK_START) == 1
    assert page.count(module.MARK_END) == 1
    assert page.index(module.MARK_START) < page.index(module.MARK_END)


def test_update_results_replaces_only_its_block(tmp_path: Path):
    """update_results rewrites the text between its markers and leaves the rest of the page."""
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# Benchmarks\n\n<!-- bench:a:start -->\nold a\n<!-- bench:a:end -->\n\n"
        "<!-- bench:b:start -->\nold b\n<!-- bench:b:end -->\n",
        encoding="utf-8",
    )
    update_results("| new | table |", "<!-- bench:a:start -->", "<!-- bench:a:end -->", page=page)
    assert page.read_text(encoding="utf-8") == (
        "# Benchmarks\n\n<!-- bench:a:start -->\n| new | table |\n<!-- bench:a:end -->\n\n"
        "<!-- bench:b:start -->\nold b\n<!-- bench:b:end -->\n"
    )
