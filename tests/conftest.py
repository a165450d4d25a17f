"""Shared test fixtures: a working directory with what a demo-like config points at."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding what demo-like configs point at, so relative paths resolve."""
    for folder in ("models/vlm", "models/judge", "data/pairs"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "ds.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def engine_section(model: str, family: str) -> dict:
    return {"model": model, "family": family, "backend": "vllm", "device": "cpu", "num_cpus": 0.5, "kv_cache_gib": 0.25}


def base_tree() -> dict:
    return {
        "output_dir": "./runs/x",
        "data": {"path": "./data/pairs", "format": "parquet"},
        "synthesis": {"synthesizer": "model", "engine": engine_section("./models/vlm", "qwen2-vl")},
        "filter": {"judge": "llm", "engine": engine_section("./models/judge", "text")},
        "training": {
            "model": "./models/vlm",
            "family": "qwen2-vl",
            "use_gpu": False,
            "precision": "fp32",
            "num_workers": 2,
            "global_batch_size": 8,
            "micro_batch_size": 2,
            "deepspeed_config": "./ds.json",
        },
    }


def write_config(workdir: Path, tree: dict, name: str = "run.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(tree))
    return path




@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (start-up costs seconds), with its own session dir and 4 logical CPUs on
    2 cores so actor pools do not starve read tasks. Stopped by this process only: never `ray stop`."""
    import shutil
    import tempfile

    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=4, _temp_dir=temp_dir, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_paths(tmp_path_factory) -> dict[str, Path]:
    """The tiny offline models of tools/make_tiny_models.py, built once per session."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import make_tiny_models

    results = make_tiny_models.build_all(tmp_path_factory.mktemp("tiny-models"), seed=0)
    return {result.name: result.path for result in results}
