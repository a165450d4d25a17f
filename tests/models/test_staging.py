"""Staging models from object storage (engine/models/staging.py) against a real S3 server (moto, over HTTP).

Downloads are counted on the server's side: its request log has one "GET /bucket/key" line per object fetched, so no
part of the staging code is mocked or instrumented."""

from __future__ import annotations

import multiprocessing
import os
import time
import urllib.request
import uuid
from pathlib import Path

import fsspec
import pytest

from engine.models.staging import (
    CACHE_ENV,
    ModelStagingError,
    entry_lock,
    entry_name,
    list_model_files,
    stage_model,
)

LOG_WAIT_S = 10.0
CONCURRENT_PROCESSES = 4
# A model of a few files, one of them nested, and weights of a few MiB (fetched in one request, like a real shard).
MODEL_FILES = {
    "config.json": b'{"model_type": "tiny"}',
    "model.safetensors": os.urandom(4 << 20),
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "model-cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def upload(server, prefix: str, files: dict[str, bytes]) -> str:
    """Put `files` under `prefix` of the server's bucket, with an S3 folder marker as some tools write; the URL."""
    client = server.client()
    client.put_object(Bucket=server.bucket, Key=f"{prefix}/tokenizer/", Body=b"")
    for relative, body in files.items():
        client.put_object(Bucket=server.bucket, Key=f"{prefix}/{relative}", Body=body)
    return server.url(prefix)


def object_downloads(server, prefix: str) -> dict[str, int]:
    """GET requests the server has logged per object under `prefix`. A marker request is sent and awaited first: the
    server logs a request just after answering it, so this waits until everything before the marker is written."""
    marker = uuid.uuid4().hex
    urllib.request.urlopen(f"{server.endpoint}/moto-api/?sync={marker}", timeout=5).close()
    deadline = time.monotonic() + LOG_WAIT_S
    while marker not in (log := server.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"the server never logged its marker request:\n{server.log_tail()}"
        time.sleep(0.05)
    return {relative: log.count(f'"GET /{server.bucket}/{prefix}/{relative} HTTP/') for relative in MODEL_FILES}


def files_under(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def partial_folders(cache: Path) -> list[Path]:
    return sorted(cache.glob(".partial-*"))


def test_a_folder_is_staged_byte_for_byte_once(s3_bucket, cache, caplog):
    url = upload(s3_bucket, "models/tiny", MODEL_FILES)
    with caplog.at_level("INFO", logger="engine.models.staging"):
        staged = Path(stage_model(url))
    assert staged.parent == cache and staged.name.startswith("tiny-")
    assert files_under(staged) == MODEL_FILES
    assert object_downloads(s3_bucket, "models/tiny") == dict.fromkeys(MODEL_FILES, 1)
    assert partial_folders(cache) == []
    assert "staged 3 files" in caplog.text and url in caplog.text
    assert s3_bucket.env["AWS_SECRET_ACCESS_KEY"] not in caplog.text


def test_an_unchanged_model_is_not_downloaded_again(s3_bucket, cache):
    url = upload(s3_bucket, "models/tiny", MODEL_FILES)
    first = Path(stage_model(url))
    stamps = {path: path.stat().st_mtime_ns for path in [first, *first.rglob("*")]}
    second = Path(stage_model(url))
    assert second == first
    assert {path: path.stat().st_mtime_ns for path in [first, *first.rglob("*")]} == stamps
    assert object_downloads(s3_bucket, "models/tiny") == dict.fromkeys(MODEL_FILES, 1)
    assert [path.name for path in cache.iterdir() if not path.name.startswith(".")] == [first.name]


def test_a_changed_object_is_staged_into_a_new_folder(s3_bucket, cache):
    url = upload(s3_bucket, "models/tiny", MODEL_FILES)
    first = Path(stage_model(url))
    changed = b'{"model_type": "tinz"}'  # same size: the store's ETag, not the size, tells the change
    assert len(changed) == len(MODEL_FILES["config.json"])
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key="models/tiny/config.json", Body=changed)
    second = Path(stage_model(url))
    assert second != first
    assert files_under(second) == {**MODEL_FILES, "config.json": changed}
    assert files_under(first) == MODEL_FILES  # a process may still be loading the old copy: it stays


def stage_in_child(url: str, results) -> None:
    """Runs in a fresh interpreter (spawn), like an engine actor starting on the node."""
    results.put(stage_model(url))


def test_concurrent_processes_on_a_node_wait_for_one_download_and_share_it(s3_bucket, cache):
    url = upload(s3_bucket, "models/shared", MODEL_FILES)
    entry = cache / entry_name(url, list_model_files(*fsspec.core.url_to_fs(url), url))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=stage_in_child, args=(url, results)) for _ in range(CONCURRENT_PROCESSES)]
    # This test holds the entry's lock, as a process in the middle of a download would, until every child has listed
    # the model (the step before taking the lock): then they all contend for it at once.
    with entry_lock(entry):
        for process in processes:
            process.start()
        wait_for_listings(s3_bucket, "models/shared", 1 + CONCURRENT_PROCESSES)  # the test's own listing, theirs
        time.sleep(0.5)
        assert not entry.exists() and results.empty()
        assert object_downloads(s3_bucket, "models/shared") == dict.fromkeys(MODEL_FILES, 0)
    try:
        staged = {results.get(timeout=60) for _ in processes}
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0] * CONCURRENT_PROCESSES
    assert staged == {str(entry)}
    assert files_under(entry) == MODEL_FILES
    assert object_downloads(s3_bucket, "models/shared") == dict.fromkeys(MODEL_FILES, 1)
    assert partial_folders(cache) == []


def wait_for_listings(server, prefix: str, count: int) -> None:
    """Until the server has logged `count` listings of `prefix` (children start in a second or two each)."""
    request = f'"GET /{server.bucket}?list-type=2&prefix={prefix}/'
    deadline = time.monotonic() + 60
    while server.log_path.read_text(errors="replace").count(request) < count:
        assert time.monotonic() < deadline, f"fewer than {count} listings of {prefix}:\n{server.log_tail()}"
        time.sleep(0.1)


def test_an_interrupted_download_is_never_taken_for_a_finished_one(s3_bucket, cache):
    url = upload(s3_bucket, "models/tiny", MODEL_FILES)
    entry = entry_name(url, list_model_files(*fsspec.core.url_to_fs(url), url))
    leftover = cache / f".partial-{entry}-killed"
    (leftover / "tokenizer").mkdir(parents=True)
    (leftover / "config.json").write_bytes(MODEL_FILES["config.json"])  # a download that died half way
    staged = Path(stage_model(url))
    assert staged.name == entry and files_under(staged) == MODEL_FILES
    assert not leftover.exists()


@pytest.mark.parametrize("ref", ["Qwen/Qwen2-VL-2B-Instruct", "./models/tiny", "../tiny", "/models/tiny", "~/tiny"])
def test_hub_ids_and_local_paths_pass_through(ref, cache):
    assert stage_model(ref) == ref
    assert not cache.exists()  # nothing was staged, nothing created


def test_a_file_url_gives_its_local_path(tmp_path, cache):
    assert stage_model(f"file://{tmp_path}") == str(tmp_path)


@pytest.mark.parametrize("prefix", ["models/nothing-here", "models/tiny/config.json"])
def test_a_url_without_a_model_folder_names_the_url(s3_bucket, cache, prefix):
    upload(s3_bucket, "models/tiny", {"config.json": b"{}"})
    url = s3_bucket.url(prefix)
    with pytest.raises(ModelStagingError, match=f"model {url}: no objects under this URL"):
        stage_model(url)


def test_a_missing_bucket_names_the_url(s3_bucket, cache):
    url = "s3://no-such-bucket-for-staging/models/tiny"
    with pytest.raises(ModelStagingError, match=f"cannot list model {url}: FileNotFoundError"):
        stage_model(url)


@pytest.mark.parametrize("ref", ["", "  "])
def test_an_empty_reference_is_an_error(ref):
    with pytest.raises(ModelStagingError, match="the model reference is empty"):
        stage_model(ref)


def test_a_url_without_a_bucket_is_an_error(s3_bucket, cache):
    with pytest.raises(ModelStagingError, match="'s3://' names no bucket or folder"):
        stage_model("s3://")


def test_missing_credentials_name_the_url(s3_bucket, cache, monkeypatch):
    from s3fs import S3FileSystem

    url = upload(s3_bucket, "models/tiny", MODEL_FILES)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    S3FileSystem.clear_instance_cache()  # the instance made with credentials would still hold them
    with pytest.raises(ModelStagingError, match=f"cannot list model {url}: NoCredentialsError"):
        stage_model(url)


def test_an_object_key_cannot_write_outside_the_cache(s3_bucket, cache):
    url = upload(s3_bucket, "models/tiny", {"config.json": b"{}", "../../escaped.txt": b"x"})
    with pytest.raises(ModelStagingError, match="would land outside its folder"):
        stage_model(url)
    assert not (cache.parent / "escaped.txt").exists() and partial_folders(cache) == []
