"""Benchmarks of the engine against the loops users would otherwise write, as ratios measured in one run.

    python tools/bench.py --quick                                  # 10 min on README's box A, 23 on box B
    python tools/bench.py                                          # larger inputs: 37 min on box A, over an hour on box B
    python tools/bench.py --only resume_work,memory_10x_vs_1x      # a subset
    python tools/bench.py --quick --only synthesis_variable_b64 synthesis.engine.max_concurrent_batches=4   # a setting

Each figure is one line on stdout, `BENCH <name> value=<v> baseline=<b> ratio=<r>`; details (seconds, token rates,
where the time went) go to stderr as `# ` lines. The inputs are built offline into a work folder by the project's own
tools (demo pairs and benchmark by tools/make_demo_data.py, tiny random-weight models by tools/make_tiny_models.py).
Engine commands run as `adapt VERB configs/demo.yaml OVERRIDES`, each in its own process session with its own local
Ray, and are timed from process start to exit, interpreter, Ray and engine start-up included, as a user waits for
them; baselines are timed the same way unless said otherwise. Overrides given on the command line apply to the engine
commands and to the baselines (which read their model and token settings from the same config).

Equal work: a random-weight model stops at random points, so every engine and every baseline generates exactly the
length EngineConfig.output_length forces on each request, drawn from its row id (engine.models.backends.base
.forced_length; min_tokens / min_new_tokens in the loops). Two regimes, VARIABLE and FIXED: in the variable one the
synthesizer's answers are uniform over 32-512 tokens and evaluation's a long tail (80% 1-16 tokens, 15% 17-128, 5% up
to 1024), as users see them; in the fixed one every answer takes its whole budget (the synthesizer 512, evaluation
FIXED_EVALUATION_TOKENS), the only regime where a synchronous batch loses nothing to its longest answer. The judge
always writes its 2 tokens. The tiny synthesizer never writes a parseable task, so the judge starts but judges nothing,
in the pipeline and the loops alike. Threads are every library's default on both sides; each command's detail line
says how busy the rest of the machine was, and warns when that makes its figures untrustworthy (QUIET_CORES). On top
of configs/demo.yaml the engine runs the model route (MODEL_ROUTE) with ENGINE_TUNING, the pool settings measured
best on 2 cores. Input sizes: QUICK and FULL.

synthesis_variable_b64   input pairs/s of `adapt synthesize` (read, validate, synthesizer pool, judge pool, compose,
    Parquet, finalize) with synthesizer batches of 64 (the GPU recipes') / the same of a hand-written single-process
    loop: one vLLM engine, every prompt in one `LLM.generate` call, parse, then a judge engine over the parsed tasks.
    The variable regime; `fixed_*` columns give the fixed one. Output tokens/s of both on stderr.
synthesis_variable_b256  the same with batches of 256.
synthesis_vs_hf_loop     input pairs/s of the fixed-regime batches-of-256 `adapt synthesize` run / the same of a naive
    loop calling transformers' `generate` once per pair (then once per parsed task with the judge). It runs on the
    first `hf_pairs` pairs only (it takes seconds per pair) and is timed over its generation alone, model loading
    excluded, which flatters it.
memory_10x_vs_1x         peak summed resident memory (RSS, GiB) of every process of an `adapt synthesize` session
    (driver, Ray's daemons and workers, engine actors), sampled every RSS_SAMPLE_S: value = the run above on `pairs`
    pairs, baseline = the same settings on a tenth of them; ratio 10x/1x. A page shared between processes (Ray's
    object store, libraries) counts once per process, so the sums are upper bounds; the ratio is what the figure is for.
resume_work              rows processed / rows in for a synthesis of `resume_pairs` pairs (64-token tasks, batches of
    RESUME_BATCH, one in flight per actor) killed with SIGKILL to its process group once half its rows are written,
    then run again. Rows processed = the rows the killed run wrote (its `_rows` files) + the restarted run's
    `rows_processed_this_run`; 1.0 means no row was processed twice. Rows inside the engine pools at the kill are
    lost work that no file shows.
evaluation_variable_multitask  benchmark rows/s of `adapt evaluate` (the base model on the demo benchmark scored as
    MULTITASK's four tasks: tables, one actor pool for all of them, batches of 64, predictions, scores, report) / a
    hand-written loop over the same rows: same prompts and lengths, every prompt of every task in one `LLM.generate`
    call, scored with the same metrics. The variable regime; `fixed_*` columns give the fixed one. Stderr counts the
    engine starts.
training_ray_vs_plain    training samples/s of `adapt train` (Ray Train, 2 CPU workers, DeepSpeed ZeRO-2 from
    configs/deepspeed/zero2.json) / a single-process PyTorch loop without Ray or DeepSpeed: same tiny model, same
    examples through the engine's mixture and collator, same micro-batch, global batch and steps, AdamW, the model
    saved at the end. The instruction set comes from an untimed rule-based synthesis. Stderr splits both into
    start-up and steps (the engine's steps from its metrics.csv).
engine_feed_vs_single_call  output tokens/s of the engine's vLLM backend fed the synthesizer's requests (variable
    lengths) in batches of 64, as many in flight as an engine actor takes (EngineConfig.batches_in_flight) / one
    `LLM.generate` call over the same requests: one process, no Ray, generation only. Stderr adds the same batches one
    after another, as the engine ran them before. Not in the default set.
scale_100k_vs_10k        peak RSS of the `adapt synthesize` driver process on SCALE_PAIRS demo pairs (rule-based
    synthesizer, lexical judge: the engine's own work, no model) / the same on a tenth of them. Not in the default set
    (`--only scale_100k_vs_10k`; the same sizes with or without --quick). Stderr: the session's summed peak RSS, pairs/s,
    finalize seconds, Parquet files per published set and bytes on disk per pair, by folder, for both sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
ADAPT = str(Path(sys.executable).with_name("adapt"))
# The baselines run vLLM inside their own process, as the engine's actors do (engine.runtime): it starts faster.
BASELINE_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# Threads are the libraries' defaults on both sides, as a user's would be. A process running two OpenMP threads on
# 2 cores slows down 10x or more as soon as another process takes a core (its barriers spin while a thread waits for
# the core), so a figure is only trusted when the rest of the machine stayed below this many busy cores.
QUIET_CORES = 0.25

SYNTHESIZER_TOKENS = 512  # the released synthesizer's budget (engine.synthesis.prompts.MAX_NEW_TOKENS)
SHORT_SYNTHESIZER_TOKENS = 64  # configs/demo.yaml's: resume depends on rows, not on answer length
# Answer lengths (EngineConfig.output_length, drawn per row id, the same in the engine and the loops): the
# variable-length regime users see, and the fixed one where every answer takes its whole budget.
VARIABLE = {"synthesis": "uniform_32_512", "filter": "max_tokens", "evaluation": "long_tail"}
FIXED = {section: "max_tokens" for section in VARIABLE}
# Evaluation answers: the tasks' own budgets (1024 tokens) in the variable regime, 64 in the fixed one, where every
# answer takes all of it. The multitask figure scores the demo benchmark as these tasks too: VQA-RAD, SLAKE and
# PathVQA read the same columns (image, question, answer, OPEN/CLOSED).
FIXED_EVALUATION_TOKENS = 64
MULTITASK = ("demo_vqa", "vqa_rad", "slake", "pathvqa")
REGIMES = {"variable": VARIABLE, "fixed": FIXED}
EVALUATION_CONTEXT = 2048  # a prompt and the longest drawn answer (1024 tokens)
RESUME_BATCH = 32
# Engine settings on top of configs/demo.yaml: two actors per model pool, which Ray runs with one OpenMP thread each
# (num_cpus < 1), against the loop's one process with two. Two one-thread vLLM processes generate 1.6x what one
# two-thread process does (768 pairs in 9.0 s against 384 in 7.3 s, 32-512-token answers, 2026-12-07), as much of a
# tiny model's decode step is single-threaded Python. Synthesis batches of 256 where a figure does not set its own
# (vLLM's CPU default for running sequences); evaluation batches of 64, the recipes'.
ENGINE_TUNING = ("synthesis.engine.concurrency=2", "synthesis.engine.batch_size=256",
                 "evaluation.engine.concurrency=2", "evaluation.engine.batch_size=64")
# The work measured, whatever configs/demo.yaml's route is: synthesis and judging by models, one training epoch.
MODEL_ROUTE = ("synthesis.synthesizer=model", "filter.enabled=true", "filter.judge=llm", "training.epochs=1",
               "training.max_steps=null")
SCALE_PAIRS = 100_000
RULE_BASED = ("synthesis.synthesizer=rule_based", "filter.judge=lexical")
RSS_SAMPLE_S = 0.5
COMMAND_TIMEOUT_S = 1800
GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Sizes:
    pairs: int  # synthesis inputs of the throughput figures and the 10x of memory: 256-pair batches, as many per actor
    hf_pairs: int  # the prefix the per-pair transformers loop runs
    resume_pairs: int  # enough batches of RESUME_BATCH that the kill lands between two commits
    benchmark_rows: int  # evaluation
    training_pairs: int  # training examples: a multiple of the global batch (8), so both sides train on all of them


QUICK = Sizes(pairs=384, hf_pairs=4, resume_pairs=256, benchmark_rows=384, training_pairs=96)
FULL = Sizes(pairs=9216, hf_pairs=32, resume_pairs=1024, benchmark_rows=16000, training_pairs=800)


# ---------------------------------------------------------------------------------------------------------- reporting


def figure(name: str, value: float, baseline: float, fixed: tuple[float, float] | None = None) -> str:
    """The one line a figure prints; `fixed` is the engine's and the baseline's value in the fixed-length regime, a
    second column beside the variable-length one."""
    line = f"BENCH {name} value={value:.3f} baseline={baseline:.3f} ratio={value / baseline:.3f}"
    if fixed:
        line += f" fixed_value={fixed[0]:.3f} fixed_baseline={fixed[1]:.3f} fixed_ratio={fixed[0] / fixed[1]:.3f}"
    return line


def detail(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def require_equal_work(engine_tokens: int, engine_rows: int, baseline_tokens: int, baseline_rows: int) -> None:
    """A throughput ratio means something only if both sides generated the same tokens per input."""
    if engine_tokens * baseline_rows != baseline_tokens * engine_rows:
        raise RuntimeError(f"unequal work: the engine generated {engine_tokens} tokens for {engine_rows} inputs, the "
                           f"baseline {baseline_tokens} for {baseline_rows}")


# ------------------------------------------------------------------------------------------------ processes and memory


def in_session(process: psutil.Process, leader: int) -> bool:
    """Whether the process belongs to the session `leader` started: a command started with start_new_session=True
    leads its own session, and Ray's daemons and workers stay in it even when they are re-parented."""
    try:
        return os.getsid(process.pid) == leader
    except OSError:  # gone since it was listed
        return False


def session_processes(leader: int) -> list[psutil.Process]:
    return [process for process in psutil.process_iter() if in_session(process, leader)]


def summed_rss(processes: Iterable[psutil.Process]) -> int:
    """Resident bytes of the processes still alive."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def cpu_seconds(processes: Iterable[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds of each live process, by pid."""
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (guest time is already inside user time)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


class SessionWatch:
    """Samples a command's session while it runs: the peak of its summed RSS, the CPU seconds of its processes, and
    from those, how busy the rest of the machine was. Per-process CPU comes from the last sample, so a process's final
    half second is missed and counted as the rest of the machine's: an upper bound for that."""

    def __init__(self, leader: int):
        self.leader, self.peak_rss, self.leader_peak_rss, self.session_cpu = leader, 0, 0, {}
        self.started, self.machine_before = time.monotonic(), machine_busy_seconds()
        self.own_before = cpu_seconds([psutil.Process()])[os.getpid()]

    def sample(self) -> None:
        processes = session_processes(self.leader)
        self.peak_rss = max(self.peak_rss, summed_rss(processes))
        self.leader_peak_rss = max(self.leader_peak_rss, summed_rss(p for p in processes if p.pid == self.leader))
        self.session_cpu.update(cpu_seconds(processes))

    def background_cores(self) -> float:
        """Cores kept busy since the start by processes outside the session and this tool."""
        own = cpu_seconds([psutil.Process()])[os.getpid()] - self.own_before
        others = machine_busy_seconds() - self.machine_before - sum(self.session_cpu.values()) - own
        return max(0.0, others) / (time.monotonic() - self.started)


def kill_session(leader: int) -> None:
    """SIGKILL what is left of a session this tool started (normally nothing once its command has exited)."""
    for process in session_processes(leader):
        with contextlib.suppress(psutil.Error):
            process.kill()


@dataclasses.dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss: int  # summed over the session
    leader_peak_rss: int  # the command's own process (the driver)
    stdout: str


def run_command(command: list[str], log: Path, env: dict[str, str] | None = None) -> Run:
    """Run a command to its end in its own session (stdout kept, stderr to `log`): wall seconds and the peak of its
    session's summed RSS; says so on stderr, with how busy the rest of the machine was. Raises with the log's end if
    it fails."""
    out = log.with_suffix(".out")
    with log.open("w") as err_file, out.open("w") as out_file:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out_file,
                                   stderr=err_file, start_new_session=True)
        watch = SessionWatch(process.pid)
        try:
            while process.poll() is None:
                if time.monotonic() - started > COMMAND_TIMEOUT_S:
                    raise TimeoutError(f"{' '.join(command[:3])} ran over {COMMAND_TIMEOUT_S} s; log: {log}")
                watch.sample()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=RSS_SAMPLE_S)
            seconds = time.monotonic() - started
            others = watch.background_cores()
        finally:
            kill_session(process.pid)
    if process.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command[:3])} exited with {process.returncode}; {log} ends:\n{tail}")
    detail(f"{log.stem}: {seconds:.1f} s, peak RSS {watch.peak_rss / GIB:.2f} GiB; other processes kept "
           f"{others:.2f} of {os.cpu_count()} cores busy meanwhile")
    if others > QUIET_CORES:
        detail(f"WARNING: the machine was not quiet during {log.stem}; ratios that involve it are not trustworthy")
    return Run(seconds, watch.peak_rss, watch.leader_peak_rss, out.read_text())


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def written_rows(folder: Path) -> int:
    """Rows in the finished Parquet files of a folder (a file still being written has no footer yet and is skipped)."""
    import pyarrow.parquet as pq

    total = 0
    for path in folder.glob("*.parquet"):
        with contextlib.suppress(OSError, ValueError):
            total += pq.read_metadata(path).num_rows
    return total


# ------------------------------------------------------------------------------------------------------------- inputs


class Bench:
    """The inputs, built on first use under `work`, and the `adapt synthesize` run three figures share."""

    def __init__(self, work: Path, sizes: Sizes, overrides: list[str]):
        self.work, self.sizes, self.overrides = work, sizes, overrides
        self._data: dict[int, Path] = {}

    @functools.cached_property
    def models(self) -> Path:
        models = self.work / "models"
        subprocess.run([sys.executable, str(REPO / "tools/make_tiny_models.py"), "--out", str(models)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return models

    def data(self, pairs: int) -> Path:
        """Demo pairs (captions/) and benchmark (benchmark/); a smaller build is a prefix of a larger one."""
        if pairs not in self._data:
            data = self.work / f"data-{pairs}"
            subprocess.run([sys.executable, str(REPO / "tools/make_demo_data.py"), "--out", str(data), "--train",
                            str(pairs), "--benchmark", str(self.sizes.benchmark_rows), "--seed-tasks", "0",
                            "--no-real"], check=True, stdout=subprocess.DEVNULL)
            self._data[pairs] = data
        return self._data[pairs]

    def new_run(self, run: str, pairs: int, *settings: str, lengths: dict[str, str] = FIXED,
                tasks: tuple[str, ...] = MULTITASK[:1]) -> list[str]:
        """Overrides of configs/demo.yaml for a run on `pairs` pairs in an empty folder {work}/{run} (a --work folder
        may hold an earlier bench's runs, which the engine would skip as complete), with answer lengths `lengths`
        (VARIABLE or FIXED) and the demo benchmark scored as `tasks`."""
        shutil.rmtree(self.work / run, ignore_errors=True)
        data, vlm, judge = self.data(pairs), self.models / "tiny-qwen2-vl", self.models / "tiny-text-llm"
        benchmark = data / "benchmark" / "demo_vqa.parquet"
        evaluation_tokens = "null" if lengths is VARIABLE else FIXED_EVALUATION_TOKENS
        rows = self.sizes.benchmark_rows // len(tasks)  # the benchmark's rows, shared by the tasks
        benchmarks = ", ".join(f"{{task: {task}, path: {benchmark}, format: parquet, limit: {rows}}}" for task in tasks)
        return [
            f"data.path={data / 'captions'}", f"output_dir={self.work / run}",
            f"cluster.temp_dir={self.work / 'ray'}",  # this tool's Ray sessions apart from anyone else's
            f"synthesis.engine.model={vlm}", f"filter.engine.model={judge}", f"training.model={vlm}",
            f"evaluation.engine.model={vlm}", f"evaluation.benchmarks=[{benchmarks}]",
            *MODEL_ROUTE, *(f"{section}.engine.output_length={mode}" for section, mode in lengths.items()),
            f"synthesis.engine.max_tokens={SYNTHESIZER_TOKENS}", f"evaluation.engine.max_tokens={evaluation_tokens}",
            *ENGINE_TUNING, *settings, *self.overrides,
        ]

    def adapt(self, verb: str, run: str, config_args: list[str]) -> Run:
        return run_command([ADAPT, verb, str(DEMO_CONFIG), *config_args], self.work / f"{run}-{verb}.log")

    def baseline(self, name: str, run: str, config_args: list[str], limit: int | None = None) -> tuple[Run, dict]:
        """A baseline of BASELINES in its own process; its result is the JSON line it prints last."""
        command = [sys.executable, __file__, "--baseline", name, *(["--limit", str(limit)] if limit else []),
                   *config_args]
        run_ = run_command(command, self.work / f"{run}-{name}.log", BASELINE_PROCESS)
        return run_, last_json_line(run_.stdout)

    def manifest(self, run: str, stage: str) -> dict:
        return json.loads((self.work / run / stage / "manifest.json").read_text())

    @functools.cache
    def synthesis_run(self, batch_size: int, lengths_name: str) -> tuple[Run, dict, list[str]]:
        """`adapt synthesize` on `pairs` pairs with synthesizer batches of `batch_size` in the regime `lengths_name`
        ('variable' or 'fixed'), its manifest and its config overrides."""
        run_name = f"synthesis-b{batch_size}-{lengths_name}"
        config_args = self.new_run(run_name, self.sizes.pairs, f"synthesis.engine.batch_size={batch_size}",
                                   lengths=REGIMES[lengths_name])
        run = self.adapt("synthesize", run_name, config_args)
        manifest = self.manifest(run_name, "synthesis")
        timings = manifest["timings_s"]
        start_up = run.seconds - timings["stream"] - timings["finalize"]
        detail(f"adapt synthesize (batches of {batch_size}, {lengths_name} lengths): {manifest['rows_in']} pairs in "
               f"{run.seconds:.1f} s = start-up and shutdown {start_up:.1f} s (interpreter, Ray) + stream "
               f"{timings['stream']:.1f} s (engine start-up included) + finalize {timings['finalize']:.1f} s; "
               f"{manifest['output_tokens'] / run.seconds:.0f} output tokens/s")
        return run, manifest, config_args

    @property
    def synthesis(self) -> tuple[Run, dict, list[str]]:
        """The synthesis run the memory and transformers figures share: the recipes' batch size at its largest, every
        answer its whole budget (the per-pair transformers loop could not run the variable regime in its time)."""
        return self.synthesis_run(256, "fixed")

    @functools.cache
    def synthesis_loop(self, lengths_name: str) -> tuple[Run, dict]:
        """The single-call vLLM loop over the same pairs and answer lengths as synthesis_run (it has no batches)."""
        run_name = f"synthesis-loop-{lengths_name}"
        config_args = self.new_run(run_name, self.sizes.pairs, lengths=REGIMES[lengths_name])
        loop, result = self.baseline("vllm_synthesis", run_name, config_args)
        detail(f"vLLM loop ({lengths_name} lengths): {result['rows']} pairs in {loop.seconds:.1f} s (engine start-ups "
               f"{result['start_up_s']:.1f} s, generation {result['generate_s']:.1f} s); "
               f"{result['output_tokens'] / loop.seconds:.0f} output tokens/s")
        return loop, result


# ------------------------------------------------------------------------------------------------------------ figures


def synthesis_against_vllm_loop(bench: Bench, batch_size: int) -> str:
    """Pairs/s of `adapt synthesize` with batches of `batch_size` / the single-call vLLM loop's, in both regimes."""
    ratios = {}
    for lengths_name in REGIMES:
        run, manifest, _ = bench.synthesis_run(batch_size, lengths_name)
        loop, result = bench.synthesis_loop(lengths_name)
        require_equal_work(manifest["output_tokens"], manifest["rows_in"], result["output_tokens"], result["rows"])
        ratios[lengths_name] = (manifest["rows_in"] / run.seconds, result["rows"] / loop.seconds)
    return figure(f"synthesis_variable_b{batch_size}", *ratios["variable"], fixed=ratios["fixed"])


def synthesis_variable_b64(bench: Bench) -> str:
    return synthesis_against_vllm_loop(bench, 64)


def synthesis_variable_b256(bench: Bench) -> str:
    return synthesis_against_vllm_loop(bench, 256)


def synthesis_vs_hf_loop(bench: Bench) -> str:
    run, manifest, config_args = bench.synthesis
    _, result = bench.baseline("hf_synthesis", "synthesis", config_args, limit=bench.sizes.hf_pairs)
    require_equal_work(manifest["output_tokens"], manifest["rows_in"], result["output_tokens"], result["rows"])
    detail(f"transformers loop: {result['rows']} pairs in {result['generate_s']:.1f} s of generation "
           f"({result['generate_s'] / result['rows']:.1f} s per pair); "
           f"{result['output_tokens'] / result['generate_s']:.0f} output tokens/s")
    return figure("synthesis_vs_hf_loop", manifest["rows_in"] / run.seconds, result["rows"] / result["generate_s"])


def memory_10x_vs_1x(bench: Bench) -> str:
    ten_x, _, _ = bench.synthesis
    one_x = bench.adapt("synthesize", "memory-1x", bench.new_run("memory-1x", bench.sizes.pairs // 10))
    return figure("memory_10x_vs_1x", ten_x.peak_rss / GIB, one_x.peak_rss / GIB)


def resume_work(bench: Bench) -> str:
    pairs = bench.sizes.resume_pairs
    # Small batches: the stream commits rows a batch at a time, and the kill must land between commits.
    # Batches in flight one at a time, so they commit one after another (all at once they would finish together).
    config_args = bench.new_run("resume", pairs, f"synthesis.engine.max_tokens={SHORT_SYNTHESIZER_TOKENS}",
                                f"synthesis.engine.batch_size={RESUME_BATCH}",
                                "synthesis.engine.max_concurrent_batches=1")
    rows_dir = bench.work / "resume" / "synthesis" / "_rows"
    with (bench.work / "resume-killed.log").open("w") as log:
        killed = subprocess.Popen([ADAPT, "synthesize", str(DEMO_CONFIG), *config_args], cwd=REPO, stdout=log,
                                  stderr=log, start_new_session=True)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        try:
            while killed.poll() is None and written_rows(rows_dir) < pairs / 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)  # the driver's group: the Ray it started goes with it
            killed.wait()
            kill_session(killed.pid)
    written_before = written_rows(rows_dir)
    if not 0 < written_before < pairs:
        raise RuntimeError(f"the run was killed with {written_before} of {pairs} rows written, not in mid-stream")
    bench.adapt("synthesize", "resume", config_args)
    manifest = bench.manifest("resume", "synthesis")
    detail(f"resume: killed with {written_before} of {manifest['rows_in']} rows written; the restart processed "
           f"{manifest['rows_processed_this_run']}")
    return figure("resume_work", written_before + manifest["rows_processed_this_run"], manifest["rows_in"])


def engine_starts(log: Path, step: str) -> int:
    """Actor processes a command started for the engine step `step`, from the prefix Ray writes before everything
    such an actor prints (`(MapWorker(MapBatches(Predict)) pid=123)`): one engine each."""
    return len(set(re.findall(rf"\(MapWorker\(MapBatches\({step}\)\) pid=(\d+)\)", log.read_text(errors="replace"))))


def evaluation_variable_multitask(bench: Bench) -> str:
    """Rows/s of `adapt evaluate` (the base model, the MULTITASK tasks, one engine pool) / the single-call vLLM loop's
    over the same rows, in both regimes."""
    ratios = {}
    for lengths_name, lengths in REGIMES.items():
        run_name = f"evaluation-{lengths_name}"
        config_args = bench.new_run(run_name, bench.sizes.pairs,
                                    f"evaluation.engine.max_model_len={EVALUATION_CONTEXT}", lengths=lengths,
                                    tasks=MULTITASK)
        run = bench.adapt("evaluate", run_name, config_args)
        states = bench.manifest(run_name, "evaluation")["predictions"]["base"]
        rows = sum(state["rows"] for state in states.values())
        loop, result = bench.baseline("vllm_evaluation", run_name, config_args)
        starts = engine_starts(bench.work / f"{run_name}-evaluate.log", "Predict")
        detail(f"adapt evaluate ({lengths_name} lengths): {rows} rows of {len(states)} tasks in {run.seconds:.1f} s, "
               f"{starts} engine starts; vLLM loop: {result['rows']} rows in {loop.seconds:.1f} s (engine start-up "
               f"{result['start_up_s']:.1f} s, generation and scores {result['generate_s']:.1f} s)")
        if result["rows"] != rows:
            raise RuntimeError(f"unequal work: the engine answered {rows} rows, the loop {result['rows']}")
        ratios[lengths_name] = (rows / run.seconds, result["rows"] / loop.seconds)
    return figure("evaluation_variable_multitask", *ratios["variable"], fixed=ratios["fixed"])


def training_ray_vs_plain(bench: Bench) -> str:
    config_args = bench.new_run("training", bench.sizes.training_pairs, "training.log_every=1")
    bench.adapt("synthesize", "training", [*config_args, "synthesis.synthesizer=rule_based", "filter.judge=lexical"])
    run = bench.adapt("train", "training", config_args)
    with (bench.work / "training" / "training" / "metrics.csv").open() as file:
        metrics = list(csv.DictReader(file))  # one row per step (log_every=1)
    samples = sum(int(row["samples"]) for row in metrics)
    first, last = metrics[0], metrics[-1]
    first_s, loop_s = float(first["elapsed_s"]), float(last["elapsed_s"])  # since the workers' set-up ended
    later_samples = samples - int(first["samples"])
    plain, result = bench.baseline("plain_training", "training", config_args)
    detail(f"adapt train: {samples} samples in {run.seconds:.1f} s = {run.seconds - loop_s:.1f} s outside the "
           f"training loop (driver, Ray, Train workers, model and DeepSpeed set-up; last checkpoint, export, shutdown) "
           f"+ first step {first_s:.1f} s (the data stream starts) + {len(metrics) - 1} more steps in "
           f"{loop_s - first_s:.1f} s ({later_samples / (loop_s - first_s):.1f} samples/s)")
    detail(f"plain loop: {result['samples']} samples in {plain.seconds:.1f} s = "
           f"{plain.seconds - result['steps_s'] - result['save_s']:.1f} s start-up + {result['steps']} steps in "
           f"{result['steps_s']:.1f} s ({result['samples'] / result['steps_s']:.1f} samples/s) + save "
           f"{result['save_s']:.1f} s")
    return figure("training_ray_vs_plain", samples / run.seconds, result["samples"] / plain.seconds)


def disk_usage(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def rule_based_synthesis(bench: Bench, pairs: int) -> Run:
    """`adapt synthesize` on `pairs` pairs, rule-based; its figures on stderr."""
    run_name = f"scale-{pairs}"
    run = bench.adapt("synthesize", run_name, bench.new_run(run_name, pairs, *RULE_BASED))
    manifest = bench.manifest(run_name, "synthesis")
    synthesis = bench.work / run_name / "synthesis"
    files = {name: len(list((synthesis / name).glob("*.parquet"))) for name in ("instructions", "tasks", "quarantine")}
    per_pair = {name: disk_usage(synthesis / name) / pairs for name in ("_rows", "_checkpoint", "instructions",
                                                                        "tasks", "quarantine")}
    source = disk_usage(bench.data(pairs) / "captions") / pairs
    detail(f"scale {pairs}: driver peak RSS {run.leader_peak_rss / GIB:.2f} GiB, session {run.peak_rss / GIB:.2f} GiB; "
           f"{pairs / run.seconds:.0f} pairs/s over {run.seconds:.0f} s (stream {manifest['timings_s']['stream']:.0f} "
           f"s, finalize {manifest['timings_s']['finalize']:.1f} s); files per set {files}; bytes per pair: "
           + ", ".join(f"{name} {size:.0f}" for name, size in per_pair.items())
           + f"; total {sum(per_pair.values()):.0f} (the input: {source:.0f})")
    return run


def scale_100k_vs_10k(bench: Bench) -> str:
    large = rule_based_synthesis(bench, SCALE_PAIRS)
    small = rule_based_synthesis(bench, SCALE_PAIRS // 10)
    return figure("scale_100k_vs_10k", large.leader_peak_rss / GIB, small.leader_peak_rss / GIB)


def engine_feed_vs_single_call(bench: Bench) -> str:
    """Output tokens/s of the vLLM backend fed the synthesizer's requests in batches of 64, as many in flight as an
    engine actor takes / one `LLM.generate` call over the same requests, in one process (no Ray, start-up excluded)."""
    config_args = bench.new_run("feed", bench.sizes.pairs, "synthesis.engine.batch_size=64", lengths=VARIABLE)
    _, result = bench.baseline("feed_and_single_call", "feed", config_args)
    detail(f"one process, {result['requests']} requests, {result['output_tokens']} output tokens: one call "
           f"{result['single_call']:.0f} tokens/s; batches of 64, {result['in_flight']} in flight "
           f"{result['fed']:.0f}; the same batches one after another (one in flight, as before) "
           f"{result['one_at_a_time']:.0f}")
    return figure("engine_feed_vs_single_call", result["fed"], result["single_call"])


FIGURES: dict[str, Callable[[Bench], str]] = {
    figure_function.__name__: figure_function
    for figure_function in (synthesis_variable_b64, synthesis_variable_b256, synthesis_vs_hf_loop, memory_10x_vs_1x,
                            resume_work, evaluation_variable_multitask, training_ray_vs_plain, scale_100k_vs_10k,
                            engine_feed_vs_single_call)
}
# Figures measured when --only is not given: the scale figure alone takes longer than the rest together, and the
# engine's own figure explains the synthesis figures rather than adding one.
ON_REQUEST = ("scale_100k_vs_10k", "engine_feed_vs_single_call")
DEFAULT_FIGURES = [name for name in FIGURES if name not in ON_REQUEST]


# --------------------------------------------------------------------------------- baselines (run in their own process)


def read_pairs(config, limit: int | None) -> list[dict]:
    import pyarrow.dataset as pads

    table = pads.dataset(config.data.path, format="parquet").to_table(columns=["id", "image", "caption"])
    return table.slice(0, limit).to_pylist()


def forced_params(sampling_params_class, output_length: str, key: str, budget: int, **fields):
    """Greedy vLLM SamplingParams generating exactly the length the engine forces on the request `key` (the loops do
    the engine's work, no more, no less)."""
    from engine.models.backends.base import forced_length

    length = forced_length(output_length, key, budget)
    return sampling_params_class(temperature=0.0, max_tokens=length, min_tokens=length, **fields)


def rgb_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def vllm_synthesis(config, limit: int | None) -> dict:
    """One vLLM engine per model, every prompt of a model in one `generate` call."""
    from vllm import LLM, SamplingParams

    from engine.models.backends.vllm_backend import engine_kwargs
    from engine.synthesis.consistency import JUDGE_MAX_TOKENS, consistency_prompt
    from engine.synthesis.parsing import parse_synthesizer_output
    from engine.synthesis.prompts import synthesizer_prompt, synthesizer_stop

    started = time.monotonic()
    synthesizer, judge = config.synthesis.engine, config.filter.engine
    pairs = read_pairs(config, limit)
    llm = LLM(**engine_kwargs(synthesizer))
    generating = time.monotonic()
    params = [forced_params(SamplingParams, synthesizer.output_length, pair["id"], synthesizer.max_tokens,
                            skip_special_tokens=False) for pair in pairs]
    requests = [{"prompt": synthesizer_prompt(pair["caption"], synthesizer.family),
                 "multi_modal_data": {"image": rgb_image(pair["image"])}} for pair in pairs]
    outputs = llm.generate(requests, params, use_tqdm=False)
    tasks = [(pair["id"], task) for pair, output in zip(pairs, outputs, strict=True)
             for task in parse_synthesizer_output(output.outputs[0].text, synthesizer.family).tasks]
    generate_s = time.monotonic() - generating
    del llm
    judge_started = time.monotonic()
    judge_llm = LLM(**engine_kwargs(judge))
    judge_ready = time.monotonic()
    if tasks:
        budget = min(judge.max_tokens or JUDGE_MAX_TOKENS, JUDGE_MAX_TOKENS)
        judge_llm.generate([consistency_prompt(task) for _, task in tasks],
                           [forced_params(SamplingParams, judge.output_length, key, budget) for key, _ in tasks],
                           use_tqdm=False)
    generate_s += time.monotonic() - judge_ready
    return {"rows": len(pairs), "output_tokens": sum(len(output.outputs[0].token_ids) for output in outputs),
            "tasks": len(tasks), "generate_s": generate_s,
            "start_up_s": generating - started + judge_ready - judge_started}


def hf_synthesis(config, limit: int | None) -> dict:
    """transformers' `generate` on one pair at a time, then on one parsed task at a time."""
    import torch

    from engine.models.backends.base import forced_length
    from engine.models.loading import load_model, load_processor
    from engine.synthesis.consistency import JUDGE_MAX_TOKENS, consistency_prompt
    from engine.synthesis.parsing import parse_synthesizer_output
    from engine.synthesis.prompts import synthesizer_prompt

    synthesizer, judge = config.synthesis.engine, config.filter.engine
    pairs = read_pairs(config, limit)
    processor = load_processor(synthesizer.model)
    model = load_model(synthesizer.model, "image-text-to-text", dtype=synthesizer.dtype)
    judge_tokenizer = load_processor(judge.model)
    judge_model = load_model(judge.model, "causal-lm", dtype=judge.dtype)
    started = time.monotonic()
    tokens, tasks = 0, []
    with torch.inference_mode():
        for pair in pairs:
            inputs = processor(text=[synthesizer_prompt(pair["caption"], synthesizer.family)],
                               images=[[rgb_image(pair["image"])]], return_tensors="pt")
            length = forced_length(synthesizer.output_length, pair["id"], synthesizer.max_tokens)
            output = model.generate(**inputs, max_new_tokens=length, min_new_tokens=length, do_sample=False)
            new_tokens = output[0, inputs["input_ids"].shape[1]:]
            tokens += len(new_tokens)
            text = processor.decode(new_tokens, skip_special_tokens=False)
            tasks += parse_synthesizer_output(text, synthesizer.family).tasks
        budget = min(judge.max_tokens or JUDGE_MAX_TOKENS, JUDGE_MAX_TOKENS)
        for task in tasks:
            judge_model.generate(**judge_tokenizer(consistency_prompt(task), return_tensors="pt"),
                                 max_new_tokens=budget, min_new_tokens=budget, do_sample=False)
    return {"rows": len(pairs), "output_tokens": tokens, "tasks": len(tasks),
            "generate_s": time.monotonic() - started}


def vllm_evaluation(config, limit: int | None) -> dict:
    """Every benchmark's prompts in one `generate` call, then each task's scores."""
    import pyarrow.dataset as pads
    from vllm import LLM, SamplingParams

    from engine.evaluation.tasks import get_task
    from engine.models.backends.vllm_backend import engine_kwargs
    from engine.models.families import render

    started = time.monotonic()
    engine = config.evaluation.engine
    tasks = [(get_task(benchmark.task), pads.dataset(benchmark.path, format="parquet").to_table()
              .slice(0, limit or benchmark.limit).to_pylist()) for benchmark in config.evaluation.benchmarks]
    llm = LLM(**engine_kwargs(engine))
    generating = time.monotonic()
    # The runner's budget (TaskSpec.answer_budget) and request key (engine.evaluation.runner.Predict).
    params = [forced_params(SamplingParams, engine.output_length, f"{spec.name}:{index}",
                            spec.answer_budget(engine.max_tokens))
              for spec, rows in tasks for index in range(len(rows))]
    requests = [{"prompt": render(engine.family, [{"role": "user", "content": spec.user_turn(row["input"])}],
                                  add_generation_prompt=True),
                 "multi_modal_data": {"image": rgb_image(row["image"])}} for spec, rows in tasks for row in rows]
    outputs = iter(llm.generate(requests, params, use_tqdm=False))
    scores = {spec.name: spec.summarize((index, spec.scoring_row({**row, "prediction": next(outputs).outputs[0].text}))
                                        for index, row in enumerate(rows))
              for spec, rows in tasks}
    return {"rows": len(requests), "generate_s": time.monotonic() - generating, "start_up_s": generating - started,
            "scores": scores}


def plain_training(config, limit: int | None) -> dict:
    """The engine's mixture and collator, then a plain PyTorch loop over one epoch (as MODEL_ROUTE sets): gradient
    accumulation to the global batch, AdamW, one process, no Ray, no DeepSpeed."""
    import pyarrow.dataset as pads
    import torch

    from engine.models.loading import load_model, load_processor
    from engine.training import mixture
    from engine.training.collate import Collator

    training = config.training
    instructions = f"{config.output_dir}/synthesis/instructions"
    table = pads.dataset(instructions, format="parquet").to_table(columns=["id", "images", "messages"])
    rows = table.slice(0, limit).to_pylist()
    conversations = [conversation for _, expand in mixture.phases(training.mixture) for row in rows
                     for conversation in expand(row, seed=config.seed)]
    processor = load_processor(training.model)
    collator = Collator(processor, training.family, training.max_length)
    model = load_model(training.model, "image-text-to-text", dtype="float32").train()
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    steps = len(conversations) // training.global_batch_size
    accumulation = training.global_batch_size // training.micro_batch_size
    started, samples = time.monotonic(), 0
    for step in range(steps):
        for micro_step in range(accumulation):
            first = (step * accumulation + micro_step) * training.micro_batch_size
            batch = collator(conversations[first:first + training.micro_batch_size])
            (model(**batch).loss / accumulation).backward()
            samples += batch["input_ids"].shape[0]
        optimizer.step()
        optimizer.zero_grad()
    steps_s = time.monotonic() - started
    model.save_pretrained(Path(config.output_dir) / "plain-model")
    return {"samples": samples, "steps": steps, "steps_s": steps_s, "save_s": time.monotonic() - started - steps_s}


def feed_and_single_call(config, limit: int | None) -> dict:
    """The synthesizer's requests three ways in this process, each timed over its generation, after a warm-up: one
    `LLM.generate` call; the engine's vLLM backend with batches of `batch_size`, `batches_in_flight()` awaited at
    once (an engine actor's load); the same batches one after another."""
    import asyncio

    from engine.models.backends import GenerationRequest, create_backend
    from engine.models.backends.base import with_output_length
    from engine.synthesis.prompts import synthesizer_prompt

    engine = config.synthesis.engine
    pairs = read_pairs(config, limit)
    requests = [GenerationRequest(synthesizer_prompt(pair["caption"], engine.family), [rgb_image(pair["image"])],
                                  engine.max_tokens, key=pair["id"]) for pair in pairs]
    batches = [requests[start:start + engine.batch_size] for start in range(0, len(requests), engine.batch_size)]
    tokens = sum(with_output_length(request, engine.output_length).max_tokens for request in requests)
    backend = create_backend(engine)

    async def fed() -> None:
        in_flight = asyncio.Semaphore(engine.batches_in_flight())

        async def one(batch):
            async with in_flight:
                await backend.agenerate(batch)

        await asyncio.gather(*map(one, batches))

    def timed(run) -> float:
        started = time.monotonic()
        run()
        return tokens / (time.monotonic() - started)

    # The backend's own engine, called directly while its feeder thread waits for work: the same weights and cache.
    llm = backend._llm
    prompts = [{"prompt": request.prompt, "multi_modal_data": {"image": list(request.images)}} for request in requests]
    params = [backend._sampling_params(with_output_length(request, engine.output_length)) for request in requests]
    backend.generate(requests[:8])  # the first requests pay one-time costs (processor and kernel warm-up)
    result = {"requests": len(requests), "output_tokens": tokens, "in_flight": engine.batches_in_flight(),
              "single_call": timed(lambda: llm.generate(prompts, params, use_tqdm=False)),
              "fed": timed(lambda: asyncio.run(fed())),
              "one_at_a_time": timed(lambda: [backend.generate(batch) for batch in batches])}
    backend.close()
    return result


BASELINES: dict[str, Callable[..., dict]] = {
    baseline.__name__: baseline for baseline in (vllm_synthesis, hf_synthesis, vllm_evaluation, plain_training,
                                                 feed_and_single_call)
}


# --------------------------------------------------------------------------------------------------------------- main


def figure_names(text: str) -> list[str]:
    """`--only`'s value: figure names separated by commas, in the order given."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FIGURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown figure(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(FIGURES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs: under 10 minutes on 2 cores")
    parser.add_argument("--only", type=figure_names, default=DEFAULT_FIGURES, metavar="NAME[,NAME]",
                        help=f"figures to measure, of: {', '.join(FIGURES)} (default: all but {', '.join(ON_REQUEST)})")
    parser.add_argument("--work", type=Path, help="build inputs and keep runs and logs here (default: a temporary "
                        "folder, removed at the end)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides for the engine commands and the baselines")
    parser.add_argument("--baseline", choices=BASELINES, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline:
        from engine.config import load_config

        config = load_config(DEMO_CONFIG, args.overrides).with_absolute_paths()
        print(json.dumps(BASELINES[args.baseline](config, args.limit)))
        return 0
    started = time.monotonic()
    # A terminated bench still stops the command it runs and removes its temporary folder (the finally blocks).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Under /tmp: Ray's socket paths in the session folder must stay under 107 bytes.
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adapt-bench-", dir="/tmp")))
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(work.resolve(), QUICK if args.quick else FULL, args.overrides)
        for name in args.only:
            print(FIGURES[name](bench), flush=True)
    detail(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
