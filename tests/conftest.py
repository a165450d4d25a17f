"""Shared test fixtures: a working directory with what a demo-like config points at."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import yaml

from tests.object_store import s3_bucket, s3_server  # noqa: F401  (fixtures for every test)

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    """One local Ray for the whole session (start-up costs seconds), with its own session dir, 4 logical CPUs on
    2 cores so actor pools do not starve read tasks, and the recipes' node-group resources. Stopped by this process only: never `ray stop`."""
    import shutil
    import tempfile

    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    # The node-group resources the recipes pin their pools with (cluster/raycluster.yaml), so recipe runs keep them.
    groups = {"synthesis_node": 4, "filter_node": 4, "training_node": 4}
    ray.init(num_cpus=4, resources=groups, _temp_dir=temp_dir, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def load_tool(name: str):
    """A script of tools/ as a module (tools/ is not a package). Registered in sys.modules before it runs, since
    dataclasses look their module up while the file executes."""
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny offline models (tiny-qwen2-vl, tiny-text-llm), built once per session by the tool the demo uses."""
    out = tmp_path_factory.mktemp("tiny-models")
    load_tool("make_tiny_models").build_all(out, seed=0)
    return out


@contextlib.contextmanager
def in_process_vllm():
    """vLLM's CPU engine in this process (fast start), with the environment it touches restored afterwards: it freezes
    vllm.envs and writes os.environ."""
    envs = pytest.importorskip("vllm.envs")
    saved = dict(os.environ)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    envs.disable_envs_cache()
    try:
        yield
    finally:
        envs.disable_envs_cache()
        os.environ.clear()
        os.environ.update(saved)
