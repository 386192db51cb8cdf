# The two commands of README.md. Each creates .venv if missing, installs torch (CPU build unless a GPU is
# present), then sgpo with its extension and dev extras at the tested versions (constraints.txt), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-cpu-matrix test-latest constraints lint bench gpu-check device-check device-wheels kernel-resources clean

$(VENV)/.installed: pyproject.toml constraints.txt CMakeLists.txt $(wildcard csrc/*)
	bash scripts/setup.sh "$(PYTHON)" "$(VENV)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sgpo run demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q
	$(MAKE) test-cpu-matrix

# The TRL parity tests again with torch's AVX2 and its unvectorised CPU kernels, whatever this CPU has: float sums in
# another order must not change what the parity tests decide (about 1 minute each on 2 cores).
PARITY := tests/test_trl_packed.py tests/test_integration_trl.py tests/test_trl_loss_parity.py
test-cpu-matrix: setup
	for capability in avx2 default; do \
		ATEN_CPU_CAPABILITY=$$capability $(PY) -m pytest -q -p no:cacheprovider $(PARITY) \
			-k "reproduces or trains_like_trl or float16 or stateful" || exit 1; \
	done

# The canary for the next upstream release: the suite in a throwaway environment with the newest release of every
# dependency; prints which versions differ from constraints.txt and what failed.
test-latest:
	bash scripts/test_latest.sh "$(PYTHON)"

# After a green suite, record the versions it passed with (constraints.txt, which setup.sh installs).
constraints: test
	$(PY) scripts/deps.py freeze

bench: setup
	$(PY) benchmarks/bench_follower.py
	$(PY) benchmarks/bench_losses.py

# On a machine with a CUDA GPU: the device tests and benchmarks, into gpu_check.md (three parts of 5-7 minutes each).
gpu-check: setup
	$(PY) scripts/gpu_check.py --out gpu_check.md

# On a bare GPU machine with its own python3, torch and nvcc (docs/gpu.md): builds sgpo with CUDA, installs the wheels
# of `make device-wheels`, runs part PART (a, b, c or all) into $(OUT)/device_check_PART.md. No .venv involved.
PART ?= all
OUT ?= device_check
device-check:
	OUT=$(OUT) bash scripts/device_check.sh $(PART)

# The wheels device-check installs where the GPU image lacks them (trl, datasets, liger-kernel, cut-cross-entropy),
# into .whl/.
device-wheels:
	bash scripts/device_wheels.sh

# Registers, spills and shared memory of every kernel for sm_80 and sm_90; needs no GPU.
kernel-resources: setup
	$(PY) benchmarks/kernel_resources.py --out kernel_resources.md

clean:
	rm -rf build $(VENV)
