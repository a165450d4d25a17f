"""Configuration: one pydantic model per stage, loaded from YAML with `key.sub=value` overrides.

Every check that can fail before work starts is made here, so a bad config costs seconds, not a cluster hour:
unknown keys, wrong types, missing local files and impossible combinations all raise ConfigError, whose message names
the field (as a dotted path) and the file (or the command line, for overrides).

A model or data reference is a LOCAL PATH when it starts with "/", "./", "../" or "~" (it must then exist), a URL when
it has a scheme ("s3://", "gs://", "hf://", "memory://": checked by the stage that opens it), and otherwise a Hugging
Face hub id ("org/name"). Relative paths are relative to the working directory, as with `ray job submit --working-dir`.
This module imports nothing of `engine`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Prompt formats (engine.models.families); "text" is a text-only model such as the judge, prompted with raw text.
FamilyName = Literal["qwen2-vl", "llava-llama3", "llava-hf-llama3", "mllama", "text"]
InferenceBackend = Literal["vllm", "transformers", "openai"]
Device = Literal["cpu", "cuda"]
# Sequences vLLM's scheduler runs at once by default (max_num_seqs): what the batches in flight on an actor must fill.
SCHEDULER_SEQUENCES = 256
# Requests in flight per actor, by default, per scheduler slot. A batch holds its place until its longest answer ends,
# so most of its requests sit finished meanwhile: with the evaluation's long-tail answers (80% under 16 tokens, 5% up
# to 1024) an actor needed about four times the scheduler's sequences in flight to keep it full (16,000 benchmark
# rows on 2 cores, batches of 64: 134 s with 9 in flight, 120 s with 16, 114 s with 32; 2026-12-07).
REQUESTS_IN_FLIGHT_PER_SEQUENCE = 4
# How long each answer is: the model's own choice, or forced for benchmarks (engine.models.backends.base.forced_length).
OutputLength = Literal["natural", "max_tokens", "uniform_32_512", "long_tail"]


class ConfigError(ValueError):
    """A config that cannot run. The message lists every problem as `SOURCE: field.path: what is wrong`."""


def is_local_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~"))


def is_url(ref: str) -> bool:
    return "://" in ref


class FieldProblem(ValueError):
    """Raised by a section's cross-field check; names the field so the error message points at it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}{_FIELD_SEPARATOR}{message}")


_FIELD_SEPARATOR = " :: "


def core_ids(cores: str) -> list[int]:
    """CPU ids of a core list such as '0-3,6' (the notation of taskset and VLLM_CPU_OMP_THREADS_BIND).

    vLLM has such a parser, but a config must validate on machines without vLLM (drivers, the openai backend)."""
    ids: set[int] = set()
    for part in cores.split(","):
        first, dash, last = part.strip().partition("-")
        last = last if dash else first
        if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
            raise FieldProblem("cpu_threads_bind", f"{cores!r} is not a core list such as '0' or '0-3,6'")
        ids.update(range(int(first), int(last) + 1))
    return sorted(ids)


def absolute(ref: str, path: bool = False) -> str:
    """A local path made absolute (Ray workers do not share the driver's working directory); other refs unchanged.
    `path`: the reference is a data set, file or folder, never a hub id, so one without a scheme is a local path."""
    if is_url(ref) or not (path or is_local_path(ref)):
        return ref
    return str(Path(ref).expanduser().resolve())


def _check_url_scheme(ref: str, field: str) -> None:
    """A URL's filesystem must be installed (s3fs for s3://, gcsfs for gs://), or the stage fails at its first read."""
    protocol = ref.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as err:
        raise FieldProblem(field, f"{ref!r}: no filesystem for {protocol}:// is available ({err})") from None


def _check_model_ref(ref: str, field: str) -> None:
    """A model: a local path must exist, a URL's filesystem must be installed; anything else is a hub id."""
    if is_url(ref):
        _check_url_scheme(ref, field)
    elif is_local_path(ref) and not Path(ref).expanduser().exists():
        raise FieldProblem(field, f"{ref!r} does not exist (relative paths resolve against {os.getcwd()})")


def _check_file_ref(ref: str, field: str) -> None:
    """A data set or file: never a hub id, so any reference without a scheme is a local path and must exist."""
    if is_url(ref):
        _check_url_scheme(ref, field)
    elif not Path(ref).expanduser().exists():
        raise FieldProblem(field, f"{ref!r} does not exist (relative paths resolve against {os.getcwd()})")


# Families whose architecture the pinned vLLM (requirements/cpu.lock, requirements/gpu.lock) cannot run, and why.
# Importing vLLM's model registry takes seconds, too slow for a config check; tests/test_config.py checks this table
# against the installed vLLM's registry, so an upgrade that changes it fails there.
VLLM_UNSUPPORTED_FAMILIES = {
    "mllama": "vLLM dropped Mllama (MllamaForConditionalGeneration) after 0.10.2, and its Transformers fallback fails "
              "at engine start",
}
# Qwen2-VL's image bounds in AdaMLLM's official evaluation: an image is resized to hold between these many pixels.
QWEN2_VL_MIN_PIXELS = 224 * 224
QWEN2_VL_MAX_PIXELS = 1280 * 28 * 28


def min_pixels_field() -> Any:
    return Field(QWEN2_VL_MIN_PIXELS, ge=1, description="qwen2-vl only: images are upscaled to at least this many "
                 "pixels (224x224 in AdaMLLM's evaluation); null keeps the processor's own bound.")


def max_pixels_field() -> Any:
    return Field(QWEN2_VL_MAX_PIXELS, ge=1, description="qwen2-vl only: images are downscaled to at most this many "
                 "pixels (1280x28x28, i.e. 1280 image tokens, in AdaMLLM's evaluation); null keeps the processor's "
                 "own bound.")


class ImageBounds:
    """Qwen2-VL / Qwen2.5-VL image resizing, for the sections that load a model (other families' processors fix the
    image size themselves). The sections declare `min_pixels` and `max_pixels` with the two field functions above."""

    def processor_kwargs(self) -> dict[str, int]:
        """The bounds as the processor takes them: only for qwen2-vl, and only those set."""
        if self.family != "qwen2-vl":
            return {}
        return {key: value for key in ("min_pixels", "max_pixels") if (value := getattr(self, key)) is not None}

    def _check_pixel_bounds(self) -> None:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise FieldProblem("min_pixels", f"{self.min_pixels} exceeds max_pixels ({self.max_pixels})")


# A field marked SPEED_ONLY changes how fast, or on which hardware, a stage runs, never what it writes: stage
# fingerprints leave it out, so a run resumed with another value continues its partial state. This mark is the one list.
SPEED_ONLY: dict[str, Any] = {"speed_only": True}


def speed_field(*args: Any, **kwargs: Any) -> Any:
    """A pydantic Field marked SPEED_ONLY."""
    return Field(*args, json_schema_extra=SPEED_ONLY, **kwargs)


def speed_only_fields(section: type[BaseModel]) -> frozenset[str]:
    """The names of a section's fields marked SPEED_ONLY."""
    return frozenset(name for name, field in section.model_fields.items()
                     if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("speed_only"))


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClusterConfig(Section):
    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto', 'ray://host:10001', or null to start a local Ray on this machine.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs of a LOCAL Ray (ignored when joining a cluster). On small machines set it above the "
        "core count (e.g. 4 on 2 cores) so actor pools do not starve the read tasks.",
    )
    temp_dir: str | None = Field(None, description="Local Ray's session directory (default: Ray's own).")
    runtime_env: str | None = Field(
        None, description="Path to a runtime_env YAML applied to every task and actor (e.g. cluster/runtime_env.yaml)."
    )
    forward_env: list[str] = Field(
        default_factory=list,
        description="Names of environment variables passed from the driver's environment to every Ray worker of the "
        "run (through Ray's key-value store, which is not logged, unlike runtime_env env_vars): secrets such as "
        "HF_TOKEN (gated models) or cloud credentials the nodes do not have themselves. Each must be set where the "
        "config is checked. Only names go in a config, never values.",
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        if self.runtime_env:
            _check_file_ref(self.runtime_env, "runtime_env")
        unset = [name for name in self.forward_env if not os.environ.get(name)]
        if unset:
            raise FieldProblem("forward_env", f"{', '.join(unset)} not set in this environment")
        return self


class DataConfig(Section):
    path: str = Field(description="Input data set: a folder, a file, a glob, or an fsspec URL (s3://, gs://, hf://).")
    format: Literal["parquet", "jsonl", "webdataset", "hf_disk"] = Field(
        description="How the data set is stored. 'jsonl' reads .jsonl and .json files: JSON Lines or one JSON array, "
        "with records flat, in the release's ShareGPT shape (images + messages) or LLaVA's conversation shape "
        "(image + conversations).")
    min_image_side: int = Field(28, ge=1, description="Images with a shorter side are quarantined (too_small).")
    max_image_side: int = Field(16384, ge=1, description="Images with a longer side are quarantined (too_large).")
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="Pixel-count bound against decompression bombs (Pillow's default)."
    )
    max_caption_chars: int = Field(8192, ge=1, description="Longer captions are quarantined (caption_too_long).")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_image_side > self.max_image_side:
            raise FieldProblem("min_image_side", f"{self.min_image_side} exceeds max_image_side ({self.max_image_side})")
        if is_url(self.path):
            _check_url_scheme(self.path, "path")
        elif not any(ch in self.path for ch in "*?["):
            _check_file_ref(self.path, "path")
        return self


class EngineConfig(Section, ImageBounds):
    """An inference engine and the Ray actor pool that holds it (synthesizer, consistency judge, evaluation)."""

    model: str = Field(description="Hub id, local path (./...), or for backend 'openai' the served model name.")
    family: FamilyName = Field(description="Prompt format of the model family.")
    backend: InferenceBackend = Field("vllm", description="vllm (CUDA or CPU build), transformers, or openai (HTTP).")
    device: Device = Field("cuda", description="Where the engine runs; 'cpu' for vLLM's CPU build or CPU torch.")
    base_url: str | None = Field(None, description="OpenAI-compatible server URL (backend 'openai' only).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the server's API key.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    concurrency: int = speed_field(1, ge=1, description="Actors in the pool (engine replicas).")
    num_gpus: float = speed_field(0, ge=0, description="GPUs per actor (tensor_parallel_size is taken from it).")
    num_cpus: float = speed_field(1, gt=0, description="CPUs per actor; fractional values let small machines "
                                  "oversubscribe.")
    resources: dict[str, float] = speed_field(
        default_factory=dict,
        description="Custom Ray resources per actor, to pin the pool to a node group (e.g. {synthesis_node: 1}; "
        "the cluster manifests in cluster/ declare them).",
    )
    batch_size: int = speed_field(
        32,
        ge=1,
        description="Rows per actor call. The engine's scheduler takes requests from every batch in flight "
        "(max_concurrent_batches), so the batch size no longer decides how busy it is; it sets how many rows a "
        "retry repeats and how often progress is committed.",
    )
    max_concurrent_batches: int | None = speed_field(
        None,
        ge=1,
        description="Batches in flight per actor (backends vllm and openai): while one batch waits for its longest "
        "answer, the others keep the engine's scheduler full. Null: four times what fills vLLM's scheduler (256 "
        "sequences, its default max_num_seqs), plus one batch: ceil(1024 / batch_size) + 1 (17 for batches of 64), "
        "since a batch keeps its place until its longest answer ends. Each actor then holds about 1,000 requests' "
        "processed images; lower it where host memory is short. More queues rows on one actor while another idles at "
        "the start and end of a stream (a stream of fewer batches than actors x this may run on one actor). The "
        "transformers backend runs one batch at a time whatever this says.",
    )
    max_tokens: int | None = Field(
        None, ge=1,
        description="Generation budget per request; null gives each stage its own, as in AdaMLLM's release: the "
        "synthesizer 512, the judge 2, evaluation each task's (1024; 256 for Food101, FoodSeg103 and Nutrition5K). "
        "A number caps it (small models, smoke runs).")
    temperature: float = Field(0.0, ge=0, description="0 = greedy, as in the paper.")
    max_model_len: int | None = Field(None, ge=16, description="Context length cap (vLLM).")
    kv_cache_gib: float | None = speed_field(
        None,
        gt=0,
        description="KV cache size for vLLM's CPU build (GiB). Required there: its default reserves most of a NUMA "
        "node and start-up fails on small machines.",
    )
    gpu_memory_utilization: float = speed_field(0.9, gt=0, le=1,
                                                description="vLLM on CUDA: share of GPU memory to use.")
    enforce_eager: bool = speed_field(
        False, description="vLLM: skip graph capture and compilation; starts much faster, generates somewhat slower."
    )
    cpu_threads_bind: str | None = speed_field(
        None,
        description="vLLM CPU build: cores this pool's engines run on, e.g. '0' or '0-3,6' (the engine's process and "
        "threads are pinned there and it runs one thread per core), so the synthesizer and the judge do not share a "
        "core.",
    )
    output_length: OutputLength = Field(
        "natural",
        description="Benchmarks only (backends vllm and transformers). 'natural': the model's end-of-sequence and "
        "stop strings end an answer. The others force every answer to an exact length, so runs of random-weight "
        "models do equal work: 'max_tokens' its budget; 'uniform_32_512' a length drawn uniformly from 32-512 "
        "tokens (the synthesizer's regime); 'long_tail' mostly short answers with some long ones (80% 1-16 tokens, "
        "15% 17-128, 5% 129-1024; evaluation's regime). Drawn from each request's row id, so every run and every "
        "baseline gets the same lengths; capped at the request's budget.",
    )
    min_pixels: int | None = min_pixels_field()
    max_pixels: int | None = max_pixels_field()

    def batches_in_flight(self) -> int:
        """Batches one actor of this engine works on at once (max_concurrent_batches, or its default)."""
        if self.backend == "transformers":
            return 1
        if self.max_concurrent_batches is not None:
            return self.max_concurrent_batches
        return -(-SCHEDULER_SEQUENCES * REQUESTS_IN_FLIGHT_PER_SEQUENCE // self.batch_size) + 1

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.device == "cpu" and self.num_gpus > 0:
            raise FieldProblem("num_gpus", f"is {self.num_gpus} but device is 'cpu'; set num_gpus: 0 or device: cuda")
        if self.device == "cuda" and self.backend != "openai" and self.num_gpus == 0:
            raise FieldProblem("num_gpus", "device 'cuda' needs num_gpus > 0 per actor")
        if self.backend == "openai":
            if not self.base_url:
                raise FieldProblem("base_url", "backend 'openai' needs the server's URL")
            if self.num_gpus > 0:
                raise FieldProblem("num_gpus", "backend 'openai' calls a server; its actors need num_gpus: 0")
        elif self.base_url:
            raise FieldProblem("base_url", f"is only used by backend 'openai' (backend is {self.backend!r})")
        if self.cpu_threads_bind is not None:
            if self.device != "cpu" or self.backend != "vllm":
                raise FieldProblem("cpu_threads_bind", "only applies to backend 'vllm' on device 'cpu'")
            core_ids(self.cpu_threads_bind)
        if self.output_length != "natural" and self.backend == "openai":
            raise FieldProblem("output_length", "is only honoured by backends 'vllm' and 'transformers'")
        if self.backend == "vllm" and self.family in VLLM_UNSUPPORTED_FAMILIES:
            raise FieldProblem("backend", f"'vllm' cannot run family {self.family!r}: "
                               f"{VLLM_UNSUPPORTED_FAMILIES[self.family]}; use backend: transformers")
        self._check_pixel_bounds()
        if self.backend == "vllm" and self.device == "cpu" and self.kv_cache_gib is None:
            raise FieldProblem("kv_cache_gib", "vLLM on CPU needs it (its default reservation fails on small machines)")
        _check_model_ref(self.model, "model")
        return self


class SynthesisConfig(Section):
    synthesizer: Literal["model", "rule_based"] = Field(
        "model", description="'model' runs the MLLM synthesizer; 'rule_based' is the paper's template baseline."
    )
    engine: EngineConfig | None = Field(None, description="The synthesizer model (required when synthesizer: model).")
    prompt_format: Literal["adamllm", "family"] = Field(
        "adamllm",
        description="'adamllm' speaks the released AdaMLLM synthesizer's format; 'family' renders the same "
        "conversation in the engine's model family format (for synthesizers you tuned yourself).",
    )
    seed: int = Field(
        0, description="Seed of the rule-based templates and of compose's draws (instruction template and task kind)."
    )
    lenient_parse: bool = Field(
        False,
        description="Departure from the release. Off (the release's parser): a question counts only when its user turn "
        "starts with the exact hint line ('Answer with a precise response.' + newline), questions under the two hints "
        "match only when identical, a question repeated under one hint keeps its LAST answer, and the output's last "
        "turn is dropped unless the output ends with the end-of-turn token. On: hints in any case or spacing, before "
        "or after the question; questions matched ignoring case and spacing; a repeated question keeps its FIRST "
        "answer; a complete last turn counts; stray special tokens are removed from the text.",
    )
    keep_pairs_without_task: bool = Field(
        False,
        description="Departure from the release. Off (the release): a pair whose synthesizer output yields no task (no "
        "question under both hints, a failed request) gives no training example at all, caption included; it is "
        "counted in the manifest's rows_dropped under its reason. On: it still gives its caption-only example. (A "
        "task the judge drops keeps its caption example either way, as released.)",
    )

    @model_validator(mode="after")
    def _check(self) -> SynthesisConfig:
        if self.synthesizer == "model" and self.engine is None:
            raise FieldProblem("engine", "synthesizer 'model' needs an engine section")
        return self


class FilterConfig(Section):
    enabled: bool = Field(True, description="Keep only tasks the judge labels consistent (the paper's filter).")
    judge: Literal["llm", "lexical"] = Field(
        "llm", description="'llm' asks a text LLM (the paper's route); 'lexical' is a cheap word-overlap heuristic."
    )
    engine: EngineConfig | None = Field(
        None,
        description="The judge model (required when judge: llm). It decodes greedily (temperature 0) and writes at "
        "most 2 tokens, as released.",
    )
    lenient_label: bool = Field(
        False,
        description="Departure from the release. Off (the release): a task is kept only when the judge's output, "
        "stripped and lower-cased, is exactly 'yes' ('Yes.' or 'yes it' drop the task as unparseable). On: the first "
        "of the words yes / no / open anywhere in the output is the label.",
    )

    @model_validator(mode="after")
    def _check(self) -> FilterConfig:
        if self.enabled and self.judge == "llm" and self.engine is None:
            raise FieldProblem("engine", "judge 'llm' needs an engine section")
        if self.engine is not None and self.engine.temperature != 0:
            raise FieldProblem("engine.temperature", "the judge decodes greedily, as released: leave it at 0")
        return self


SYNTHESIZER_TUNING_EPOCHS = 2


class TrainingConfig(Section, ImageBounds):
    task: Literal["target", "synthesizer"] = Field(
        "target", description="'target' post-trains the MLLM; 'synthesizer' tunes an MLLM into a task synthesizer."
    )
    model: str = Field(description="Model to train: hub id or local path.")
    family: FamilyName = Field(description="Model family (chat template, collation).")
    dataset: str | None = Field(
        None,
        description="Training data: a Parquet instruction set (default: the run's synthesis/instructions), a "
        "LLaMA-Factory JSON file, or for task 'synthesizer' a seed-task Parquet set.",
    )
    dataset_format: Literal["parquet", "llama_factory"] = Field("parquet", description="How `dataset` is stored.")
    mixture: Literal["single_stage", "two_stage", "caption_only", "synthetic_only"] = Field(
        "single_stage", description="Training mixture; single_stage is the paper's method, the rest its ablations."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on clusters).")
    use_gpu: bool = Field(True, description="One GPU per worker; false trains on CPU with gloo.")
    cpus_per_worker: float = speed_field(1, gt=0, description="CPUs reserved per training worker.")
    worker_resources: dict[str, float] = speed_field(
        default_factory=dict,
        description="Custom Ray resources per training worker, to place workers on a node group (e.g. "
        "{training_node: 1}).",
    )
    deepspeed_config: str = Field("./configs/deepspeed/zero2.json", description="DeepSpeed JSON (ZeRO stage etc.).")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 on GPUs; fp32 on CPU.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate of the projector and language model.")
    vision_learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate of the vision encoder (default: learning_rate)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up before cosine decay.")
    epochs: int = Field(
        1,
        ge=1,
        description="Passes over the training data. Default 1 for task 'target' (the paper) and 2 for task "
        "'synthesizer' (the release's tuning script).",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    global_batch_size: int = Field(128, ge=1, description="Examples per optimizer step across all workers.")
    micro_batch_size: int = Field(1, ge=1, description="Examples per worker per forward pass.")
    max_length: int = Field(6144, ge=16, description="Token budget per example; longer text is truncated, images kept.")
    checkpoint_every: int = speed_field(100, ge=1, description="Optimizer steps between checkpoints.")
    log_every: int = speed_field(1, ge=1, description="Optimizer steps between metric lines (stdout and metrics.csv).")
    max_failures: int = speed_field(
        3, ge=-1,
        description="Times Ray Train restarts the workers after one dies (its process or its node); each restart "
                    "resumes from the last checkpoint, so steps since it are trained again. -1: no limit; 0: the "
                    "first death fails the run (running the command again then resumes).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory (large models).")
    fused_adam: bool = Field(
        False,
        description="GPUs: DeepSpeed's FusedAdam instead of torch's AdamW. Faster steps, but it compiles a CUDA kernel "
        "when training starts, which needs a CUDA toolkit matching torch's in the image (cluster/README.md).",
    )
    min_pixels: int | None = min_pixels_field()
    max_pixels: int | None = max_pixels_field()
    blank_image_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Synthesizer tuning: share of seed-task rows whose image is replaced by the blank image (a white "
        "237x150 JPEG, as released).",
    )
    dev_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Synthesizer tuning: share of each seed task held out as the dev split and never trained on (the "
        "release holds out 10% of each seed task and does not evaluate on it during tuning). A seed task is the rows "
        "sharing a `task_name` (rows without one are one task); its rows are shuffled with the run's seed and the "
        "first int(n x (1 - dev_fraction)) are trained on, truncating as the release does, so a task of 20 rows "
        "holds out 2 and one of 15 also 2; engine.training.mixture.dev_ids tells which rows are dev.",
    )
    seed: int = Field(0, description="Seed of the mixture order, blank images and weight init of new layers.")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Synthesizer tuning trains 2 epochs unless the section says otherwise (scripts/tune_synthesizer.sh)."""
        if isinstance(data, dict) and data.get("task") == "synthesizer":
            return {"epochs": SYNTHESIZER_TUNING_EPOCHS, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        _check_model_ref(self.model, "model")
        _check_file_ref(self.deepspeed_config, "deepspeed_config")
        if self.dataset:
            _check_file_ref(self.dataset, "dataset")
        self._check_pixel_bounds()
        if self.fused_adam and not self.use_gpu:
            raise FieldProblem("fused_adam", "DeepSpeed's FusedAdam is a CUDA kernel; set use_gpu: true")
        if not self.use_gpu and self.precision == "bf16":
            raise FieldProblem("precision", "'bf16' needs GPUs; use precision: fp32 with use_gpu: false")
        per_step = self.num_workers * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise FieldProblem(
                "global_batch_size",
                f"{self.global_batch_size} must be a multiple of num_workers x micro_batch_size "
                f"({per_step}) so gradient accumulation is a whole number"
            )
        return self


class BenchmarkConfig(Section):
    task: str = Field(description="Task name (e.g. slake, food101, demo_vqa); decides prompt, max_tokens and metric.")
    path: str | None = Field(None, description="Local copy of the benchmark; null reads the task's hub data set.")
    format: Literal["parquet", "jsonl", "hf_disk"] = Field("parquet", description="How the local copy is stored.")
    limit: int | None = Field(None, ge=1, description="Score only the first N examples (smoke runs).")

    @model_validator(mode="after")
    def _path_exists(self) -> BenchmarkConfig:
        if self.path:
            _check_file_ref(self.path, "path")
        return self


class EvaluationConfig(Section):
    benchmarks: list[BenchmarkConfig] = Field(min_length=1, description="Benchmarks to score every model on.")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Extra models to score, name -> hub id or path. `adapt run` adds 'base' (training.model) and "
        "'adapted' (the trained model).",
    )
    engine: EngineConfig = Field(description="Inference engine settings; its `model` is replaced per scored model.")


class RunConfig(Section):
    """A whole run: every stage reads its own section; `adapt run` chains them in one run directory."""

    output_dir: str = Field(description="Run directory (local path or fsspec URL); one sub-folder per stage.")
    seed: int = Field(0, description="Global seed.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Where Ray runs.")
    data: DataConfig = Field(description="The image-caption data set.")
    synthesis: SynthesisConfig = Field(description="How tasks are synthesized from each pair.")
    filter: FilterConfig = Field(description="The consistency filter over synthesized tasks.")
    synthesizer_tuning: TrainingConfig | None = Field(
        None,
        description="Tune a model into the task synthesizer on seed tasks first (task 'synthesizer', dataset a "
        "seed-task set); synthesis then runs the tuned model in place of synthesis.engine.model.",
    )
    training: TrainingConfig | None = Field(None, description="Post-training (needed by `adapt train` and `run`).")
    evaluation: EvaluationConfig | None = Field(
        None, description="Benchmarks and inference settings (needed by `adapt evaluate` and `run`)."
    )

    @model_validator(mode="after")
    def _check_output_dir(self) -> RunConfig:
        if is_url(self.output_dir):
            _check_url_scheme(self.output_dir, "output_dir")
        return self

    @model_validator(mode="after")
    def _check_tuning(self) -> RunConfig:
        tuning = self.synthesizer_tuning
        if tuning is None:
            return self
        if tuning.task != "synthesizer":
            raise FieldProblem("synthesizer_tuning.task", f"must be 'synthesizer', got {tuning.task!r}")
        if tuning.dataset is None:
            raise FieldProblem("synthesizer_tuning.dataset", "synthesizer tuning needs a seed-task Parquet set")
        if self.synthesis.synthesizer != "model":
            raise FieldProblem("synthesis.synthesizer", "a tuned synthesizer needs synthesizer 'model'")
        return self

    def with_absolute_paths(self) -> RunConfig:
        """The same config with every local path absolute, as stage drivers hand it to Ray workers."""
        tree = self.model_dump()
        tree["output_dir"] = absolute(tree["output_dir"], path=True)
        tree["data"]["path"] = absolute(tree["data"]["path"], path=True)
        for section in ("synthesis", "filter", "evaluation"):
            engine = (tree.get(section) or {}).get("engine")
            if engine:
                engine["model"] = absolute(engine["model"])
        for section in ("synthesizer_tuning", "training"):
            if tree.get(section):
                tree[section]["model"] = absolute(tree[section]["model"])
                for key in ("deepspeed_config", "dataset"):
                    tree[section][key] = tree[section][key] and absolute(tree[section][key], path=True)
        if tree.get("evaluation"):
            for benchmark in tree["evaluation"]["benchmarks"]:
                benchmark["path"] = benchmark["path"] and absolute(benchmark["path"], path=True)
            tree["evaluation"]["models"] = {name: absolute(ref) for name, ref in tree["evaluation"]["models"].items()}
        return RunConfig.model_validate(tree)

    def fingerprint(self) -> str:
        """Short hash of the resolved config, recorded in every manifest so outputs name what made them."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Set `a.b.c=value` in a nested dict. The value is parsed as YAML, so `4`, `true`, `null`, `[a, b]` keep types."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"command line: override {assignment!r} is not of the form key.sub=value")
    parts = key.strip().split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"command line: override {assignment!r}: {prefix} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"command line: override {assignment!r}: value is not valid YAML ({err})") from err


def _format_errors(err: ValidationError, source: str, overridden: set[str]) -> str:
    lines = []
    for item in err.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if _FIELD_SEPARATOR in message:
            field, message = message.split(_FIELD_SEPARATOR, 1)
            path = f"{path}.{field}" if path else field
        path = path or "(top level)"
        # An unknown section named on the command line ("nope.x=1") is reported at the section ("nope").
        unknown = item["type"] == "extra_forbidden"
        from_command_line = any(key == path or (unknown and key.startswith(path + ".")) for key in overridden)
        where = "command line" if from_command_line else source
        if unknown:
            message = "unknown key"
        elif "input" in item and item["type"] != "missing" and not isinstance(item["input"], dict):
            message += f" (got {item['input']!r})"
        lines.append(f"{where}: {path}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply `key.sub=value` overrides, validate. Raises ConfigError naming field and file."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(tree).__name__}")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        overridden = {assignment.partition("=")[0].strip() for assignment in overrides}
        raise ConfigError(_format_errors(err, str(path), overridden)) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (defaults filled in), as `adapt check-config` prints it."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
