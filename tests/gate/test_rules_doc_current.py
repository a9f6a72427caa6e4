"""docs/rules.md is generated from the catalogue; CI fails when it is stale."""

from __future__ import annotations

from pathlib import Path

from scanner.rulebook import rules_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def test_docs_rules_md_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == rules_markdown(), (
        "docs/rules.md is stale: run `modelseal rules docs -o docs/rules.md`"
    )


def test_every_module_that_defines_rules_is_registered() -> None:
    """A rule defined in a module missing from RULE_MODULES would be absent from the
    catalogue (and from docs/rules.md) unless something happened to import it first."""
    from scanner.rulebook import RULE_MODULES

    root = DOC.parents[1]
    defining = {
        ".".join(path.relative_to(root).with_suffix("").parts)
        for path in (root / "scanner").rglob("*.py")
        if "define_rule(" in path.read_text(encoding="utf-8") and path.name != "rulebook.py"
    }
    assert defining <= set(RULE_MODULES), sorted(defining - set(RULE_MODULES))
