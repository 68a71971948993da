# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements/frameworks.txt requirements/framework-deps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) -r requirements/framework-deps.txt
	$(PIP) --no-deps -r requirements/frameworks.txt
	touch $(STAMP)

# A rerun replaces the previous demo report (recognised by its results.json); any other
# folder named bridge-demo is left alone and the demo refuses to write into it.
demo: install
	$(PY) -m bridge demo --out bridge-demo $(if $(wildcard bridge-demo/results.json),--force)

test: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -n 2 --durations=15

test-fast: install
	$(PY) -m pytest -n 2 -m 'not slow'

bench: install
	$(PY) benchmarks/convert_bench.py
	$(PY) benchmarks/convert_bench.py --models vgg16_224,resnet50_224 --cases trained,pt2
	$(PY) benchmarks/simulate_bench.py
	$(PY) benchmarks/export_bench.py
	$(PY) benchmarks/calibration_bench.py
	$(PY) benchmarks/qcfs_t_equals_l.py

clean:
	rm -rf $(VENV) .pytest_cache bridge-demo
