# Container images built on this machine from Debian packages (mmdebstrap) and PyPI wheels,
# no registry (tools/images/build.sh, images/README.md). Cached in
# $(JIOMOSA_CACHE)/images by a content hash; the last lines printed are the OCI archives.

IMAGE_APT_PACKAGES := mmdebstrap gcc libc6-dev
IMAGES ?= jiomosa jiomosa-browser

.PHONY: images images-deps bench-images bench-agent

images-deps:
	@missing=""; for p in $(IMAGE_APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing; \
	fi

images: images-deps venv
	@bash tools/images/build.sh $(IMAGES)

# Image sizes and the browser pod's start -> /readyz under runc (bench/images.py).
bench-images: images
	@command -v runc >/dev/null || (apt-get update -qq && apt-get install -y -qq runc)
	$(PY) bench/images.py $$(bash tools/images/build.sh $(IMAGES) 2>/dev/null)

# Screencast fps through a browser pod's agent (CDP proxy, token) against local mode.
bench-agent: setup
	$(PY) bench/agent.py
