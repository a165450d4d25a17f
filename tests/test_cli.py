"""The `adapt` command line: help for every verb, check-config's exit codes, refusals of bad input, the route line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.cli import EXIT_INVALID, build_parser, describe_route, main
from engine.config import load_config
from tests.conftest import base_tree, write_config

VERBS = ["synthesize", "tune-synthesizer", "train", "evaluate", "run", "score", "report", "ablate", "check-config"]


def test_console_script_prints_help():
    adapt = Path(sys.executable).with_name("adapt")
    result = subprocess.run([str(adapt), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: adapt {verb}" in capsys.readouterr().out


def test_check_config_prints_resolved_config_and_exits_zero(workdir, capsys):
    path = write_config(workdir, base_tree())
    assert main(["check-config", str(path), "training.learning_rate=3e-5"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["training"]["learning_rate"] == 3e-5
    assert resolved["training"]["weight_decay"] == 0.0  # a default filled in


def test_check_config_exits_two_naming_the_field(workdir, capsys):
    path = write_config(workdir, base_tree())
    assert main(["check-config", str(path), "training.num_workers=0"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "command line: training.num_workers: Input should be greater than or equal to 1" in err


def test_ablate_refuses_an_unknown_variant_and_an_invalid_config(workdir, capsys):
    path = write_config(workdir, base_tree())
    assert main(["ablate", str(path), "--variants", "caption_only,nope"]) == EXIT_INVALID
    assert "--variants: unknown nope; choose from caption_only" in capsys.readouterr().err
    assert main(["ablate", str(path), "data.format=csv"]) == EXIT_INVALID
    assert "command line: data.format" in capsys.readouterr().err


def test_tune_synthesizer_needs_its_section(workdir, capsys):
    assert main(["tune-synthesizer", str(write_config(workdir, base_tree()))]) == EXIT_INVALID
    assert "synthesizer_tuning: this verb needs a `synthesizer_tuning` section" in capsys.readouterr().err


def test_route_names_the_shortcuts_it_takes(workdir):
    tree = base_tree()
    assert describe_route(load_config(write_config(workdir, tree))) == (
        "synthesizer: ./models/vlm on vllm; consistency judge: ./models/judge on vllm")
    tree["synthesis"]["synthesizer"] = "rule_based"
    tree["filter"]["judge"] = "lexical"
    assert describe_route(load_config(write_config(workdir, tree))) == (
        "synthesizer: rule-based templates over the caption (no model); "
        "consistency judge: lexical word-overlap heuristic (no model)")


@pytest.mark.parametrize("verb", ["train", "evaluate", "run"])
def test_stage_verbs_name_the_missing_section(verb, workdir, capsys):
    tree = base_tree()
    tree.pop("training")
    assert main([verb, str(write_config(workdir, tree))]) == EXIT_INVALID
    assert ": this verb needs a `" in capsys.readouterr().err


def test_score_prints_the_task_metrics(tmp_path, capsys):
    predictions = tmp_path / "predictions.jsonl"
    rows = [
        {"prediction": "yes, it is", "label": "yes", "answer_type": "CLOSED"},
        {"prediction": "no", "label": "yes", "answer_type": "CLOSED"},
        {"prediction": "left lung", "label": "the left lung", "answer_type": "OPEN"},
    ]
    predictions.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = tmp_path / "scores.json"
    assert main(["score", "--task", "vqa_rad", "--predictions", str(predictions), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["closed_accuracy"] == 50.0 and printed["open_recall"] == 100.0
    assert json.loads(out.read_text()) == printed


def test_score_rejects_an_unknown_task(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"prediction": "a", "label": "a"}\n')
    assert main(["score", "--task", "nope", "--predictions", str(predictions)]) == EXIT_INVALID
    assert "nope" in capsys.readouterr().err


def test_report_needs_an_evaluated_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_INVALID
    assert "no evaluation/" in capsys.readouterr().err
