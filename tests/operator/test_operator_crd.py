"""The CRD in a real API server: defaults, validation (kubectl apply of bad specs fails),
immutability, printer columns. No operator needed."""

from __future__ import annotations

import json

import pytest
from op_harness import Kube, session_manifest


@pytest.mark.parametrize("spec,fragment", [
    ({"viewport": {"width": 50}}, "spec.viewport.width"),
    ({"viewport": {"width": "wide"}}, "spec.viewport.width"),
    ({"viewport": {"height": 5000}}, "spec.viewport.height"),
    ({"viewport": {"width": 3840, "height": 2160, "deviceScaleFactor": 2}},
     "larger than 3840x2160"),
    ({"viewport": {"deviceScaleFactor": 0}}, "at deviceScaleFactor 0.5"),
    ({"viewport": {"deviceScaleFactor": 0.25}}, "spec.viewport.deviceScaleFactor"),
    ({"viewport": {"widht": 800}}, "unknown field"),
    ({"url": "file:///etc/passwd"}, "spec.url"),
    ({"url": "javascript:alert(1)"}, "spec.url"),
    ({"userAgent": "bad\u0007agent"}, "spec.userAgent"),
    ({"idleTimeoutSeconds": -5}, "spec.idleTimeoutSeconds"),
    ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
    ({"tolerations": [{"operator": "Maybe"}]}, "spec.tolerations[0].operator"),
    ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory"),
])
def test_kubectl_apply_of_a_bad_spec_fails(kube: Kube, namespace: str, spec: dict[str, object],
                                           fragment: str) -> None:
    result = kube.kubectl("apply", "--validate=strict", "-f", "-",
                          input=session_manifest("bad", namespace, **spec), check=False)
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr
    assert kube.session(namespace, "bad") is None


def test_defaults_immutability_and_columns(kube: Kube, namespace: str) -> None:
    ns = namespace
    kube.apply(session_manifest("plain", ns, url="https://example.com/"))
    spec = (kube.session(ns, "plain") or {})["spec"]
    assert spec == {"url": "https://example.com/", "idleTimeoutSeconds": 300,
                    "maxDurationSeconds": 3600,
                    "viewport": {"width": 1280, "height": 720, "deviceScaleFactor": 1.0,
                                 "mobile": False}}
    # Only url and the timeouts change after creation.
    for patch, fragment in [({"viewport": {"width": 800}}, "viewport is immutable"),
                            ({"image": "other:1"}, "may change"),
                            ({"userAgent": "x"}, "may change")]:
        result = kube.kubectl("patch", "bs", "plain", "-n", ns, "--type=merge", "-p",
                              json.dumps({"spec": patch}), check=False)
        assert result.returncode != 0 and fragment in result.stderr, result.stderr
    kube.kubectl("patch", "bs", "plain", "-n", ns, "--type=merge", "-p",
                 json.dumps({"spec": {"url": "https://example.org/", "idleTimeoutSeconds": 60}}))
    assert (kube.session(ns, "plain") or {})["spec"]["url"] == "https://example.org/"
    # The short name and the printer columns (no operator here: no phase, no pod yet).
    table = kube.kubectl("get", "bs", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "URL", "POD", "AGE"]
    assert table[1].split()[:2] == ["plain", "https://example.org/"]
    names = kube.kubectl("get", "browsersessions.jiomosa.io", "-n", ns, "-o", "name").stdout
    assert names.split() == ["browsersession.jiomosa.io/plain"]
