# Two entry points: `make test` and `make reproduce`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= default
OUT    ?= runs/reproduce-$(PRESET)

RUNS   ?= $(patsubst %/,%,$(shell ls -td runs/reproduce-*/ 2>/dev/null | head -1))
INTERVAL ?= ci

.PHONY: test reproduce figures paper test-all bench clean

# torch==2.13.0 first: on these machines it resolves to the local CPU wheel, and installing it
# before the package means no dependency range can pull a multi-GB CUDA build afterwards.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# the library writes summary.json/.md; analysis/ draws the figures from them
reproduce: $(STAMP)
	$(VENV)/bin/mitigate reproduce --preset $(PRESET) --out $(OUT)
	$(PY) -m analysis figures $(OUT)

figures: $(STAMP)
	$(PY) -m analysis figures $(OUT)

# tables, figures and methods text for paper/main.tex from run folders (default: the newest
# runs/reproduce-*), then a PDF when latexmk or pdflatex is installed (README: "Paper")
paper: $(STAMP)
	@test -n "$(RUNS)" || { echo "make paper: no run folder: give RUNS=\"runs/reproduce-default runs/sweeps/...\""; exit 2; }
	$(PY) -m analysis paper $(RUNS) --out paper --interval $(INTERVAL)
	@if command -v latexmk >/dev/null 2>&1; then \
	  cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error main.tex; \
	elif command -v pdflatex >/dev/null 2>&1; then \
	  cd paper && pdflatex -interaction=nonstopmode -halt-on-error main.tex >/dev/null && \
	  pdflatex -interaction=nonstopmode -halt-on-error main.tex; \
	else echo "make paper: sources written to paper/; no latexmk or pdflatex, so no PDF (README: Paper)"; fi

bench: $(STAMP)
	$(PY) benchmarks/sampling.py

clean:
	rm -rf $(VENV) runs
