"""The run directory's layout, in one place: every stage, the CLI, export and ablation find their files here.

    {output_dir}/                            a local path or any fsspec URL (s3://, gs://, ...)
      run_summary.json                       `adapt run`'s summary
      synthesizer_tuning/                    a training folder (below) holding the tuned synthesizer
      synthesis/    run.json manifest.json _rows/ _checkpoint/ instructions/ tasks/ quarantine/ inspection/
      training/     run.json manifest.json checkpoints/ model/ metrics.csv
      evaluation/   manifest.json report.json report.md report.png
                    benchmarks/{task}/ benchmarks/{task}.json     normalized benchmark tables and their markers
                    predictions/{model}/task={task}/              Parquet predictions
                    _state/{model}/{task}.json _checkpoint/{model}/{digest}/
      ablation/     {variant}/ (a run directory each), evaluation/, ablation.md

Two files give every stage the same restart rules: `run.json` records the fingerprint of the config that owns the
folder, so a different config cannot resume its partial state; `manifest.json` is written last and marks the stage
complete, so a rerun with the same fingerprint skips it.

Paths inside the run directory are written into its JSON files (manifests, run_summary.json) relative to it, as
"./training/model", so the files stay true when the folder is moved or copied off a cluster; reading a manifest back
resolves them against the folder's current address. Paths outside it (input data, base models) stay as given.

Addresses come in two kinds: `path(...)` is a path for the folder's own filesystem object (`fs`), `url(...)` is the
same place as a URL that fsspec, pyarrow and Ray open anywhere (on other nodes too).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Any

import fsspec

from engine.config import ConfigError

MANIFEST = "manifest.json"
OWNER = "run.json"
RELATIVE = "./"  # how a path inside the run directory starts in its JSON files
SUMMARY = "run_summary.json"

SYNTHESIS = "synthesis"
TRAINING = "training"
TUNING = "synthesizer_tuning"
EVALUATION = "evaluation"
ABLATION = "ablation"

# synthesis/: the working rows, the three published sets, and `adapt inspect`'s report on them
ROWS = "_rows"
INSTRUCTIONS = "instructions"
TASKS = "tasks"
QUARANTINE = "quarantine"
INSPECTION = "inspection"
# synthesis/ and evaluation/: Ray Data's checkpoint of finished rows
CHECKPOINT = "_checkpoint"
# training folders
CHECKPOINTS = "checkpoints"
MODEL = "model"
METRICS = "metrics.csv"
# evaluation/
BENCHMARKS = "benchmarks"
PREDICTIONS = "predictions"
STATE = "_state"
REPORT_FILES = ("report.json", "report.md", "report.png")
# ablation/
ABLATION_TABLE = "ablation.md"


class Folder:
    """A folder on a local disk or an object store, with JSON helpers that work the same on both."""

    def __init__(self, url: str):
        self.url_root = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url_root)

    def path(self, *parts: str) -> str:
        """A path inside the folder, for `self.fs`."""
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """The same place as a URL (a plain path for local folders)."""
        return posixpath.join(self.url_root, *parts)

    def refresh(self) -> None:
        """Forget this process's cached listings of the folder: object-store filesystems (s3fs, gcsfs) cache them,
        and Ray workers in other processes have written here since."""
        self.fs.invalidate_cache(self.root)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        """The JSON file's content, or None when there is no such file."""
        if not self.exists(*parts):
            return None
        with self.fs.open(self.path(*parts)) as file:
            return json.load(file)

    def write_json(self, value: dict[str, Any], *parts: str) -> None:
        path = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "w") as file:
            json.dump(value, file, indent=2)

    def remove(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.rm(self.path(*parts), recursive=True)

    def portable(self, value: Any) -> Any:
        """`value` (JSON-like) with every path inside this folder, as a URL or an `fs` path, made relative to it."""
        def relative(text: str) -> str:
            for prefix in (self.url_root, self.root):
                if text == prefix or text.startswith(prefix + "/"):
                    return RELATIVE + text[len(prefix) + 1:]
            return text

        return _map_strings(value, relative)

    def resolved(self, value: Any) -> Any:
        """The inverse of `portable`: relative paths made addresses under this folder where it is now."""
        def address(text: str) -> str:
            if not text.startswith(RELATIVE):
                return text
            return self.url(text[len(RELATIVE):]) if len(text) > len(RELATIVE) else self.url_root

        return _map_strings(value, address)


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """A JSON-like value with `change` applied to every string in it (dict keys excepted)."""
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    return change(value) if isinstance(value, str) else value


class StageDir(Folder):
    """One stage's folder, owned by the config whose fingerprint it records (see the module docstring)."""

    def __init__(self, run_url: str, stage: str, fingerprint: str | None = None):
        super().__init__(f"{run_url.rstrip('/')}/{stage}")
        self.run = Folder(run_url)  # the run directory, which the stage's manifest's paths are relative to
        self.stage = stage
        self.fingerprint = fingerprint

    def completed_manifest(self) -> dict[str, Any] | None:
        """The manifest of a finished run of this same config, or None."""
        manifest = self.read_json(MANIFEST)
        return self.run.resolved(manifest) if manifest and manifest.get("fingerprint") == self.fingerprint else None

    def claim(self) -> None:
        """Take the folder for this config, or refuse if another config's partial state is in it."""
        owner = self.read_json(OWNER)
        if owner is None:
            self.write_json({"fingerprint": self.fingerprint}, OWNER)
        elif owner["fingerprint"] != self.fingerprint:
            raise ConfigError(
                f"output_dir: {self.url()} holds a {self.stage} run of another config (fingerprint "
                f"{owner['fingerprint']}, this config {self.fingerprint}); choose another output_dir or delete that "
                "folder"
            )

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Mark the stage complete; paths inside the run directory are written relative to it."""
        self.write_json(self.run.portable({**manifest, "fingerprint": self.fingerprint}), MANIFEST)


class EvaluationDir(StageDir):
    """evaluation/: benchmark tables, per-(model, task) predictions, their state and checkpoint, the report. The
    methods name places relative to the folder; `path`, `url`, `read_json`, ... take them."""

    def __init__(self, run_url: str):
        super().__init__(run_url, EVALUATION)

    @staticmethod
    def benchmark_table(task: str) -> str:
        return f"{BENCHMARKS}/{task}"

    @staticmethod
    def benchmark_marker(task: str) -> str:
        return f"{BENCHMARKS}/{task}.json"

    @staticmethod
    def model_predictions(model: str) -> str:
        """A model's predictions, one Hive-style partition per task (what Ray Data writes with partition_cols)."""
        return f"{PREDICTIONS}/{model}"

    @staticmethod
    def predictions(model: str, task: str) -> str:
        return f"{PREDICTIONS}/{model}/task={task}"

    @staticmethod
    def state(model: str, task: str) -> str:
        return f"{STATE}/{model}/{task}.json"

    @staticmethod
    def checkpoints(model: str) -> str:
        return f"{CHECKPOINT}/{model}"

    @staticmethod
    def checkpoint(model: str, pending: str) -> str:
        """The checkpoint of one job predicting `model`, named by the digest of the pairs it predicts."""
        return f"{CHECKPOINT}/{model}/{pending}"

    def completed_pairs(self) -> list[tuple[str, str]]:
        """The (model, task) pairs whose predictions the runner finished, from its state files."""
        pairs = []
        for path in sorted(self.fs.glob(self.path(STATE, "*", "*.json"))):
            with self.fs.open(path) as file:
                if json.load(file).get("status") == "complete":
                    pairs.append((posixpath.basename(posixpath.dirname(path)), posixpath.basename(path)[:-5]))
        return pairs


class RunDir(Folder):
    """A run directory: where each stage's folder, the instruction set and the trained models are."""

    def stage(self, name: str, fingerprint: str | None = None) -> StageDir:
        return StageDir(self.url_root, name, fingerprint)

    def evaluation(self) -> EvaluationDir:
        return EvaluationDir(self.url_root)

    @property
    def instructions(self) -> str:
        """The published instruction set (Parquet), the training data of post-training."""
        return self.url(SYNTHESIS, INSTRUCTIONS)

    def trained_model(self, stage: str = TRAINING) -> str:
        """Where a training stage (`training` or `synthesizer_tuning`) exports its Hugging Face model folder."""
        return self.url(stage, MODEL)

    def has_trained_model(self, stage: str = TRAINING) -> bool:
        return self.exists(stage, MODEL, "config.json")

    @property
    def summary(self) -> str:
        return self.url(SUMMARY)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json(self.portable(summary), SUMMARY)

    def ablation(self) -> RunDir:
        """The ablation grid's own run directory (its evaluation and table); variants are run directories inside."""
        return RunDir(self.url(ABLATION))


def arrow_location(url: str) -> tuple[str, Any]:
    """A path or fsspec URL as pyarrow and Ray Data take it: (path, pyarrow filesystem), the filesystem None for local
    paths. Going through fsspec means every URL the other stages open works here too, with the same credentials and
    endpoint settings (pyarrow's own S3 client would resolve `s3://` by itself and ignore fsspec's configuration)."""
    if "://" not in url:
        return url, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(url)
    return path, PyFileSystem(FSSpecHandler(fs))
