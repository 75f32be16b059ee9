"""The user docs name real files: every repository path and relative link in README.md and docs/ exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docker" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_PATH = re.compile(r"(?<![\w/.<-])(?:rlkd_ray|actors|conf|docs|tests|benchmarks|scripts|docker)/[\w./-]*")
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_and_links_exist(doc):
    text = doc.read_text()
    missing = [p for p in REPO_PATH.findall(text) if not (ROOT / p.rstrip(".")).exists()]
    missing += [link for link in LINK.findall(text) if not (doc.parent / link).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {sorted(set(missing))}"
