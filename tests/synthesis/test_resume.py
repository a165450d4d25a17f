"""Resume: a synthesis run killed midway (SIGKILL of the driver) and restarted publishes every input id exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.fixtures import write_parquet_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROWS, SHARDS = 160, 16


def write_config(tmp_path: Path, data: Path, vlm: Path) -> Path:
    config = {
        "output_dir": str(tmp_path / "run"),
        "cluster": {"num_cpus": 4, "temp_dir": str(Path("/tmp") / f"ray-resume-{os.getpid()}")},
        "data": {"path": str(data), "format": "parquet"},
        "synthesis": {
            "synthesizer": "model",
            "prompt_format": "family",
            "engine": {"model": str(vlm), "family": "qwen2-vl", "backend": "transformers", "device": "cpu",
                       "num_cpus": 0.5, "batch_size": 4, "max_tokens": 24},
            # The random-weight model writes no task; every pair must still be published for the counts below.
            "keep_pairs_without_task": True,
        },
        "filter": {"judge": "lexical"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def committed_checkpoints(run: Path) -> list[Path]:
    folder = run / "synthesis" / "_checkpoint"
    return [p for p in folder.glob("*.parquet") if not p.name.endswith(".pending.parquet")] if folder.exists() else []


def adapt(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("adapt")), *args]


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, tiny_model_dir):
    data = write_parquet_pairs(tmp_path / "pairs", ROWS, SHARDS)
    config = write_config(tmp_path, data, tiny_model_dir / "tiny-qwen2-vl")
    run = tmp_path / "run"

    # The driver runs in its own process group, so killing the group stops exactly the Ray it started.
    first = subprocess.Popen(adapt("synthesize", str(config)), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not committed_checkpoints(run) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (run / "synthesis" / "manifest.json").exists(), "the run finished before it could be killed"
    done_before = sum(pq.read_metadata(p).num_rows for p in committed_checkpoints(run))
    assert 0 < done_before < ROWS

    second = subprocess.run(adapt("synthesize", str(config)), capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]

    examples = pq.read_table(run / "synthesis" / "instructions").column("id").to_pylist()
    assert len(examples) == len(set(examples)) == ROWS
    assert set(examples) == {f"pair-{i:05d}" for i in range(ROWS)}
    rows_written = pq.read_table(run / "synthesis" / "_rows").num_rows
    assert rows_written == ROWS  # the killed run's partial blocks were rolled back, none processed twice
    manifest = json.loads((run / "synthesis" / "manifest.json").read_text())
    assert manifest["rows_processed_this_run"] == ROWS - done_before
