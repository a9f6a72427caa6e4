"""docs/rules.md is generated from the catalogue; CI fails when it is stale."""

from __future__ import annotations

from pathlib import Path

from scanner.rulebook import rules_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def test_docs_rules_md_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == rules_markdown(), (
        "docs/rules.md is stale: run `modelseal rules docs -o docs/rules.md`"
    )
