"""A worker node lost mid-stage, on a real multi-node Ray on this machine: a head with no CPUs and two worker
nodes of 2 logical CPUs, each its own raylet (Ray's own multi-node harness, `ray.cluster_utils.Cluster`). Each stage runs as a separate
driver process that joins through `cluster.address`, as `adapt` does on a cluster, and the test removes a worker node
(every process of its raylet killed at once) while the stage runs. Where the stage needs both nodes' CPUs again (a
fixed-size training worker group), a replacement node is added afterwards, as a cluster's autoscaler would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest
import yaml

from tests.conftest import REPO_ROOT, load_tool
from tests.fixtures import write_parquet_pairs
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SYNTHESIS_ROWS = 3000


def agent_ports() -> dict[str, int]:
    """Free ports for a node's agents: their defaults are fixed, and the session's own Ray may hold them."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_agent_port": free_port(),
            "metrics_export_port": free_port(), "runtime_env_agent_port": free_port()}


class ThreeNodes:
    def __init__(self, cluster):
        self.cluster = cluster
        self.workers = []

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):
        node = self.cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20, **agent_ports())
        self.cluster.wait_for_nodes()
        return node

    def remove(self, node) -> float:
        """Kill every process of the node at once (no graceful shutdown); returns when."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)
        return time.monotonic()

    def node_running(self, marker: str):
        """The worker node one of whose processes has `marker` in its command line (Ray's process titles name the
        actor class), or None."""
        from ray._private import ray_constants

        for node in self.workers:
            raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
            for process in raylet.children(recursive=True):
                try:
                    if marker in " ".join(process.cmdline()):
                        return node
                except psutil.Error:
                    continue
        return None


@pytest.fixture
def three_nodes(monkeypatch):
    """A fresh cluster per test; afterwards every node it started is stopped (and nothing else)."""
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="raynl-", dir="/tmp")  # short: socket paths must stay under 107 bytes
    # The harness records the head's address in Ray's default temp folder (RAY_TMPDIR/ray, else /tmp/ray), which it
    # does not create: a fresh machine has none. Ours, so no other Ray user on the machine is pointed at this cluster.
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    os.makedirs(os.path.join(temp_dir, "ray"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "temp_dir": temp_dir, **agent_ports()})
    try:
        nodes = ThreeNodes(cluster)
        for _ in range(2):
            nodes.workers.append(nodes.add_worker())
        yield nodes
    finally:
        cluster.shutdown()  # the nodes this cluster started, by their processes
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def start_driver():
    """Starts a stage's driver process; one still running when the test ends (an assertion failed while it ran) is
    killed by its PID, before the cluster stops (fixtures tear down in reverse order: request it after three_nodes)."""
    started: list[subprocess.Popen] = []

    def start(command: str, config: Path, log: Path) -> subprocess.Popen:
        with open(log, "a") as output:
            started.append(subprocess.Popen([sys.executable, "-m", "engine.cli", command, str(config)],
                                            cwd=REPO_ROOT, stdout=output, stderr=output))
        return started[-1]

    yield start
    for driver in started:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def wait_until(condition: Callable[[], object], driver: subprocess.Popen, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert driver.poll() is None, "the stage ended before the node could be removed"
        assert time.monotonic() < deadline, "the stage did not get far enough in time"
        time.sleep(0.05)
    return value


def finish(driver: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    driver.wait(timeout=timeout)  # past it, the start_driver fixture kills the driver
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    return output


def committed(folder: Path) -> list[Path]:
    """Ray Data's committed checkpoint files under `folder` (pending ones are rolled back on restart)."""
    return [path for path in folder.rglob("*.parquet") if not path.name.endswith(".pending.parquet")]


def column(folder: Path, name: str) -> list:
    return pads.dataset(folder, format="parquet").to_table(columns=[name]).column(name).to_pylist()


# ---------------------------------------------------------------------------------------------------------- synthesis


def synthesis_config(tmp_path: Path, address: str) -> tuple[Path, Path]:
    data = write_parquet_pairs(tmp_path / "pairs", rows=SYNTHESIS_ROWS, shards=12)
    run = tmp_path / "run"
    config = tmp_path / "synthesis.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(run), "cluster": {"address": address},
        "data": {"path": str(data), "format": "parquet"},
        "synthesis": {"synthesizer": "rule_based"},
        "filter": {"judge": "lexical"},
    }))
    return config, run


def assert_every_id_published_once(run: Path) -> dict:
    manifest = json.loads((run / "synthesis" / "manifest.json").read_text())
    assert manifest["rows_in"] == SYNTHESIS_ROWS and not manifest["rows_dropped"]  # every square yields a task
    published = column(run / "synthesis" / "instructions", "id") + column(run / "synthesis" / "quarantine", "id")
    assert sorted(published) == [f"pair-{index:05d}" for index in range(SYNTHESIS_ROWS)]  # each exactly once
    return manifest


def test_synthesis_survives_a_lost_node_and_publishes_every_id_once(three_nodes, tmp_path, start_driver):
    config, run = synthesis_config(tmp_path, three_nodes.address)
    log = tmp_path / "driver.log"
    driver = start_driver("synthesize", config, log)
    wait_until(lambda: committed(run / "synthesis" / "_checkpoint"), driver)
    removed = three_nodes.remove(three_nodes.workers[1])
    finish(driver, log)
    print(f"synthesis ended {time.monotonic() - removed:.1f} s after the node was removed")
    assert_every_id_published_once(run)


def test_a_driver_killed_while_a_node_is_down_resumes_exactly_once(three_nodes, tmp_path, start_driver):
    config, run = synthesis_config(tmp_path, three_nodes.address)
    log = tmp_path / "driver.log"
    driver = start_driver("synthesize", config, log)
    wait_until(lambda: committed(run / "synthesis" / "_checkpoint"), driver)
    three_nodes.remove(three_nodes.workers[1])
    driver.send_signal(signal.SIGKILL)  # the driver process alone: the cluster is not its to stop
    driver.wait()
    assert not (run / "synthesis" / "manifest.json").exists(), "the run finished before its driver was killed"
    three_nodes.add_worker()  # the node comes back (or a replacement), and the command runs again
    # Counted now, not at the kill: Ray ends a dead driver's tasks within a few seconds, and one may commit meanwhile.
    done_before = sum(len(column(path, "row_key")) for path in committed(run / "synthesis" / "_checkpoint"))
    assert 0 < done_before < SYNTHESIS_ROWS
    finish(start_driver("synthesize", config, log), log)
    manifest = assert_every_id_published_once(run)
    assert manifest["rows_processed_this_run"] == SYNTHESIS_ROWS - done_before
    assert len(column(run / "synthesis" / "_rows", "row_key")) == SYNTHESIS_ROWS  # no row processed twice


# --------------------------------------------------------------------------------------------------------- evaluation


def test_evaluation_survives_the_loss_of_its_engines_node(three_nodes, tmp_path, start_driver, tiny_model_dir):
    rows = 48
    data = tmp_path / "demo"
    args = ["--out", str(data), "--train", "0", "--benchmark", str(rows), "--seed-tasks", "0", "--no-real"]
    assert load_tool("make_demo_data").main(args) == 0
    run = tmp_path / "run"
    config = tmp_path / "evaluation.yaml"
    engine = {"model": str(tiny_model_dir / "tiny-qwen2-vl"), "family": "qwen2-vl", "backend": "transformers",
              "device": "cpu", "dtype": "float32", "num_cpus": 0.5, "batch_size": 4, "max_tokens": 16}
    config.write_text(yaml.safe_dump({
        "output_dir": str(run), "cluster": {"address": three_nodes.address},
        "data": {"path": str(data / "benchmark"), "format": "parquet"},
        "synthesis": {"synthesizer": "rule_based"}, "filter": {"judge": "lexical"},
        "evaluation": {"benchmarks": [{"task": "demo_vqa", "path": str(data / "benchmark" / "demo_vqa.parquet")}],
                       "engine": engine},
    }))
    log = tmp_path / "driver.log"
    driver = start_driver("evaluate", config, log)
    wait_until(lambda: committed(run / "evaluation" / "_checkpoint"), driver)
    engine_node = wait_until(lambda: three_nodes.node_running("MapWorker"), driver)
    removed = three_nodes.remove(engine_node)  # the engine's actor goes with it, and Ray restarts it elsewhere
    finish(driver, log)
    print(f"evaluation ended {time.monotonic() - removed:.1f} s after the node was removed")
    predictions = run / "evaluation" / "predictions" / "base" / "task=demo_vqa"
    assert sorted(column(predictions, "example_index")) == list(range(rows))  # every example exactly once
    assert all(error is None for error in column(predictions, "error"))


# ----------------------------------------------------------------------------------------------------------- training


def test_training_restarts_its_workers_from_the_checkpoint_when_a_node_is_lost(three_nodes, tmp_path, start_driver,
                                                                               tiny_model_dir):
    from tests.training.test_loop import (
        demo_training_section,
        latest_checkpoint_step,
        metrics,
        run_config,
        write_instruction_set,
    )

    dataset = write_instruction_set(tmp_path / "instructions", 32)  # 4 steps per epoch at the demo's batch of 8
    run = tmp_path / "run"
    training = demo_training_section(tiny_model_dir / "tiny-qwen2-vl", dataset, epochs=2, checkpoint_every=2)
    tree = run_config(run, dataset, training)
    tree["cluster"] = {"address": three_nodes.address}
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump(tree))
    log = tmp_path / "driver.log"
    driver = start_driver("train", config, log)

    def step_after_a_registered_checkpoint() -> bool:
        # Registered: Ray Train's snapshot names it. A checkpoint folder alone may not have reached the controller,
        # and a restart then begins from step 0.
        checkpoint, rows = latest_checkpoint_step(run), metrics(run)
        return bool(checkpoint and rows and int(rows[-1]["step"]) > checkpoint)

    wait_until(step_after_a_registered_checkpoint, driver)
    # Ray Train packs the two half-CPU workers: the node running them goes, and a replacement comes.
    removed = three_nodes.remove(wait_until(lambda: three_nodes.node_running("RayTrainWorker"), driver))
    three_nodes.add_worker()
    output = finish(driver, log)
    print(f"training ended {time.monotonic() - removed:.1f} s after the node was removed")
    assert "resumed from the checkpoint of step" in output  # the same run, no second command
    assert [int(row["step"]) for row in metrics(run)] == list(range(1, 9))
    assert json.loads((run / "training" / "manifest.json").read_text())["steps"] == 8
