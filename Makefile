# The two commands of the README: `make demo` and `make test`. Both create .venv and install the
# project from its own files (setup.cfg + constraints.txt) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
QUICK ?=
DEMO_DIR ?= demo_run

.PHONY: help venv test test-fast lint fmt demo bench clean

help:
	@echo "make demo   - install, generate a face set, build tfrecords, train, export, index, retrieve, evaluate"
	@echo "make demo DATA=<folder of identity sub-folders> - the same on your own photos"
	@echo "make test   - install, lint (ruff) and run the test suite"
	@echo "make fmt    - format the code (ruff format) and apply safe lint fixes"
	@echo "make bench  - run the benchmarks and regenerate BENCHMARKS.md (~1.5 h on 2 cores)"
	@echo "make bench QUICK=1 - every benchmark at tiny size (~5 min); real results untouched"

$(STAMP): setup.cfg constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[test,bench,serve,beam,faiss,pretrained,reference]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/facetriplet-demo --workdir=$(DEMO_DIR) $(if $(DATA),--data=$(DATA),)

bench: $(STAMP)
	$(PY) -m benchmarks.run_all $(if $(QUICK),--quick,)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
