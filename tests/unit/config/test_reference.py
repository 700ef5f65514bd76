"""docs/configuration.md is written from the schema, and is current."""

from __future__ import annotations

from pathlib import Path

from energy_cli.config.reference import reference_markdown
from energy_cli.config.schema import RULES

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_configuration_page_is_current():
    assert DOC.read_text() == reference_markdown(), "docs/configuration.md is stale: run `make docs`"


def test_the_page_lists_every_key_with_a_rule():
    text = reference_markdown()
    missing = [key for key in RULES if key != "command" and f"| `{key}` |" not in text]
    assert not missing, missing
