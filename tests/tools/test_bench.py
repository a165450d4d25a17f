"""tools/bench.py: the figure lines, the process and memory helpers, and the premise that makes its ratios fair (every
engine generates exactly max_tokens when told to). No timings are asserted."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import EngineConfig
from engine.models.backends import GenerationRequest, create_backend
from engine.models.backends.base import forced_length
from tests.conftest import in_process_vllm, load_tool

bench = load_tool("bench")


def test_a_figure_is_one_line_with_its_ratio():
    assert bench.figure("resume_work", 210, 200) == "BENCH resume_work value=210.000 baseline=200.000 ratio=1.050"


def test_only_takes_known_figures_in_the_order_given():
    assert bench.figure_names("resume_work, synthesis_variable_b64") == ["resume_work", "synthesis_variable_b64"]
    assert bench.parse_args(["--quick", "--only", "memory_10x_vs_1x"]).only == ["memory_10x_vs_1x"]
    on_request = ("scale_100k_vs_10k", "engine_feed_vs_single_call")
    assert bench.parse_args([]).only == [name for name in bench.FIGURES if name not in on_request]
    for name in on_request:
        assert bench.parse_args(["--only", name]).only == [name]
    for bad in ("synthesis", "", "resume_work,nope"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.figure_names(bad)


def test_overrides_after_the_options_reach_the_runs():
    args = bench.parse_args(["--quick", "synthesis.engine.batch_size=32", "cluster.num_cpus=2"])
    assert args.overrides == ["synthesis.engine.batch_size=32", "cluster.num_cpus=2"]


def test_every_figure_is_defined_in_the_docstring():
    for name in bench.FIGURES:
        assert f"\n{name} " in bench.__doc__


def test_unequal_work_is_refused():
    bench.require_equal_work(1024, 2, 512, 1)
    with pytest.raises(RuntimeError, match="unequal work"):
        bench.require_equal_work(1000, 2, 512, 1)


@pytest.fixture
def sleeping_session():
    """A shell leading its own session, with two children: a process tree like an `adapt` driver's."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(leader.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield leader
    bench.kill_session(leader.pid)
    leader.wait()


def test_session_rss_sums_every_process_of_the_session(sleeping_session):
    members = bench.session_processes(sleeping_session.pid)
    tree = [psutil.Process(sleeping_session.pid), *psutil.Process(sleeping_session.pid).children(recursive=True)]
    assert {process.pid for process in members} == {process.pid for process in tree}
    assert os.getpid() not in {process.pid for process in members}
    expected = sum(process.memory_info().rss for process in tree)
    assert bench.summed_rss(members) == pytest.approx(expected, rel=0.2)


def test_rss_of_a_vanished_process_is_skipped():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(gone.pid)
    gone.wait()
    assert bench.summed_rss([process, psutil.Process()]) == psutil.Process().memory_info().rss


BURN_ONE_SECOND = "import time\nend = time.time() + 1\nwhile time.time() < end: pass"


def test_session_watch_counts_what_runs_outside_the_session(sleeping_session):
    watch = bench.SessionWatch(sleeping_session.pid)
    outside = subprocess.Popen([sys.executable, "-c", BURN_ONE_SECOND])
    while outside.poll() is None:
        watch.sample()
        time.sleep(0.1)
    watch.sample()
    assert watch.peak_rss > 0
    assert set(watch.session_cpu) == {process.pid for process in bench.session_processes(sleeping_session.pid)}
    assert watch.background_cores() > 0.2  # about a second of CPU in about a second, less on a busy machine


def is_stopped(process: psutil.Process) -> bool:
    """Gone, or dead and waiting for its parent to reap it (orphans of this VM's init linger as zombies)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_session_stops_the_whole_tree(sleeping_session):
    members = bench.session_processes(sleeping_session.pid)
    assert len(members) == 3
    bench.kill_session(sleeping_session.pid)
    sleeping_session.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not all(map(is_stopped, members)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(is_stopped, members))


def test_run_command_keeps_stdout_and_reports_a_failure_with_its_log(tmp_path):
    run = bench.run_command([sys.executable, "-c", "print('{\"rows\": 3}')"], tmp_path / "ok.log")
    assert bench.last_json_line(run.stdout) == {"rows": 3}
    assert run.seconds > 0 and run.peak_rss > 0
    with pytest.raises(RuntimeError, match="the reason"):
        bench.run_command([sys.executable, "-c", "import sys; sys.exit('the reason')"], tmp_path / "bad.log")


def test_written_rows_counts_finished_parquet_files_only(tmp_path):
    for name, rows in (("a.parquet", 3), ("b.parquet", 4)):
        pq.write_table(pa.table({"id": list(range(rows))}), tmp_path / name)
    (tmp_path / "being-written.parquet").write_bytes(b"PAR1 no footer yet")
    assert bench.written_rows(tmp_path) == 7
    assert bench.written_rows(tmp_path / "missing") == 0


# The premise: EngineConfig.output_length makes both backends generate exactly the forced length, so a random model's
# early stops cannot make one side of a ratio do less work.


@pytest.fixture(name="in_process_vllm")
def in_process_vllm_fixture():
    with in_process_vllm():
        yield


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_forced_output_lengths_outlast_stop_strings(backend, tiny_model_dir, request):
    if backend == "vllm":
        request.getfixturevalue("in_process_vllm")
    budget = 24
    keys = [f"pair-{index}" for index in range(4)]

    def generate(output_length: str, stop: list[str] | None):
        config = EngineConfig(model=str(tiny_model_dir / "tiny-text-llm"), family="text", backend=backend,
                              device="cpu", dtype="float32", kv_cache_gib=0.0625, max_model_len=256,
                              enforce_eager=True, output_length=output_length)
        with create_backend(config) as engine:
            return engine.generate([GenerationRequest("A plate of", max_tokens=budget, stop=stop, key=key)
                                    for key in keys])

    free = generate("natural", None)[0]
    stop = [free.text[4:7]]  # text the model writes early on: it ends a normal request there
    assert generate("natural", stop)[0].output_tokens < budget
    assert [result.output_tokens for result in generate("max_tokens", stop)] == [budget] * len(keys)
    # Each request its own drawn length, the same one the baselines compute.
    drawn = [result.output_tokens for result in generate("long_tail", stop)]
    assert drawn == [forced_length("long_tail", key, budget) for key in keys]


def test_a_figure_shows_the_fixed_regime_as_a_second_column():
    assert bench.figure("synthesis_variable_b64", 30, 20, fixed=(36, 27)) == (
        "BENCH synthesis_variable_b64 value=30.000 baseline=20.000 ratio=1.500 fixed_value=36.000 "
        "fixed_baseline=27.000 fixed_ratio=1.333")
