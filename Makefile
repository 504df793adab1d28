# Two entry points: `make test` and `make reproduce`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= default
OUT    ?= runs/reproduce-$(PRESET)

.PHONY: test reproduce figures test-all bench clean

# torch==2.13.0 first: on these machines it resolves to the local CPU wheel, and installing it
# before the package means no dependency range can pull a multi-GB CUDA build afterwards.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
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

bench: $(STAMP)
	$(PY) benchmarks/sampling.py

clean:
	rm -rf $(VENV) runs
