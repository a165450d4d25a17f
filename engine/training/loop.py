"""The training stage on Ray Train + DeepSpeed: post-training (`training.task: target`) or synthesizer tuning
(`training.task: synthesizer`), resumable.

    driver: TrainingStage.run                         each Ray Train worker: TrainWorker(...).run()
      count the examples of each phase, plan steps      load processor + model; deepspeed.initialize (ZeRO from the
      Ray Data: Parquet -> mixture phases (flat_map)      JSON, per-group learning rates, warm-up + cosine per phase)
      TorchTrainer(one worker per GPU, or CPU workers)  restore from ray.train.get_checkpoint()
                                                        per phase: stream get_dataset_shard(phase) -> collate ->
                                                          accumulate to the global batch -> step -> log / checkpoint
                                                        export the HF model folder (rank 0 writes)

The two tasks differ only in their data (``target_phases``, ``synthesizer_phases``): which rows, which mixture
phases, where the loss goes (``engine.training.mixture``). Everything after the phases is shared: the plan and
schedule (``engine.training.schedule``), the optimizer groups and DeepSpeed config (``engine.training.optim``), the
metrics file (``engine.training.metrics_log``).

Steps: each phase trains whole global batches (epochs x examples // global_batch_size, or a share of max_steps); when
the collator drops examples, a pass over the data gives fewer steps and the next pass fills the rest, so the learning
rate schedule always ends where it was planned. Workers agree on every step (an all-reduce of "I have a full step").

Layout in {output_dir}/training/: checkpoints/ (Ray Train's storage: one folder per checkpoint holding DeepSpeed's files
from every worker and each worker's data position), model/ (the HF model folder), metrics.csv, run.json (the
fingerprint of the config that owns the folder) and manifest.json (written last: the stage is complete).

A worker that dies (its process, or the node under it) restarts the worker group within the same run, up to
`training.max_failures` times, and the new workers resume from the latest checkpoint as below.

Resume: run the same command again. Ray Train finds the latest checkpoint under checkpoints/ and each worker restores
from it. Exact: the step count, weights, optimizer and learning-rate schedule (DeepSpeed's checkpoint), and the data
position as long as the data set's files and the worker count are unchanged, because the order is deterministic: seeded
file order, Ray Data's preserve_order, a split among workers balanced by row counts, a seeded local shuffle per epoch;
each worker then skips the micro-batches it had consumed. metrics.csv is cut back to the checkpoint's step, so redone
steps appear once. Not exact: skipped micro-batches are still read (not collated), so resuming late in a long epoch
costs reading time; torch's RNG is not restored (these models use no dropout in training); adding files to the data set
or changing num_workers changes the order (a different num_workers cannot load the ZeRO partitions anyway).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.dataset as pads
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.data import FileShuffleConfig
from ray.train.torch import TorchTrainer

from engine.config import ConfigError, RunConfig, TrainingConfig, is_url, speed_only_fields
from engine.io.run_dir import CHECKPOINTS, METRICS, MODEL, TRAINING, TUNING, RunDir, arrow_location
from engine.models.loading import check_hub_models, load_model, load_processor
from engine.runtime import ray_session
from engine.training import mixture
from engine.training.collate import DROP_REASONS, TRUNCATED, Collator
from engine.training.export import gather_weights, save_model_folder
from engine.training.metrics_log import MetricsLog, read_metrics
from engine.training.optim import deepspeed_config, parameter_groups
from engine.training.schedule import Phase, Plan, lr_multiplier, plan_training

DEEPSPEED_TAG = "deepspeed"
# Rows a worker shuffles locally before batching: mixes neighbouring examples without a global shuffle's cost.
SHUFFLE_BUFFER_ROWS = 256


# -------------------------------------------------------------------------------------------------- worker state


@dataclasses.dataclass
class Position:
    """Where a worker stands: optimizer steps done, and in the current phase its epoch and micro-batches read."""

    step: int = 0
    phase: int = 0
    epoch: int = 0
    batches: int = 0


def position_file(rank: int) -> str:
    return f"position-rank{rank}.json"


@dataclasses.dataclass
class Interval:
    """What happened since the last metrics row (rank 0 sums the all-reduced numbers of each step)."""

    started: float
    steps: int = 0
    loss: float = 0.0
    samples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped: int = 0
    crc: int = 0
    rates: dict[str, float] = dataclasses.field(default_factory=dict)  # learning rates of the last step, by part


# ------------------------------------------------------------------------------------------------------ the worker


class TrainWorker:
    """What one Ray Train worker does: set up, restore, train the phases, checkpoint, export."""

    def __init__(self, args: dict[str, Any]):
        self.config: RunConfig = args["config"]
        self.training: TrainingConfig = self.config.training
        self.plan: Plan = args["plan"]
        self.out: str = args["out"]
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        torch.manual_seed(self.training.seed)
        self.processor = load_processor(self.training.model, trust_remote_code=self.training.trust_remote_code,
                                        **self.training.processor_kwargs())
        self.collator = Collator(self.processor, self.training.family, self.training.max_length)
        self.engine, self.parts = self._build_engine()
        self.device = self.engine.device
        self.dtype = torch.bfloat16 if self.training.precision == "bf16" else torch.float32
        self.position = self._restore()
        self.checkpointed_step = self.position.step
        self.log = MetricsLog(f"{self.out}/{METRICS}", self.position.step) if self.rank == 0 else None
        self.started = time.perf_counter()
        self.interval = Interval(self.started)

    def _build_engine(self):
        import deepspeed

        # Each worker loads the whole model and deepspeed.initialize partitions it (ZeRO-3: the weights too).
        # Partitioning while loading (transformers' HfDeepSpeedConfig + zero.Init) needs `accelerate`, which this
        # environment does not have.
        dtype = "bfloat16" if self.training.precision == "bf16" else "float32"
        model = load_model(self.training.model, "image-text-to-text", dtype=dtype,
                           trust_remote_code=self.training.trust_remote_code).train()
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing
        if self.training.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        groups = parameter_groups(model, self.training)
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=groups,
            config=deepspeed_config(self.training, self.world_size),
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_multiplier(step, self.plan)),
        )
        return engine, [group["part"] for group in groups]

    def _restore(self) -> Position:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return Position()
        with checkpoint.as_directory() as folder:
            self.engine.load_checkpoint(folder, tag=DEEPSPEED_TAG)
            position = Position(**json.loads(Path(folder, position_file(self.rank)).read_text()))
        self._say(f"resumed from the checkpoint of step {position.step}")
        return position

    # ------------------------------------------------------------------------------------------------ training

    def run(self) -> None:
        for index, phase in enumerate(self.plan.phases):
            if self.position.phase < index:
                self.position = Position(step=self.position.step, phase=index)
            if self.position.phase == index:
                self._train_phase(phase)
        if self.position.step != self.checkpointed_step:
            self._checkpoint()
        self._export()

    def _train_phase(self, phase: Phase) -> None:
        """Train the phase's planned steps, pass after pass over its data: when the collator drops examples, a pass
        gives fewer steps than planned and the next pass fills the rest, so the schedule always ends where planned."""
        shard = ray.train.get_dataset_shard(phase.name)
        while self.position.step < phase.end:
            fresh_epoch, step_before = self.position.batches == 0, self.position.step
            if self._train_epoch(shard, phase):
                return
            if fresh_epoch and self.position.step == step_before:
                raise RuntimeError(f"phase {phase.name!r}: a whole pass over the data gave no full step; the "
                                   f"collator dropped its examples ({dict(self.collator.counts)})")
            self.position.epoch += 1
            self.position.batches = 0

    def _train_epoch(self, shard, phase: Phase) -> bool:
        """Train until the phase's last step (True) or until some worker runs out of data in this epoch (False)."""
        batches = self._epoch_batches(shard)
        while self.position.step < phase.end:
            step = self._next_step(batches)
            if not self._every_worker(step is not None):
                return False
            self._step(*step, phase=phase)
        return True

    def _epoch_batches(self, shard) -> Iterator[list[dict[str, Any]]]:
        """This worker's micro-batches of rows for the current epoch, after those it had already consumed."""
        batches = shard.iter_batches(
            batch_size=self.training.micro_batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=self.training.seed + self.position.epoch,
        )
        for batch in itertools.islice(batches, self.position.batches, None):
            yield batch.to_pylist()

    def _next_step(self, batches: Iterator[list[dict[str, Any]]]) -> tuple[list[dict], list[str]] | None:
        """The collated micro-batches of one optimizer step and the ids they came from; None if the epoch ran out."""
        micro_batches, ids = [], []
        for rows in batches:
            self.position.batches += 1
            ids += [row["id"] for row in rows]
            batch = self.collator(rows)
            if batch is not None:
                micro_batches.append(batch)
            if len(micro_batches) == self.plan.accumulation:
                return micro_batches, ids
        return None

    def _every_worker(self, ready: bool) -> bool:
        """Whether all workers have a full step: a step that some worker cannot fill is skipped by all of them,
        since a collective that only some workers enter never returns."""
        flag = torch.tensor([int(ready)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _step(self, micro_batches: list[dict], ids: list[str], phase: Phase) -> None:
        self.interval.rates = dict(zip(self.parts, self.engine.get_lr()))  # the rates this step's update uses
        loss_sum, tokens, samples = 0.0, 0, 0
        for batch in micro_batches:
            batch = {key: self._to_device(value) for key, value in batch.items()}
            loss = self.engine(**batch).loss
            self.engine.backward(loss)  # DeepSpeed scales by 1/accumulation and reduces at the step boundary
            self.engine.step()
            loss_sum += loss.item()
            tokens += int(batch["attention_mask"].sum())
            samples += batch["input_ids"].shape[0]
        self.position.step += 1
        counts, self.collator.counts = self.collator.counts, Counter()
        dropped = sum(counts[reason] for reason in DROP_REASONS)
        crc = zlib.crc32("\n".join(ids).encode())
        totals = self._sum_over_workers([loss_sum, len(micro_batches), tokens, samples, counts[TRUNCATED], dropped,
                                         crc])
        self._account(totals)
        step = self.position.step
        due_checkpoint = step % self.training.checkpoint_every == 0 and step < self.plan.total_steps
        if step % self.training.log_every == 0 or due_checkpoint or step in (phase.end, self.plan.total_steps):
            self._write_metrics(phase)
        if due_checkpoint:
            self._checkpoint()
            self.interval.started = time.perf_counter()  # throughput counts training, not checkpoint writing

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _sum_over_workers(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def _account(self, totals: list[float]) -> None:
        loss_sum, micro_batches, tokens, samples, truncated, dropped, crc = totals
        interval = self.interval
        interval.steps += 1
        interval.loss += loss_sum / micro_batches
        interval.tokens += int(tokens)
        interval.samples += int(samples)
        interval.truncated += int(truncated)
        interval.dropped += int(dropped)
        interval.crc = (interval.crc + int(crc)) % 2**32

    def _write_metrics(self, phase: Phase) -> None:
        interval, now = self.interval, time.perf_counter()
        self.interval = Interval(now)
        if self.rank != 0:
            return
        seconds = max(now - interval.started, 1e-9)
        grad_norm = self.engine.get_global_grad_norm()
        row = {
            "step": self.position.step,
            "phase": phase.name,
            "epoch": self.position.epoch,
            "loss": round(interval.loss / interval.steps, 6),
            "lr": interval.rates.get("language"),
            "vision_lr": interval.rates.get("vision"),
            "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
            "samples": interval.samples,
            "tokens": interval.tokens,
            "samples_per_s": round(interval.samples / seconds, 3),
            "tokens_per_s": round(interval.tokens / seconds, 1),
            "elapsed_s": round(now - self.started, 2),
            "truncated": interval.truncated,
            "dropped": interval.dropped,
            "data_crc": interval.crc,
        }
        self.log.append(row)
        self._say(f"step {row['step']}/{self.plan.total_steps} [{phase.name}] loss {row['loss']:.4f} "
                  f"lr {row['lr']:.3g} tokens/s {row['tokens_per_s']:.0f} samples/s {row['samples_per_s']:.2f}")

    # ------------------------------------------------------------------------------------------- save and export

    def _checkpoint(self) -> None:
        """Every worker writes its DeepSpeed files and data position; Ray Train merges them into one checkpoint."""
        with tempfile.TemporaryDirectory(prefix="adapt-checkpoint-") as folder:
            self.engine.save_checkpoint(folder, tag=DEEPSPEED_TAG)
            Path(folder, position_file(self.rank)).write_text(json.dumps(dataclasses.asdict(self.position)))
            metrics = {"step": self.position.step, "phase": self.position.phase, "epoch": self.position.epoch}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        self.checkpointed_step = self.position.step

    def _export(self) -> None:
        weights = gather_weights(self.engine, self.rank)
        if self.rank == 0:
            save_model_folder(self.engine.module, weights, self.processor, f"{self.out}/{MODEL}")
            self._say(f"exported the model to {self.out}/{MODEL}")

    def _say(self, message: str) -> None:
        # Not print(): Ray Train patches it to log and also echo to the worker's stdout, so every line came out twice.
        if self.rank == 0:
            sys.stdout.write(f"training: {message}\n")
            sys.stdout.flush()


def train_loop_per_worker(args: dict[str, Any]) -> None:
    TrainWorker(args).run()


# ------------------------------------------------------------------------------------------------ the two tasks' data


def read_parquet(url: str, columns: list[str], seed: int) -> ray.data.Dataset:
    """A Parquet set as a stream, its files in a seeded order that is the same in every epoch and every run."""
    path, filesystem = arrow_location(url)
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=False)
    return ray.data.read_parquet(path, filesystem=filesystem, shuffle=shuffle).select_columns(columns)


def _parquet_column(url: str, column: str) -> list[Any]:
    fs, path = fsspec.core.url_to_fs(url)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=[column]).column(column).to_pylist()


def read_llama_factory(url: str) -> list[dict[str, Any]]:
    """Rows of a LLaMA-Factory ShareGPT JSON (role/content messages, as `adapt export` writes it); image paths resolve
    against the JSON file's folder, as LLaMA-Factory resolves them against its dataset_dir."""
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path) as file:
        records = json.load(file)
    base = url.rsplit("/", 1)[0]
    return [
        {"id": str(record.get("id") or f"record-{index:09d}"), "messages": record["messages"],
         "images": [image if is_url(image) or image.startswith("/") else f"{base}/{image}"
                    for image in record.get("images") or []]}
        for index, record in enumerate(records)
    ]


def _load_image_files(row: dict[str, Any]) -> dict[str, Any]:
    images = []
    for ref in row["images"]:
        with fsspec.open(ref, "rb") as file:
            images.append(file.read())
    return {**row, "images": images}


def target_phases(training: TrainingConfig, dataset: str, seed: int) -> tuple[dict[str, Any], dict[str, int]]:
    """Post-training data: the instruction set expanded by the mixture's phases, and each phase's example count."""
    if training.dataset_format == "parquet":
        kinds = _parquet_column(dataset, "kind")
        rows = read_parquet(dataset, ["id", "images", "messages"], seed)
    else:
        records = read_llama_factory(dataset)
        kinds = [mixture.example_kind(record | {"images": [None] * len(record["images"])}) for record in records]
        random.Random(seed).shuffle(records)  # the file's own order, seeded: it is read as one block
        rows = ray.data.from_items(records).map(_load_image_files)
    counts = mixture.phase_counts(kinds, training.mixture)
    datasets = {name: rows.flat_map(expand, fn_kwargs={"seed": seed}) for name, expand in
                mixture.phases(training.mixture)}
    return datasets, counts


def seed_task_names(url: str) -> list[tuple[str, str | None]]:
    """Each seed-task row's id and `task_name`; a set written without that optional column is one task."""
    ids = _parquet_column(url, "id")
    fs, path = fsspec.core.url_to_fs(url)
    if "task_name" not in pads.dataset(path, filesystem=fs, format="parquet").schema.names:
        return [(row_id, None) for row_id in ids]
    return list(zip(ids, _parquet_column(url, "task_name")))


def synthesizer_phases(training: TrainingConfig, dataset: str, seed: int) -> tuple[dict[str, Any], dict[str, int]]:
    """Synthesizer tuning data: one conversation per seed-task row, less the rows held out as dev (cut per seed task
    on the driver, since the cut needs every row of a task; the workers get the dev ids)."""
    names = seed_task_names(dataset)
    dev = mixture.dev_ids(names, seed, training.dev_fraction)
    rows = read_parquet(dataset, ["id", "image", "caption", "tasks"], seed)
    conversations = rows.flat_map(mixture.synthesizer_conversation,
                                  fn_kwargs={"seed": seed, "blank_image_fraction": training.blank_image_fraction,
                                             "dev": dev})
    count = sum(row_id not in dev for row_id, _ in names)
    return {mixture.SYNTHESIZER_PHASE: conversations}, {mixture.SYNTHESIZER_PHASE: count}


# ------------------------------------------------------------------------------------------------------ the driver


def training_fingerprint(config: RunConfig) -> str:
    """What decides a training run's result: the training section (less its SPEED_ONLY fields) and the seed."""
    section = config.model_dump(mode="json", include={"training"},
                                exclude={"training": speed_only_fields(TrainingConfig)})["training"]
    canonical = json.dumps({"seed": config.seed, "training": section}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class TrainingStage:
    """One training run in `{output_dir}/{stage}`: train (or resume), export, write manifest.json. The run's
    `training` section says what to train; `run_synthesizer_tuning` hands it the `synthesizer_tuning` section."""

    def __init__(self, config: RunConfig, stage: str = TRAINING):
        if config.training is None:
            raise ConfigError("training: the config has no training section")
        self.fingerprint = training_fingerprint(config)  # of the config as written: stable if the folder moves
        self.config = config = config.with_absolute_paths()
        self.training = config.training
        self.run_dir = RunDir(config.output_dir)
        self.dir = self.run_dir.stage(stage, self.fingerprint)
        self.out = self.dir.url()

    def dataset(self) -> str:
        """The training data's location; by default the run's instruction set (post-training only)."""
        training = self.training
        if training.dataset is None and training.task == "synthesizer":
            raise ConfigError("training.dataset: synthesizer tuning needs a seed-task Parquet set (SEED_TASK_SCHEMA)")
        dataset = training.dataset or self.run_dir.instructions
        fs, path = fsspec.core.url_to_fs(dataset)
        if not fs.exists(path):
            hint = "" if training.dataset else " (run `adapt synthesize` first, or set training.dataset)"
            raise ConfigError(f"training.dataset: {dataset} does not exist{hint}")
        return dataset

    def run(self) -> dict[str, Any]:
        manifest = self.dir.completed_manifest()
        if manifest:
            print(f"training: already complete in {self.out} ({manifest['steps']} steps); skipping", file=sys.stderr)
            return manifest
        dataset = self.dataset()
        check_hub_models({f"{self.dir.stage}.model": self.training.model})
        self.dir.claim()
        training = self.training
        with ray_session(self.config.cluster):
            started = time.monotonic()
            recipe_data = synthesizer_phases if training.task == "synthesizer" else target_phases
            datasets, counts = recipe_data(training, dataset, self.config.seed)
            plan = plan_training(counts, training, training.num_workers)
            print(f"training: {training.task} on {dataset}: " + ", ".join(
                f"{phase.name} {phase.examples} examples / {phase.steps} steps" for phase in plan.phases),
                file=sys.stderr)
            self._trainer(datasets, plan).fit()
            seconds = time.monotonic() - started
        self.dir.refresh()
        manifest = self._manifest(dataset, plan, seconds)
        self.dir.write_manifest(manifest)
        print(f"training: {manifest['steps']} steps in {seconds:.1f} s, final loss {manifest['final_loss']}; "
              f"model in {manifest['model']}", file=sys.stderr)
        return manifest

    def _trainer(self, datasets: dict[str, Any], plan: Plan) -> TorchTrainer:
        training = self.training
        ingest = ray.train.DataConfig.default_ingest_options()
        ingest.preserve_order = True  # a deterministic order is what makes the resumed data position exact
        storage_path, storage_filesystem = arrow_location(self.out)
        for dataset in datasets.values():
            dataset.context.enable_progress_bars = False  # one bar per epoch and worker drowns the metric lines
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": self.config, "plan": plan, "out": self.out},
            scaling_config=ray.train.ScalingConfig(
                num_workers=training.num_workers,
                use_gpu=training.use_gpu,  # adds one GPU per worker to the resources below
                resources_per_worker={"CPU": training.cpus_per_worker, **training.worker_resources},
            ),
            run_config=ray.train.RunConfig(
                name=CHECKPOINTS,
                storage_path=storage_path,
                storage_filesystem=storage_filesystem,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                # a dead worker restarts the group, which restores from ray.train.get_checkpoint() (`_restore`)
                failure_config=ray.train.FailureConfig(max_failures=training.max_failures),
            ),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(execution_options=ingest),
        )

    def _manifest(self, dataset: str, plan: Plan, seconds: float) -> dict[str, Any]:
        rows = read_metrics(f"{self.out}/{METRICS}")
        return {
            "status": "complete",
            "fingerprint": self.fingerprint,
            "config_fingerprint": self.config.fingerprint(),
            "task": self.training.task,
            "mixture": self.training.mixture if self.training.task == "target" else None,
            "base_model": self.training.model,
            "dataset": dataset,
            "model": f"{self.out}/{MODEL}",
            "metrics": f"{self.out}/{METRICS}",
            "phases": [dataclasses.asdict(phase) for phase in plan.phases],
            "planned_steps": plan.total_steps,
            "steps": int(rows[-1]["step"]) if rows else 0,
            "final_loss": float(rows[-1]["loss"]) if rows else None,
            "truncated": sum(int(row["truncated"]) for row in rows),
            "dropped": sum(int(row["dropped"]) for row in rows),
            "num_workers": self.training.num_workers,
            "timings_s": {"train": round(seconds, 2)},
        }


def run_training(config: RunConfig) -> dict[str, Any]:
    """`adapt train`: train (or resume, or skip when complete) and return the manifest."""
    return TrainingStage(config).run()


def run_synthesizer_tuning(config: RunConfig) -> dict[str, Any]:
    """`adapt tune-synthesizer`: the `synthesizer_tuning` section trained like `training`, into its own folder."""
    if config.synthesizer_tuning is None:
        raise ConfigError("synthesizer_tuning: the config has no synthesizer_tuning section")
    return TrainingStage(config.model_copy(update={"training": config.synthesizer_tuning}), TUNING).run()
