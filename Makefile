# The README's two commands: `make run` and `make test`. Each does its own set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# constraints.txt pins torch==2.13.0, not its build: CPU or CUDA follows the index (README).
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: setup run test test-fast test-slow bench clean

$(BIN)/rl-run: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) -q -e '.[test]'
	touch $@

setup: $(BIN)/rl-run

run: setup
	$(BIN)/rl-run algo=ppo env=lunarlander

# pytest exits 5 when it collected no tests: that is a failure, not a pass. The fast tests run
# on every core (pyproject's addopts); the integration tests (wheel builds, clusters, sweeps that
# time their own parallel jobs) then run in one process.
test: setup
	$(BIN)/pytest -q -m "not slow and not integration"; rc=$$?; \
	if [ $$rc -eq 0 ]; then $(BIN)/pytest -q -n 0 -m integration; rc=$$?; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests collected" >&2; fi; exit $$rc

# a developer's loop: no learning checks, no wheel builds, clusters or multi-process sweeps
test-fast: setup
	$(BIN)/pytest -q -m "not slow and not integration"

test-slow: setup
	$(BIN)/pytest -q -n 0 -m slow

bench: setup
	$(PIP) -q -e '.[test,bench]'
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info
