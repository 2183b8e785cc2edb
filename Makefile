# Quick start: `make demo` then `make test`. Everything installs into .venv from python3.12.
SHELL := /bin/bash
VENV ?= .venv
WORKDIR ?= demo_workdir
# First Python 3.12 interpreter that really runs (pyenv shims may exist without the version being active).
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then command -v $$p; break; fi; done)
STAMP := $(VENV)/.installed
# What `make demo` needs (the package and the export step's Hugging Face classes); `make test` adds the rest.
DEMO_STAMP := $(VENV)/.installed-demo
export JAX_PLATFORMS ?= cpu
export PYTHONPATH := $(CURDIR)

.PHONY: install test lint demo clean

install: $(STAMP)

$(DEMO_STAMP): setup.py Makefile
	@if [ -z "$(PYTHON)" ]; then echo "error: python3.12 not found (install it, or pass PYTHON=/path/to/python3.12)"; exit 1; fi
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[demo]'
	@touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(VENV)/bin/pip install -q -e '.[test]'
	@command -v java >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null) || echo "warning: no Java runtime: METEOR is skipped")
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "warning: no chromium: the web demo's browser test is skipped")
	@touch $(STAMP)

test: install
	$(VENV)/bin/python -m pytest -q -n 2 --durations=15 tests

lint: install
	$(VENV)/bin/ruff check .

demo: $(DEMO_STAMP)
	$(VENV)/bin/python -m momentor_jax.demo --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) *.egg-info
