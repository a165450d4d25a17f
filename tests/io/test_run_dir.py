"""The run directory's layout: stage folders (a finished run of the same config is found, another config's partial
state is refused), the places stages share, on a local disk or any fsspec filesystem."""

from __future__ import annotations

import json

import pytest

from engine.config import ConfigError
from engine.io.run_dir import EvaluationDir, RunDir, StageDir, arrow_location


def test_manifest_marks_completion_for_the_same_config_only(tmp_path):
    stage = StageDir(str(tmp_path), "synthesis", "abc")
    assert stage.completed_manifest() is None
    stage.claim()
    stage.write_manifest({"rows_in": 3})
    assert stage.completed_manifest() == {"rows_in": 3, "fingerprint": "abc"}
    assert StageDir(str(tmp_path), "synthesis", "other").completed_manifest() is None


def test_another_config_cannot_claim_the_folder(tmp_path):
    StageDir(str(tmp_path), "training", "abc").claim()
    StageDir(str(tmp_path), "training", "abc").claim()  # the same config resumes
    with pytest.raises(ConfigError, match="output_dir: .*training run of another config"):
        StageDir(str(tmp_path), "training", "xyz").claim()


def test_works_on_any_fsspec_filesystem():
    stage = StageDir("memory://runs/a", "evaluation", "f1")
    stage.claim()
    stage.write_manifest({"ok": True})
    assert StageDir("memory://runs/a", "evaluation", "f1").completed_manifest()["ok"] is True


def test_shared_places_keep_the_scheme_of_the_run_directory():
    run = RunDir("memory://bucket/runs/x/")
    assert run.instructions == "memory://bucket/runs/x/synthesis/instructions"
    assert run.trained_model() == "memory://bucket/runs/x/training/model"
    assert run.trained_model("synthesizer_tuning") == "memory://bucket/runs/x/synthesizer_tuning/model"
    assert run.summary == "memory://bucket/runs/x/run_summary.json"
    assert run.ablation().url("model") == "memory://bucket/runs/x/ablation/model"
    evaluation = run.evaluation()
    assert evaluation.url(evaluation.predictions("base", "slake")) == (
        "memory://bucket/runs/x/evaluation/predictions/base/task=slake")
    assert evaluation.path(evaluation.state("base", "slake")) == "/bucket/runs/x/evaluation/_state/base/slake.json"


def test_a_trained_model_counts_once_its_config_is_written(tmp_path):
    run = RunDir(str(tmp_path))
    assert not run.has_trained_model()
    (tmp_path / "training" / "model").mkdir(parents=True)
    assert not run.has_trained_model()  # an interrupted export
    (tmp_path / "training" / "model" / "config.json").write_text("{}")
    assert run.has_trained_model() and run.trained_model() == f"{tmp_path}/training/model"


def test_completed_pairs_read_the_state_files(tmp_path):
    evaluation = EvaluationDir(str(tmp_path))
    evaluation.write_json({"status": "complete"}, evaluation.state("base", "slake"))
    evaluation.write_json({"status": "running"}, evaluation.state("adapted", "slake"))
    assert evaluation.completed_pairs() == [("base", "slake")]


def test_arrow_location_hands_urls_to_fsspec_and_paths_through(tmp_path):
    assert arrow_location(str(tmp_path)) == (str(tmp_path), None)
    path, filesystem = arrow_location("memory://bucket/set")
    assert path == "/bucket/set" and filesystem.type_name == "py::fsspec+memory"


def test_manifests_hold_paths_relative_to_the_run_directory_and_read_back_where_it_is_now(tmp_path):
    first = tmp_path / "first"
    stage = StageDir(str(first), "training", "abc")
    stage.write_manifest({"model": f"{first}/training/model", "runs": [f"{first}/synthesis/instructions"],
                          "base_model": "/models/base", "sibling": f"{first}-other/model", "status": "complete"})
    written = json.loads((first / "training" / "manifest.json").read_text())
    assert written == {"model": "./training/model", "runs": ["./synthesis/instructions"], "base_model": "/models/base",
                       "sibling": f"{first}-other/model", "status": "complete", "fingerprint": "abc"}
    moved = tmp_path / "moved"
    first.rename(moved)
    manifest = StageDir(str(moved), "training", "abc").completed_manifest()
    assert manifest["model"] == f"{moved}/training/model" and manifest["runs"] == [f"{moved}/synthesis/instructions"]
    assert manifest["base_model"] == "/models/base"


def test_object_store_paths_are_made_relative_in_both_spellings():
    run = RunDir("memory://bucket/runs/x")
    assert run.portable({"a": "memory://bucket/runs/x/training/model", "b": "/bucket/runs/x/evaluation"}) == {
        "a": "./training/model", "b": "./evaluation"}
    assert run.resolved("./training/model") == "memory://bucket/runs/x/training/model"
    run.write_summary({"model": "memory://bucket/runs/x/training/model", "seconds": 1.5})
    assert run.read_json("run_summary.json") == {"model": "./training/model", "seconds": 1.5}
