"""The evaluation stage on Ray Data: every model on every benchmark, predictions to Parquet, then scores and report.

    per task:           benchmark source -> normalized table  evaluation/benchmarks/{task}/   (once, on the driver)
    per (model, task):  read_parquet(table) -> Predict (actor pool, greedy) -> write_parquet(predictions/{model}/{task})
    then:               rescore every prediction file -> report.json, report.md, report.png, manifest.json

Models scored: `base` (training.model, or evaluation.engine.model without a training section), every entry of
evaluation.models, and `adapted` ({output_dir}/training/model) once training has written it. All use the
evaluation engine's settings and model family; only the weights differ. Decoding is greedy and an answer gets the
task's budget (the paper's 1024 or 256 tokens) capped by `engine.max_tokens`.

Resume: each (model, task) is one Ray Data job with checkpointing keyed on `example_id`, so a killed evaluation
restarted with the same config predicts only the missing examples; a state file per pair records the config
fingerprint it was made with and whether it finished. A finished pair is skipped; a pair made with another
fingerprint (other weights, or the same path with changed files; another benchmark; other engine settings) is
predicted again from scratch. Predictions are
written before any scoring, so scoring can be rerun without inference (`adapt report`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import ray
from ray.data.checkpoint import CheckpointConfig

from engine.config import (
    BenchmarkConfig,
    ConfigError,
    EngineConfig,
    RunConfig,
    absolute,
    is_local_path,
)
from engine.evaluation import report
from engine.evaluation.benchmarks import (
    benchmark_rows,
    error_reason,
    files_signature,
    source_fingerprint,
    write_table,
)
from engine.evaluation.tasks import TaskSpec, get_task
from engine.io.images import ImageLimits, Problem, decode_image
from engine.io.stage_dir import TRAINING_STAGE, trained_model_dir
from engine.models.backends import GenerationRequest, create_backend
from engine.models.families import FAMILIES, get_family, render
from engine.records import PREDICTION_SCHEMA
from engine.runtime import engine_actor_options, ray_session

BENCHMARKS_DIR = "benchmarks"
CHECKPOINT_DIR = "_checkpoint"
# Bump when the normalized benchmark table or the prediction rows change meaning: older files are then redone.
TABLE_VERSION = 1
PREDICTION_VERSION = 1
# Engine fields that change how fast predictions come, not what they are: a resumed run may change them.
RESOURCE_FIELDS = {"concurrency", "num_cpus", "num_gpus", "batch_size", "cpu_threads_bind", "kv_cache_gib",
                   "gpu_memory_utilization", "enforce_eager"}
# Benchmark images are only refused when undecodable: the model's processor resizes small or large ones itself.
IMAGE_LIMITS = ImageLimits(min_side=1)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def max_tokens(spec: TaskSpec, engine: EngineConfig) -> int:
    """The task's answer budget (the paper's), capped by the engine's `max_tokens` (small models, smoke runs)."""
    return min(spec.max_tokens, engine.max_tokens)


def models_to_score(config: RunConfig) -> dict[str, str]:
    """name -> model reference: base, the configured extra models, and the adapted model once training wrote it."""
    evaluation = config.evaluation
    models = {report.BASE_MODEL: config.training.model if config.training else evaluation.engine.model}
    models.update(evaluation.models)
    adapted = trained_model_dir(config.output_dir, TRAINING_STAGE)
    fs, fs_adapted = fsspec.core.url_to_fs(adapted)
    if "adapted" not in models and fs.exists(f"{fs_adapted}/config.json"):
        models["adapted"] = adapted
    return models


# ---------------------------------------------------------------------------------------------------------------------
# The actor


class Predict:
    """Ray Data callable over pyarrow batches of benchmark rows: one greedy answer per row, then its scores.

    Holds one inference engine, so Ray runs it as an actor pool. A row that arrives with an `error` (its record was
    unusable) or whose image does not decode gets no request; a failed request is recorded as `generation_failed`.
    Such rows keep `prediction` null and are scored like a wrong answer.
    """

    def __init__(self, engine: EngineConfig, task: str, model: str):
        self._spec = get_task(task)
        self._model = model
        self._family = engine.family
        self._max_tokens = max_tokens(self._spec, engine)
        self._stop = list(get_family(engine.family).stop)
        self._backend = create_backend(engine)

    def _prompt(self, text: str) -> str:
        return render(self._family, [{"role": "user", "content": self._spec.user_turn(text)}],
                      add_generation_prompt=True)

    def _request(self, row: dict[str, Any]) -> GenerationRequest | None:
        decoded = decode_image(row["image"], IMAGE_LIMITS)
        if isinstance(decoded, Problem):
            row["error"] = f"{decoded.reason}: {decoded.detail}"
            return None
        # Greedy by protocol (the paper's evaluation), whatever the engine's temperature says.
        return GenerationRequest(prompt=row["prompt"], images=[decoded.image], max_tokens=self._max_tokens,
                                 temperature=0.0, stop=self._stop)

    def _prediction_row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {field: row.get(field) for field in PREDICTION_SCHEMA.names}
        out.update(task=self._spec.name, model=self._model)
        try:
            scores = self._spec.score_example(self._spec.scoring_row(out), row["example_index"])
        except ValueError:  # an unscorable row (no label, ...): counted by the report, no per-example scores
            scores = None
        out["scores"] = None if scores is None else json.dumps(scores)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo: list[tuple[dict[str, Any], GenerationRequest]] = []
        for row in rows:
            row["prompt"] = None if row["input"] is None else self._prompt(row["input"])
            request = None if row["error"] else self._request(row)
            if request is not None:
                todo.append((row, request))
        results = self._backend.generate([request for _, request in todo]) if todo else []
        for (row, _), result in zip(todo, results, strict=True):
            if result.ok:
                row["prediction"] = result.text
            else:
                row["error"] = f"generation_failed: {result.error}"
        return pa.Table.from_pylist([self._prediction_row(row) for row in rows], schema=PREDICTION_SCHEMA)


# ---------------------------------------------------------------------------------------------------------------------
# The stage


class EvaluationStage:
    """One evaluation in `{output_dir}/evaluation`: prepare the benchmark tables, predict what is missing, report."""

    def __init__(self, config: RunConfig, models: Mapping[str, str] | None = None):
        if config.evaluation is None:
            raise ConfigError("evaluation: the config has no evaluation section")
        self.config = config = config.with_absolute_paths()
        evaluation = config.evaluation
        if evaluation.engine.family not in FAMILIES:
            raise ConfigError(f"evaluation.engine.family: {evaluation.engine.family!r} is not an image-text family; "
                              f"use one of {', '.join(FAMILIES)}")
        self.models = {name: absolute(ref) for name, ref in (models or models_to_score(config)).items()}
        for name in self.models:
            if not _MODEL_NAME.match(name):
                raise ConfigError(f"evaluation.models: {name!r} is not a usable name (letters, digits, . _ -)")
        # Checked now (a local model folder must exist), not after Ray and the benchmark tables are up.
        self.engines = {name: self._engine_for(ref) for name, ref in self.models.items()}
        tasks = [benchmark.task for benchmark in evaluation.benchmarks]
        repeated = sorted(task for task, count in Counter(tasks).items() if count > 1)
        if repeated:
            raise ConfigError(f"evaluation.benchmarks: task(s) listed twice: {', '.join(repeated)}")
        try:
            self.benchmarks = [(get_task(b.task), b) for b in evaluation.benchmarks]
        except ValueError as err:
            raise ConfigError(f"evaluation.benchmarks: {err}") from None
        self.out = f"{config.output_dir.rstrip('/')}/{report.EVALUATION_DIR}"
        self.fs, self.fs_out = fsspec.core.url_to_fs(self.out)

    # -- files

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.fs_out, *parts)

    def _read_json(self, path: str) -> dict[str, Any] | None:
        if not self.fs.exists(path):
            return None
        with self.fs.open(path) as file:
            return json.load(file)

    def _write_json(self, path: str, value: dict[str, Any]) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.fs.open(path, "w") as file:
            json.dump(value, file, indent=2)

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- benchmark tables

    def prepare_table(self, spec: TaskSpec, benchmark: BenchmarkConfig) -> dict[str, Any]:
        """The task's normalized benchmark table, written unless a table of the same source is already there."""
        fingerprint = _digest({"version": TABLE_VERSION, **source_fingerprint(spec, benchmark)})
        marker = self._path(BENCHMARKS_DIR, f"{spec.name}.json")
        table = self._read_json(marker)
        if table and table["fingerprint"] == fingerprint:
            return table
        folder = self._path(BENCHMARKS_DIR, spec.name)
        self._remove(folder)
        started = time.monotonic()
        counts = write_table(benchmark_rows(spec, benchmark), folder, self.fs)
        source = benchmark.path or f"hub:{spec.hub_id}/{spec.hub_config}"
        if not counts["rows"]:
            raise ConfigError(f"evaluation.benchmarks: {spec.name}: no records in {source}")
        table = {"fingerprint": fingerprint, "source": source, **counts,
                 "seconds": round(time.monotonic() - started, 2)}
        self._write_json(marker, table)
        return table

    # -- predictions

    def pair_fingerprint(self, model_ref: str, spec: TaskSpec, table: dict[str, Any]) -> str:
        engine = self.config.evaluation.engine
        # A local model's files count too: `adapted` keeps its path when training runs again.
        return _digest({
            "version": PREDICTION_VERSION,
            "model": model_ref,
            "weights": files_signature(model_ref) if is_local_path(model_ref) else None,
            "table": table["fingerprint"],
            "max_tokens": max_tokens(spec, engine),
            "engine": engine.model_dump(mode="json", exclude=RESOURCE_FIELDS | {"model", "max_tokens"}),
        })

    def _engine_for(self, model_ref: str) -> EngineConfig:
        """The evaluation engine's settings with another model's weights."""
        engine = self.config.evaluation.engine.model_dump()
        try:
            return EngineConfig.model_validate({**engine, "model": model_ref})
        except ValueError as err:
            raise ConfigError(f"evaluation: model {model_ref!r}: {err}") from None

    def _count_predictions(self, folder: str) -> tuple[int, dict[str, int]]:
        errors = pads.dataset(folder, filesystem=self.fs, format="parquet").to_table(columns=["error"])
        reasons = Counter(error_reason(error) for error in errors.column("error").to_pylist() if error)
        return errors.num_rows, dict(reasons)

    def completed(self, model: str, spec: TaskSpec, table: dict[str, Any]) -> dict[str, Any] | None:
        """The state of a pair already predicted with this config, else None."""
        state = self._read_json(report.state_path(self.fs_out, model, spec.name))
        fingerprint = self.pair_fingerprint(self.models[model], spec, table)
        if state and state["fingerprint"] == fingerprint and state["status"] == "complete":
            return {**state, "skipped": True}
        return None

    def predict(self, model: str, spec: TaskSpec, table: dict[str, Any]) -> dict[str, Any]:
        """Predict (or finish predicting) one model on one task; returns the pair's state."""
        model_ref = self.models[model]
        fingerprint = self.pair_fingerprint(model_ref, spec, table)
        state_file = report.state_path(self.fs_out, model, spec.name)
        predictions = report.predictions_path(self.fs_out, model, spec.name)
        checkpoint = self._path(CHECKPOINT_DIR, model, spec.name)
        state = self._read_json(state_file)
        if not state or state["fingerprint"] != fingerprint:  # a fresh pair, or one made differently: start over
            self._remove(predictions)
            self._remove(checkpoint)
            self._write_json(state_file, {"fingerprint": fingerprint, "status": "running", "model": model_ref})
        engine = self.engines[model]
        started = time.monotonic()
        context = ray.data.DataContext.get_current()
        context.checkpoint_config = CheckpointConfig(
            id_column="example_id",
            checkpoint_path=self.fs.unstrip_protocol(checkpoint),
            delete_checkpoint_on_success=False,  # a run killed before its state file is written must not redo rows
        )
        try:
            # One block per actor batch (Ray reads small files into one block): every actor of the pool gets work
            # even on a small benchmark, and each finished batch is committed to the checkpoint.
            (ray.data.read_parquet(self.fs.unstrip_protocol(self._path(BENCHMARKS_DIR, spec.name)))
             .repartition(target_num_rows_per_block=engine.batch_size)
             .map_batches(Predict, fn_constructor_kwargs={"engine": engine, "task": spec.name, "model": model},
                          batch_size=engine.batch_size, batch_format="pyarrow", **engine_actor_options(engine))
             .write_parquet(self.fs.unstrip_protocol(predictions)))
        finally:
            context.checkpoint_config = None
        seconds = time.monotonic() - started
        rows, errors = self._count_predictions(predictions)
        if rows != table["rows"]:
            raise RuntimeError(f"{model} on {spec.name}: {rows} prediction rows for {table['rows']} benchmark rows "
                               f"in {predictions}; delete that folder and its state file to predict it again")
        state = {"fingerprint": fingerprint, "status": "complete", "model": model_ref, "rows": rows,
                 "errors": errors, "seconds": round(seconds, 2), "rows_per_s": round(rows / max(seconds, 1e-9), 3)}
        self._write_json(state_file, state)
        return {**state, "skipped": False}

    # -- the whole stage

    def run(self) -> report.Results:
        tables = {spec.name: self.prepare_table(spec, benchmark) for spec, benchmark in self.benchmarks}
        pairs = [(model, spec) for model in report.ordered_models(self.models) for spec, _ in self.benchmarks]
        states = {(model, spec.name): self.completed(model, spec, tables[spec.name]) for model, spec in pairs}
        pending = [(model, spec) for model, spec in pairs if states[model, spec.name] is None]
        if pending:  # a finished evaluation is re-reported without starting Ray
            with ray_session(self.config.cluster):
                for model, spec in pending:
                    states[model, spec.name] = self.predict(model, spec, tables[spec.name])
        for model, spec in pairs:
            print(self.summary(model, spec, states[model, spec.name]), file=sys.stderr)
        results = report.write_report(self.out, report.collect_results(
            self.fs_out, [(model, spec.name) for model, spec in pairs], self.fs))
        predictions: dict[str, dict[str, Any]] = {}
        for (model, task), state in states.items():
            predictions.setdefault(model, {})[task] = state
        self._write_json(self._path("manifest.json"), {"config_fingerprint": self.config.fingerprint(),
                                                       "models": self.models, "benchmarks": tables,
                                                       "predictions": predictions})
        print(f"evaluation: report in {self.out}/report.md", file=sys.stderr)
        return results

    @staticmethod
    def summary(model: str, spec: TaskSpec, state: dict[str, Any]) -> str:
        errors = sum(state["errors"].values())
        if state["skipped"]:
            return f"evaluation: {model} on {spec.name}: already complete ({state['rows']} rows); skipping"
        return (f"evaluation: {model} on {spec.name}: {state['rows']} rows in {state['seconds']:.1f} s "
                f"({state['rows_per_s']:.2f} rows/s), {errors} without an answer")


def run_evaluation(config: RunConfig, models: dict[str, str] | None = None) -> dict:
    """Evaluate `models` (name -> hub id or path; default: base, evaluation.models and adapted) on the config's
    benchmarks; returns the report {model: {task: {metric: value}}}."""
    return EvaluationStage(config, models).run()
