# llm-operator developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help
help: ## List the targets with their descriptions
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create .venv and install the package with its test extras

.PHONY: lint
lint: $(STAMP) ## ruff, mypy (strict on pure packages) and the import contracts
	$(BIN)/ruff check operator tests e2e bench charts
	$(BIN)/ruff format --check operator tests e2e bench charts
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix operator tests e2e bench charts
	$(BIN)/ruff format operator tests e2e bench charts

.PHONY: unit
unit: $(STAMP) tools contracts-env ## Unit tests (no cluster; the chart tests need the pinned helm)
	$(BIN)/pytest tests

.PHONY: test
test: lint tools contracts-env $(STAMP) ## Everything: lint, unit tests and e2e tests on the local cluster
	@$(BIN)/pytest tests e2e --durations=30; code=$$?; \
	  if [ $$code -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	  exit $$code

.PHONY: contracts-env
contracts-env: ## Build or reuse the vLLM v0.12.0 env of the engine contract tests (cache: ~/.cache/llm-operator)
	@e2e/contracts/vllm_env.sh >/dev/null

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ from the pydantic models
	$(BIN)/llmctl crd > crds/serving.llm-operator.io_llmdeployments.yaml

.PHONY: demo
demo: $(STAMP) tools ## The operator on the local cluster: plan, place, serve and autoscale the examples
	@e2e/cluster/cluster.sh up
	@$(BIN)/python e2e/demo.py

.PHONY: plans
plans: $(STAMP) ## Plan every bundled example offline (no cluster)
	@for f in examples/*.yaml; do echo "== $$f"; $(BIN)/llmctl plan -f $$f || exit 1; done

include e2e/cluster/cluster.mk
include charts/chart.mk

.PHONY: golden
golden: $(STAMP) ## Regenerate the renderer's golden files (review the diff)
	$(BIN)/python tests/regen_golden.py
