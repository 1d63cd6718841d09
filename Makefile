# `make test` and `make figures` set everything up on first use: a .venv in the
# repository root with torch's CPU build where there is no CUDA (torch==2.13.0
# resolves to a CPU wheel on the project's machines; an unpinned torch would
# pull a multi-GB CUDA build), then gradstats in editable mode with its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

TEX_PACKAGES := texlive-latex-base texlive-latex-recommended latexmk

.PHONY: test lint figures paper tex bench clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check gradstats tests analyses benchmarks

test: lint
	$(PY) -m pytest -q -n 2

figures: $(STAMP)
	$(PY) -m analyses.run_all --jobs 0

# The paper builds from the committed figures/ and paper/generated/ (make figures refreshes them).
paper: tex
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -quiet main.tex

tex:
	@command -v latexmk >/dev/null && command -v pdflatex >/dev/null || { \
	  echo "installing $(TEX_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); }

bench: $(STAMP)
	$(PY) benchmarks/exact.py
	$(PY) benchmarks/montecarlo.py

clean-venv:
	rm -rf $(VENV)
