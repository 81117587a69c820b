# Fogline's developer entry points. `make test` and `make demo` need nothing installed by
# hand beyond Python 3.11+, Go and make: they build the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fogline-installed
PYTEST_ARGS ?=

.PHONY: all venv tools test test-unit test-cluster test-workloads lint format demo demo-down bench manifests clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,train,serve,dev]'
	touch $@

venv: $(STAMP)

# The control plane, the artifact stores and Prometheus have cache keys of their own:
# bumping a store never rebuilds Kubernetes.
tools:
	bash tools/build.sh
	bash tools/stores/build.sh
	bash tools/prometheus/build.sh

# pytest exits 5 when it collected nothing: that is a broken suite, never a pass.
define run_pytest
	$(PY) -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc
endef

test: venv tools
	$(call run_pytest,tests)

test-unit: venv
	$(call run_pytest,-m unit tests)

test-cluster: venv tools
	$(call run_pytest,-m cluster tests)

test-workloads: venv
	$(call run_pytest,-m workloads tests)

lint: venv
	$(VENV)/bin/ruff check operator tests bench tools
	$(VENV)/bin/ruff format --check operator tests bench tools
	$(VENV)/bin/mypy
	$(PY) tools/sync_crds.py --check
	$(PY) tools/render_manifests.py --check

# After editing a CRD or the chart: copy the CRDs into the package and the chart, and
# render manifests/install.yaml and the Argo CD config map patch from the chart.
manifests: venv tools
	$(PY) tools/sync_crds.py
	$(PY) tools/render_manifests.py

format: venv
	$(VENV)/bin/ruff format operator tests bench tools
	$(VENV)/bin/ruff check --fix operator tests bench tools

demo: venv tools
	$(VENV)/bin/fogline demo

demo-down: venv
	$(VENV)/bin/fogline demo --down

# The KServe comparison server needs a virtual environment of its own (.venv-kserve).
bench: venv tools
	PYTHON=$(PYTHON) bash bench/setup_kserve.sh
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .tools .devcluster .demo .pytest_cache .mypy_cache .ruff_cache
