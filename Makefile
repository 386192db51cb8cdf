# The two commands of README.md. Each creates .venv if missing, installs torch (CPU build unless a GPU is
# present), then sgpo with its extension and dev extras, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	bash scripts/setup.sh "$(PYTHON)" "$(VENV)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sgpo run default

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_follower.py
	$(PY) benchmarks/bench_losses.py

clean:
	rm -rf build $(VENV)
