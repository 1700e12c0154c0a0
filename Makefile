# Every target does its own set-up: a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV ?= .venv
# Installed before the package: a bare `torch` requirement pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
ZOO_DIR ?= .cache/zoo-demo
BIN := $(VENV)/bin

# With 2 threads and the default busy-wait, torch can run 100x slower here.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-install: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

# Builds the demo zoo once (reused while it matches), then scans the poisoned
# model against its base as a user would: no probes, no trigger given.
demo: $(VENV)/.stamp-install
	$(BIN)/bdscan zoo build $(ZOO_DIR) --size demo
	$(BIN)/bdscan $(ZOO_DIR)/emoji --reference $(ZOO_DIR)/base --json findings.json --out report.html --fail-on never

# The test zoos are built on first use and cached in .cache/: seed 0 (27 models) in front of the first zoo test, about
# 13 minutes on 2 cores with a line per model; the third generation at seed 1 in the background while the tests run.
test: $(VENV)/.stamp-install
	@echo "make test: the first run builds the test zoo (about 13 minutes on 2 cores) before the first zoo test, and a second seed in the background"
	$(BIN)/python -m pytest

lint: $(VENV)/.stamp-install
	$(BIN)/ruff check scanner rules reports tests benchmarks

clean:
	rm -rf $(VENV) .cache report.html findings.json test-artifacts
