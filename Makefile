# equicare: every target creates .venv on first use. Nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0

.PHONY: demo test test-slow test-browser bench bench-quick bench-scale lint clean install dev

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q -e '.[dev]'
	touch $@

# the slow suite also runs the Ray executor checks, so it needs the optional extra
$(VENV)/.ray: $(VENV)/.dev
	$(PIP) install -q -e '.[dev,ray]'
	touch $@

install: $(VENV)/.base
dev: $(VENV)/.dev

demo: $(VENV)/.base
	$(VENV)/bin/equicare run --example care

test: $(VENV)/.dev
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(VENV)/.ray
	$(PY) -m pytest -q -p no:cacheprovider -m slow

test-browser: $(VENV)/.dev
	apt-get update -qq && apt-get install -y -qq chromium
	$(PY) -m pytest -q -p no:cacheprovider -m browser

$(VENV)/.bench: $(VENV)/.dev
	bash benchmarks/install_peers.sh $(PY)
	touch $@

# every benchmark -> benchmarks/results.json -> the tables of BENCHMARKS.md (run_all.py renders them)
bench: $(VENV)/.bench
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/render.py --check

# streamed and sharded evaluation/validation on 1M, 5M and 20M simulated rows (issue #16); its
# entries go into benchmarks/results.json beside the others (a full `make bench` keeps them)
bench-scale: $(VENV)/.bench $(VENV)/.ray
	$(PY) benchmarks/run_all.py --only scale,scale_train

# smoke run of every benchmark at a tiny size; writes nothing
bench-quick: $(VENV)/.bench
	$(PY) benchmarks/run_all.py --quick

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info
