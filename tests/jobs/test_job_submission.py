"""A stage submitted as a Ray Job, exactly as the README says, to a Ray cluster this test starts on loopback."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.fixtures import write_parquet_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_ray_cluster(monkeypatch):
    """`ray start --head` on loopback in its own process group; the group is killed afterwards (never `ray stop`,
    which would end every Ray on the machine). Ray 2.60's job server wants a token: this cluster gets a fresh one,
    shared with the clients through the environment. Yields the dashboard address and that environment."""
    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=4", f"--temp-dir={temp_dir}",
         "--include-dashboard=true", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # any answer (e.g. 401 before authentication) means the server is up
            break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("the local Ray head did not come up")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def test_synthesis_job_submitted_with_working_dir_and_runtime_env(local_ray_cluster, tmp_path):
    address, env = local_ray_cluster
    data = write_parquet_pairs(tmp_path / "pairs", rows=12, shards=2)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"),
        "cluster": {"address": "auto"},
        "data": {"path": str(data), "format": "parquet"},
        "synthesis": {"synthesizer": "rule_based"},
        "filter": {"judge": "lexical"},
    }))
    submission_id = f"adapt-test-{os.getpid()}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission_id,
         "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "-m", "jobs.synthesize", "--config", str(config)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=500,
    )
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    assert client.get_job_status(submission_id) == JobStatus.SUCCEEDED, submit.stdout[-3000:] + submit.stderr[-3000:]
    logs = client.get_job_logs(submission_id)
    assert "synthesis: 12 rows" in logs
    manifest = yaml.safe_load((tmp_path / "run" / "synthesis" / "manifest.json").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 12
