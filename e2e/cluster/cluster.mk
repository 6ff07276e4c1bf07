# Local cluster targets: a real control plane + kwok GPU nodes + engine metrics simulator
# + Prometheus, all on 127.0.0.1 (docs/cluster.md). Included by the top-level Makefile.
CLUSTER_SH := e2e/cluster/cluster.sh

.PHONY: tools
tools: ## Build or reuse the pinned cluster binaries (cache: ~/.cache/llm-operator)
	@e2e/cluster/tools.sh

.PHONY: cluster-up
cluster-up: $(STAMP) ## Start the local kwok cluster, engine simulator and Prometheus
	@$(CLUSTER_SH) up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and everything it started
	@$(CLUSTER_SH) down

.PHONY: cluster-status
cluster-status: ## Show what of the local cluster runs
	@$(CLUSTER_SH) status

.PHONY: test-real-node
test-real-node: $(STAMP) ## Serve SmolLM2 with the real llama-server on the local cluster's real node
	@$(BIN)/pytest -m real_engine e2e

.PHONY: bench-real-node
bench-real-node: $(STAMP) ## Measured vs predicted TTFT/TPOT/tokens/s of SmolLM2 on the real node (after make demo)
	@$(BIN)/python bench/real_node.py

.PHONY: e2e-kind
e2e-kind: $(STAMP) ## Run the e2e suite on a kind cluster with kwok GPU nodes (needs Docker)
	@e2e/kind/run.sh
