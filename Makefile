# Quick start (fresh machine, Python 3.11):
#   make demo   # set up .venv and run the main job end to end on pbmc68k_reduced
#   make test   # set up .venv and run the tests
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genailab-installed
# Every install is pinned by constraints.txt so no dependency can pull a newer (CUDA) torch.
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "genailab needs Python >= 3.11"'
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/genailab demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

# Side-by-side benchmarks (installs the [bench] extra: scvi-tools; several minutes).
bench: $(STAMP)
	$(PIP) -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_vae_vs_scvi.py
	$(BIN)/python benchmarks/bench_vae_norman.py
	$(BIN)/python benchmarks/bench_synthesis_kang.py
	$(BIN)/python benchmarks/bench_perturb_norman.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
