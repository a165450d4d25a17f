"""Stage a model stored in object storage (s3://, gs://, any remote fsspec URL) onto node-local disk, once per node.

Why: vLLM and transformers load a model from a local folder or a Hugging Face hub id; they cannot read s3:// or gs://.
Every engine actor and training worker on a node needs the same weights, so the first process to ask downloads them
and the others, started at the same moment, wait on a file lock and then reuse that copy instead of fetching the same
gigabytes again.

How a cache entry is named and kept:
- The cache directory is ``$ADAPT_MODEL_CACHE``, by default ``adapt-model-cache`` under the system's temporary
  directory. It must be node-local: the lock is an OS file lock, which network file systems do not honour reliably.
- An entry is keyed on the URL and on the listing of its objects (relative path, size and the version tag the store
  reports: ETag on S3, md5/crc32c on GCS). A changed model lists differently and is staged again, into a new entry;
  an unchanged one costs one listing request. Old entries are not deleted: other processes may still be loading them.
- A download goes into a ``.partial-*`` folder and is renamed into place only when every file is there at its listed
  size, so an interrupted download never looks finished; the next process to stage that entry removes the leftovers.

What passes through unchanged: a local path ("/", "./", "../", "~") and a hub id ("org/name"), classified as in
engine.config; transformers and vLLM resolve those themselves, hub ids through the hub's own per-node cache. A file://
URL returns its local path. Every other URL is staged, ``hf://`` included: write the bare hub id instead to use the
hub's download and cache, or the hf:// URL (e.g. a subfolder of a repository) to have it staged like any other store.

Credentials come from wherever the store's fsspec backend finds them (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_DEFAULT_REGION or a profile); they are never logged, and a URL's user:password part is masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
from filelock import FileLock, Timeout
from fsspec.implementations.local import LocalFileSystem

from engine.config import is_local_path, is_url

CACHE_ENV = "ADAPT_MODEL_CACHE"
DEFAULT_CACHE_NAME = "adapt-model-cache"
_PARTIAL_PREFIX = ".partial-"
# Fields in which fsspec backends report an object's version or checksum, most specific first: S3 (ETag), GCS (etag,
# md5Hash, crc32c), the hub (blob_id). Stores reporting none of them are keyed on their whole info record.
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "crc32c", "checksum", "blob_id")

logger = logging.getLogger(__name__)


class ModelStagingError(RuntimeError):
    """A model URL that cannot be staged: nothing there, unreadable, or a download that came out incomplete."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # the store's own path of the object, as its filesystem takes it
    relative: str  # where it goes inside the staged folder
    size: int
    version: str


def stage_model(ref: str) -> str:
    """A local folder holding the model `ref`, for vLLM or transformers to load.

    `ref` in object storage is downloaded into this node's model cache once (concurrent callers on the node wait for
    that one download) and reused while its objects are unchanged. A local path or a hub id is returned unchanged.
    Raises ModelStagingError, naming the URL, when nothing can be listed or downloaded there."""
    if not ref.strip():
        raise ModelStagingError("the model reference is empty; give a local path, a hub id or a URL")
    if not is_url(ref) or is_local_path(ref):
        return ref
    fs, root = fsspec.core.url_to_fs(ref)
    if isinstance(fs, LocalFileSystem):
        return root
    if not root.strip("/"):
        raise ModelStagingError(f"model URL {_redacted(ref)!r} names no bucket or folder")
    files = list_model_files(fs, root, ref)
    entry = model_cache_dir() / entry_name(ref, files)
    if entry.is_dir():
        logger.info("model %s: using the copy staged at %s", _redacted(ref), entry)
        return str(entry)
    with _exclusive(entry, ref):
        if entry.is_dir():  # another process staged it while this one waited
            logger.info("model %s: using the copy another process staged at %s", _redacted(ref), entry)
        else:
            _download(fs, files, entry, ref)
    return str(entry)


def model_cache_dir() -> Path:
    """Where staged models live on this node: $ADAPT_MODEL_CACHE, or a folder under the system's temporary directory."""
    folder = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / DEFAULT_CACHE_NAME).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def list_model_files(fs: fsspec.AbstractFileSystem, root: str, ref: str) -> list[RemoteFile]:
    """Every object under `root`, sorted by relative path. The first request to the store: an unreachable store, a
    missing bucket or missing credentials surface here, with the URL named."""
    try:
        found = fs.find(root, detail=True)
    except Exception as error:
        raise ModelStagingError(f"cannot list model {_redacted(ref)}: {type(error).__name__}: {error}") from error
    prefix = root.rstrip("/") + "/"
    files = [
        RemoteFile(path, path[len(prefix):], int(info["size"]), _version(info))
        for path, info in found.items()
        # S3 tools write zero-byte "folder/" keys as folder markers; they hold nothing to stage.
        if info.get("type") == "file" and path.startswith(prefix) and not path.endswith("/")
    ]
    if not files:
        raise ModelStagingError(
            f"model {_redacted(ref)}: no objects under this URL (a model is a folder of files, e.g. "
            "config.json and weights; check the bucket and prefix)"
        )
    return sorted(files, key=lambda file: file.relative)


def entry_name(ref: str, files: list[RemoteFile]) -> str:
    """The cache entry of this URL with exactly these objects: a readable name plus a digest of URL and listing."""
    listing = [[file.relative, file.size, file.version] for file in files]
    # "s3://b/m" and "s3://b/m/" name the same folder.
    digest = hashlib.sha256(json.dumps({"url": ref.rstrip("/"), "files": listing}).encode()).hexdigest()[:20]
    return f"{_readable_name(ref)}-{digest}"


def entry_lock(entry: Path) -> FileLock:
    """The lock that lets one process at a time stage `entry`; a file beside it in the cache directory."""
    return FileLock(str(entry.parent / f".{entry.name}.lock"))


def _version(info: dict) -> str:
    for field in _VERSION_FIELDS:
        if info.get(field):
            return str(info[field])
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()


def _readable_name(ref: str) -> str:
    """The URL's last path segment (or its bucket), in characters safe for a folder name; never its credentials."""
    parts = urlsplit(ref)
    segments = [segment for segment in parts.path.split("/") if segment]
    name = segments[-1] if segments else parts.netloc.rpartition("@")[2]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


@contextlib.contextmanager
def _exclusive(entry: Path, ref: str) -> Iterator[None]:
    """Hold the entry's file lock: one process per node downloads, the others wait here. The OS releases the lock of a
    process that dies, so a crashed download does not block the node."""
    lock = entry_lock(entry)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("model %s: another process on this node is staging it; waiting", _redacted(ref))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _download(fs: fsspec.AbstractFileSystem, files: list[RemoteFile], entry: Path, ref: str) -> None:
    """Download into a partial folder, check every size, then rename it into place (atomic on one file system)."""
    for leftover in entry.parent.glob(f"{_PARTIAL_PREFIX}{entry.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an interrupted download; the lock says nobody writes there now
    partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{entry.name}-", dir=entry.parent))
    started = time.monotonic()
    try:
        targets = [partial / file.relative for file in files]
        for file, target in zip(files, targets, strict=True):
            # An object key with ".." segments must not write outside the cache.
            if not target.resolve().is_relative_to(partial.resolve()):
                raise ModelStagingError(f"model {_redacted(ref)}: object {file.path!r} would land outside its folder")
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # One call with both lists: async stores (s3fs, gcsfs) fetch the files concurrently.
            fs.get([file.path for file in files], [str(target) for target in targets])
        except Exception as error:
            raise ModelStagingError(
                f"cannot download model {_redacted(ref)}: {type(error).__name__}: {error}"
            ) from error
        _check_sizes(files, targets, ref)
        os.rename(partial, entry)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after the rename; a failed attempt leaves nothing
    total = sum(file.size for file in files)
    logger.info("model %s: staged %d files (%.1f MiB) into %s in %.1f s", _redacted(ref), len(files),
                total / 2**20, entry, time.monotonic() - started)


def _check_sizes(files: list[RemoteFile], targets: list[Path], ref: str) -> None:
    for file, target in zip(files, targets, strict=True):
        size = target.stat().st_size if target.is_file() else None
        if size != file.size:
            raise ModelStagingError(
                f"model {_redacted(ref)}: {file.relative} came down as {size} bytes, but the store lists "
                f"{file.size}; it may have changed during the download, try again"
            )


def _redacted(url: str) -> str:
    """`url` with any user:password part masked, for logs and error messages."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1***@", url)
