"""The project speaks for itself: every `docs/X.md#anchor` it cites exists, and nothing
cites or reads material outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from scanner.rulebook import all_rules

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("scanner", "signing", "rules", "docs", "tests", "fixtures", "benchmarks", "examples")
TEXT = {".py", ".md", ".toml", ".json", ".yml", ".yaml", ".txt"}
CITATION = re.compile(r"(?:docs/)?([a-z0-9-]+\.md)#([a-z0-9-]+)")


def _files() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / ".ci" / "run"]
    for folder in SOURCES:
        found += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in TEXT and "corpus" not in p.parts
        ]
    return [p for p in found if p.name != Path(__file__).name]


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            out.add(text.replace(" ", "-"))
    return out


def test_every_cited_anchor_exists() -> None:
    anchors = {doc.name: _anchors(doc) for doc in (ROOT / "docs").glob("*.md")}
    missing = []
    cited = 0
    for path in _files():
        for doc, anchor in CITATION.findall(path.read_text(encoding="utf-8", errors="replace")):
            if doc in anchors:
                cited += 1
                if anchor not in anchors[doc]:
                    missing.append(f"{path.relative_to(ROOT)}: {doc}#{anchor}")
    assert not missing, missing
    assert cited >= 30  # the rules and the lifecycle catalogue cite threats.md


def test_rule_references_point_into_the_repository_or_the_web() -> None:
    for rule in all_rules():
        for ref in rule.references:
            assert "THREATS.md" not in ref, rule.id
            if ref.startswith("docs/"):
                assert (ROOT / ref.split("#")[0]).is_file(), (rule.id, ref)


def test_nothing_reads_or_cites_outside_the_repository() -> None:
    outside = re.compile(r"THREATS\.md|\.\./shared|/work/shared|MODELS\.md|STYLE\.md")
    hits = [
        str(p.relative_to(ROOT))
        for p in _files()
        if outside.search(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not hits, hits
