# Two commands on a fresh machine: `make bench` (the main job) and `make test`.
# Both create .venv on first use and install the project into it.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: pinned CPU torch and tested versions. GPU users: `make bench CONSTRAINTS=`
# keeps the CUDA torch already installed in the environment.
CONSTRAINTS ?= constraints/cpu.txt
PIP_CONSTRAINT_FLAG = $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
BIN = $(VENV)/bin
STAMP = $(VENV)/.servelab-installed

.PHONY: venv bench test lint typecheck unit proto clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINT_FLAG) -e '.[test,load,mlflow]'
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/servelab bench --main-job

lint: $(STAMP)
	$(BIN)/ruff check lab tests benchmarks models
	$(BIN)/ruff format --check lab tests benchmarks models

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

proto: $(STAMP)
	$(BIN)/python -m lab.protocol.gen_proto

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
	find models -mindepth 2 -maxdepth 2 -type d -name '[0-9]*' -exec rm -rf {} +
