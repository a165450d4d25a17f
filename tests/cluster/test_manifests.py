"""Cluster manifests: they parse, fit the machines they name, carry /dev/shm, scratch space and the hub token the way
cluster/README.md describes, and offer every resource the recipes ask for."""

from __future__ import annotations

import re

import pytest

from engine.config import load_config
from tests.cluster.manifests import (
    CLUSTER,
    GiB,
    container_env,
    custom_resources,
    gke_allocatable,
    groups,
    load,
    pod_spec,
    quantity,
    shapes,
    volume_mounted_at,
)
from tests.conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml"))

# Parameters of the models the recipes train, embeddings, vision tower and projector included:
# Llama-3.2-11B-Vision 10.67e9 (Meta's model card: 10.6B); LLaVA-NeXT-Llama3-8B 8.36e9 (Llama-3-8B 8.03e9 + CLIP
# ViT-L/14-336 0.30e9 + a 2-layer MLP projector 0.02e9); Qwen2-VL-2B 2.21e9 (Qwen2-VL report: 1.5B LLM + 675M ViT).
PARAMETERS = {
    "meta-llama/Llama-3.2-11B-Vision-Instruct": 10.67e9,
    "llava-hf/llama3-llava-next-8b-hf": 8.36e9,
    "Qwen/Qwen2-VL-2B-Instruct": 2.21e9,
}
# A DeepSpeed checkpoint (ZeRO-2 or ZeRO-3, bf16 with fp32 Adam) holds per parameter 2 bytes of bf16 weights, 4 of
# fp32 master weights and 4 + 4 of Adam moments; every worker stages its shard on the node before Ray Train uploads
# it, so a whole checkpoint sits on the training node's scratch. The base model's hub download (bf16, 2 bytes per
# parameter) shares that scratch (HF_HOME).
CHECKPOINT_BYTES_PER_PARAMETER = 14
HUB_COPY_BYTES_PER_PARAMETER = 2


@pytest.fixture(autouse=True)
def _hub_token(monkeypatch):
    # Recipes forward HF_TOKEN (cluster.forward_env), and loading one checks that it is set.
    monkeypatch.setenv("HF_TOKEN", "set-for-the-config-check")


def recipe_demands(path) -> list[tuple[str, float, float]]:
    """(custom resource, units per actor or worker, count) for every pool of a recipe."""
    config = load_config(path)
    demands = []
    for engine in (config.synthesis.engine, config.filter.engine, config.evaluation.engine):
        demands += [(name, units, engine.concurrency) for name, units in engine.resources.items()]
    training = config.training
    demands += [(name, units, training.num_workers) for name, units in training.worker_resources.items()]
    return demands


def group_offering(resource: str) -> dict:
    (group,) = [group for group in groups().values() if resource in custom_resources(group)]
    return group


def pod_requests(name: str, group: dict) -> dict[str, float]:
    """The pod's requests in cores, GiB and GiB (the scheduler adds up its containers)."""
    total = {"cpu": 0.0, "memory_gib": 0.0, "ephemeral_gib": 0.0}
    for container in pod_spec(group)["containers"]:
        requests = container["resources"]["requests"]
        total["cpu"] += quantity(requests["cpu"])
        total["memory_gib"] += quantity(requests["memory"]) / GiB
        total["ephemeral_gib"] += quantity(requests["ephemeral-storage"]) / GiB
    if name == "head" and load("raycluster.yaml")["spec"].get("enableInTreeAutoscaling"):
        sidecar = shapes()["gke"]["autoscaler_sidecar"]
        total["cpu"] += sidecar["cpu"]
        total["memory_gib"] += sidecar["memory_gib"]
    return total


def test_raycluster_required_fields():
    manifest = load("raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["spec"]["rayVersion"] == "2.60.0"
    assert set(groups()) == {"head", "synthesis-gpu", "filter-gpu", "training-gpu"}
    for name, group in groups().items():
        assert pod_spec(group)["containers"][0]["image"]
        if name != "head":
            custom = custom_resources(group)
            gpus = quantity(pod_spec(group)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
            assert list(custom.values()) == [gpus], "one unit of the group's resource per GPU"


def test_rayjob_targets_the_cluster_and_a_real_recipe():
    job = load("rayjob.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == load("raycluster.yaml")["metadata"]["name"]
    entry = job["spec"]["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "jobs.run"]
    assert (REPO_ROOT / entry[entry.index("--config") + 1]).is_file()
    assert (REPO_ROOT / "jobs" / "run.py").is_file()


def test_gke_example_reads_and_writes_gcs_with_workload_identity():
    overrides = dict(arg.split("=", 1) for arg in load("rayjob.yaml")["spec"]["entrypoint"].split() if "=" in arg)
    assert overrides["output_dir"].startswith("gs://") and overrides["data.path"].startswith("gs://")
    account = load("serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    for name, group in groups().items():
        assert pod_spec(group).get("serviceAccountName") == account["metadata"]["name"], name


def test_cluster_launcher_node_types():
    launcher = load("aws.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    declared = {}
    for node in launcher["available_node_types"].values():
        for name, units in node["resources"].items():
            declared[name] = declared.get(name, 0) + units * node.get("max_workers", 1)
    kuberay = {}
    for group in groups().values():
        for name, units in custom_resources(group).items():
            kuberay[name] = kuberay.get(name, 0) + units * group["maxReplicas"]
    assert {name: units for name, units in declared.items() if name != "CPU"} == kuberay


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_fits_the_cluster(recipe):
    capacity = {}
    for group in groups().values():
        for name, units in custom_resources(group).items():
            capacity[name] = capacity.get(name, 0) + units * group["maxReplicas"]
    demands = recipe_demands(recipe)
    assert demands, "recipes pin their pools to node groups"
    for name, units, count in demands:
        assert name in capacity, f"{recipe.name} asks for {name}, which no worker group declares"
        assert units * count <= capacity[name], f"{recipe.name}: {count} x {units} {name} > {capacity[name]}"
    # Ray counts the container's CPUs too: the training workers' CPUs must fit the group that holds them.
    training = load_config(recipe).training
    (resource,) = training.worker_resources
    cpus = quantity(pod_spec(group_offering(resource))["containers"][0]["resources"]["limits"]["cpu"])
    assert training.num_workers * training.cpus_per_worker <= cpus


def test_runtime_env_keeps_local_state_out_of_uploads():
    runtime_env = load("runtime_env.yaml")
    assert {".venv/", ".git/", "models/", "data/", "runs/"} <= set(runtime_env["excludes"])


# ------------------------------------------------------------------------------------------- machine sizes


def test_every_group_names_a_machine_of_the_table():
    machines = shapes()["machines"]
    for name, group in groups().items():
        selector = pod_spec(group)["nodeSelector"]
        machine = machines[selector["node.kubernetes.io/instance-type"]]
        assert machine["cloud"] == "gcp", name
        gpus = pod_spec(group)["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert quantity(gpus) == machine["gpus"], f"{name} asks for every GPU of its machine"
        accelerator = selector.get("cloud.google.com/gke-accelerator")
        if machine["gpus"]:
            # nvidia-l4 <-> "NVIDIA L4 24 GB", nvidia-a100-80gb <-> "NVIDIA A100 80 GB"
            words = accelerator.removeprefix("nvidia-").replace("gb", "").split("-")
            assert all(word.upper() in machine["gpu_model"].upper() for word in words), (accelerator, machine)
        else:
            assert accelerator is None


@pytest.mark.parametrize("name", ["head", "synthesis-gpu", "filter-gpu", "training-gpu"])
def test_requests_fit_the_allocatable_of_the_machine(name):
    table = shapes()
    group = groups()[name]
    machine = table["machines"][pod_spec(group)["nodeSelector"]["node.kubernetes.io/instance-type"]]
    system = table["gke"]["system_pods"]
    requested = pod_requests(name, group)
    allocatable = machine["allocatable"]
    assert requested["cpu"] + system["cpu"] <= allocatable["cpu"], (name, requested, allocatable)
    assert requested["memory_gib"] + system["memory_gib"] <= allocatable["memory_gib"], (name, requested, allocatable)
    assert requested["ephemeral_gib"] + system["ephemeral_gib"] <= allocatable["ephemeral_gib"], name
    for container in pod_spec(group)["containers"]:
        resources = container["resources"]
        # Ray sizes a node from the container's limits; equal requests keep the scheduler's view the same.
        assert resources["limits"] == resources["requests"], container["name"]


@pytest.mark.parametrize("machine", ["n2-standard-16", "g2-standard-48", "g2-standard-96", "a2-ultragpu-8g"])
def test_table_allocatable_is_within_what_gke_leaves(machine):
    table = shapes()
    shape = table["machines"][machine]
    formula = gke_allocatable(shape, table["gke"])
    for key, assumed in shape["allocatable"].items():
        assert assumed <= formula[key], f"{machine}: {key} {assumed} > {formula[key]:.2f} left by GKE's reservations"


def test_the_formula_reproduces_known_numbers():
    # By hand, with the MemTotal assumption off: 15 GiB keeps 25% of 4 + 20% of 4 + 10% of 7 = 2.5 GiB and 100 MiB;
    # 4 cores keep 6% + 1% + 2 x 0.5%; a 100 GiB boot disk keeps 10% and min(50, 6 + 35, 100) GiB.
    gke = {**shapes()["gke"], "memory_capacity_fraction": 1.0}
    left = gke_allocatable({"vcpus": 4, "memory_gib": 15, "disk_gib": 100, "local_ssd": False}, gke)
    assert left["memory_gib"] == pytest.approx(15 - 2.5 - 100 / 1024)
    assert left["cpu"] == pytest.approx(4 - 0.08)
    assert left["ephemeral_gib"] == pytest.approx(100 - 10 - 41)


# ------------------------------------------------------------------------------------------- /dev/shm


@pytest.mark.parametrize("name", ["head", "synthesis-gpu", "filter-gpu", "training-gpu"])
def test_dev_shm_holds_the_object_store(name):
    spec = pod_spec(groups()[name])
    for container in spec["containers"]:
        volume = volume_mounted_at(spec, container, "/dev/shm")
        assert volume and volume["emptyDir"]["medium"] == "Memory", f"{name}: no memory-backed /dev/shm"
        shm = quantity(volume["emptyDir"]["sizeLimit"])
        memory = quantity(container["resources"]["limits"]["memory"])
        # Ray's default object store: 30% of the memory it sees, at most 200 GB, and only what fits in 95% of
        # /dev/shm (ray._private.utils.resolve_object_store_memory).
        object_store = min(0.3 * memory, 200e9)
        assert 0.95 * shm >= object_store, f"{name}: /dev/shm {shm / GiB:.0f} GiB < object store"
        assert shm <= memory, f"{name}: a memory-backed volume counts against the container's memory"


def test_cluster_launcher_sizes_dev_shm_per_node():
    docker = load("aws.yaml")["docker"]
    options = docker.get("run_options", []) + docker.get("head_run_options", []) + docker.get("worker_run_options", [])
    for node in load("aws.yaml")["available_node_types"].values():
        options += node.get("docker", {}).get("worker_run_options", [])
    # Without --shm-size the launcher sets it from each node's memory for Ray's object store.
    assert not any("--shm-size" in option for option in options)
    assert not docker.get("disable_shm_size_detection", False)


# ------------------------------------------------------------------------------------------- hub token, secrets


def test_every_container_gets_the_hub_token_from_a_secret():
    for name, group in groups().items():
        for container in pod_spec(group)["containers"]:
            token = container_env(container).get("HF_TOKEN")
            assert token, f"{name}/{container['name']}: no HF_TOKEN"
            assert "value" not in token and token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_the_rayjob_runs_its_entrypoint_where_the_token_is():
    # A Ray Job's entrypoint runs on the head node; the job itself carries no token.
    job = load("rayjob.yaml")["spec"]
    assert "HF_TOKEN" not in job["runtimeEnvYAML"] and "HF_TOKEN" not in job["entrypoint"]
    assert "entrypointResources" not in job and "entrypointNumGpus" not in job
    (head,) = pod_spec(groups()["head"])["containers"]
    assert "secretKeyRef" in container_env(head)["HF_TOKEN"]["valueFrom"]


SECRET_SHAPES = {
    "hub token": re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    "AWS access key": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key", re.IGNORECASE),
    "GCP key file": re.compile(r"\"private_key\"|GOOGLE_APPLICATION_CREDENTIALS"),
    "token assignment": re.compile(r"HF_TOKEN\s*[=:]\s*['\"]?(?!\$)[A-Za-z0-9_]{8,}"),
}


def test_no_secret_is_written_anywhere_in_the_cluster_folder():
    files = [path for path in CLUSTER.rglob("*") if path.is_file()]
    assert len(files) >= 8
    for path in files:
        text = path.read_text()
        for what, shape in SECRET_SHAPES.items():
            assert not shape.search(text), f"{path.relative_to(REPO_ROOT)}: looks like a {what}"


def test_the_secret_scan_catches_literals():
    leaks = ["HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123", "value: hf_AbCdEfGhIjKlMnOpQrStUvWx",
             "AKIAABCDEFGHIJKLMNOP", "HF_TOKEN: plaintextvalue123"]
    for leak in leaks:
        assert any(shape.search(leak) for shape in SECRET_SHAPES.values()), leak
    assert not any(shape.search('HF_TOKEN="$HF_TOKEN"') for shape in SECRET_SHAPES.values())


def test_cluster_launcher_uses_instance_profiles():
    for name, node in load("aws.yaml")["available_node_types"].items():
        config = node["node_config"]
        assert config["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        assert config["ImageId"], f"{name}: Ray's default AMI has a driver too old for CUDA 13"


# ------------------------------------------------------------------------------------------- checkpoint scratch


def largest_training_model() -> tuple[str, float]:
    models = {load_config(recipe).training.model for recipe in RECIPES}
    unknown = models - set(PARAMETERS)
    assert not unknown, f"add the parameter count of {unknown} to PARAMETERS"
    model = max(models, key=PARAMETERS.get)
    return model, PARAMETERS[model]


def scratch_needed_bytes() -> float:
    _, parameters = largest_training_model()
    return parameters * (CHECKPOINT_BYTES_PER_PARAMETER + HUB_COPY_BYTES_PER_PARAMETER)


def test_checkpoint_arithmetic():
    # The figures cluster/README.md gives, in GB.
    assert largest_training_model()[0] == "meta-llama/Llama-3.2-11B-Vision-Instruct"
    stated = {"meta-llama/Llama-3.2-11B-Vision-Instruct": 149e9, "llava-hf/llama3-llava-next-8b-hf": 117e9,
              "Qwen/Qwen2-VL-2B-Instruct": 31e9}
    for model, size in stated.items():
        assert PARAMETERS[model] * CHECKPOINT_BYTES_PER_PARAMETER == pytest.approx(size, rel=0.01), model


def test_training_scratch_holds_a_checkpoint():
    need = scratch_needed_bytes()
    spec = pod_spec(group_offering("training_node"))
    (container,) = spec["containers"]
    temp_dir = container_env(container)["TMPDIR"]["value"]
    volume = volume_mounted_at(spec, container, temp_dir)
    assert volume, "TMPDIR must be the scratch volume (Python's tempfile and Ray both follow it)"
    assert "medium" not in volume["emptyDir"], "checkpoints belong on disk, not in memory"
    scratch = quantity(volume["emptyDir"]["sizeLimit"])
    requested = quantity(container["resources"]["requests"]["ephemeral-storage"])
    assert scratch >= need, f"scratch {scratch / GiB:.0f} GiB < {need / GiB:.0f} GiB"
    assert requested >= scratch, "the scheduler must place the pod where the scratch volume fits"
    machine = shapes()["machines"][spec["nodeSelector"]["node.kubernetes.io/instance-type"]]
    assert machine["local_ssd"], "the training node's ephemeral storage is its local SSDs"


def test_cluster_launcher_training_disk_holds_a_checkpoint():
    (node,) = [node for node in load("aws.yaml")["available_node_types"].values()
               if "training_node" in node["resources"]]
    (root,) = node["node_config"]["BlockDeviceMappings"]
    # The container's /tmp is on the root volume (VolumeSize in GiB), next to the image (~40 GB) and the OS.
    assert root["Ebs"]["VolumeSize"] * GiB >= scratch_needed_bytes() + 100 * GiB


def test_cluster_launcher_node_types_match_the_table():
    machines = shapes()["machines"]
    for name, node in load("aws.yaml")["available_node_types"].items():
        machine = machines[node["node_config"]["InstanceType"]]
        assert machine["cloud"] == "aws", name
        custom = {key: units for key, units in node["resources"].items() if key != "CPU"}
        assert list(custom.values()) in ([machine["gpus"]], []), f"{name}: one unit of its resource per GPU"
        assert bool(custom) == bool(machine["gpus"]), name
