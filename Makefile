# Two commands do everything on a fresh machine (see README):
#   make demo   -- create .venv, install, run the automorphism CLI on the built-in example model
#   make test   -- create .venv, install, run ruff and the default test suite
# The main environment is the CPU wheel of torch (constraints/cpu.txt) with transformers (Hugging Face
# folders need no torchvision). torchvision and timm need torch 2.14.1 here (PyPI's torchvision does not
# import beside the CPU wheel of 2.13.0), so they live in a second environment: make test-models.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MVENV := .venv-models
MBIN := $(MVENV)/bin
MSTAMP := $(MVENV)/.installed

.PHONY: demo test test-slow test-models lint clean

$(STAMP): pyproject.toml constraints/cpu.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e ".[test,experiments,io,hf]"
	@touch $(STAMP)

$(MSTAMP): pyproject.toml constraints/models.txt
	@test -x $(MBIN)/python || $(PY) -m venv $(MVENV)
	$(MBIN)/python -m pip install -q --upgrade pip
	$(MBIN)/python -m pip install -q -c constraints/models.txt -e ".[test,experiments,io,models]"
	@touch $(MSTAMP)

demo: $(STAMP)
	$(BIN)/python -m symgraph.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# torchvision and timm architectures (tests marked 'models'), in .venv-models (torch 2.14.1 + torchvision 0.29.1)
test-models: $(MSTAMP)
	$(MBIN)/python -m pytest -q -m models

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(MVENV) build *.egg-info
