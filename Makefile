# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch must come from the CPU wheel on local disk; installing it first, pinned,
# keeps every later resolution from reaching for a CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test test-fast serve install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[serve]" $(TORCH)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]" $(TORCH)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/medinfer demo

# The DICOM inference service with the shipped models, SQLite under runs/serve.
serve: install
	$(BIN)/medinfer serve --config config/serve.example.yaml

test: install-test
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (optimize/quantize, torchrun, Orthanc, browser).
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
