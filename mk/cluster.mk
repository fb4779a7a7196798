# A real single-node Kubernetes cluster on this machine (tools/cluster/README.md,
# docs/deploy.md): `make cluster` builds what is missing (cached under $(JIOMOSA_CACHE)),
# starts the node, installs the chart and the sticky nginx front, and prints KUBECONFIG=...
# last. `make cluster-down` removes every trace of it. The e2e suite (tests/e2e, part of
# `make test`) starts and stops it by itself.

CLUSTER_APT_PACKAGES := containerd runc containernetworking-plugins iptables nginx conntrack \
	mmdebstrap gcc libc6-dev openssl

.PHONY: cluster cluster-down cluster-status cluster-deps cluster-build cluster-prereqs e2e-local \
	bench-cluster

cluster-deps:
	@missing=""; for p in $(CLUSTER_APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing; \
	fi

# kubelet, kube-proxy, kube-scheduler, kube-controller-manager and CoreDNS (cold: ~5 min).
cluster-build: cluster-deps controlplane
	@bash tools/cluster/build.sh >/dev/null

# Everything the cluster needs built, so that starting it is quick.
cluster-prereqs: cluster-build images

cluster: cluster-prereqs helm
	@python3 tools/cluster/cluster.py up

cluster-down:
	@python3 tools/cluster/cluster.py down

cluster-status:
	@python3 tools/cluster/cluster.py status

# Just the e2e suite on the local node (started and stopped around it unless already up).
e2e-local: cluster-prereqs setup
	$(PY) -m pytest tests/e2e -v -s $(PYTEST_ARGS)

# Figures on the real node (docs/performance.md): BrowserSession -> first frame, warm and
# cold, pod scheduled -> agent ready, fps and click -> frame through the front, memory per
# browser pod, sessions held before creation is refused.
bench-cluster: cluster-prereqs setup
	$(PY) bench/cluster.py
