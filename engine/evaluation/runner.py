"""The evaluation stage on Ray Data: every model on every benchmark, predictions to Parquet, then scores and report.

    per task:   benchmark source -> normalized table                   evaluation/benchmarks/{task}/  (on the driver)
    per model:  read_parquet(the tables of its pending tasks) -> Predict (one actor pool, greedy)
                -> write_parquet(predictions/{model}/task={task}/)     (one Ray Data job: the engine starts once)
    then:       rescore every prediction file -> report.json, report.md, report.png, manifest.json

Models scored: `base` (training.model, or evaluation.engine.model without a training section), every entry of
evaluation.models, and `adapted` ({output_dir}/training/model) once training has written it. All use the
evaluation engine's settings and model family; only the weights differ. Decoding is greedy and an answer gets its
task's budget (the paper's 1024 or 256 tokens) capped by `engine.max_tokens`; tasks are rows, so one pool serves
tasks with different budgets.

Resume: a state file per (model, task) records the fingerprint the pair was made with and whether it finished. A
finished pair is skipped; a pair made with another fingerprint (other weights, or the same path with changed files;
another benchmark; other engine settings) is predicted again from scratch. A model's job checkpoints its finished rows
(Ray Data checkpointing keyed on `row_id`) in a folder named after the fingerprints of the pairs it predicts, so a
killed evaluation restarted with the same config predicts only the missing rows, and a changed set of pending pairs
starts clean. Predictions are written before any scoring, so scoring can be rerun without inference (`adapt
report`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

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
    is_url,
    speed_only_fields,
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
from engine.io.run_dir import MANIFEST, RunDir, arrow_location
from engine.models.backends import GenerationRequest, GenerationResult, create_backend
from engine.models.families import FAMILIES, render
from engine.models.loading import check_hub_models, engine_chat_format
from engine.records import PREDICTION_SCHEMA
from engine.runtime import EngineStep, ray_session, through_engine_pool

# Bump when the normalized benchmark table or the prediction rows change meaning: older files are then redone.
TABLE_VERSION = 2
PREDICTION_VERSION = 2
# Benchmark images are only refused when undecodable: the model's processor resizes small or large ones itself.
IMAGE_LIMITS = ImageLimits(min_side=1)
GENERATION_FAILED = "generation_failed"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def models_to_score(config: RunConfig) -> dict[str, str]:
    """name -> model reference: base, the configured extra models, and the adapted model once training wrote it."""
    evaluation = config.evaluation
    models = {report.BASE_MODEL: config.training.model if config.training else evaluation.engine.model}
    models.update(evaluation.models)
    run = RunDir(config.output_dir)
    if "adapted" not in models and run.has_trained_model():
        models["adapted"] = run.trained_model()
    return models


# ---------------------------------------------------------------------------------------------------------------------
# The actor


class EveryRequestFailed(RuntimeError):
    """Every generation request of a (model, task) failed: its scores would be zeros that mean nothing."""


class Predict(EngineStep):
    """Ray Data callable over pyarrow batches of benchmark rows: one greedy answer per row, then its scores.

    Holds one inference engine, so Ray runs it as an actor pool. A row that arrives with an `error` (its record was
    unusable) or whose image does not decode gets no request; a failed request is recorded as `generation_failed`.
    Such rows keep `prediction` null and are scored like a wrong answer.
    """

    def __init__(self, engine: EngineConfig, tasks: list[str], model: str):
        self._specs = {task: get_task(task) for task in tasks}
        self._model = model
        self._format = engine_chat_format(engine)
        self._max_tokens = {task: spec.answer_budget(engine.max_tokens) for task, spec in self._specs.items()}
        self._backend = create_backend(engine)

    def _prompt(self, spec: TaskSpec, text: str) -> str:
        return render(self._format.family, [{"role": "user", "content": spec.user_turn(text)}],
                      add_generation_prompt=True)

    def _request(self, row: dict[str, Any]) -> GenerationRequest | None:
        decoded = decode_image(row["image"], IMAGE_LIMITS)
        if isinstance(decoded, Problem):
            row["error"] = f"{decoded.reason}: {decoded.detail}"
            return None
        # Greedy by protocol (the paper's evaluation), whatever the engine's temperature says.
        return GenerationRequest(prompt=row["prompt"], images=[decoded.image], max_tokens=self._max_tokens[row["task"]],
                                 temperature=0.0, stop=self._format.family.stop,
                                 stop_token_ids=self._format.stop_token_ids,
                                 key=f"{row['task']}:{row['example_index']}")

    def requests(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], GenerationRequest]]:
        asked = []
        for row in rows:
            row["prompt"] = None if row["input"] is None else self._prompt(self._specs[row["task"]], row["input"])
            request = None if row["error"] else self._request(row)
            if request is not None:
                asked.append((row, request))
        return asked

    def record(self, row: dict[str, Any], result: GenerationResult) -> None:
        if result.ok:
            row["prediction"] = result.text
        else:
            row["error"] = f"{GENERATION_FAILED}: {result.error}"

    def output(self, rows: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist([self._prediction_row(row) for row in rows], schema=PREDICTION_SCHEMA)

    def _prediction_row(self, row: dict[str, Any]) -> dict[str, Any]:
        spec = self._specs[row["task"]]
        out = {field: row.get(field) for field in PREDICTION_SCHEMA.names}
        out["model"] = self._model
        try:
            scores = spec.score_example(spec.scoring_row(out), row["example_index"])
        except ValueError:  # an unscorable row (no label, ...): counted by the report, no per-example scores
            scores = None
        out["scores"] = None if scores is None else json.dumps(scores)
        return out


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
        # Checked now (a local model folder must exist, the hub must serve a hub id), not after Ray and the
        # benchmark tables are up.
        self.engines = {name: self._engine_for(ref) for name, ref in self.models.items()}
        if evaluation.engine.backend != "openai":
            check_hub_models({f"evaluation.models.{name}": ref for name, ref in self.models.items()})
        tasks = [benchmark.task for benchmark in evaluation.benchmarks]
        repeated = sorted(task for task, count in Counter(tasks).items() if count > 1)
        if repeated:
            raise ConfigError(f"evaluation.benchmarks: task(s) listed twice: {', '.join(repeated)}")
        try:
            self.benchmarks = [(get_task(b.task), b) for b in evaluation.benchmarks]
        except ValueError as err:
            raise ConfigError(f"evaluation.benchmarks: {err}") from None
        self.dir = RunDir(config.output_dir).evaluation()

    # -- benchmark tables

    def prepare_table(self, spec: TaskSpec, benchmark: BenchmarkConfig) -> dict[str, Any]:
        """The task's normalized benchmark table, written unless a table of the same source is already there."""
        fingerprint = _digest({"version": TABLE_VERSION, **source_fingerprint(spec, benchmark)})
        marker = self.dir.benchmark_marker(spec.name)
        table = self.dir.read_json(marker)
        if table and table["fingerprint"] == fingerprint:
            return table
        folder = self.dir.benchmark_table(spec.name)
        self.dir.remove(folder)
        started = time.monotonic()
        counts = write_table(benchmark_rows(spec, benchmark), self.dir.path(folder), self.dir.fs)
        source = benchmark.path or f"hub:{spec.hub_id}/{spec.hub_config}"
        if not counts["rows"]:
            raise ConfigError(f"evaluation.benchmarks: {spec.name}: no records in {source}")
        table = {"fingerprint": fingerprint, "source": source, **counts,
                 "seconds": round(time.monotonic() - started, 2)}
        self.dir.write_json(table, marker)
        return table

    # -- predictions

    def pair_fingerprint(self, model_ref: str, spec: TaskSpec, table: dict[str, Any]) -> str:
        engine = self.config.evaluation.engine
        # A local or object-store model's files count too: `adapted` keeps its place when training runs again.
        return _digest({
            "version": PREDICTION_VERSION,
            "model": model_ref,
            "weights": files_signature(model_ref) if is_local_path(model_ref) or is_url(model_ref) else None,
            "table": table["fingerprint"],
            "max_tokens": spec.answer_budget(engine.max_tokens),
            "engine": engine.model_dump(mode="json", exclude=speed_only_fields(EngineConfig) | {"model", "max_tokens"}),
        })

    def _engine_for(self, model_ref: str) -> EngineConfig:
        """The evaluation engine's settings with another model's weights."""
        engine = self.config.evaluation.engine.model_dump()
        try:
            return EngineConfig.model_validate({**engine, "model": model_ref})
        except ValueError as err:
            raise ConfigError(f"evaluation: model {model_ref!r}: {err}") from None

    def _read_errors(self, folder: str) -> list[str | None]:
        table = pads.dataset(self.dir.path(folder), filesystem=self.dir.fs, format="parquet").to_table(
            columns=["error"])
        return table.column("error").to_pylist()

    def _fail_if_every_request_failed(self, model: str, spec: TaskSpec, errors: list[str | None]) -> None:
        """A pair whose every request failed (a wrong prompt format, a broken model) would be scored as all wrong
        answers and reported as plausible zeros: fail the stage with the first error instead, and drop the pair's
        predictions so that a rerun asks again."""
        requested = [error for error in errors if error is None or error_reason(error) == GENERATION_FAILED]
        if not requested or any(error is None for error in requested):
            return
        self.dir.remove(self.dir.predictions(model, spec.name))
        self.dir.write_json({"status": "failed", "first_error": requested[0]}, self.dir.state(model, spec.name))
        raise EveryRequestFailed(f"evaluation: {model} on {spec.name}: all {len(requested)} requests failed; the "
                                 f"first: {requested[0]}")

    def completed(self, model: str, spec: TaskSpec, table: dict[str, Any]) -> dict[str, Any] | None:
        """The state of a pair already predicted with this config, else None."""
        state = self.dir.read_json(self.dir.state(model, spec.name))
        fingerprint = self.pair_fingerprint(self.models[model], spec, table)
        if state and state["fingerprint"] == fingerprint and state["status"] == "complete":
            return {**state, "skipped": True}
        return None

    def predict(self, model: str, specs: list[TaskSpec], tables: dict[str, dict[str, Any]]) -> dict[str, dict]:
        """Predict (or finish predicting) one model on its pending tasks in one Ray Data job; returns each pair's
        state by task."""
        model_ref = self.models[model]
        fingerprints = {spec.name: self.pair_fingerprint(model_ref, spec, tables[spec.name]) for spec in specs}
        checkpoint = self.dir.checkpoint(model, _digest(fingerprints))
        if not self.dir.exists(checkpoint):  # a new set of pending pairs: none of its rows is done
            self.dir.remove(self.dir.checkpoints(model))
            for spec in specs:
                self.dir.remove(self.dir.predictions(model, spec.name))
                self.dir.write_json({"fingerprint": fingerprints[spec.name], "status": "running", "model": model_ref},
                                    self.dir.state(model, spec.name))
        engine = self.engines[model]
        started = time.monotonic()
        context = ray.data.DataContext.get_current()
        checkpoint_path, checkpoint_fs = arrow_location(self.dir.url(checkpoint))
        context.checkpoint_config = CheckpointConfig(
            id_column="row_id", checkpoint_path=checkpoint_path, override_filesystem=checkpoint_fs,
            delete_checkpoint_on_success=False,  # a run killed before its state files are written must not redo rows
        )
        tables_fs = None
        table_paths = []
        for spec in specs:
            path, tables_fs = arrow_location(self.dir.url(self.dir.benchmark_table(spec.name)))
            table_paths.append(path)
        predictions_path, predictions_fs = arrow_location(self.dir.url(self.dir.model_predictions(model)))
        try:
            # Each finished batch (one block, through_engine_pool) is committed to the checkpoint.
            predictions = through_engine_pool(ray.data.read_parquet(table_paths, filesystem=tables_fs), Predict,
                                              engine, tasks=[spec.name for spec in specs], model=model)
            predictions.write_parquet(predictions_path, filesystem=predictions_fs, partition_cols=["task"])
        finally:
            context.checkpoint_config = None
        seconds = time.monotonic() - started
        self.dir.refresh()
        states, failures = {}, []
        for spec in specs:
            try:
                states[spec.name] = self._finish_pair(model, spec, tables[spec.name], fingerprints[spec.name],
                                                      checkpoint)
            except EveryRequestFailed as failure:
                failures.append(failure)
        rows = sum(state["rows"] for state in states.values())
        for state in states.values():  # the job's time, shared by its pairs
            state.update(seconds=round(seconds, 2), rows_per_s=round(rows / max(seconds, 1e-9), 3))
            stored = {key: value for key, value in state.items() if key != "skipped"}
            self.dir.write_json(stored, self.dir.state(model, state["task"]))
        if failures:  # the others are complete; a rerun predicts the failed pairs again, from a fresh checkpoint
            self.dir.remove(self.dir.checkpoints(model))
            raise failures[0]
        return states

    def _finish_pair(self, model: str, spec: TaskSpec, table: dict[str, Any], fingerprint: str,
                     checkpoint: str) -> dict[str, Any]:
        """Check one pair's predictions and describe them; fails the stage when every request failed."""
        predictions = self.dir.predictions(model, spec.name)
        errors = self._read_errors(predictions) if self.dir.exists(predictions) else []
        rows = len(errors)
        if rows != table["rows"]:
            raise RuntimeError(f"{model} on {spec.name}: {rows} prediction rows for {table['rows']} benchmark rows "
                               f"in {self.dir.url(predictions)}; delete that folder and {self.dir.url(checkpoint)} "
                               "to predict it again")
        self._fail_if_every_request_failed(model, spec, errors)
        reasons = dict(Counter(error_reason(error) for error in errors if error))
        return {"task": spec.name, "fingerprint": fingerprint, "status": "complete", "model": self.models[model],
                "rows": rows, "errors": reasons,
                "failed_requests_pct": _percent(reasons.get(GENERATION_FAILED, 0), rows), "skipped": False}

    # -- the whole stage

    def run(self) -> report.Results:
        tables = {spec.name: self.prepare_table(spec, benchmark) for spec, benchmark in self.benchmarks}
        pairs = [(model, spec) for model in report.ordered_models(self.models) for spec, _ in self.benchmarks]
        states = {(model, spec.name): self.completed(model, spec, tables[spec.name]) for model, spec in pairs}
        pending: dict[str, list[TaskSpec]] = {}
        for model, spec in pairs:
            if states[model, spec.name] is None:
                pending.setdefault(model, []).append(spec)
        if pending:  # a finished evaluation is re-reported without starting Ray
            with ray_session(self.config.cluster):
                for model, specs in pending.items():
                    for task, state in self.predict(model, specs, tables).items():
                        states[model, task] = state
        for model, spec in pairs:
            print(self.summary(model, spec, states[model, spec.name]), file=sys.stderr)
        results = report.write_report(self.dir, report.collect_results(
            self.dir, [(model, spec.name) for model, spec in pairs]))
        predictions: dict[str, dict[str, Any]] = {}
        for (model, task), state in states.items():
            predictions.setdefault(model, {})[task] = state
        manifest = {"config_fingerprint": self.config.fingerprint(), "models": self.models, "benchmarks": tables,
                    "predictions": predictions}
        self.dir.write_json(self.dir.run.portable(manifest), MANIFEST)
        print(f"evaluation: report in {self.dir.url('report.md')}", file=sys.stderr)
        return results

    @staticmethod
    def summary(model: str, spec: TaskSpec, state: dict[str, Any]) -> str:
        errors = sum(state["errors"].values())
        if state["skipped"]:
            return f"evaluation: {model} on {spec.name}: already complete ({state['rows']} rows); skipping"
        return (f"evaluation: {model} on {spec.name}: {state['rows']} rows, {errors} without an answer "
                f"({state['failed_requests_pct']:.1f}% of rows had a failed request); the model's job took "
                f"{state['seconds']:.1f} s for all its tasks ({state['rows_per_s']:.2f} rows/s)")


def run_evaluation(config: RunConfig, models: dict[str, str] | None = None) -> dict:
    """Evaluate `models` (name -> hub id or path; default: base, evaluation.models and adapted) on the config's
    benchmarks; returns the report {model: {task: {metric: value}}}."""
    return EvaluationStage(config, models).run()
