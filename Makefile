# Two commands for a fresh clone: `make run` and `make test`. Both create .venv and
# install the pinned dependencies the first time (and again when a pyproject changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYPROJECTS := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)

.PHONY: run test lint lock asyncapi rebuild-read-model bench chaos clean

PACKAGES := $(patsubst %/pyproject.toml,%,$(PYPROJECTS))
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

# Every third-party package at the version and with the hashes requirements.lock names
# (nothing else is resolved), then this tree's own packages; `pip check` fails if a
# pyproject names a dependency the lock lacks (run `make lock`).
$(STAMP): requirements.txt requirements.lock $(PYPROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes --no-deps -r requirements.lock
	$(PIP) --no-deps $(addprefix -e ,$(PACKAGES))
	$(BIN)/pip check
	touch $(STAMP)

# Refresh requirements.lock from requirements.txt and the pyprojects' pins, keeping the
# versions it already names (UPGRADE=1 raises them to the newest allowed).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) uv==0.13.9
	$(BIN)/uv pip compile requirements.txt --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --no-header --quiet \
	    $(if $(UPGRADE),--upgrade) \
	    $(foreach p,$(notdir $(PACKAGES)),--no-emit-package tgdl-$(p)) -o requirements.lock

run: $(STAMP)
	$(BIN)/tgdl run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/tgdl asyncapi --check docs/asyncapi.yaml
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

asyncapi: $(STAMP)
	$(BIN)/tgdl asyncapi --write docs/asyncapi.yaml

rebuild-read-model: $(STAMP)
	$(BIN)/tgdl rebuild-read-model

# The issue's goals with every service its own process (writes benchmarks/results.json,
# BENCHMARKS.md, docs/bench.png), then the in-process scaling and parallel-parts ratios.
# ARGS=--full runs the issue's sizes (about a quarter of an hour).
bench: $(STAMP)
	$(PIP) --require-hashes --no-deps -r benchmarks/requirements.lock
	$(BIN)/python benchmarks/bench_goals.py $(ARGS)
	$(BIN)/python benchmarks/bench_pipeline.py $(ARGS)

# Faults injected into a running `tgdl run` (about 3 minutes); prints the stall per fault.
chaos: $(STAMP)
	TGDL_CHAOS=1 $(BIN)/pytest tests/chaos -p no:cacheprovider

clean:
	rm -rf $(VENV)
