"""The synthesis stage on Ray Data: shards -> validate -> synthesize -> judge -> compose -> Parquet, streaming.

    read (CaptionShardDatasource) -> ValidateRows (tasks) -> ModelSynthesizer (actor pool) or RuleBasedSynthesizer
    -> LLMJudge (actor pool) or LexicalJudge -> BuildExamples -> write_parquet(synthesis/_rows)

Every step maps a batch of working rows to the same rows (rows.py), so all of them run at the same time and the driver
never holds the data. Resume is Ray Data's own checkpointing, keyed on `row_key` (shard + position, unique and stable):
a restarted run reads the committed row keys and filters them out at read time, and Ray's two-phase commit removes the
files of blocks that were being written when the job died. When the stream ends, `finalize` projects the rows onto
instructions/, tasks/ and quarantine/ (one Ray task per group of rows files, into files of about 128 MiB) and writes
manifest.json; the rows then lose their image bytes (the published sets hold them).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from ray.data.checkpoint import CheckpointConfig

from engine.config import ConfigError, EngineConfig, RunConfig, TrainingConfig, speed_only_fields
from engine.io.images import ImageLimits
from engine.io.ray_datasource import CaptionShardDatasource
from engine.io.run_dir import CHECKPOINT, INSTRUCTIONS, ROWS, SYNTHESIS, TUNING, RunDir, StageDir, arrow_location
from engine.io.sinks import write_parquet
from engine.io.sources import dataset_root, list_shards
from engine.io.validation import validate_row
from engine.models.loading import check_hub_models
from engine.runtime import pool_cost, ray_session, through_engine_pool
from engine.synthesis import outputs
from engine.synthesis.examples import BuildExamples
from engine.synthesis.judge import LexicalJudge, LLMJudge
from engine.synthesis.rows import WORK_SCHEMA, RowStep
from engine.synthesis.synthesizer import ModelSynthesizer, RuleBasedSynthesizer

# Published Parquet files of about this size: a set has (bytes / this) files whatever the block size of the stream, few
# enough for object stores and data loaders, and a task's working memory stays a small multiple of it.
PUBLISHED_FILE_BYTES = 128 * 2**20
PUBLISHED_SETS = {INSTRUCTIONS: outputs.to_examples, "tasks": outputs.to_tasks, "quarantine": outputs.to_quarantine}


class ValidateRows(RowStep):
    def __init__(self, root: str, limits: ImageLimits, max_caption_chars: int):
        self._root, self._limits, self._max_caption_chars = root, limits, max_caption_chars

    def process(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            validate_row(row, self._root, self._limits, self._max_caption_chars)


def synthesis_fingerprint(config: RunConfig) -> str:
    """What decides a synthesis run's outputs: its data, synthesizer (and how it was tuned), filter and seed, not its
    resources."""
    engine = speed_only_fields(EngineConfig)
    sections = config.model_dump(mode="json", include={"seed", "data", "synthesis", "filter", "synthesizer_tuning"},
                                 exclude={"synthesis": {"engine": engine}, "filter": {"engine": engine},
                                          "synthesizer_tuning": speed_only_fields(TrainingConfig)},
                                 exclude_none=True)
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(config: RunConfig, shards: list[str], root: str) -> ray.data.Dataset:
    """The streaming plan, from shard files to finished working rows."""
    data, synthesis, filtering = config.data, config.synthesis, config.filter
    limits = ImageLimits(data.min_image_side, data.max_image_side, data.max_image_pixels)
    _, filesystem = arrow_location(data.path)
    if filesystem is not None:  # the datasource then takes paths of that filesystem
        shards = [fsspec.core.url_to_fs(shard)[1] for shard in shards]
    ds = ray.data.read_datasource(CaptionShardDatasource(shards, data.format, root, filesystem=filesystem))
    ds = ds.map_batches(ValidateRows(root, limits, data.max_caption_chars), batch_format="pyarrow")
    if synthesis.synthesizer == "model":
        ds = through_engine_pool(ds, ModelSynthesizer, synthesis.engine, prompt_format=synthesis.prompt_format,
                                 lenient_parse=synthesis.lenient_parse)
    else:
        ds = ds.map_batches(RuleBasedSynthesizer(synthesis.seed), batch_format="pyarrow")
    if filtering.enabled and filtering.judge == "llm":
        ds = through_engine_pool(ds, LLMJudge, filtering.engine, lenient_label=filtering.lenient_label)
    elif filtering.enabled:
        ds = ds.map_batches(LexicalJudge(), batch_format="pyarrow")
    build = BuildExamples(synthesis.seed, filtering.enabled, synthesis.keep_pairs_without_task)
    return ds.map_batches(build, batch_format="pyarrow")


# A whole CPU each: at a fraction, Ray starts a worker process per task beyond its idle pool, so a run with many row
# files would start dozens of Python processes at once and its memory would grow with the data.
@ray.remote(num_cpus=1)
def _publish(rows_files: list[str], out: str, fs: fsspec.AbstractFileSystem, duplicates: set[str]) -> None:
    """One file of each published set from a group of rows files, named after the group's first."""
    rows = pa.concat_tables([outputs.mark_duplicates(pq.read_table(path, filesystem=fs), duplicates)
                             for path in rows_files])
    stem = rows_files[0].rsplit("/", 1)[-1]
    for name, project in PUBLISHED_SETS.items():
        projected = project(rows)
        if len(projected):
            pq.write_table(projected, f"{out}/{name}/{stem}", filesystem=fs)


def write_empty_sets(stage: StageDir) -> None:
    """Give each published set that got no row (quarantine/ of a clean run, every set of a run that kept nothing) one
    file of its schema without row groups: readers still learn the columns, and `datasets` streams it, where a file
    with one empty row group fails (sinks.write_parquet)."""
    for name, project in PUBLISHED_SETS.items():
        if not stage.fs.glob(stage.path(name, "*.parquet")):
            empty = project(pa.Table.from_pylist([], schema=WORK_SCHEMA))
            write_parquet(empty, stage.path(name, "empty.parquet"), stage.fs)


@ray.remote(num_cpus=1)
def _drop_images(rows_file: str, fs: fsspec.AbstractFileSystem) -> None:
    """Rewrite a working-rows file without its image bytes once the published sets hold them, so each image is stored
    once; the rest of each row (what happened to it, and why) stays."""
    names = [name for name in pq.read_schema(rows_file, filesystem=fs).names if name != "image"]
    table = pq.read_table(rows_file, columns=names, filesystem=fs)
    pq.write_table(table, rows_file, filesystem=fs)


def file_groups(fs: fsspec.AbstractFileSystem, folder: str, target_bytes: int) -> list[list[str]]:
    """The folder's Parquet files in name order, in consecutive groups of at least `target_bytes` (the last may be
    smaller)."""
    files = sorted((entry for entry in fs.ls(folder, detail=True) if entry["name"].endswith(".parquet")),
                   key=lambda entry: entry["name"])
    groups: list[list[str]] = []
    size = target_bytes
    for entry in files:
        if size >= target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry["name"])
        size += entry["size"]
    return groups


def with_tuned_synthesizer(config: RunConfig) -> RunConfig:
    """The config whose synthesizer is the model `synthesizer_tuning` exported, when the run tunes one."""
    if config.synthesizer_tuning is None:
        return config
    run = RunDir(config.output_dir)
    tuned = run.trained_model(TUNING)
    if not run.has_trained_model(TUNING):
        raise ConfigError(f"synthesizer_tuning: no tuned synthesizer in {tuned} (run `adapt tune-synthesizer` first)")
    engine = config.synthesis.engine.model_copy(update={"model": tuned})
    return config.model_copy(update={"synthesis": config.synthesis.model_copy(update={"engine": engine})})


class SynthesisStage:
    """One synthesis run in `{output_dir}/synthesis`: run (or resume) the stream, then publish and account."""

    def __init__(self, config: RunConfig):
        self.fingerprint = synthesis_fingerprint(config)  # of the config as written: stable if the folder moves
        self.config = config = with_tuned_synthesizer(config.with_absolute_paths())
        self.dir = RunDir(config.output_dir).stage(SYNTHESIS, self.fingerprint)
        self.fs = self.dir.fs

    def run(self) -> dict[str, Any]:
        manifest = self.dir.completed_manifest()
        if manifest:
            print(f"synthesis: already complete in {self.dir.url()} ({manifest['rows_in']} rows); skipping", file=sys.stderr)
            return manifest
        self.dir.claim()
        check_hub_models(self._hub_models())
        root = dataset_root(self.config.data.path)
        try:
            shards = list_shards(self.config.data.path, self.config.data.format)
        except FileNotFoundError as err:
            raise ConfigError(f"data.path: {err}") from None
        with ray_session(self.config.cluster):
            done_before = self._committed_rows()
            started = time.monotonic()
            context = ray.data.DataContext.get_current()
            checkpoint_path, checkpoint_fs = arrow_location(self.dir.url(CHECKPOINT))
            context.checkpoint_config = CheckpointConfig(
                id_column="row_key", checkpoint_path=checkpoint_path, override_filesystem=checkpoint_fs,
                delete_checkpoint_on_success=False,
            )
            rows_path, rows_fs = arrow_location(self.dir.url(ROWS))
            try:
                build_dataset(self.config, shards, root).write_parquet(rows_path, filesystem=rows_fs)
            finally:
                context.checkpoint_config = None
            streamed = time.monotonic()
            self.dir.refresh()
            manifest = self.finalize(shards)
            manifest["rows_processed_this_run"] = manifest["rows_in"] - done_before  # the rest from a killed run
            manifest["timings_s"] = {"stream": round(streamed - started, 2),
                                     "finalize": round(time.monotonic() - streamed, 2)}
            manifest["cost"] = pool_cost(self._pools(), streamed - started, manifest["tasks_kept"])
            self.dir.write_manifest(manifest)
            # Only now: a finalize killed before the manifest runs again from the rows, images included.
            ray.get([_drop_images.remote(path, self.fs) for path in self.fs.glob(self.dir.path(ROWS, "*.parquet"))])
        print(self.summary(manifest), file=sys.stderr)
        return manifest

    def _pools(self) -> dict[str, EngineConfig]:
        """The engine pools this run streams through, by config section."""
        config, pools = self.config, {}
        if config.synthesis.synthesizer == "model":
            pools["synthesis"] = config.synthesis.engine
        if config.filter.enabled and config.filter.judge == "llm":
            pools["filter"] = config.filter.engine
        return pools

    def _hub_models(self) -> dict[str, str]:
        """The models this run's actors load themselves (not through an HTTP server), by config field."""
        return {f"{section}.engine.model": engine.model for section, engine in self._pools().items()
                if engine.backend != "openai"}

    def _committed_rows(self) -> int:
        """Rows a killed earlier run finished (Ray Data's committed checkpoint files; pending ones are rolled back)."""
        files = [path for path in self.fs.glob(self.dir.path(CHECKPOINT, "*.parquet"))
                 if not path.endswith(".pending.parquet")]
        return sum(pq.read_metadata(path, filesystem=self.fs).num_rows for path in files)

    def finalize(self, shards: list[str]) -> dict[str, Any]:
        rows_dir = self.dir.path(ROWS)
        columns = pads.dataset(rows_dir, filesystem=self.fs, format="parquet").to_table(
            columns=outputs.ACCOUNTING_COLUMNS
        )
        duplicates = outputs.duplicate_row_keys(columns)
        for name in PUBLISHED_SETS:
            self.dir.remove(name)
            self.fs.makedirs(self.dir.path(name), exist_ok=True)
        # One Ray task per group of rows files (Ray Data wrote one per block, a few hundred rows each): three
        # projections from one read, in parallel, into files of about PUBLISHED_FILE_BYTES.
        duplicates_ref = ray.put(duplicates)
        ray.get([_publish.remote(group, self.dir.root, self.fs, duplicates_ref)
                 for group in file_groups(self.fs, rows_dir, PUBLISHED_FILE_BYTES)])
        self.dir.refresh()
        write_empty_sets(self.dir)
        config = self.config
        return {
            "status": "complete",
            "config_fingerprint": config.fingerprint(),
            "data": {"path": config.data.path, "format": config.data.format, "shards": len(shards)},
            "synthesizer": config.synthesis.engine.model if config.synthesis.synthesizer == "model" else "rule_based",
            "prompt_format": config.synthesis.prompt_format,
            "filter": (None if not config.filter.enabled
                       else config.filter.engine.model if config.filter.judge == "llm" else "lexical"),
            **outputs.accounting(columns, duplicates),
        }

    @staticmethod
    def summary(manifest: dict[str, Any]) -> str:
        stream_s = manifest["timings_s"]["stream"] or 1e-9
        processed = manifest["rows_processed_this_run"]
        resumed = f" (resumed: {manifest['rows_in'] - processed} done before)" if processed < manifest["rows_in"] else ""
        kept = manifest["tasks_kept"] / manifest["tasks_synthesized"] if manifest["tasks_synthesized"] else 0.0
        return (
            f"synthesis: {processed} rows in {stream_s:.1f} s ({processed / stream_s:.2f} rows/s){resumed}; "
            f"{manifest['rows_out']} examples, {sum(manifest['rows_dropped'].values())} dropped (no task), "
            f"{sum(manifest['rows_quarantined'].values())} quarantined; "
            f"{manifest['tasks_synthesized']} tasks synthesized, {manifest['tasks_kept']} kept ({kept:.0%})"
            + _cost_line(manifest.get("cost"))
        )


def _cost_line(cost: dict[str, Any] | None) -> str:
    if not cost or not cost["pools"]:
        return ""
    per_1k = cost["per_1k_kept_tasks"]
    each = (f"; per 1,000 kept tasks {per_1k['accelerator_hours']:.3f} accelerator-hours, "
            f"{per_1k['cpu_core_hours']:.3f} CPU-core-hours" if per_1k else "")
    return (f"; engine pools {cost['accelerator_hours']:.3f} accelerator-hours, "
            f"{cost['cpu_core_hours']:.3f} CPU-core-hours{each}")


def run_synthesis(config: RunConfig) -> dict[str, Any]:
    return SynthesisStage(config).run()
