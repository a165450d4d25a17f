"""Benchmarks of the engine against the loops users would otherwise write, as ratios measured in one run.

    python tools/bench.py --quick          # a few minutes on 2 cores
    python tools/bench.py --rows 800       # the full demo data set

Each figure is one line: `BENCH <name> value=<v> baseline=<b> ratio=<r>`.

synthesis_vs_vllm_loop: rows/s of `adapt synthesize` (Ray Data; vLLM synthesizer and judge pools streaming) against a
hand-written single-process loop that calls vLLM's `LLM.generate` on all prompts at once for the synthesizer, then for
the judge. Same inputs, same tiny models, same engine settings and token budgets; both timed from process start to
results on disk or in memory, engine start-up included.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def build_inputs(work: Path, rows: int) -> tuple[Path, Path]:
    """Demo pairs and tiny models, built offline into `work` by the project's own tools."""
    data, models = work / "data", work / "models"
    subprocess.run([sys.executable, str(REPO / "tools/make_demo_data.py"), "--out", str(data), "--train", str(rows),
                    "--benchmark", "8", "--seed-tasks", "8", "--no-real"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(REPO / "tools/make_tiny_models.py"), "--out", str(models)], check=True,
                   stdout=subprocess.DEVNULL)
    return data / "captions", models


def overrides(captions: Path, models: Path, output_dir: Path) -> list[str]:
    return [f"data.path={captions}", f"output_dir={output_dir}",
            f"synthesis.engine.model={models / 'tiny-qwen2-vl'}", f"filter.engine.model={models / 'tiny-text-llm'}",
            f"training.model={models / 'tiny-qwen2-vl'}", f"evaluation.engine.model={models / 'tiny-qwen2-vl'}",
            f"training.deepspeed_config={REPO / 'configs/deepspeed/zero2.json'}"]


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def vllm_loop(config_args: list[str]) -> None:
    """The baseline, run in its own process: one vLLM engine per model, every prompt in one `generate` call."""
    import pyarrow.dataset as pads
    from PIL import Image
    from vllm import LLM, SamplingParams

    from engine.config import load_config
    from engine.models.backends.vllm_backend import engine_kwargs
    from engine.synthesis.consistency import consistency_prompt
    from engine.synthesis.parsing import parse_synthesizer_output
    from engine.synthesis.prompts import synthesizer_prompt, synthesizer_stop

    config = load_config(DEMO_CONFIG, config_args).with_absolute_paths()
    synth, judge = config.synthesis.engine, config.filter.engine
    rows = pads.dataset(config.data.path, format="parquet").to_table(columns=["image", "caption"]).to_pylist()
    llm = LLM(**engine_kwargs(synth))
    params = SamplingParams(temperature=0.0, max_tokens=synth.max_tokens, stop=list(synthesizer_stop(synth.family)),
                            skip_special_tokens=False)
    requests = [{"prompt": synthesizer_prompt(row["caption"], synth.family),
                 "multi_modal_data": {"image": Image.open(io.BytesIO(row["image"])).convert("RGB")}} for row in rows]
    outputs = llm.generate(requests, params, use_tqdm=False)
    tasks = [task for output in outputs for task in parse_synthesizer_output(output.outputs[0].text, synth.family).tasks]
    del llm
    judge_llm = LLM(**engine_kwargs(judge))
    judge_llm.generate([consistency_prompt(task) for task in tasks] or ["warm-up"],
                       SamplingParams(temperature=0.0, max_tokens=judge.max_tokens), use_tqdm=False)
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    print(json.dumps({"rows": len(rows), "output_tokens": tokens, "tasks": len(tasks)}))


def bench_synthesis(work: Path, rows: int) -> str:
    captions, models = build_inputs(work, rows)
    args = overrides(captions, models, work / "run")
    adapt = str(Path(sys.executable).with_name("adapt"))
    pipeline_s = timed([adapt, "synthesize", str(DEMO_CONFIG), *args])
    manifest = json.loads((work / "run" / "synthesis" / "manifest.json").read_text())
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    loop_s = timed([sys.executable, __file__, "--vllm-loop", *args], env)
    value, baseline = manifest["rows_in"] / pipeline_s, manifest["rows_in"] / loop_s
    print(f"# synthesis: {manifest['rows_in']} rows; pipeline {pipeline_s:.1f} s, vLLM loop {loop_s:.1f} s "
          f"(both include engine start-up); pipeline output tokens {manifest['output_tokens']}", file=sys.stderr)
    return f"BENCH synthesis_vs_vllm_loop value={value:.3f} baseline={baseline:.3f} ratio={value / baseline:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (200 rows)")
    parser.add_argument("--rows", type=int, default=None, help="input pairs (default 800, or 200 with --quick)")
    parser.add_argument("--vllm-loop", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_loop is not None:
        vllm_loop(args.vllm_loop)
        return 0
    rows = args.rows or (200 if args.quick else 800)
    with tempfile.TemporaryDirectory(prefix="adapt-bench-") as work:
        print(bench_synthesis(Path(work), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
