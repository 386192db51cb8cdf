#!/usr/bin/env bash
# The GPU check on a bare machine: builds sgpo with its CUDA extension and installs it, with the carried wheels of
# scripts/device_wheels.sh (.whl/), into one folder on PYTHONPATH (the image's own packages stay as they are), then runs
# one part of scripts/gpu_check.py, each step under its own time limit, into $OUT/device_check_PART.md.
#
#   bash scripts/device_check.sh a      # correctness: device tests, the follower at n = 1e5..1e7 (about 5 minutes)
#   bash scripts/device_check.sh b      # the fused head and one trainer step against TRL and Liger (about 5 minutes)
#   bash scripts/device_check.sh c      # the fused LM head: Triton sweep, then every method at two heads (about 7 minutes)
#   bash scripts/device_check.sh all    # all three, one after the other
#   bash scripts/device_check.sh all --rehearse   # on a CPU: tiny shapes, the CUDA steps skip (what the tests run)
#
# PYTHON (python3) is the interpreter; OUT (./device_check) the report folder; SGPO_DEVICE_SITE (/tmp/sgpo-device-site)
# the install folder; SGPO_DEVICE_CHECK_BUILD=0 uses the sgpo already importable instead of building one.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PART="${1:-}"
case "$PART" in
  a|b|c|all) ;;
  *) echo "device_check.sh: PART='$PART': expected a, b, c or all (see the header of scripts/device_check.sh)" >&2; exit 2 ;;
esac
REHEARSE=()
if [ "${2:-}" = "--rehearse" ]; then
  REHEARSE=(--rehearse)
elif [ -n "${2:-}" ]; then
  echo "device_check.sh: unknown option '$2': expected --rehearse or nothing" >&2
  exit 2
fi
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/device_check}"
SITE="${SGPO_DEVICE_SITE:-/tmp/sgpo-device-site}"
mkdir -p "$OUT" "$SITE"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

if compgen -G ".whl/*.whl" > /dev/null; then
  echo "== carried wheels: $(cd .whl && echo *.whl)"
  WHEEL_TARGET=("$SITE")
  if [ ${#REHEARSE[@]} -gt 0 ]; then
    # Made for the GPU image's Python 3.12: checked to install for it, into a folder this interpreter never reads.
    WHEEL_TARGET=("$OUT/wheels-for-3.12" --python-version 3.12 --only-binary=:all:)
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${WHEEL_TARGET[@]}" \
    .whl/*.whl || { echo "device_check.sh: the carried wheels in .whl/ did not install" >&2; exit 3; }
fi

if [ "${SGPO_DEVICE_CHECK_BUILD:-1}" = "1" ]; then
  # The same build as a user's `pip install .`, with the CUDA follower required (SGPO_CUDA=ON fails without nvcc);
  # only a CPU rehearsal builds without it.
  if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  CUDA=ON
  if ! command -v nvcc > /dev/null; then
    if [ ${#REHEARSE[@]} -eq 0 ]; then
      echo "device_check.sh: no nvcc on PATH or in /usr/local/cuda/bin: the CUDA follower cannot be built" >&2
      exit 3
    fi
    CUDA=OFF
  fi
  echo "== building sgpo (SGPO_CUDA=$CUDA) into $SITE; log: $OUT/build.log"
  start=$SECONDS
  if ! SGPO_CUDA=$CUDA CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" timeout 600 "$PYTHON" -m pip install --no-deps \
      --no-build-isolation --no-cache-dir --upgrade --target "$SITE" --config-settings=build-dir="build/device-{wheel_tag}" \
      . > "$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log" >&2
    echo "device_check.sh: building sgpo failed (the whole log is $OUT/build.log)" >&2
    exit 3
  fi
  echo "   built in $((SECONDS - start)) s"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_check.py --part "$PART" "${REHEARSE[@]}" --out "$OUT/device_check_$PART.md"
