"""The run directory's layout: stage folders (a finished run of the same config is found, another config's partial
state is refused), the places stages share, on a local disk or any fsspec filesystem."""

from __future__ import annotations

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
