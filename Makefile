# Two commands do everything on a fresh machine (see README):
#   make demo   -- create .venv, install, run the automorphism CLI on the built-in example model
#   make test   -- create .venv, install, run the test suite (+ ruff)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-torchvision lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to the CPU wheel that lies on the machine; install it first so nothing pulls a CUDA build
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,experiments,io]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m symgraph.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Optional: torchvision models (resnet18, VisionTransformer). On this machine torchvision needs torch 2.14.1, so
# it lives in its own environment; the project is installed there without its torch==2.13.0 pin (--no-deps).
TVENV := .venv-tv
test-torchvision:
	@test -x $(TVENV)/bin/python || $(PY) -m venv $(TVENV)
	$(TVENV)/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(TVENV)/bin/python -m pip install -q torch-geometric networkx pynauty sympy matplotlib tqdm numpy pytest hypothesis scipy scikit-learn
	$(TVENV)/bin/python -m pip install -q --no-deps -e .
	$(TVENV)/bin/python -m pytest -q tests/test_models.py -k torchvision

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(TVENV) build *.egg-info
