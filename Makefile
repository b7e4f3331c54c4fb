# Everything a fresh machine needs: `make run` and `make test` create .venv and install.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later can pull a CUDA build
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/analogpipe reproduce --quick --out runs/quick

test: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -m "not slow"
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

bench: $(STAMP)
	$(VENV)/bin/analogpipe bench

clean:
	rm -rf $(VENV) runs
