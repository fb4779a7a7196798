"""The chart without a cluster: `helm lint`, `helm template` of the defaults and of every
ci/*-values.yaml variant, the values schema, the CRD copy, and what the rendered manifests say
(checked against the code that reads them: the streamer's and the operator's settings, the
operator's pod builder)."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART,
    CI_VALUES,
    ROOT,
    container_env,
    docs,
    find,
    helm,
    one,
    render,
    resolved_env,
    template_args,
)

VARIANTS = [None, *CI_VALUES]
VARIANT_IDS = ["defaults", *[p.name.removesuffix("-values.yaml") for p in CI_VALUES]]
NS = "jiomosa"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@functools.cache
def _text(values: Path | None, sets: tuple[str, ...]) -> str:
    return render(NS, [values] if values else [], sets)


def rendered(values: Path | None = None, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return docs(_text(values, sets))


def pod_specs(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in manifests:
        if d["kind"] in ("Deployment", "StatefulSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return out


# ----------------------------------------------------------------------------- lint, template
def test_the_ci_variants_exist() -> None:
    names = {p.name for p in CI_VALUES}
    for expected in ("clusterwide-values.yaml", "ingress-hash-values.yaml",
                     "ingress-cookie-values.yaml", "gateway-values.yaml", "grid-values.yaml",
                     "namespaces-values.yaml", "limits-values.yaml"):
        assert expected in names


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NS]
    if values:
        args += ["-f", str(values)]
    result = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                  "ValidatingAdmissionPolicyBinding")


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_helm_template_renders_well_formed_objects(values: Path | None) -> None:
    manifests = rendered(values)
    assert manifests
    seen = set()
    for d in manifests:
        meta = d["metadata"]
        key = (d["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"rendered twice: {key}"
        seen.add(key)
        assert DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/instance"] == "jio"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/component"] in (
            "operator", "streamer", "redis", "browser", "test")
        if d["kind"] not in CLUSTER_SCOPED:
            assert meta["namespace"], key
    # One template per resource, grouped by component.
    sources = sorted(p.relative_to(CHART / "templates").as_posix()
                     for p in (CHART / "templates").rglob("*.yaml"))
    assert {s.split("/")[0] for s in sources} == {
        "operator", "streamer", "redis", "browser", "tests"}


def test_long_release_names_stay_dns_labels() -> None:
    manifests = docs(render(NS, release="a-very-long-release-name-that-goes-on-and-on-and-on"))
    for d in manifests:
        name = d["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name


# ----------------------------------------------------------------------------- the schema
BAD_VALUES = [
    ("browser.allowedImages[0]=a*b", "browser.allowedImages"),
    (r"browser.allowedImages[0]=a\,b", "browser.allowedImages"),
    ("browser.maxResources.memory=lots", "browser.maxResources.memory"),
    ("browser.allowedNodeSelectors[0]=a=b=c", "browser.allowedNodeSelectors"),
    ("sessions.resourceQuota.hard.pods=many", "sessions.resourceQuota.hard.pods"),
    ("sessions.limitRange.max.cpu=-1", "sessions.limitRange.max.cpu"),
    ("admissionPolicy.enabled=maybe", "admissionPolicy.enabled"),
    ("streamer.backend=local", "streamer.backend"),
    ("image.pullPolicy=Sometimes", "image.pullPolicy"),
    ("image.digest=sha256:abc", "image.digest"),
    ("browser.webdriverPort=0", "browser.webdriverPort"),
    ("browser.vncPort=70000", "browser.vncPort"),
    ("browser.runAsUser=0", "browser.runAsUser"),
    ("browser.resources.requests.memory=lots", "browser.resources.requests.memory"),
    ("browser.shmSize=1 GB", "browser.shmSize"),
    ("operator.watchNamespaces[0]=Not_A_Namespace", "operator.watchNamespaces"),
    ("operator.env.FOO=bar", "operator.env"),
    ("operator.clusterWide=sometimes", "operator.clusterWide"),
    ("streamer.env.JIOMOSA_STORE=memory", "streamer.env"),
    ("streamer.env.PATH=/tmp", "streamer.env"),
    ("streamer.maxSessions=0", "streamer.maxSessions"),
    ("streamer.backend=grid", "streamer.gridUrl"),
    ("streamer.gridUrl=ftp://grid", "streamer.gridUrl"),
    ("streamer.autoscaling.targetCPUUtilizationPercentage=150", "targetCPUUtilization"),
    ("streamer.podDisruptionBudget.maxUnavailable=0", "maxUnavailable"),
    ("streamer.service.type=ExternalName", "streamer.service.type"),
    ("streamer.terminationGracePeriodSeconds=1", "streamer.terminationGracePeriodSeconds"),
    ("streamer.limits.createBurst=0", "streamer.limits.createBurst"),
    ("streamer.limits.frameQualities=90", "streamer.limits.frameQualities"),
    ("streamer.limits.inputPerSecond=-1", "streamer.limits.inputPerSecond"),
    ("streamer.limits.perAddress=1", "Additional property perAddress"),
    ("streamer.trustedProxies[0]=the-ingress", "streamer.trustedProxies"),
    ("streamer.apiKeys.existingSecretKey=a/b", "streamer.apiKeys.existingSecretKey"),
    ("streamer.apiKeys.existingSecret=Not_A_Name", "streamer.apiKeys.existingSecret"),
    ("streamer.env.JIOMOSA_API_KEYS=[]", "streamer.env"),  # keys belong in a Secret
    ("redis.enabled=false", "externalRedis"),
    ("externalRedis.url=http://redis", "externalRedis.url"),
    ("ingress.affinity=sticky", "ingress.affinity"),
    ("ingress.hashBy=$(curl evil)", "ingress.hashBy"),
    ("ingress.host=bad host", "ingress.host"),
    ("httpRoute.enabled=true", "httpRoute.parentRefs"),
    ("httpRoute.sessionPersistence.type=IP", "httpRoute.sessionPersistence.type"),
    ("httpRoute.sessionPersistence.absoluteTimeout=forever",
     "httpRoute.sessionPersistence.absoluteTimeout"),
    ("networkPolicy.browser.blockedIPv4[0]=10.0.0.0/33", "networkPolicy.browser.blockedIPv4"),
    ("networkPolicy.dns.to=null", "networkPolicy.dns: to is required"),
    ("logging.level=LOUD", "logging.level"),
    ("sessions.namespace=Bad_NS", "sessions.namespace"),
    ("tests.timeoutSeconds=5", "tests.timeoutSeconds"),
    ("typo=1", "Additional property typo"),
    ("streamer.replicas=3", "Additional property replicas"),
]


@pytest.mark.parametrize("setting,fragment", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_the_schema_rejects_bad_values(setting: str, fragment: str) -> None:
    result = helm(*template_args(NS, sets=[setting]), check=False)
    assert result.returncode != 0, f"accepted: {setting}"
    assert "don't meet the specifications of the schema" in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def test_inconsistent_values_fail_with_a_message() -> None:
    result = helm(*template_args(NS, sets=["operator.watchNamespaces[0]=elsewhere"]),
                  check=False)
    assert result.returncode != 0
    assert 'must include the sessions namespace "jiomosa"' in result.stderr, result.stderr
    # Cluster-wide, the list only says where browser NetworkPolicies go.
    helm(*template_args(NS, sets=["operator.watchNamespaces[0]=elsewhere",
                                  "operator.clusterWide=true"]))


def test_values_yaml_passes_the_schema_and_every_value_is_in_it() -> None:
    """Both ways: values.yaml validates (helm lint above) and every key of values.yaml is a
    property of the schema, every schema property (but `global`) a key of values.yaml."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    defs = schema["definitions"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        return node

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        props = node.get("properties")
        if not isinstance(value, dict) or props is None or node.get("additionalProperties"):
            return
        assert node.get("additionalProperties") is False, f"{path}: schema is open"
        for key in value:
            assert key in props, f"{path}.{key} is not in the schema"
            walk(value[key], props[key], f"{path}.{key}")
        for key in node.get("required", []):
            assert key in value, f"{path}.{key} is in the schema, not in values.yaml"

    walk(values, schema, "")


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a comment right above it, or sits in a block whose key
    has one (e.g. resources.requests.cpu under a documented `resources`)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for n, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while documented and documented[-1][0] >= indent:
            documented.pop()
        previous = next((lines[k].strip() for k in range(n - 1, -1, -1) if lines[k].strip()),
                        "")
        own = previous.startswith("#")
        inherited = any(d for _, d in documented)
        assert own or inherited, f"values.yaml:{n + 1}: {match.group(2)} has no comment"
        documented.append((indent, own or inherited))


# ----------------------------------------------------------------------------- the CRDs
def test_chart_crds_are_the_top_level_crds() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == top
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/jiomosa/crds/{name} differs from crds/{name}: "
            f"cp crds/{name} charts/jiomosa/crds/")
    with_crds = docs(render(NS, include_crds=True))
    crd = one(with_crds, "CustomResourceDefinition", "browsersessions.jiomosa.io")
    assert crd == yaml.safe_load((ROOT / "crds" / "browsersession.yaml").read_text())


# ----------------------------------------------------------------------------- operator
def operator_settings_of(env: dict[str, str]) -> Any:
    from jiomosa_operator.settings import OperatorSettings, env_var

    known = {env_var(f.name) for f in OperatorSettings.__dataclass_fields__.values()}
    unknown = {k for k in env if k.startswith("JIOMOSA_OPERATOR_") and k not in known}
    assert not unknown, f"the operator does not read {unknown}"
    return OperatorSettings.from_env(env)


def operator_env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    """The operator's environment, its token key read from the Secret the chart renders."""
    return resolved_env(one(manifests, "Deployment", "jio-jiomosa-operator"), manifests)


def test_operator_deployment() -> None:
    manifests = rendered()
    dep = one(manifests, "Deployment", "jio-jiomosa-operator")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "jio-jiomosa-operator"
    [container] = pod["containers"]
    assert container["args"] == ["operator"]
    assert container["image"] == "jiomosa/jiomosa:0.2.0"
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "liveness"}
    assert container["ports"][0] == {"name": "liveness", "containerPort": 8080, "protocol": "TCP"}
    settings = operator_settings_of(operator_env(manifests))
    assert settings.namespaces == (NS,)
    # Agent pods of the jiomosa-browser image (`make images`), a warm pool of 2 here.
    assert (settings.browser_kind, settings.image) == (
        "agent", "jiomosa.local/jiomosa-browser:0.2.0")
    assert (settings.agent_port, settings.run_as_user, settings.run_as_group) == (
        9300, 10001, 10001)
    assert settings.pool_size == 2 and settings.served_pool_namespaces == (NS,)
    assert settings.liveness_port == 8080 and settings.liveness_host == "0.0.0.0"
    assert (settings.cpu_request, settings.memory_request, settings.memory_limit) == (
        "500m", "1Gi", "2Gi")
    assert not settings.trust_port_annotation


def test_the_operators_token_key() -> None:
    """One random key per installation, in a Secret only the operator's pod mounts (its
    ServiceAccount may not read Secrets), or a Secret of the user's."""
    manifests = rendered()
    key = operator_env(manifests)["JIOMOSA_OPERATOR_TOKEN_KEY"]
    assert len(key) == 64 and key.isalnum()
    secret = one(manifests, "Secret", "jio-jiomosa-operator-key", NS)
    assert list(secret["data"]) == ["key"]
    # Every render without a cluster (no lookup) makes a new one.
    assert operator_env(docs(render(NS)))["JIOMOSA_OPERATOR_TOKEN_KEY"] != key
    mounts = [d for d in manifests if d["kind"] in ("Deployment", "StatefulSet", "Pod")
              and "operator-key" in json.dumps(d)]
    assert [d["metadata"]["name"] for d in mounts] == ["jio-jiomosa-operator"]
    own = rendered(sets=("operator.tokenKey.existingSecret=my-key",
                         "operator.tokenKey.existingSecretKey=k"))
    assert not find(own, "Secret", "jio-jiomosa-operator-key")
    [ref] = [e["valueFrom"]["secretKeyRef"] for e in one(own, "Deployment",
             "jio-jiomosa-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
             if e["name"] == "JIOMOSA_OPERATOR_TOKEN_KEY"]
    assert ref == {"name": "my-key", "key": "k"}


def test_selenium_browser_pods_stay_an_alternative() -> None:
    manifests = rendered(CHART / "ci" / "namespaces-values.yaml")
    settings = operator_settings_of(resolved_env(one(manifests, "Deployment",
                                                     "jio-jiomosa-operator"), manifests))
    assert (settings.browser_kind, settings.image, settings.run_as_user) == (
        "selenium", "selenium/standalone-chrome:4.27.0-20241204", 1200)
    assert settings.pool_size == 0
    digest = "sha256:" + "a" * 64
    pinned = operator_settings_of(operator_env(rendered(sets=(
        f"browser.image.digest={digest}",))))
    assert pinned.image == f"jiomosa.local/jiomosa-browser@{digest}"


def test_operator_settings_of_every_variant_parse() -> None:
    for values in VARIANTS:
        manifests = rendered(values)
        for dep in find(manifests, "Deployment", "jio-jiomosa-operator"):
            operator_settings_of(resolved_env(dep, manifests))


def test_operator_namespaces_follow_the_values() -> None:
    cluster = rendered(CHART / "ci" / "clusterwide-values.yaml")
    settings = operator_settings_of(operator_env(cluster))
    assert settings.namespaces == ()  # the whole cluster
    # The pool lives where the streamers create their sessions.
    assert settings.served_pool_namespaces == ("jiomosa-sessions",)
    many = rendered(CHART / "ci" / "namespaces-values.yaml")
    settings = operator_settings_of(operator_env(many))
    assert settings.namespaces == ("jiomosa-sessions", "jiomosa-kiosk")
    assert settings.check_interval == 10.0  # operator.env
    assert settings.allow_hosts == ("intranet.example", "10.20.0.0/16")


OPERATOR_RULES = [
    {"apiGroups": ["jiomosa.io"], "resources": ["browsersessions"],
     "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["jiomosa.io"], "resources": ["browsersessions/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete"]},
]
CLUSTER_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
]
STREAMER_RULES = [{"apiGroups": ["jiomosa.io"], "resources": ["browsersessions"],
                   "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
                  {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_rbac_is_least_privilege() -> None:
    """The exact rules (tests/chart/test_chart_rbac.py shows each is needed): namespaced Roles
    by default, a ClusterRole only when cluster-wide, no wildcards, and of Secrets only the
    operator's `create` and `delete` (viewer and CDP tokens) and the streamer's `get` (the
    CDP tokens, by name): nobody lists them, the operator reads none."""
    manifests = rendered()
    assert not find(manifests, "ClusterRole") and not find(manifests, "ClusterRoleBinding")
    role = one(manifests, "Role", "jio-jiomosa-operator", NS)
    assert role["rules"] == OPERATOR_RULES
    binding = one(manifests, "RoleBinding", "jio-jiomosa-operator", NS)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "jio-jiomosa-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "jio-jiomosa-operator",
                                    "namespace": NS}]
    assert one(manifests, "Role", "jio-jiomosa-streamer", NS)["rules"] == STREAMER_RULES

    cluster = rendered(CHART / "ci" / "clusterwide-values.yaml")
    cr = one(cluster, "ClusterRole")
    assert cr["rules"] == OPERATOR_RULES + CLUSTER_RULES
    assert one(cluster, "ClusterRoleBinding")["subjects"][0]["namespace"] == NS
    assert one(cluster, "Role", "jio-jiomosa-streamer")["metadata"]["namespace"] == (
        "jiomosa-sessions")

    many = rendered(CHART / "ci" / "namespaces-values.yaml")
    roles = find(many, "Role", "jio-jiomosa-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == [
        "jiomosa-kiosk", "jiomosa-sessions"]
    for values in VARIANTS:
        for d in rendered(values):
            for rule in d.get("rules", []):
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                if "secrets" in rule["resources"]:
                    assert rule in (OPERATOR_RULES[-1], STREAMER_RULES[-1]), rule
    # Without backend kubernetes the streamer needs no API access at all.
    grid = rendered(CHART / "ci" / "grid-values.yaml")
    assert not find(grid, "Role") and not find(grid, "RoleBinding")
    pod = one(grid, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


# ----------------------------------------------------------------------------- what authors may ask
def test_browser_limits_reach_the_operator_and_the_admission_policy() -> None:
    """browser.allowedImages, maxResources, allowedNodeSelectors and allowedTolerations become
    both the operator's settings and the admission policy's lists (the policy's behaviour is
    tested on the API server, test_chart_server.py)."""
    manifests = rendered(CHART / "ci" / "limits-values.yaml")
    settings = operator_settings_of(operator_env(manifests))
    assert settings.allowed_images == ("registry.example.com/selenium/standalone-chrome:*",)
    assert (settings.max_cpu, settings.max_memory) == ("2", "3Gi")
    assert settings.allowed_node_selectors == ("pool=browsers", "topology.kubernetes.io/zone")
    assert settings.allowed_tolerations == ("browsers",)
    policy = one(manifests, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["images"]) == [
        "jiomosa.local/jiomosa-browser:0.2.0",
        "registry.example.com/selenium/standalone-chrome:*"]
    assert json.loads(variables["nodeSelectors"]) == ["pool=browsers",
                                                      "topology.kubernetes.io/zone"]
    assert json.loads(variables["tolerations"]) == ["browsers"]
    assert variables["maxima"] == "{'cpu': quantity('2'), 'memory': quantity('3Gi')}"
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"]
    binding = one(manifests, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In",
         "values": ["jiomosa-sessions"]}]
    # Defaults: only the default image, no node selectors or tolerations; cluster-wide, the
    # binding matches every namespace; disabled, nothing.
    defaults = rendered()
    settings = operator_settings_of(operator_env(defaults))
    assert settings.allowed_images == settings.allowed_tolerations == ()
    assert settings.allowed_node_selectors == () and settings.max_memory == "4Gi"
    variables = {v["name"]: v["expression"]
                 for v in one(defaults, "ValidatingAdmissionPolicy")["spec"]["variables"]}
    assert json.loads(variables["images"]) == [settings.image]
    cluster = rendered(CHART / "ci" / "clusterwide-values.yaml")
    assert "matchResources" not in one(cluster, "ValidatingAdmissionPolicyBinding")["spec"]
    off = rendered(sets=("admissionPolicy.enabled=false",))
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
    # One policy per release and namespace: two releases never share a name.
    other = docs(render("elsewhere"))
    assert one(other, "ValidatingAdmissionPolicy")["metadata"]["name"] != (
        one(defaults, "ValidatingAdmissionPolicy")["metadata"]["name"])


def test_resource_quota_and_limit_range_in_the_sessions_namespaces() -> None:
    assert not find(rendered(), "ResourceQuota") and not find(rendered(), "LimitRange")
    manifests = rendered(CHART / "ci" / "limits-values.yaml")
    quota = one(manifests, "ResourceQuota", "jio-jiomosa-sessions", "jiomosa-sessions")
    assert quota["spec"]["hard"] == {
        "count/browsersessions.jiomosa.io": "10", "pods": "12", "requests.cpu": "6",
        "requests.memory": "12Gi", "limits.memory": "24Gi"}
    limits = one(manifests, "LimitRange", "jio-jiomosa-sessions", "jiomosa-sessions")
    assert limits["spec"]["limits"] == [{
        "type": "Container", "max": {"cpu": "2", "memory": "4Gi"},
        "default": {"memory": "2Gi"}, "defaultRequest": {"cpu": "100m", "memory": "256Mi"}}]
    # Every namespace where browser pods run gets them.
    many = rendered(CHART / "ci" / "namespaces-values.yaml",
                    ("sessions.resourceQuota.enabled=true", "sessions.limitRange.enabled=true"))
    for kind in ("ResourceQuota", "LimitRange"):
        assert sorted(q["metadata"]["namespace"] for q in find(many, kind)) == [
            "jiomosa-kiosk", "jiomosa-sessions"]


# ----------------------------------------------------------------------------- streamer
def streamer_settings_of(env: dict[str, str]) -> Any:
    from jiomosa.core.settings import Settings, env_var

    known = {env_var(f) for f in Settings.__dataclass_fields__}
    unknown = {k for k in env if k not in known}
    assert not unknown, f"the streamer does not read {unknown}"
    return Settings.from_env(env)


def test_streamer_deployment() -> None:
    manifests = rendered()
    dep = one(manifests, "Deployment", "jio-jiomosa-streamer")
    spec = dep["spec"]
    assert "replicas" not in spec  # the HPA owns it
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "jio-jiomosa-streamer"
    assert pod["automountServiceAccountToken"] is True
    [container] = pod["containers"]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "5000"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Long enough for the preStop pause, the hand-off and the socket closing (the streamer's
    # own shutdown_timeout is 10 s).
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= sleep + 30
    env = container_env(dep)
    settings = streamer_settings_of(env)
    assert (settings.store, settings.backend, settings.namespace) == ("redis", "kubernetes", NS)
    assert settings.redis_url == "redis://jio-jiomosa-redis.jiomosa.svc:6379/0"
    by_name = {e["name"]: e for e in container["env"]}
    assert by_name["JIOMOSA_STREAMER_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}

    hpa = one(manifests, "HorizontalPodAutoscaler", "jio-jiomosa-streamer")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "jio-jiomosa-streamer"
    assert hpa["spec"]["minReplicas"] == 2
    pdb = one(manifests, "PodDisruptionBudget", "jio-jiomosa-streamer")
    assert pdb["spec"]["selector"]["matchLabels"] == pod_selector(dep)
    svc = one(manifests, "Service", "jio-jiomosa-streamer")
    assert svc["spec"]["selector"] == pod_selector(dep)


def pod_selector(dep: dict[str, Any]) -> dict[str, str]:
    selector: dict[str, str] = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    return selector


def test_streamer_settings_of_every_variant_parse() -> None:
    for values in VARIANTS:
        dep = one(rendered(values), "Deployment", "jio-jiomosa-streamer")
        env = container_env(dep)
        if "JIOMOSA_REDIS_URL" not in env:  # from a Secret
            env["JIOMOSA_REDIS_URL"] = "redis://from-the-secret:6379/0"
        streamer_settings_of(env)
    grid = container_env(one(rendered(CHART / "ci" / "grid-values.yaml"), "Deployment"))
    assert streamer_settings_of(grid).redis_url == "redis://redis.shared.svc:6379/3"
    cookie = one(rendered(CHART / "ci" / "ingress-cookie-values.yaml"), "Deployment",
                 "jio-jiomosa-streamer")
    assert cookie["spec"]["replicas"] == 3
    env = {e["name"]: e for e in cookie["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["JIOMOSA_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "jiomosa-redis", "key": "url"}}
    spread = cookie["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == pod_selector(cookie)
    many = container_env(one(rendered(CHART / "ci" / "namespaces-values.yaml"), "Deployment",
                             "jio-jiomosa-streamer"))
    assert many["JIOMOSA_LEASE_TTL"] == "5" and many["JIOMOSA_NAMESPACE"] == "jiomosa-sessions"


def test_streamer_abuse_limits_and_api_keys(tmp_path: Path) -> None:
    """The chart's limits are the streamer's defaults; every value reaches its JIOMOSA_*
    setting; an API keys Secret is mounted as a directory (no subPath: the kubelet's updates
    reach the file the streamer reads again) and JIOMOSA_API_KEYS_FILE points into it."""
    from jiomosa.core.settings import Settings

    dep = one(rendered(), "Deployment", "jio-jiomosa-streamer")
    defaults = streamer_settings_of(container_env(dep))
    plain = Settings()
    for name in ("creates_per_minute", "create_burst", "sessions_per_address",
                 "input_per_second", "input_burst", "frame_qualities", "connections_per_address",
                 "connects_per_minute", "connect_burst", "messages_per_second", "message_burst",
                 "flood_strikes", "rate_limit_keys", "trusted_proxies", "api_keys_file"):
        assert getattr(defaults, name) == getattr(plain, name), name
    assert not any(v["name"] == "api-keys" for v in dep["spec"]["template"]["spec"]["volumes"])

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"streamer": {
        "trustedProxies": ["10.244.0.0/16", "fd00:10:244::/56"],
        "apiKeys": {"existingSecret": "jiomosa-api-keys", "existingSecretKey": "api.json"},
        "limits": {"createsPerMinute": 0.5, "createBurst": 2, "sessionsPerAddress": 0,
                   "inputPerSecond": 30, "inputBurst": 60, "frameQualities": 2,
                   "connectionsPerAddress": 8, "connectsPerMinute": 1000000, "connectBurst": 4,
                   "messagesPerSecond": 50.5, "messageBurst": 100, "floodStrikes": 0,
                   "rateLimitKeys": 2000000}}}))
    dep = one(rendered(values), "Deployment", "jio-jiomosa-streamer")
    pod = dep["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "jiomosa-api-keys"
    assert volume["secret"]["items"] == [{"key": "api.json", "path": "keys.json"}]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
    assert mount.get("readOnly") is True and "subPath" not in mount
    env = container_env(dep)
    assert env["JIOMOSA_API_KEYS_FILE"] == mount["mountPath"] + "/keys.json"
    # What the kubelet would mount there: the streamer reads it at start.
    keys = tmp_path / "keys.json"
    keys.write_text('[{"name": "kiosk", "sha256": "' + "ab" * 32 + '"}]')
    settings = streamer_settings_of({**env, "JIOMOSA_API_KEYS_FILE": str(keys)})
    assert settings.trusted_proxies == ("10.244.0.0/16", "fd00:10:244::/56")
    assert (settings.creates_per_minute, settings.create_burst, settings.sessions_per_address,
            settings.input_per_second, settings.input_burst, settings.frame_qualities,
            settings.connections_per_address, settings.connects_per_minute,
            settings.connect_burst, settings.messages_per_second, settings.message_burst,
            settings.flood_strikes, settings.rate_limit_keys) == (
        0.5, 2, 0, 30.0, 60, 2, 8, 1e6, 4, 50.5, 100, 0, 2000000)


# ----------------------------------------------------------------------------- redis
def test_redis_statefulset_and_external_redis() -> None:
    manifests = rendered()
    sts = one(manifests, "StatefulSet", "jio-jiomosa-redis")
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7.4-alpine"
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "volumeClaimTemplates" not in sts["spec"]
    persistent = one(rendered(CHART / "ci" / "gateway-values.yaml"), "StatefulSet")
    assert persistent["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {
        "requests": {"storage": "2Gi"}}
    cargs = persistent["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cargs[cargs.index("--appendonly") + 1] == "yes"
    external = rendered(CHART / "ci" / "grid-values.yaml")
    assert not find(external, "StatefulSet") and not find(external, "Service", "jio-jiomosa-redis")


# ----------------------------------------------------------------------------- security
@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_every_pod_is_hardened(values: Path | None) -> None:
    for name, pod in pod_specs(rendered(values)):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["enableServiceLinks"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["privileged"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], name
        if not name.startswith(("Deployment/jio-jiomosa-operator",
                                "Deployment/jio-jiomosa-streamer")):
            assert pod["automountServiceAccountToken"] is False, name


# ----------------------------------------------------------------------------- network policy
def browser_policy(values: Path | None = None, namespace: str = NS) -> dict[str, Any]:
    return one(rendered(values), "NetworkPolicy", "jio-jiomosa-browser", namespace)


def test_browser_policy_selects_the_operators_pods() -> None:
    """The policy's pod selector matches the pods the operator really builds (warm pool pods
    too), and lets the streamers and the operator reach exactly their one port: the agent's
    (or WebDriver's, for Selenium pods; never noVNC but for vncFrom peers)."""
    from jiomosa_operator.builders import build_pod, pool_pod

    manifests = rendered()
    settings = operator_settings_of(operator_env(manifests))
    session = {"metadata": {"name": "lobby", "namespace": NS, "uid": "u-1"},
               "spec": {"url": "https://example.com/"}}
    pod = build_pod(session, settings, "lobby-cdp-abcde")
    policy = one(manifests, "NetworkPolicy", "jio-jiomosa-browser", NS)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector.items() <= pool_pod(NS, "jiomosa-pool-x", settings)[
        "metadata"]["labels"].items()
    # No pod of the chart's own is selected by it.
    for d in manifests:
        if d["kind"] in ("Deployment", "StatefulSet"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items()
    [rule] = policy["spec"]["ingress"]
    ports = [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]]
    assert [p["port"] for p in rule["ports"]] == ports == [9300]
    selenium = rendered(CHART / "ci" / "namespaces-values.yaml")
    se_settings = operator_settings_of(operator_env(selenium))
    se_pod = build_pod({**session, "metadata": {**session["metadata"],
                                                "namespace": "jiomosa-sessions"}}, se_settings)
    se_policy = one(selenium, "NetworkPolicy", "jio-jiomosa-browser", "jiomosa-sessions")
    assert [p["port"] for p in se_policy["spec"]["ingress"][0]["ports"]] == [
        p["containerPort"] for p in se_pod["spec"]["containers"][0]["ports"]
        if p["name"] == "webdriver"] == [4444]
    components = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                  for p in rule["from"]}
    assert components == {"streamer", "operator"}
    for peer in rule["from"]:
        assert peer["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": NS}}
        streamer_or_operator = [d for d in manifests if d["kind"] == "Deployment"
                                and peer["podSelector"]["matchLabels"].items()
                                <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(streamer_or_operator) == 1


def egress_allows(policy: dict[str, Any], address: str, port: int = 443,
                  protocol: str = "TCP") -> bool:
    """NetworkPolicy egress semantics for an ipBlock destination (DNS peers are pods)."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port and p.get("protocol", "TCP") == protocol
                             for p in ports):
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if not block:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if ip.version == net.version and ip in net and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", [])
                    if ipaddress.ip_network(e).version == ip.version):
                return True
    return False


@pytest.mark.parametrize("address,allowed", [
    ("93.184.215.14", True), ("8.8.8.8", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
    ("169.254.169.254", False),  # cloud metadata (AWS, GCP, Azure)
    ("100.100.100.200", False),  # Alibaba metadata (shared address space)
    ("10.96.0.1", False), ("172.20.3.4", False), ("192.168.1.1", False),  # cluster, LAN
    ("127.0.0.1", False), ("0.0.0.0", False), ("100.64.0.10", False),
    ("fd00:ec2::254", False),  # AWS metadata over IPv6
    ("fe80::1", False), ("::1", False), ("64:ff9b::a9fe:a9fe", False),  # NAT64 to metadata
])
def test_browser_egress_blocks_internal_and_metadata_addresses(address: str,
                                                               allowed: bool) -> None:
    assert egress_allows(browser_policy(), address) is allowed


def test_browser_egress_allows_dns_and_extra_rules() -> None:
    policy = browser_policy()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    dns = policy["spec"]["egress"][0]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"] == [{"namespaceSelector": {},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    many = rendered(CHART / "ci" / "namespaces-values.yaml")
    policies = find(many, "NetworkPolicy", "jio-jiomosa-browser")
    assert sorted(p["metadata"]["namespace"] for p in policies) == [
        "jiomosa-kiosk", "jiomosa-sessions"]
    assert egress_allows(policies[0], "10.20.1.1") and not egress_allows(policies[0], "10.0.0.1")
    vnc = policies[0]["spec"]["ingress"][1]
    assert vnc["ports"] == [{"port": 7900, "protocol": "TCP"}]


def test_redis_accepts_only_streamers() -> None:
    manifests = rendered()
    policy = one(manifests, "NetworkPolicy", "jio-jiomosa-redis")
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "streamer"
    assert policy["spec"]["podSelector"]["matchLabels"] == pod_selector(
        one(manifests, "StatefulSet"))
    assert not find(rendered(CHART / "ci" / "grid-values.yaml"), "NetworkPolicy")


# ----------------------------------------------------------------------------- routing
def nginx_location(path: str) -> re.Pattern[str]:
    """How ingress-nginx turns an ImplementationSpecific path under use-regex into a location:
    `location ~* "^<path>"` (PCRE; Python spells named groups (?P<name>...))."""
    return re.compile("^" + path.replace("(?<", "(?P<"), re.IGNORECASE)


def test_ingress_hashes_session_requests_on_the_session_id() -> None:
    manifests = rendered(CHART / "ci" / "ingress-hash-values.yaml")
    main = one(manifests, "Ingress", "jio-jiomosa-streamer")
    sessions = one(manifests, "Ingress", "jio-jiomosa-streamer-sessions")
    ann = sessions["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/use-regex"] == "true"
    hash_by = ann["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert hash_by == "$arg_session_id$jiomosa_sid"
    for ingress in (main, sessions):
        a = ingress["metadata"]["annotations"]
        assert a["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
        assert a["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
        assert "nginx.ingress.kubernetes.io/affinity" not in a
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"] == [{"secretName": "jiomosa-tls",
                                           "hosts": ["jiomosa.example.com"]}]
    # Session paths go to the hashing Service, everything else to the spreading one.
    [rule] = sessions["spec"]["rules"]
    backends = {p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert backends == {"jio-jiomosa-streamer-sessions"}
    assert [p["backend"]["service"]["name"] for p in main["spec"]["rules"][0]["http"]["paths"]
            ] == ["jio-jiomosa-streamer"]
    both = [one(manifests, "Service", n)["spec"]["selector"]
            for n in ("jio-jiomosa-streamer", "jio-jiomosa-streamer-sessions")]
    assert both[0] == both[1]
    # Which requests the session locations take, and the id each one hashes on. Locations are
    # tried longest first, as ingress-nginx orders them.
    locations = sorted((p["path"] for p in rule["http"]["paths"]), key=len, reverse=True)
    variables = set(re.findall(r"\$([A-Za-z0-9_]+)", hash_by))

    def route(uri: str) -> tuple[str, str] | None:
        path, _, query = uri.partition("?")
        args = dict(a.split("=", 1) for a in query.split("&") if "=" in a)
        for loc in locations:
            m = nginx_location(loc).match(path)
            if m:
                # A capture of another location is empty here (ngx.var gives nil).
                values = {v: "" for v in variables}
                values.update({"arg_session_id": args.get("session_id", ""),
                               **{k: v or "" for k, v in m.groupdict().items()}})
                assert set(values) == variables
                key = "".join(values[v] for v in re.findall(r"\$([A-Za-z0-9_]+)", hash_by))
                return loc, key
        return None

    sid = "MMVxRKnv27Nvcvlqmgbq-OAQGMFV2wbm"
    for uri in (f"/api/session/{sid}/frame", f"/api/session/{sid}/stream",
                f"/api/session/{sid}/input/click", f"/api/session/{sid}/close",
                f"/socket.io/?EIO=4&transport=polling&session_id={sid}",
                f"/socket.io/?EIO=4&transport=websocket&sid=abc&session_id={sid}"):
        found = route(uri)
        assert found is not None and found[1] == sid, (uri, found)
    for uri in ("/", "/api/session/create", "/api/sessions", "/health", "/static/app.js"):
        assert route(uri) is None, uri


def test_ingress_cookie_affinity_and_no_affinity() -> None:
    manifests = rendered(CHART / "ci" / "ingress-cookie-values.yaml")
    [ingress] = find(manifests, "Ingress")
    ann = ingress["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == "jiomosa_route"
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in ann
    assert not find(manifests, "Service", "jio-jiomosa-streamer-sessions")
    plain = rendered(sets=("ingress.enabled=true", "ingress.affinity=none"))
    [ingress] = find(plain, "Ingress")
    ann = ingress["metadata"]["annotations"]
    assert not any("affinity" in k or "hash" in k for k in ann)
    assert not find(rendered(), "Ingress")


def test_httproute_with_session_persistence() -> None:
    manifests = rendered(CHART / "ci" / "gateway-values.yaml")
    route = one(manifests, "HTTPRoute", "jio-jiomosa-streamer")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways",
                                            "sectionName": "https"}]
    [rule] = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "jio-jiomosa-streamer", "port": 80}]
    assert rule["sessionPersistence"] == {"type": "Cookie", "sessionName": "jiomosa-route",
                                          "absoluteTimeout": "12h"}
    assert rule["timeouts"] == {"request": "0s"}
    assert not find(manifests, "Ingress")


# ----------------------------------------------------------------------------- helm test
def test_helm_test_pod_creates_a_session_and_fetches_a_frame() -> None:
    manifests = rendered()
    pod = one(manifests, "Pod", "jio-jiomosa-test-session")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    script = container["args"][0]
    compile(script, "helm-test", "exec")  # valid Python
    for step in ("/api/session/create", "/frame", "/close", "b\"\\xff\\xd8\""):
        assert step in script
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BASE"] == "http://jio-jiomosa-streamer.jiomosa.svc:80"
