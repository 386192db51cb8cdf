#!/usr/bin/env bash
# make test-latest: the suite in a throwaway environment holding the newest release of every dependency, so that
# an upstream release that breaks sgpo is seen before a fresh set-up meets it. Prints which versions differ from
# constraints.txt and what failed; exits with the suite's status.
# torch stays at the tested version (its newest build on PyPI is the multi-GB CUDA one); SGPO_TORCH_VERSION=X.Y.Z
# tries another. SGPO_KEEP_LATEST=1 keeps the environment and prints where it is.
set -uo pipefail
PYTHON="${1:-python3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d -t sgpo-latest-XXXXXX)"
if [ -z "${SGPO_KEEP_LATEST:-}" ]; then
  trap 'rm -rf "$WORK"' EXIT
fi
cd "$ROOT"
echo "test-latest: a fresh environment with the newest releases in $WORK/venv"
SGPO_DEPS=latest bash scripts/setup.sh "$PYTHON" "$WORK/venv" || exit 1
"$WORK/venv/bin/python" scripts/deps.py diff
# the suite without the cache of the tested environment's runs
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider 2>&1 | tee "$WORK/pytest.log"
status="${PIPESTATUS[0]}"
echo
if [ "$status" -eq 0 ]; then
  echo "test-latest: the suite passes with the newest releases"
else
  echo "test-latest: the suite fails with the newest releases (exit $status):"
  grep -E '^(FAILED|ERROR) ' "$WORK/pytest.log" || tail -n 20 "$WORK/pytest.log"
fi
if [ -n "${SGPO_KEEP_LATEST:-}" ]; then
  echo "test-latest: kept $WORK"
fi
exit "$status"
