"""A whole run on object storage, against a real S3-compatible server started by the tests (tests/object_store.py).

`adapt run` in a fresh process, as a user runs it, with the data, the base model, the benchmark and the run directory
all on `s3://`: shards are read from the bucket, synthesis writes its sets there, Ray Train checkpoints there, the
exported model lands there and evaluation scores it from there (staged to local disk per node), and the report is
written there. The credentials reach every Ray worker the way a user passes them: environment variables named in
`cluster.forward_env`. A planted hub token must appear in none of the run's outputs or logs. Then a synthesis on S3
killed midway resumes, every id published exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO_ROOT, load_tool
from tests.fixtures import write_parquet_pairs

pytestmark = pytest.mark.slow

TOKEN = "hf_planted_secret_7d0b3c9e5a41"
PAIRS, BENCHMARK_ROWS = 24, 8
RESUME_ROWS, RESUME_SHARDS = 64, 8


def adapt(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("adapt")), *args]


def upload(local: Path, url: str) -> str:
    fs, path = fsspec.core.url_to_fs(url)
    fs.put(str(local), path, recursive=local.is_dir())
    return url


def bucket_objects(s3, prefix: str = "") -> dict[str, bytes]:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(f"{s3.bucket}/{prefix}")}


def run_env(s3, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "AWS_"))}
    return {**env, **s3.env, "HF_HUB_OFFLINE": "1", **extra}


def engine(model: str, family: str, **fields) -> dict:
    """vLLM's CPU build as the tests run it: small KV cache, eager, half a CPU; the tiny processor's image bounds."""
    return {"model": model, "family": family, "backend": "vllm", "device": "cpu", "num_cpus": 0.5,
            "kv_cache_gib": 0.0625, "enforce_eager": True, "max_model_len": 512, "min_pixels": None,
            "max_pixels": None, **fields}


@pytest.mark.timeout(900)
def test_adapt_run_end_to_end_on_s3(s3_bucket, tiny_model_dir, tmp_path):
    s3 = s3_bucket
    pairs = upload(write_parquet_pairs(tmp_path / "pairs", PAIRS, shards=2), s3.url("pairs"))
    model = upload(tiny_model_dir / "tiny-qwen2-vl", s3.url("models/tiny-qwen2-vl"))
    demo = tmp_path / "demo"
    args = ["--out", str(demo), "--train", "0", "--benchmark", str(BENCHMARK_ROWS), "--seed-tasks", "0", "--no-real"]
    assert load_tool("make_demo_data").main(args) == 0
    benchmark = upload(demo / "benchmark" / "demo_vqa.parquet", s3.url("benchmarks/demo_vqa.parquet"))
    config = {
        "output_dir": s3.url("runs/demo"),
        "cluster": {"num_cpus": 4, "temp_dir": str(Path("/tmp") / f"ray-s3-{os.getpid()}"),
                    "forward_env": [*s3.env, "HF_TOKEN"]},
        "data": {"path": pairs, "format": "parquet"},
        "synthesis": {"synthesizer": "rule_based"},
        "filter": {"judge": "lexical"},
        "training": {"model": model, "family": "qwen2-vl", "num_workers": 1, "use_gpu": False,
                     "cpus_per_worker": 0.5, "precision": "fp32",
                     "deepspeed_config": str(REPO_ROOT / "configs/deepspeed/zero2.json"), "global_batch_size": 4,
                     "micro_batch_size": 2, "max_steps": 4, "checkpoint_every": 2, "max_length": 256,
                     "min_pixels": None, "max_pixels": None},
        "evaluation": {"benchmarks": [{"task": "demo_vqa", "path": benchmark}],
                       "engine": engine(model, "qwen2-vl", batch_size=8, max_tokens=16)},
    }
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(config))

    started = time.monotonic()
    result = subprocess.run(adapt("run", str(path)), cwd=REPO_ROOT, env=run_env(s3, HF_TOKEN=TOKEN),
                            capture_output=True, text=True, timeout=840)
    print(f"adapt run on S3: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-4000:]

    objects = bucket_objects(s3, "runs/demo")
    root = f"{s3.bucket}/runs/demo"
    manifest = json.loads(objects[f"{root}/synthesis/manifest.json"])
    assert manifest["rows_in"] == manifest["rows_out"] == PAIRS
    assert any(name.startswith(f"{root}/synthesis/instructions/") for name in objects)
    assert any("/training/checkpoints/" in name and name.endswith("position-rank0.json") for name in objects)
    assert f"{root}/training/model/config.json" in objects and f"{root}/training/metrics.csv" in objects
    report = json.loads(objects[f"{root}/evaluation/report.json"])
    assert set(report) == {"base", "adapted"} and report["adapted"]["demo_vqa"]["n"] == BENCHMARK_ROWS
    evaluation = json.loads(objects[f"{root}/evaluation/manifest.json"])
    # Paths inside the run directory are relative to it (they were s3:// URLs before); the base model's is as given.
    assert evaluation["models"] == {"base": model, "adapted": "./training/model"}
    summary = json.loads(objects[f"{root}/run_summary.json"])
    assert s3.url("runs/demo") not in json.dumps([manifest, evaluation, summary])
    assert summary["training"]["steps"] == 4

    # The token reached the workers' environment only: no output, manifest, log or config holds it.
    leaks = [name for name, data in objects.items() if TOKEN.encode() in data]
    assert leaks == [] and TOKEN not in result.stdout + result.stderr
    ray_logs = [p for p in Path(config["cluster"]["temp_dir"]).rglob("*") if p.is_file()]
    assert ray_logs, "Ray's session logs should be there to check"
    assert [str(p) for p in ray_logs if TOKEN.encode() in p.read_bytes()] == []


def committed_checkpoint_rows(url: str) -> int:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    files = [p for p in fs.glob(f"{path}/*.parquet") if not p.endswith(".pending.parquet")]
    return sum(pq.read_metadata(p, filesystem=fs).num_rows for p in files)


def settled_checkpoint_rows(session: int, folder: str) -> int:
    """Committed checkpoint rows once every process of the killed session is gone and the count holds still: a
    commit the object store had received whole still lands after its sender died."""
    deadline = time.monotonic() + 60
    while any(session_of(process) == session for process in psutil.process_iter()) and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = committed_checkpoint_rows(folder)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        rows, previous = committed_checkpoint_rows(folder), rows
        if rows == previous:
            break
    return rows


def session_of(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:  # gone since it was listed
        return None


@pytest.mark.timeout(600)
def test_a_synthesis_killed_on_s3_resumes_exactly_once(s3_bucket, tiny_model_dir, tmp_path):
    s3 = s3_bucket
    pairs = upload(write_parquet_pairs(tmp_path / "pairs", RESUME_ROWS, RESUME_SHARDS), s3.url("pairs"))
    run = s3.url("runs/resume")
    config = {
        "output_dir": run,
        "cluster": {"num_cpus": 4, "temp_dir": str(Path("/tmp") / f"ray-s3r-{os.getpid()}"),
                    "forward_env": list(s3.env)},
        "data": {"path": pairs, "format": "parquet"},
        # A random-weight synthesizer writes no task: keep each pair's caption example, so every id is published.
        "synthesis": {"synthesizer": "model", "prompt_format": "family", "keep_pairs_without_task": True,
                      "engine": {"model": str(tiny_model_dir / "tiny-qwen2-vl"), "family": "qwen2-vl",
                                 "backend": "transformers", "device": "cpu", "num_cpus": 0.5, "batch_size": 4,
                                 "max_tokens": 24, "min_pixels": None, "max_pixels": None}},
        "filter": {"judge": "lexical"},
    }
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(config))

    first = subprocess.Popen(adapt("synthesize", str(path)), env=run_env(s3), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (committed_checkpoint_rows(f"{run}/synthesis/_checkpoint") == 0 and first.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the driver, its Ray and its actors, with no clean-up of any kind
    first.wait()
    done_before = settled_checkpoint_rows(first.pid, f"{run}/synthesis/_checkpoint")
    fs, root = fsspec.core.url_to_fs(run)
    assert not fs.exists(f"{root}/synthesis/manifest.json"), "the run finished before it could be killed"
    assert 0 < done_before < RESUME_ROWS

    second = subprocess.run(adapt("synthesize", str(path)), env=run_env(s3), capture_output=True, text=True,
                            timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    fs.invalidate_cache()
    ids = pq.read_table(f"{root}/synthesis/instructions", filesystem=fs).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == RESUME_ROWS
    rows = pq.read_table(f"{root}/synthesis/_rows", filesystem=fs)
    assert rows.num_rows == RESUME_ROWS and "image" not in rows.column_names  # nothing done twice; images stored once
    manifest = json.loads(fs.cat_file(f"{root}/synthesis/manifest.json"))
    assert manifest["rows_processed_this_run"] == RESUME_ROWS - done_before
