"""The README's config reference is what tools/config_reference.py generates from the pydantic models today."""

from __future__ import annotations

from tests.conftest import REPO_ROOT, load_tool


def test_readme_config_reference_is_current():
    tool = load_tool("config_reference")
    assert tool.readme_copy(REPO_ROOT / "README.md") == tool.reference()


def test_every_field_is_described():
    tool = load_tool("config_reference")
    for _, model in tool.SECTIONS:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
