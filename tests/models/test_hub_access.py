"""A gated or missing hub model fails before any work, naming the model, the config field and the token variable.

The Hugging Face hub is not reachable from test machines, so a small HTTP server of the test's own answers at
HF_ENDPOINT the way the hub answers huggingface_hub's access check (`GET /api/models/{id}/auth-check`): `X-Error-Code:
GatedRepo` for a gated model (401 without a token, 403 with one), 401 with `X-Error-Code: RepoNotFound` for a missing
or private one, 200 otherwise. The engine's code and huggingface_hub's own client run unchanged against it, in a fresh process as a user
would run `adapt`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.conftest import REPO_ROOT, base_tree
from tests.fixtures import write_parquet_pairs

GATED = "meta-llama/Gated-Model"
MISSING = "nobody/missing-model"
TOKEN = "hf_planted_token_value_0123456789"


class HubAnswers(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        authenticated = self.headers.get("Authorization") is not None
        if self.path.endswith(f"/{GATED}/auth-check"):
            self._answer(403 if authenticated else 401, "GatedRepo", f"Access to model {GATED} is restricted.")
        elif self.path.endswith(f"/{MISSING}/auth-check"):
            self._answer(401, "RepoNotFound", "Repository not found")
        else:
            self._answer(200, None, "")

    def _answer(self, status: int, code: str | None, message: str) -> None:
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:  # the test reads requests from the answers, not from stderr
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubAnswers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def synthesize(tmp_path, hub: str, model: str, token: str | None) -> subprocess.CompletedProcess:
    """`adapt synthesize` of a config whose synthesizer is `model`, in a fresh process."""
    tree = base_tree()
    tree["data"]["path"] = str(write_parquet_pairs(tmp_path / "pairs", rows=2, shards=1))
    tree["output_dir"] = str(tmp_path / "run")
    tree["synthesis"]["engine"]["model"] = model
    tree["filter"] = {"judge": "lexical"}
    tree["training"].update(model=model, deepspeed_config=str(REPO_ROOT / "configs/deepspeed/zero2.json"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env["HF_ENDPOINT"] = hub
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "engine.cli", "synthesize", str(path)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_gated_model_without_a_token_names_the_model_the_field_and_the_variable(tmp_path, hub):
    result = synthesize(tmp_path, hub, GATED, token=None)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (f"synthesis.engine.model: {GATED} is gated on the Hugging Face hub and HF_TOKEN is not set"
            in result.stderr)
    assert not (tmp_path / "run" / "synthesis" / "manifest.json").exists()


def test_a_token_without_access_is_told_apart_and_never_printed(tmp_path, hub):
    result = synthesize(tmp_path, hub, GATED, token=TOKEN)
    assert result.returncode == 2
    assert f"{GATED} is gated on the Hugging Face hub and HF_TOKEN holds a token without access" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_a_missing_model_says_so(tmp_path, hub):
    result = synthesize(tmp_path, hub, MISSING, token=None)
    assert result.returncode == 2
    assert f"synthesis.engine.model: {MISSING} was not found on the Hugging Face hub" in result.stderr
