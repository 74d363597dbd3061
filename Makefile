# The two commands of the README: `make demo` and `make test`. Both create .venv and install the
# project from its own files (setup.cfg + constraints.txt) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
QUICK ?=
DEMO_DIR ?= demo_run

.PHONY: help venv test test-fast lint fmt demo bench clean browser

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

test: $(STAMP) lint browser
	$(PY) -m pytest -n 2 --dist loadgroup tests

# The web page's test (tests/serving/test_page.py) drives Debian's Chromium: installed here when
# missing and this is root with apt-get (about a minute); elsewhere that one test is skipped,
# saying why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver for the page test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null) || echo "could not install chromium: the page test will be skipped"; \
	else echo "no chromium (installing it needs root and apt-get): the page test will be skipped"; fi

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
