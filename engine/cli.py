"""The `adapt` command line: one verb per stage, plus run, score, report, export, inspect, ablate and check-config.

Heavy libraries (ray, torch, vllm) are imported inside the verbs that need them, so `adapt --help` and
`adapt check-config` answer in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from engine.ablation import VARIANT_NAMES as ABLATION_VARIANTS
from engine.config import ConfigError, RunConfig, dump_config, load_config

EXIT_OK = 0
EXIT_INVALID = 2  # bad config or bad arguments (argparse uses 2 for usage errors too)
SYNTHESIS_SUMMARY_KEYS = ("rows_in", "rows_out", "rows_dropped", "rows_quarantined", "tasks_synthesized", "tasks_kept",
                          "cost")
TRAINING_SUMMARY_KEYS = ("steps", "final_loss", "model")
DEFAULT_EXPORT_NAME = "adapt_instructions"


def _load(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(dump_config(config), end="")
    print(f"# valid: {args.config} (fingerprint {config.fingerprint()})", file=sys.stderr)
    return EXIT_OK


def cmd_synthesize(args: argparse.Namespace) -> int:
    from engine.synthesis.pipeline import run_synthesis

    manifest = run_synthesis(_load(args))
    print(json.dumps({key: manifest[key] for key in SYNTHESIS_SUMMARY_KEYS}))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from engine.io.sinks import ExportRefused

    misplaced = [f"--{option}" for option in ("name", "seed", "mixture") if getattr(args, option) is not None]
    if misplaced and args.to != "llama-factory":
        print(f"adapt export: {', '.join(misplaced)}: only for --to llama-factory", file=sys.stderr)
        return EXIT_INVALID
    if args.seed is not None and args.mixture == "none":
        print("adapt export: --seed: only with --mixture single_stage", file=sys.stderr)
        return EXIT_INVALID
    try:
        written = _export_lmms_eval(args) if args.to == "lmms-eval" else _export_instructions(args)
    except ExportRefused as err:
        print(f"adapt export: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(f"adapt export: {written} written to {args.out} ({args.to})")
    return EXIT_OK


def _export_instructions(args: argparse.Namespace) -> str:
    from functools import partial
    from pathlib import Path

    from engine.io.run_dir import INSTRUCTIONS, SYNTHESIS, RunDir
    from engine.io.sinks import ExportRefused, export_hf_disk, export_llama_factory
    from engine.training.mixture import single_stage

    run = RunDir(args.source)
    if not run.exists(SYNTHESIS, INSTRUCTIONS):
        raise ExportRefused(f"SOURCE: no instruction set at {run.instructions} (run `adapt synthesize` first)")
    if args.to == "llama-factory":
        # single_stage: the conversations `adapt train` makes, seeded by the config's top-level seed; none: the rows as
        # synthesis wrote them (caption first), which `adapt train` mixes itself when it reads the JSON
        conversations = (partial(single_stage, seed=args.seed or 0) if args.mixture in (None, "single_stage")
                         else _as_stored)
        count = export_llama_factory(run.instructions, args.out, args.name or DEFAULT_EXPORT_NAME, conversations,
                                     overwrite=args.overwrite)
        return f"{count} conversations"
    if Path(args.out).exists() and any(Path(args.out).iterdir()) and not args.overwrite:
        raise ExportRefused(f"--out: {args.out} is not empty; pass --overwrite to replace it")
    return f"{export_hf_disk(run.instructions, args.out)} examples"


def _as_stored(row: dict) -> list[dict]:
    return [row]


def _export_lmms_eval(args: argparse.Namespace) -> str:
    from pathlib import Path

    from engine.evaluation.lmms_eval import export_lmms_eval
    from engine.io.sinks import ExportRefused

    if not Path(args.source).is_file():
        raise ExportRefused(f"SOURCE: --to lmms-eval takes the YAML config `adapt evaluate` runs; {args.source} is "
                            "not a file")
    config = _require(load_config(args.source), "evaluation").with_absolute_paths()
    rows = export_lmms_eval(args.out, config.evaluation, overwrite=args.overwrite)
    return ", ".join(f"{task} ({count} records)" for task, count in rows.items())


def cmd_inspect(args: argparse.Namespace) -> int:
    from engine.io.run_dir import INSTRUCTIONS, SYNTHESIS, RunDir
    from engine.synthesis.inspection import write_inspection

    if not RunDir(args.run_dir).exists(SYNTHESIS, INSTRUCTIONS):
        print(f"adapt inspect: RUN_DIR: no synthesized data in {args.run_dir} (run `adapt synthesize` first)",
              file=sys.stderr)
        return EXIT_INVALID
    folder = write_inspection(args.run_dir, args.out)
    print(f"adapt inspect: report in {folder}/report.html (numbers in report.json)")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from engine.training.loop import run_training

    manifest = run_training(_require(_load(args), "training"))
    print(json.dumps({key: manifest.get(key) for key in TRAINING_SUMMARY_KEYS}))
    return EXIT_OK


def cmd_tune_synthesizer(args: argparse.Namespace) -> int:
    from engine.training.loop import run_synthesizer_tuning

    manifest = run_synthesizer_tuning(_require(_load(args), "synthesizer_tuning"))
    print(json.dumps({key: manifest.get(key) for key in TRAINING_SUMMARY_KEYS}))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.evaluation.runner import run_evaluation

    print(json.dumps(run_evaluation(_require(_load(args), "evaluation")), indent=2))
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from engine.evaluation.score_file import score_file

    try:
        scores = score_file(args.task, args.predictions, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"adapt score: {err}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(scores, indent=2))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from engine.evaluation.report import regenerate_report
    from engine.io.run_dir import RunDir

    evaluation = RunDir(args.run_dir).evaluation()
    if not evaluation.exists():
        print(f"adapt report: no evaluation/ in {args.run_dir} (run `adapt evaluate` first)", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(regenerate_report(args.run_dir), indent=2))
    print(f"adapt report: wrote {evaluation.url()}/report.json, report.md, report.png", file=sys.stderr)
    return EXIT_OK


def describe_route(config: RunConfig) -> str:
    """How this run makes its tasks, in words: the demo's shortcuts are printed, never hidden."""
    synthesis, filtering = config.synthesis, config.filter
    if synthesis.synthesizer == "rule_based":
        synthesizer = "rule-based templates over the caption (no model)"
    elif config.synthesizer_tuning is not None:
        synthesizer = (f"{config.synthesizer_tuning.model} tuned on {config.synthesizer_tuning.dataset}, "
                       f"served by {synthesis.engine.backend}")
    else:
        synthesizer = f"{synthesis.engine.model} on {synthesis.engine.backend}"
    if not filtering.enabled:
        judge = "none (every synthesized task is kept)"
    elif filtering.judge == "lexical":
        judge = "lexical word-overlap heuristic (no model)"
    else:
        judge = f"{filtering.engine.model} on {filtering.engine.backend}"
    return f"synthesizer: {synthesizer}; consistency judge: {judge}"


def compare_to_base(results: dict) -> list[str]:
    """One line per task metric: base -> adapted, and the difference."""
    from engine.evaluation.report import BASE_MODEL, metric_rows, score_value

    lines = []
    for task, metric in metric_rows(results):
        base, adapted = (score_value(results, model, task, metric) for model in (BASE_MODEL, "adapted"))
        if base is not None and adapted is not None:
            lines.append(f"{task} {metric}: base {base:.2f} -> adapted {adapted:.2f} ({adapted - base:+.2f})")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    """[tune synthesizer ->] synthesize -> train -> evaluate (base and adapted) -> report; each stage skips itself
    when already complete. Ends with a summary, also written to {output_dir}/run_summary.json."""
    import fsspec

    from engine.evaluation.runner import run_evaluation
    from engine.io.run_dir import RunDir
    from engine.synthesis.pipeline import run_synthesis
    from engine.training.loop import run_synthesizer_tuning, run_training

    config = _require(_require(_load(args), "training"), "evaluation")
    started = time.monotonic()
    stages = ["synthesize", "train", "evaluate (base and adapted)", "report"]
    if config.synthesizer_tuning is not None:
        stages.insert(0, "tune synthesizer")
    run_dir = RunDir(config.with_absolute_paths().output_dir)
    print(f"adapt run: config {args.config} is valid (fingerprint {config.fingerprint()})")
    print(f"adapt run: run directory {run_dir.url()}")
    print(f"adapt run: stages: {' -> '.join(stages)}")
    print(f"adapt run: route: {describe_route(config)}")
    summary: dict = {"config": str(args.config), "route": describe_route(config)}
    if config.synthesizer_tuning is not None:
        tuning = run_synthesizer_tuning(config)
        summary["synthesizer_tuning"] = {key: tuning.get(key) for key in TRAINING_SUMMARY_KEYS}
    synthesis = run_synthesis(config)
    summary["synthesis"] = {key: synthesis[key] for key in SYNTHESIS_SUMMARY_KEYS}
    training = run_training(config)
    summary["training"] = {key: training.get(key) for key in TRAINING_SUMMARY_KEYS}
    summary["evaluation"] = results = run_evaluation(config)
    summary["adapted_vs_base"] = compare_to_base(results)
    summary["seconds"] = round(time.monotonic() - started, 1)
    run_dir.write_summary(summary)
    with fsspec.open(run_dir.evaluation().url("report.md")) as file:
        print(file.read().decode())
    for line in summary["adapted_vs_base"]:
        print(f"adapt run: {line}")
    print(f"adapt run: done in {summary['seconds']:.0f} s; summary in {run_dir.summary}")
    return EXIT_OK


def cmd_ablate(args: argparse.Namespace) -> int:
    from engine.ablation import run_ablation, select_variants

    variants = [variant.name for variant in select_variants(args.variants.split(",") if args.variants else None)]
    print(run_ablation(_require(_require(_load(args), "training"), "evaluation"), variants))
    return EXIT_OK


def _require(config: RunConfig, section: str) -> RunConfig:
    if getattr(config, section) is None:
        raise ConfigError(f"{section}: this verb needs a `{section}` section in the config")
    return config


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override any field, e.g. training.learning_rate=2e-5"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapt",
        description="Adapt a multimodal LLM to a domain from image-caption pairs (the AdaMLLM method, on Ray).",
        epilog=f"Exit codes: {EXIT_OK} success, {EXIT_INVALID} invalid config or arguments.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, handler: Callable[[argparse.Namespace], int], *, config: bool = True):
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        if config:
            _add_config_arguments(sub)
        sub.set_defaults(handler=handler)
        return sub

    verb("synthesize", "Image-caption shards -> synthesizer -> consistency filter -> Parquet instruction set.",
         cmd_synthesize)
    verb("tune-synthesizer", "Tune the `synthesizer_tuning` model into a task synthesizer on seed tasks.",
         cmd_tune_synthesizer)
    verb("train", "Single-stage post-training (Ray Train + DeepSpeed); `training.task=synthesizer` tunes a synthesizer.",
         cmd_train)
    verb("evaluate", "Score the base and adapted models on the domain's benchmarks; write the report.", cmd_evaluate)
    verb("run", "synthesize -> train -> evaluate -> report in one run directory, skipping finished stages.", cmd_run)
    ablate = verb("ablate", "Run the paper's ablation grid (synthesizer, filter, single vs two stage, caption-only) "
                  "and print one table.", cmd_ablate)
    ablate.add_argument("--variants", help="comma-separated subset of: " + ", ".join(ABLATION_VARIANTS))
    verb("check-config", "Validate a config and print it resolved (defaults filled in). Exit 0 valid, 2 invalid.",
         cmd_check_config)

    score = verb("score", "Score a JSONL predictions file made by any system on one task.", cmd_score, config=False)
    score.add_argument("--task", required=True, help="task name, e.g. slake, food101, recipe1m")
    score.add_argument("--predictions", required=True, help="JSONL with prediction, label (+ answer_type, options)")
    score.add_argument("--out", help="write the scores as JSON here too")

    export = verb("export", "Export a run's instruction set for other trainers (LLaMA-Factory, HF save_to_disk), or "
                  "a config's benchmarks as lmms-eval tasks.", cmd_export, config=False)
    export.add_argument("source", metavar="SOURCE",
                        help="a run directory (llama-factory, hf-disk), or the YAML config `adapt evaluate` runs "
                        "(lmms-eval)")
    export.add_argument("--to", choices=["llama-factory", "hf-disk", "lmms-eval"], default="llama-factory")
    export.add_argument("--out", required=True, help="folder to write (for LLaMA-Factory: its data/ folder works)")
    export.add_argument("--name", help=f"LLaMA-Factory dataset name (default {DEFAULT_EXPORT_NAME}); names its "
                        "dataset_info.json entry, JSON file and image folder")
    export.add_argument("--mixture", choices=["single_stage", "none"],
                        help="LLaMA-Factory: single_stage (default) writes the conversations `adapt train` trains on, "
                        "the caption turn first or last at random per image; none writes the rows as synthesized "
                        "(caption first), for `adapt train` with training.dataset_format llama_factory, which mixes "
                        "them itself")
    export.add_argument("--seed", type=int, help="LLaMA-Factory single_stage: seed of the caption turn's place, as "
                        "`adapt train` draws it: the config's top-level `seed` (default 0)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an export of the same name (or non-empty --out, or task folders)")

    inspect = verb("inspect", "Report on a run's synthesized data (HTML with plots, and JSON): task kinds, lengths, "
                   "keep rate, drop and quarantine reasons, near-duplicates, examples.", cmd_inspect, config=False)
    inspect.add_argument("run_dir", help="a run directory holding synthesis/")
    inspect.add_argument("--out", help="folder to write (default: RUN_DIR/synthesis/inspection)")

    report = verb("report", "Regenerate report.json, report.md and report.png of a run directory.", cmd_report,
                  config=False)
    report.add_argument("run_dir", help="a run directory (output_dir of a config)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"adapt {args.verb}: invalid config\n{err}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
