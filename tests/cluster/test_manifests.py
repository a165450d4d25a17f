"""Cluster manifests parse, carry their required fields, and offer every resource the recipes ask for."""

from __future__ import annotations

import json

import pytest
import yaml

from engine.config import load_config
from tests.conftest import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
RECIPES = sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def kuberay_group_resources() -> dict[str, dict[str, float]]:
    """groupName -> custom resources x maxReplicas, plus its GPUs."""
    groups = {}
    for group in load("raycluster.yaml")["spec"]["workerGroupSpecs"]:
        declared = json.loads(json.loads(group["rayStartParams"]["resources"]))  # KubeRay takes a quoted JSON string
        (container,) = group["template"]["spec"]["containers"]
        gpus = float(container["resources"]["limits"]["nvidia.com/gpu"])
        groups[group["groupName"]] = {**declared, "GPU": gpus, "replicas": group["maxReplicas"]}
    return groups


def recipe_demands(path) -> list[tuple[str, float, float]]:
    """(custom resource, units per actor or worker, count) for every pool of a recipe."""
    config = load_config(path)
    demands = []
    for engine in (config.synthesis.engine, config.filter.engine, config.evaluation.engine):
        demands += [(name, units, engine.concurrency) for name, units in engine.resources.items()]
    training = config.training
    demands += [(name, units, training.num_workers) for name, units in training.worker_resources.items()]
    return demands


def test_raycluster_required_fields():
    manifest = load("raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["spec"]["rayVersion"] == "2.60.0"
    head = manifest["spec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert {group["groupName"] for group in manifest["spec"]["workerGroupSpecs"]} == {
        "synthesis-gpu", "filter-gpu", "training-gpu"
    }
    for group in kuberay_group_resources().values():
        custom = {key: value for key, value in group.items() if key not in ("GPU", "replicas")}
        assert list(custom.values()) == [group["GPU"]], "one unit of the group's resource per GPU"


def test_rayjob_targets_the_cluster_and_a_real_recipe():
    job = load("rayjob.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == load("raycluster.yaml")["metadata"]["name"]
    entry = job["spec"]["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "jobs.run"]
    assert (REPO_ROOT / entry[entry.index("--config") + 1]).is_file()
    assert (REPO_ROOT / "jobs" / "run.py").is_file()


def test_cluster_launcher_node_types():
    launcher = load("aws.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    declared = {}
    for node in launcher["available_node_types"].values():
        for name, units in node["resources"].items():
            declared[name] = declared.get(name, 0) + units * node.get("max_workers", 1)
    kuberay = {}
    for group in kuberay_group_resources().values():
        for name, units in group.items():
            if name not in ("GPU", "replicas"):
                kuberay[name] = kuberay.get(name, 0) + units * group["replicas"]
    assert {name: units for name, units in declared.items() if name != "CPU"} == kuberay


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_fits_the_cluster(recipe):
    capacity = {}
    for group in kuberay_group_resources().values():
        for name, units in group.items():
            if name not in ("GPU", "replicas"):
                capacity[name] = capacity.get(name, 0) + units * group["replicas"]
    demands = recipe_demands(recipe)
    assert demands, "recipes pin their pools to node groups"
    for name, units, count in demands:
        assert name in capacity, f"{recipe.name} asks for {name}, which no worker group declares"
        assert units * count <= capacity[name], f"{recipe.name}: {count} x {units} {name} > {capacity[name]}"


def test_runtime_env_keeps_local_state_out_of_uploads():
    runtime_env = load("runtime_env.yaml")
    assert {".venv/", ".git/", "models/", "data/", "runs/"} <= set(runtime_env["excludes"])
