# Operator and Kubernetes-backend tests (tests/operator; docs/operator.md). Included by the
# Makefile. They need the control plane binaries (mk/controlplane.mk) and Chromium.

.PHONY: test-operator run-operator

test-operator: controlplane setup
	$(PY) -m pytest tests/operator -q $(PYTEST_ARGS)

# Against the cluster of $KUBECONFIG (the CRD must be applied: crds/browsersession.yaml).
run-operator: venv
	$(VENV)/bin/jiomosa operator
