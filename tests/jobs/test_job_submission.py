"""A stage submitted as a Ray Job, exactly as the README says, to a Ray cluster this test starts on loopback."""

from __future__ import annotations

import os
import secrets
import signal
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
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent


@pytest.fixture
def local_ray_cluster(monkeypatch):
    """`ray start --head` on loopback in its own process group; the group is killed afterwards (never `ray stop`,
    which would end every Ray on the machine). Ray 2.60's job server wants a token: this cluster gets a fresh one,
    shared with the clients through the environment. Yields the dashboard address and that environment."""
    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ADAPT_TEST_RAY_TEMP": temp_dir}
    env.pop("HF_TOKEN", None)  # the head and its workers have none: a token must come from the submitter
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=4", f"--temp-dir={temp_dir}",
         "--include-dashboard=true", "--disable-usage-stats",
         # Agents default to fixed ports, which another Ray on this machine (the session's own) may already hold.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}"],
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
        head.wait(timeout=10)
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
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission_id,
               "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
               "python", "-m", "jobs.synthesize", "--config", str(config)]
    for _ in range(30):  # the head's job agent registers a little after the dashboard answers
        submit = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=500)
        if "No available agent to submit job" not in submit.stderr:
            break
        time.sleep(2)
    # Ask through the CLI too: an in-process client would reuse whatever token this test process's own Ray cached.
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, submission_id],
                            env=env, capture_output=True, text=True, timeout=60)
    assert f"Job '{submission_id}' succeeded" in status.stdout + status.stderr, submit.stdout[-3000:] + status.stdout
    assert "synthesis: 12 rows" in submit.stdout + submit.stderr  # `ray job submit` follows the job's logs
    manifest = yaml.safe_load((tmp_path / "run" / "synthesis" / "manifest.json").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 12


FORWARD_PROBE = """
import os, sys, ray
from engine.config import ClusterConfig
from engine.runtime import ray_session

@ray.remote(num_cpus=0.1)
def token_in_worker():
    return os.environ.get("HF_TOKEN")

@ray.remote(num_cpus=0.1)
class Holder:
    def token(self):
        return os.environ.get("HF_TOKEN")

with ray_session(ClusterConfig(address="auto", forward_env=["HF_TOKEN"])):
    expected = os.environ["HF_TOKEN"]
    seen = [ray.get(token_in_worker.remote()), ray.get(Holder.remote().token.remote())]
    print("forwarded:", [value == expected for value in seen])
    sys.exit(0 if all(value == expected for value in seen) else 1)
"""


def test_a_secret_reaches_every_worker_and_no_log(local_ray_cluster, tmp_path):
    """The head and its workers start without the token; the job's driver reads it from a file on the head (as an
    entrypoint reads a cloud secret store), never from a command line or a runtime_env, and forwards it by name
    (cluster.forward_env). A task and an actor see it; no file Ray wrote holds it."""
    address, env = local_ray_cluster
    token = f"hf_{secrets.token_hex(12)}"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    probe = tmp_path / "probe.py"
    probe.write_text(FORWARD_PROBE)
    entrypoint = f'export HF_TOKEN="$(cat {token_file})" && python {probe}'
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
               "--runtime-env", "cluster/runtime_env.yaml", "--", "bash", "-c", entrypoint]
    for _ in range(30):  # the head's job agent registers a little after the dashboard answers
        submit = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent to submit job" not in submit.stderr:
            break
        time.sleep(2)
    assert "forwarded: [True, True]" in submit.stdout, submit.stdout[-3000:] + submit.stderr[-3000:]
    ray_files = [path for path in Path(env["ADAPT_TEST_RAY_TEMP"]).rglob("*") if path.is_file()]
    assert ray_files and [str(path) for path in ray_files if token.encode() in path.read_bytes()] == []
