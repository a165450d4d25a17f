"""A stage's folder in a run directory (`{output_dir}/synthesis`, `/training`, ...), local or any fsspec URL.

Two files give every stage the same restart rules: `run.json` records the fingerprint of the config that owns the
folder, so a different config cannot resume its partial state; `manifest.json` is written last and marks the stage
complete, so a rerun with the same fingerprint skips it.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from engine.config import ConfigError

MANIFEST = "manifest.json"
OWNER = "run.json"

# Stage folders that hold a trained model, and where in them the exported HF folder lies.
TRAINING_STAGE = "training"
TUNING_STAGE = "synthesizer_tuning"
MODEL_DIR = "model"


def trained_model_dir(run_dir: str, stage: str) -> str:
    """Where a training stage of the run in `run_dir` exports its model."""
    return f"{run_dir.rstrip('/')}/{stage}/{MODEL_DIR}"


class StageDir:
    def __init__(self, run_dir: str, stage: str, fingerprint: str):
        self.url = f"{run_dir.rstrip('/')}/{stage}"
        self.stage = stage
        self.fingerprint = fingerprint
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def path(self, *parts: str) -> str:
        """A path inside the folder, for this folder's filesystem (`self.fs`)."""
        return "/".join([self.root, *parts])

    def _read_json(self, name: str) -> dict[str, Any] | None:
        if not self.fs.exists(self.path(name)):
            return None
        with self.fs.open(self.path(name)) as file:
            return json.load(file)

    def completed_manifest(self) -> dict[str, Any] | None:
        """The manifest of a finished run of this same config, or None."""
        manifest = self._read_json(MANIFEST)
        return manifest if manifest and manifest.get("fingerprint") == self.fingerprint else None

    def claim(self) -> None:
        """Take the folder for this config, or refuse if another config's partial state is in it."""
        owner = self._read_json(OWNER)
        if owner is not None:
            if owner["fingerprint"] != self.fingerprint:
                raise ConfigError(
                    f"output_dir: {self.url} holds a {self.stage} run of another config (fingerprint "
                    f"{owner['fingerprint']}, this config {self.fingerprint}); choose another output_dir or delete "
                    "that folder"
                )
            return
        self.fs.makedirs(self.root, exist_ok=True)
        with self.fs.open(self.path(OWNER), "w") as file:
            json.dump({"fingerprint": self.fingerprint}, file)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        with self.fs.open(self.path(MANIFEST), "w") as file:
            json.dump({**manifest, "fingerprint": self.fingerprint}, file, indent=2)
