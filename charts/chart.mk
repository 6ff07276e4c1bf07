# Chart and install manifests (included from the top-level Makefile).

.PHONY: manifests
manifests: $(STAMP) ## Regenerate manifests/install.yaml, manifests/examples/ and the chart's CRD copy
	$(BIN)/python charts/render_manifests.py

.PHONY: manifests-check
manifests-check: $(STAMP) ## Fail when manifests/ or the chart's CRD copy is out of date
	$(BIN)/python charts/render_manifests.py --check
