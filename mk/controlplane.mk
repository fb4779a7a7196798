# Local Kubernetes control plane for tests (kube-apiserver, etcd, kubectl built
# from Go modules; see tools/controlplane/README.md). Included by the Makefile.
# Cached in $(JIOMOSA_CACHE)/controlplane/<k8s-version>/ (default
# /var/cache/jiomosa); a no-op when already built. Cold build: ~5 min.

.PHONY: controlplane test-kube

controlplane:
	bash tools/controlplane/build.sh

# Just the control-plane tests (tests/kube); PY comes from the top Makefile.
test-kube: controlplane venv
	$(PY) -m pytest tests/kube -q $(PYTEST_ARGS)
