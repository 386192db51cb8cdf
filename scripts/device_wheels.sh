#!/usr/bin/env bash
# The wheels `scripts/device_check.sh` installs on a GPU machine whose image lacks them (no network there): trl,
# datasets and liger-kernel at the versions in constraints.txt, the two packages datasets needs that the image
# does not hold (dill, multiprocess), and cut-cross-entropy 25.1.1 for part c. Downloads them without dependencies
# for CPython 3.12 on manylinux x86-64 into .whl/ (ignored by git; copy it along to the GPU machine). Any extra
# argument is one more requirement, e.g. pyarrow==26.0.1.
#
#   bash scripts/device_wheels.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
DEST="${SGPO_WHEELS:-.whl}"

pin() {
  local line
  line="$(grep -i "^$1==" constraints.txt)" || { echo "device_wheels.sh: constraints.txt pins no $1" >&2; exit 1; }
  echo "$line"
}

# one pin per assignment, so that a missing one stops the script before anything is deleted
REQUIREMENTS=()
for name in trl datasets liger-kernel dill multiprocess; do
  requirement="$(pin "$name")"
  REQUIREMENTS+=("$requirement")
done
# Part c's Cut Cross-Entropy: benchmarked against, not a dependency of sgpo, so pinned here rather than in constraints.txt
REQUIREMENTS+=("cut-cross-entropy==25.1.1" "$@")
rm -rf "$DEST"
mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLATFORMS+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${REQUIREMENTS[@]}"
if [ -d .git ] && ! grep -qx "/$DEST/" .git/info/exclude 2>/dev/null; then
  mkdir -p .git/info && echo "/$DEST/" >> .git/info/exclude
fi
ls "$DEST"
