"""A stage folder: a finished run of the same config is found, another config's partial state is refused."""

from __future__ import annotations

import pytest

from engine.config import ConfigError
from engine.io.stage_dir import StageDir


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
