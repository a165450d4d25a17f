"""Print the config reference (every section and field, with type, default and description) from engine/config.py.

    python tools/config_reference.py            # markdown to stdout
    python tools/config_reference.py --check README.md   # exit 1 if the README's copy is stale

The README holds the output between the markers below; tests/tools/test_config_reference.py keeps the two in step.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from engine.config import (
    BenchmarkConfig,
    ClusterConfig,
    DataConfig,
    EngineConfig,
    EvaluationConfig,
    FilterConfig,
    RunConfig,
    SynthesisConfig,
    TrainingConfig,
    speed_only_fields,
)

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
SECTIONS = [
    ("(top level)", RunConfig),
    ("cluster", ClusterConfig),
    ("data", DataConfig),
    ("synthesis", SynthesisConfig),
    ("filter", FilterConfig),
    ("synthesis.engine, filter.engine, evaluation.engine", EngineConfig),
    ("training", TrainingConfig),
    ("evaluation", EvaluationConfig),
    ("evaluation.benchmarks[]", BenchmarkConfig),
]


def type_name(annotation) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(str(value) for value in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("engine.config.", "").replace("|", "\\|")


def default_text(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section defaults)" if isinstance(value, BaseModel) else f"`{value}`"
    return "null" if field.default is None else f"`{field.default}`"


def reference() -> str:
    lines = []
    for title, model in SECTIONS:
        lines += [f"### `{title}`", "", "| field | type | default | description |", "|---|---|---|---|"]
        speed_only = speed_only_fields(model)
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|")
            if name in speed_only:
                description += " *Speed only: a run resumed with another value continues.*"
            lines.append(f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_copy(readme: Path) -> str:
    text = readme.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", type=Path, metavar="README", help="compare with the README's copy instead")
    args = parser.parse_args()
    if args.check:
        if readme_copy(args.check) != reference():
            print(f"{args.check}: config reference is stale; regenerate with tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    print(reference(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
