"""Readers shared by the cluster tests: the manifests, the machine table and Kubernetes quantities."""

from __future__ import annotations

import json
import math
import re

import yaml

from tests.conftest import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
GiB = 2**30

_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("88", "500m", "340Gi") as a number (cores or bytes)."""
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def shapes() -> dict:
    return load("machine_shapes.yaml")


def groups() -> dict[str, dict]:
    """Every pod group of raycluster.yaml by name ("head" for the head group)."""
    spec = load("raycluster.yaml")["spec"]
    return {"head": spec["headGroupSpec"], **{group["groupName"]: group for group in spec["workerGroupSpecs"]}}


def pod_spec(group: dict) -> dict:
    return group["template"]["spec"]


def custom_resources(group: dict) -> dict[str, float]:
    """The Ray resources a group declares: KubeRay takes them as a quoted JSON string in rayStartParams."""
    declared = group.get("rayStartParams", {}).get("resources")
    return json.loads(json.loads(declared)) if declared else {}


def container_env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def volume_mounted_at(spec: dict, container: dict, path: str) -> dict | None:
    names = [mount["name"] for mount in container.get("volumeMounts", []) if mount["mountPath"] == path]
    volumes = [volume for volume in spec.get("volumes", []) if volume["name"] in names]
    return volumes[0] if volumes else None


def tiered(amount: float, tiers: list[list]) -> float:
    """GKE's reservation: a fraction of each successive tier of `amount` (the last tier is open-ended)."""
    reserved, left = 0.0, amount
    for size, fraction in tiers:
        take = min(left, math.inf if size is None else size)
        reserved += take * fraction
        left -= take
    return reserved


def gke_allocatable(machine: dict, gke: dict) -> dict[str, float]:
    """What GKE's documented reservations leave of a machine: cores, GiB, GiB."""
    capacity = machine["memory_gib"] * gke["memory_capacity_fraction"]
    memory = capacity - tiered(capacity, gke["memory_tiers"]) - gke["memory_eviction_gib"]
    cpu = machine["vcpus"] - tiered(machine["vcpus"], gke["cpu_tiers"])
    disk = machine["disk_gib"]
    if machine["local_ssd"]:
        reserved = gke["ephemeral_reserved_max_gib"]
    else:
        reserved = min(0.5 * disk, 6 + 0.35 * disk, gke["ephemeral_reserved_max_gib"])
    ephemeral = disk - gke["ephemeral_eviction_fraction"] * disk - reserved
    return {"cpu": cpu, "memory_gib": memory, "ephemeral_gib": ephemeral}
