"""The S3 test server (tests/object_store.py) works end to end, from other processes, through the clients the engine
uses: fsspec's s3fs, pyarrow through fsspec, and pyarrow's own S3 client. No mocks: every request goes over HTTP to a
moto server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# A fresh interpreter that knows nothing of the test: it finds the server through the AWS variables alone.
WRITE_AND_LIST = """
import sys, fsspec
base = sys.argv[1]
fs, _ = fsspec.core.url_to_fs(base)
fs.pipe(base + "/a.txt", b"alpha")
fs.pipe(base + "/nested/b.txt", b"beta")
print("\\n".join(sorted(fs.find(base))))
"""


def isolated_environment(aws: dict[str, str]) -> dict[str, str]:
    """This machine's environment without any AWS variable, plus `aws`: what a user's shell or a Ray runtime_env
    would give a process."""
    return {name: value for name, value in os.environ.items() if not name.startswith("AWS_")} | aws


def run_python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_fresh_process_writes_and_lists_through_s3fs_with_only_the_environment(s3_bucket):
    result = run_python(WRITE_AND_LIST, s3_bucket.url("run"), env=isolated_environment(s3_bucket.env))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"{s3_bucket.bucket}/run/a.txt", f"{s3_bucket.bucket}/run/nested/b.txt"]
    # Read back by another client, configured explicitly: the objects are on the server, not in that process.
    body = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key="run/nested/b.txt")["Body"].read()
    assert body == b"beta"


def test_parquet_round_trip_through_pyarrow_on_fsspec(s3_bucket):
    s3 = fsspec.filesystem("s3")
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(s3))
    table = pa.table({"id": ["a", "b", "c"], "score": [0.5, 1.0, 1.5]})
    path = f"{s3_bucket.bucket}/tables/part-0.parquet"
    pq.write_table(table, path, filesystem=filesystem)
    assert pq.read_table(path, filesystem=filesystem).equals(table)
    assert pq.read_table(f"{s3_bucket.bucket}/tables", filesystem=filesystem).equals(table)  # as a data set folder


def test_pyarrow_s3_from_uri_honours_aws_endpoint_url(s3_bucket):
    """Ray Data resolves s3:// paths with FileSystem.from_uri; with AWS_ENDPOINT_URL set it reaches this server. (A
    bare pyarrow.fs.S3FileSystem() does not read that variable: pass endpoint_override to it.)"""
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key="from-uri.txt", Body=b"via arrow")
    filesystem, path = pafs.FileSystem.from_uri(s3_bucket.url("from-uri.txt"))
    with filesystem.open_input_stream(path) as stream:
        assert stream.read() == b"via arrow"


def test_without_credentials_a_clear_error_not_a_hang(s3_bucket):
    aws = {name: value for name, value in s3_bucket.env.items() if name not in CREDENTIAL_VARIABLES}
    result = run_python(WRITE_AND_LIST, s3_bucket.url("denied"), env=isolated_environment(aws))
    assert result.returncode != 0
    assert "NoCredentialsError" in result.stderr and "Unable to locate credentials" in result.stderr
    assert s3_bucket.client().list_objects_v2(Bucket=s3_bucket.bucket).get("KeyCount") == 0


def test_gs_urls_resolve_to_gcsfs(monkeypatch):
    """No GCS server exists on this machine and none is faked: this only checks that gs:// URLs reach gcsfs. token
    'anon' keeps gcsfs from looking for credentials, which would query the GCE metadata address; the socket guard
    proves nothing is sent."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    filesystem, path = fsspec.core.url_to_fs("gs://some-bucket/models/x", token="anon")
    assert type(filesystem).__module__.startswith("gcsfs.") and path == "some-bucket/models/x"


def test_the_bucket_fixture_sets_the_test_process_environment_and_gives_a_fresh_bucket(s3_bucket):
    assert {name: os.environ.get(name) for name in s3_bucket.env} == s3_bucket.env
    assert s3_bucket.client().list_objects_v2(Bucket=s3_bucket.bucket)["KeyCount"] == 0
    assert s3_bucket.new_bucket() != s3_bucket.bucket
