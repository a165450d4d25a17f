"""`adapt ablate`: the paper's ablation grid (AdaMLLM Tables 4 and 5) from one config.

Each variant is the config with a few fields overridden, run as `adapt run` would (synthesize -> train) in
`{output_dir}/ablation/<variant>`; then one evaluation scores the base model and every variant's model together in
`{output_dir}/ablation`, and one table has a row per variant and a column per benchmark metric.

Variants whose synthesis settings are the same share one synthesis run (the first one's), so caption-only and
two-stage training do not synthesize the data set again.

Heavy modules are imported inside the functions: the command line lists the variant names without loading them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import fsspec

from engine.config import ConfigError, RunConfig, apply_override
from engine.io.run_dir import ABLATION_TABLE, RunDir


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]
    what: str


# The grid of the issue and the paper: synthesizer (rule-based vs model), filter on/off, single vs two-stage training,
# and caption-only training as the floor.
VARIANTS = (
    Variant("caption_only", ("training.mixture=caption_only",), "captions only, no synthetic tasks"),
    Variant("rule_based", ("synthesis.synthesizer=rule_based", "synthesizer_tuning=null"),
            "rule-based tasks, single stage"),
    Variant("model", ("synthesis.synthesizer=model",), "model-synthesized tasks, filtered, single stage"),
    Variant("model_no_filter", ("synthesis.synthesizer=model", "filter.enabled=false"),
            "model-synthesized tasks, unfiltered, single stage"),
    Variant("model_two_stage", ("synthesis.synthesizer=model", "training.mixture=two_stage"),
            "model-synthesized tasks, filtered, captions then tasks"),
)
VARIANT_NAMES = tuple(variant.name for variant in VARIANTS)


def select_variants(names: Sequence[str] | None) -> list[Variant]:
    if not names:
        return list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANT_NAMES))
    if unknown:
        raise ConfigError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}")
    return [variant for variant in VARIANTS if variant.name in names]


def ablation_root(config: RunConfig) -> RunDir:
    return RunDir(config.with_absolute_paths().output_dir).ablation()


def variant_config(config: RunConfig, variant: Variant) -> RunConfig:
    """The config of one variant: its overrides applied, its own output folder."""
    tree = config.with_absolute_paths().model_dump(mode="json")
    for assignment in (*variant.overrides, f"output_dir={ablation_root(config).url(variant.name)}"):
        apply_override(tree, assignment)
    try:
        return RunConfig.model_validate(tree)
    except ValueError as err:
        raise ConfigError(f"ablation variant {variant.name}: {err}") from None


def plan_variants(config: RunConfig, variants: Sequence[Variant]) -> list[tuple[Variant, RunConfig]]:
    """Each variant's config; a variant whose synthesis an earlier variant already runs trains on that one's
    instruction set instead of synthesizing it again."""
    from engine.synthesis.pipeline import synthesis_fingerprint

    planned, synthesized_by = [], {}
    for variant in variants:
        variant_run = variant_config(config, variant)
        fingerprint = synthesis_fingerprint(variant_run)
        if fingerprint in synthesized_by:
            shared = RunDir(synthesized_by[fingerprint]).instructions
            variant_run = variant_run.model_copy(
                update={"training": variant_run.training.model_copy(update={"dataset": shared})})
        else:
            synthesized_by[fingerprint] = variant_run.output_dir
        planned.append((variant, variant_run))
    return planned


def render_table(results: dict, variants: Sequence[Variant], failures: Mapping[str, str] | None = None) -> str:
    """Rows: the base model, then each variant; columns: every task metric (scores x100), as in the paper. A variant
    that could not be trained keeps its row, with the reason."""
    from engine.evaluation import report
    from engine.evaluation.tasks import get_task

    columns = report.metric_rows(results)
    header = ["Model", "What it was trained on", *(f"{get_task(task).title} {metric}" for task, metric in columns)]
    rows = [(report.BASE_MODEL, "nothing (the model as given)")] + [(v.name, v.what) for v in variants]
    lines = ["# Ablation", "", "Scores x100 on each benchmark (DESIGN.md section 4, Evaluation).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, what in rows:
        if name in results or name in (failures or {}):
            values = [report.format_cell(report.score_value(results, name, task, metric)) for task, metric in columns]
            if name in (failures or {}):
                what = f"{what} (not trained: {failures[name]})"
            lines.append("| " + " | ".join([name, what, *values]) + " |")
    return "\n".join(lines) + "\n"


def run_ablation(config: RunConfig, names: Sequence[str] | None = None) -> str:
    """Run the selected variants of a config with `training` and `evaluation` sections (each stage skips itself when
    complete), evaluate them together, write and return the table."""
    from engine.evaluation import report
    from engine.evaluation.runner import run_evaluation
    from engine.synthesis.pipeline import run_synthesis
    from engine.training.loop import run_training

    variants = select_variants(names)
    models, failures = {report.BASE_MODEL: config.training.model}, {}
    for variant, variant_run in plan_variants(config, variants):
        print(f"ablation: {variant.name} ({variant.what}) in {variant_run.output_dir}")
        try:
            if variant_run.training.dataset is None:
                run_synthesis(variant_run)
            run_training(variant_run)
        except ConfigError as err:  # e.g. two-stage training when the synthesizer kept no task: the others still run
            failures[variant.name] = str(err).replace("\n", "; ")
            print(f"ablation: {variant.name} not trained: {failures[variant.name]}", file=sys.stderr)
            continue
        models[variant.name] = RunDir(variant_run.output_dir).trained_model()
    root = ablation_root(config)
    results = run_evaluation(config.model_copy(update={"output_dir": root.url()}), models)
    table = render_table(results, variants, failures)
    with fsspec.open(root.url(ABLATION_TABLE), "w") as file:
        file.write(table)
    return table
