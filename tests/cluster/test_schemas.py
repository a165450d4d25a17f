"""The manifests against the schemas their tools enforce: KubeRay v1.7.0's RayCluster and RayJob CRDs (vendored in
cluster/schemas/, SOURCE.md) and the cluster launcher schema of the installed Ray. Each schema also rejects a
broken copy, so a passing test means the schema was applied."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray

from tests.cluster.manifests import CLUSTER, load

SCHEMAS = CLUSTER / "schemas"
RAY_LAUNCHER_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def crd_schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind}.v1.json").read_text())


def strict(schema):
    """The schema with unknown fields refused, as the API server does under kubectl's default --validate=strict: an
    object that lists its properties and neither sets additionalProperties nor keeps unknown fields is closed."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        closed["additionalProperties"] = False
    return closed


def errors(manifest: dict, schema: dict) -> list[str]:
    # OpenAPI 3.0 schemas are JSON Schema draft 4 in the parts CRDs use (types, required, pattern, anyOf).
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(manifest)]


@pytest.mark.parametrize("kind", ["raycluster", "rayjob"])
@pytest.mark.parametrize("closed", [False, True], ids=["schema", "strict"])
def test_manifest_matches_the_kuberay_crd(kind, closed):
    schema = crd_schema(kind)
    assert errors(load(f"{kind}.yaml"), strict(schema) if closed else schema) == []


def test_the_schemas_are_the_vendored_release():
    for kind, name in [("raycluster", "RayCluster"), ("rayjob", "RayJob")]:
        schema = crd_schema(kind)
        assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec", "status"}
        assert "spec" in schema["properties"] and name in (SCHEMAS / "SOURCE.md").read_text()
    assert "v1.7.0" in (SCHEMAS / "SOURCE.md").read_text()


def broken_raycluster(change) -> dict:
    manifest = copy.deepcopy(load("raycluster.yaml"))
    change(manifest["spec"]["workerGroupSpecs"][0])
    return manifest


def _replicas_as_text(group):
    group["replicas"] = "1"


def _memory_in_words(group):
    group["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "340 GB"


def _no_group_name(group):
    del group["groupName"]


def _ray_start_param_not_a_string(group):
    group["rayStartParams"]["num-cpus"] = 8


@pytest.mark.parametrize("change", [_replicas_as_text, _memory_in_words, _no_group_name, _ray_start_param_not_a_string])
def test_the_crd_rejects_a_broken_raycluster(change):
    assert errors(broken_raycluster(change), crd_schema("raycluster"))


def test_strict_validation_rejects_a_misspelled_field():
    manifest = broken_raycluster(lambda group: group["template"]["spec"].update(nodeSelectr={"a": "b"}))
    assert errors(manifest, crd_schema("raycluster")) == [], "OpenAPI alone ignores unknown fields"
    assert any("nodeSelectr" in error for error in errors(manifest, strict(crd_schema("raycluster"))))


def test_the_crd_rejects_a_broken_rayjob():
    job = copy.deepcopy(load("rayjob.yaml"))
    job["spec"]["shutdownAfterJobFinishes"] = "false"
    assert errors(job, crd_schema("rayjob"))


def launcher_errors(config: dict) -> list[str]:
    schema = json.loads(RAY_LAUNCHER_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(config)]


def test_cluster_launcher_config_matches_rays_schema():
    assert launcher_errors(load("aws.yaml")) == []


@pytest.mark.parametrize("change", [
    lambda config: config.update(max_workers="3"),
    lambda config: config.update(worker_nodes={}),
    lambda config: config["available_node_types"]["training_gpu"]["resources"].update(training_node=8.5),
    lambda config: config["docker"].update(shm_size="200g"),
], ids=["text count", "unknown key", "fractional resource", "unknown docker key"])
def test_rays_schema_rejects_a_broken_launcher_config(change):
    config = copy.deepcopy(load("aws.yaml"))
    change(config)
    assert launcher_errors(config)
