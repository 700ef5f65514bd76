# energy-ood: `make demo` runs the main job on the embedded default, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo bench docs clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; torch comes from pip (never uv/poetry here).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Every test (about 5 minutes on a 2-core AMD EPYC with AVX-512, 6.5 on a 2-core Intel Xeon); test-fast: the unit tier and a CLI smoke test (about a minute: 75 s on that Xeon).
test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

# This machine's speed against the plain fp32 loop and its matmul peak -> outputs/bench/<date>_<time>/bench.csv
# (a few minutes on 2 cores). Larger: make bench BENCH="--full --compile"; on a GPU: bash scripts/gpu_check.sh
BENCH ?=
bench: install
	$(PY) scripts/bench.py $(BENCH)

# docs/configuration.md, written from the config schema (src/energy_cli/config/schema.py)
docs: install
	$(PY) -c "from energy_cli.config.reference import reference_markdown as r; print(r(), end='')" > docs/configuration.md

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
