"""Ray Data source of caption rows: Ray's file-based datasource (file listing, fsspec/pyarrow filesystems, parallel
read tasks, checkpoint filtering) with the engine's own per-file decoders.

Why not ray.data.read_parquet / read_json / read_webdataset: they give no position of a record inside its file, so
rows without an id could not get a stable one, and read_json fails the whole read on one malformed line where the
engine must keep that line as a counted, quarantined row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from engine.io.sources import RAW_SCHEMA, SHARD_EXTENSIONS, read_shard, shard_name

ROWS_PER_BLOCK = 256


class CaptionShardDatasource(FileBasedDatasource):
    def __init__(self, paths: list[str], data_format: str, root: str, **file_args):
        super().__init__(paths, file_extensions=[ext.lstrip(".") for ext in SHARD_EXTENSIONS[data_format]],
                         **file_args)
        self._data_format = data_format
        self._root = root

    def _open_input_source(self, filesystem, path: str, **open_args):
        # Parquet and Arrow readers need random access; a random-access file serves the streaming formats too.
        return filesystem.open_input_file(path)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows = read_shard(self._data_format, f, shard_name(path, self._root))
        while chunk := list(itertools.islice(rows, ROWS_PER_BLOCK)):
            yield pa.Table.from_pylist(chunk, schema=RAW_SCHEMA)
