"""A real S3-compatible server for tests: moto's standalone server (``moto_server``) on 127.0.0.1, in its own process.

Why a server and not moto's in-process mock: the code under test reaches object storage from other processes (fresh
interpreters, Ray workers, vLLM actors), which a patch of botocore inside the test's process never reaches. They all
find this server the way they would find a real one: through the standard AWS environment variables.

- ``s3_server`` (session): starts the server once (about a second), with its own temporary directory, waits until it
  answers HTTP, and stops it by its PID at the end. It leaves ``os.environ`` alone.
- ``s3_bucket`` (per test): a fresh bucket on that server, and the AWS variables set in the test's process with
  monkeypatch. ``.env`` is the same variables as a dict, for a Ray ``runtime_env={"env_vars": ...}`` or a subprocess.

The credentials are moto's dummies: moto accepts any key, and these open nothing anywhere else.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.servers import free_port, log_tail, running_server

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 30
REGION = "us-east-1"
# Variables that would make a client use the developer's own AWS account or settings instead of the test server.
_FOREIGN_AWS_VARIABLES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True)
class S3Server:
    """A running moto server: where it listens, the AWS variables that lead a client there, and a bucket on it."""

    endpoint: str
    env: dict[str, str]
    bucket: str
    log_path: Path

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name (so tests never see each other's objects) and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self):
        """A boto3 S3 client for this server, configured explicitly (it does not depend on os.environ)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def url(self, key: str = "") -> str:
        """``s3://BUCKET/KEY`` in this server's bucket."""
        return f"s3://{self.bucket}/{key}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)


def aws_environment(endpoint: str) -> dict[str, str]:
    """The variables a user sets to point any AWS client (botocore, s3fs, pyarrow) at an S3-compatible endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "moto-test-key",
        "AWS_SECRET_ACCESS_KEY": "moto-test-secret",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        # Without credentials, botocore and the AWS C++ SDK would ask the EC2 metadata address for some; nothing a
        # test starts may send traffic off this machine.
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def serve_s3(start_timeout_s: float = START_TIMEOUT_S) -> Iterator[S3Server]:
    """A moto server on a free port of 127.0.0.1 with one bucket; stopped by its PID on exit."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="moto-s3-"))
    endpoint = f"http://127.0.0.1:{port}"
    # `python -m moto.server` rather than the `moto_server` script: it runs with this interpreter whatever PATH says.
    command = [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(port)]
    # moto spools object bodies to temporary files: keep them in the server's own directory.
    environment = {**os.environ, "TMPDIR": str(workdir), "NO_PROXY": "127.0.0.1,localhost",
                   "no_proxy": "127.0.0.1,localhost"}
    try:
        with running_server("moto server", command, env=environment, workdir=workdir,
                            answers=lambda: _answers(endpoint), start_timeout_s=start_timeout_s,
                            stop_timeout_s=STOP_TIMEOUT_S):
            server = S3Server(endpoint, aws_environment(endpoint), bucket="", log_path=workdir / "server.log")
            yield replace(server, bucket=server.new_bucket("session"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _answers(endpoint: str) -> bool:
    """Whether moto serves: its own status page, where any HTTP answer will do."""
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False  # not listening yet


def _clear_filesystem_caches() -> None:
    """fsspec reuses S3FileSystem instances (and their credentials) across calls with the same arguments; a test that
    changes the environment must not get one made under another test's environment."""
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the test session. Does not touch os.environ: use ``s3_bucket`` for that."""
    # Looked up, not imported: moto's server imports Flask, whose context-local proxies raise RuntimeError on
    # attribute access, and an in-process vLLM engine started later in the session walks every loaded module.
    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto[server] is in the dev extra")
    with serve_s3() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The session's server with a fresh bucket, and its AWS variables set in this test's process."""
    for name in _FOREIGN_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    _clear_filesystem_caches()
    yield replace(s3_server, bucket=s3_server.new_bucket())
    _clear_filesystem_caches()
