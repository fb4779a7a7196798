"""The sticky front of the local cluster (tools/cluster/front.py, front_config.py): the
nginx.conf it renders from the chart's Ingresses (rendered by `helm template`, so these tests
follow the chart), what Debian's nginx says about that file, and real nginx in front of two
stand-in streamer pods keeping every request of one session on one pod."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
NGINX = "/usr/sbin/nginx"
NS = "demo"
STREAMER = "jio-jiomosa-streamer"
SESSIONS = "jio-jiomosa-streamer-sessions"
UP_STREAMER = f"{NS}-{STREAMER}-http"
UP_SESSIONS = f"{NS}-{SESSIONS}-http"
SESSION_RE = '~* "^/api/session/(?<jiomosa_sid>[^/]+)/"'
needs_nginx = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason=f"{NGINX} is missing")


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "tools" / "cluster"))  # front.py imports front_config
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "cluster" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fc = _load("front_config")  # the pure plan and rendering
front = _load("front")  # the runner (nginx)


# ----------------------------------------------------------------------------- inputs
@functools.cache
def _chart(*sets: str) -> tuple[dict[str, Any], ...]:
    fetch = subprocess.run(["bash", str(ROOT / "tools" / "chart" / "fetch.sh"), "helm"],
                           capture_output=True, text=True, timeout=600, check=True)
    helm = fetch.stdout.strip().splitlines()[-1]
    args = [helm, "template", "jio", str(ROOT / "charts" / "jiomosa"), "--namespace", NS,
            "--set", "ingress.enabled=true"]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def chart_ingresses(*sets: str) -> list[dict[str, Any]]:
    return [d for d in _chart(*sets) if d["kind"] == "Ingress"]


def endpoint_slice(service: str, endpoints: Sequence[tuple[str, bool | None]], port: int = 8080,
                   name: str = "x") -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice of a chart Service, its ports named as the
    Service's (ready None: no `ready` condition at all)."""
    svc = next(d for d in _chart() if d["kind"] == "Service" and d["metadata"]["name"] == service)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{service}-{name}", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": service}},
        "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"},
                  *({"name": p["name"], "port": port, "protocol": "TCP"}
                    for p in svc["spec"]["ports"])],
        "endpoints": [{"addresses": [ip], **({} if ready is None else
                                            {"conditions": {"ready": ready}})}
                      for ip, ready in endpoints],
    }


def slices_for(endpoints: Sequence[tuple[str, bool | None]], port: int = 8080,
               ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {(NS, svc): [endpoint_slice(svc, endpoints, port)] for svc in (STREAMER, SESSIONS)}


def render(ingresses: list[dict[str, Any]], slices: dict[tuple[str, str], list[dict[str, Any]]],
           prefix: str = "/run/front", listen: str = "127.0.0.1:8480") -> str:
    text: str = fc.render(ingresses, slices, listen, f"{prefix}/nginx.pid", prefix)
    return text


def locations(text: str) -> list[str]:
    return re.findall(r"^\s*location (.+) \{$", text, re.M)


def block(text: str, head: str) -> str:
    """The body of the first `head {` block (blocks nest only one level below it here)."""
    start = text.index(head + " {")
    depth, i = 0, start
    while True:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1


def server_blocks(text: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^    server \{$", text, re.M):
        body = block(text[m.start():], "server")
        name = re.search(r"server_name (\S+);", body)
        assert name is not None
        out[name.group(1)] = body
    return out


def simple_ingress(name: str, paths: list[tuple[str, str]], annotations: dict[str, str],
                   created: str = "2024-01-01T00:00:00Z", host: str | None = None,
                   class_name: str = "nginx") -> dict[str, Any]:
    rule: dict[str, Any] = {"http": {"paths": [
        {"path": path, "pathType": ptype,
         "backend": {"service": {"name": STREAMER, "port": {"name": "http"}}}}
        for path, ptype in paths]}}
    if host:
        rule["host"] = host
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created,
                         "annotations": annotations},
            "spec": {"ingressClassName": class_name, "rules": [rule]}}


# ----------------------------------------------------------------------------- the plan
def test_upstreams_follow_the_chart_and_the_ready_endpoints() -> None:
    slices = slices_for([("10.1.0.5", True), ("10.1.0.6", False), ("10.1.0.7", None)])
    slices[(NS, SESSIONS)].append(endpoint_slice(SESSIONS, [("10.1.0.8", True),
                                                            ("10.1.0.5", True)], name="y"))
    plan = fc.plan(chart_ingresses(), slices)
    assert plan.upstreams == (
        fc.Upstream(UP_STREAMER, NS, STREAMER, "http", None,
                       ("10.1.0.5:8080", "10.1.0.7:8080")),
        fc.Upstream(UP_SESSIONS, NS, SESSIONS, "http", "$arg_session_id$jiomosa_sid",
                       ("10.1.0.5:8080", "10.1.0.7:8080", "10.1.0.8:8080")),
    )
    assert plan.notes == ()


def test_hash_by_consistent_only_on_the_sessions_upstream() -> None:
    text = render(chart_ingresses(), slices_for([("10.1.0.5", True), ("10.1.0.6", True)]))
    sessions = block(text, f"upstream {UP_SESSIONS}")
    streamer = block(text, f"upstream {UP_STREAMER}")
    assert "hash $arg_session_id$jiomosa_sid consistent;" in sessions
    assert "hash " not in streamer
    for up in (sessions, streamer):
        assert re.findall(r"server (\S+) max_fails=1 fail_timeout=5s;", up) == [
            "10.1.0.5:8080", "10.1.0.6:8080"]


def test_use_regex_turns_every_path_of_the_host_into_an_ordered_regex() -> None:
    text = render(chart_ingresses(), slices_for([("10.1.0.5", True)]))
    assert locations(text) == [SESSION_RE, '~* "^/socket.io/"', '~* "^/"']
    server = block(text, "server")
    assert "listen 127.0.0.1:8480 default_server;" in server
    assert "server_name _;" in server
    assert f"proxy_pass http://{UP_SESSIONS};" in block(text, f"location {SESSION_RE}")
    assert f"proxy_pass http://{UP_SESSIONS};" in block(text, 'location ~* "^/socket.io/"')
    assert f"proxy_pass http://{UP_STREAMER};" in block(text, 'location ~* "^/"')


def test_location_settings_from_the_chart_annotations() -> None:
    text = render(chart_ingresses("ingress.timeoutSeconds=900", "ingress.bodySize=8m"),
                  slices_for([("10.1.0.5", True)]))
    for head in (SESSION_RE, '~* "^/socket.io/"', '~* "^/"'):
        loc = block(text, f"location {head}")
        for line in ("proxy_read_timeout 900s;", "proxy_send_timeout 900s;",
                     "client_max_body_size 8m;", "proxy_buffering off;",
                     "proxy_request_buffering off;", "proxy_http_version 1.1;",
                     "proxy_set_header Upgrade $http_upgrade;",
                     "proxy_set_header Connection $connection_upgrade;",
                     "proxy_set_header Host $best_http_host;",
                     "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                     "proxy_set_header X-Forwarded-Proto $scheme;",
                     "proxy_set_header X-Forwarded-Host $best_http_host;",
                     "proxy_next_upstream error timeout http_502 http_503;",
                     "proxy_next_upstream_tries 3;"):
            assert line in loc, (head, line)
    assert "map $http_upgrade $connection_upgrade {" in text


def test_defaults_without_annotations_are_ingress_nginx_defaults() -> None:
    ing = simple_ingress("plain", [("/", "Prefix")], {})
    loc = block(render([ing], slices_for([("10.1.0.5", True)])), "location /")
    for line in ("proxy_read_timeout 60s;", "proxy_send_timeout 60s;",
                 "proxy_connect_timeout 5s;", "client_max_body_size 1m;"):
        assert line in loc


def test_without_hash_affinity_the_chart_gets_plain_prefix_locations() -> None:
    ingresses = chart_ingresses("ingress.affinity=none")
    assert [i["metadata"]["name"] for i in ingresses] == [STREAMER]
    text = render(ingresses, slices_for([("10.1.0.5", True)]))
    assert locations(text) == ["/"]
    assert not re.search(r"^\s*hash ", text, re.M)


def test_cookie_affinity_is_reported_as_unsupported() -> None:
    plan = fc.plan(chart_ingresses("ingress.affinity=cookie"), slices_for([]))
    assert plan.notes == (
        f"{NS}/{STREAMER}: annotations not supported here: affinity, affinity-mode, "
        "session-cookie-max-age, session-cookie-name, session-cookie-path",)
    assert "# demo/jio-jiomosa-streamer: annotations not supported here: affinity" in \
        fc.render_plan(plan, "127.0.0.1:8480", "/r/nginx.pid", "/r")


def test_prefix_paths_as_ingress_nginx_expands_them() -> None:
    ing = simple_ingress("plain", [("/", "Prefix"), ("/app", "Prefix"), ("/exact", "Exact"),
                                   ("/docs/", "Prefix")], {})
    assert locations(render([ing], slices_for([("10.1.0.5", True)]))) == [
        "= /exact", "/docs/", "= /docs/", "/app/", "= /app", "/"]


def test_first_ingress_wins_a_path_and_other_classes_are_ignored() -> None:
    old = simple_ingress("old", [("/", "Prefix")], {"nginx.ingress.kubernetes.io/"
                                                    "proxy-read-timeout": "11"},
                         created="2024-01-01T00:00:00Z")
    new = simple_ingress("new", [("/", "Prefix")], {}, created="2024-06-01T00:00:00Z")
    other = simple_ingress("other", [("/other", "Prefix")], {}, class_name="traefik")
    plan = fc.plan([new, other, old], slices_for([("10.1.0.5", True)]))
    assert [(s.host, [(loc.match, loc.source) for loc in s.locations]) for s in plan.servers] \
        == [("_", [("/", f"{NS}/old")])]
    assert ("proxy_read_timeout", "11s") in plan.servers[0].locations[0].directives
    assert plan.notes == (f"{NS}/new: _/ is already defined, skipped",)


def test_hosts_get_their_own_server_and_unknown_hosts_404() -> None:
    ing = simple_ingress("hosted", [("/", "Prefix")], {}, host="Front.Example.test")
    text = render([ing], slices_for([("10.1.0.5", True)]))
    servers = server_blocks(text)
    assert list(servers) == ["front.example.test", "_"]
    assert "listen 127.0.0.1:8480;" in servers["front.example.test"]
    assert f"proxy_pass http://{UP_STREAMER};" in servers["front.example.test"]
    assert "listen 127.0.0.1:8480 default_server;" in servers["_"]
    assert locations(servers["_"]) == ["/"]
    assert "return 404;" in servers["_"]


def test_no_ready_endpoint_keeps_a_placeholder_and_answers_503() -> None:
    text = render(chart_ingresses(), slices_for([("10.1.0.5", False)]))
    assert "server 127.0.0.1:1 down;" in block(text, f"upstream {UP_SESSIONS}")
    loc = block(text, f"location {SESSION_RE}")
    assert "return 503;" in loc
    assert "proxy_pass" not in loc


def test_port_by_name_picks_the_target_port_of_that_name_ipv6_and_fqdn() -> None:
    sl = endpoint_slice(STREAMER, [("fd00::5", True)], port=8081)
    sl["endpoints"].append({"addresses": ["pod.example"], "conditions": {"ready": True}})
    plan = fc.plan([simple_ingress("v6", [("/", "Prefix")], {})], {(NS, STREAMER): [sl]})
    assert plan.upstreams[0].servers == ("[fd00::5]:8081",)


def test_unsafe_values_never_reach_the_config() -> None:
    ing = simple_ingress("evil", [("/x\n}", "Prefix"), ('/a"b\\d', "ImplementationSpecific")],
                         {"nginx.ingress.kubernetes.io/proxy-read-timeout": "1; evil",
                          "nginx.ingress.kubernetes.io/upstream-hash-by": "$a; include /x",
                          "nginx.ingress.kubernetes.io/use-regex": "true"})
    plan = fc.plan([ing], slices_for([("10.1.0.5", True)]))
    assert [loc.match for loc in plan.servers[0].locations] == ['~* "^/a\\"b\\\\d"']
    assert ("proxy_read_timeout", "60s") in plan.servers[0].locations[0].directives
    assert plan.upstreams[0].hash_by is None
    assert len(plan.notes) == 3, plan.notes
    text = fc.render_plan(plan, "127.0.0.1:1", "/r/p", "/r")
    directives = [line for line in text.splitlines() if not line.strip().startswith("#")]
    assert not [line for line in directives if "evil" in line or "include" in line]


def test_describe_names_every_upstream_and_its_servers() -> None:
    plan = fc.plan(chart_ingresses(), slices_for([("10.1.0.5", True)]))
    assert fc.describe(plan) == (
        f"{UP_STREAMER} (round robin): 10.1.0.5:8080; "
        f"{UP_SESSIONS} (hash $arg_session_id$jiomosa_sid): 10.1.0.5:8080")


# ----------------------------------------------------------------------------- real nginx
def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NGINX, "-t", "-c", str(conf), "-p", f"{prefix}/"],
                          capture_output=True, text=True, timeout=30, check=False)


@needs_nginx
@pytest.mark.parametrize("sets", [(), ("ingress.affinity=none",), ("ingress.affinity=cookie",)])
def test_nginx_accepts_the_rendered_file(tmp_path: Path, sets: tuple[str, ...]) -> None:
    for endpoints in ([("10.1.0.5", True), ("10.1.0.6", True)], []):
        conf = tmp_path / "nginx.conf"
        conf.write_text(render(chart_ingresses(*sets), slices_for(endpoints), str(tmp_path)))
        proc = nginx_test(conf, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "test is successful" in proc.stderr


@needs_nginx
def test_nginx_needs_the_named_capture_for_the_hash(tmp_path: Path) -> None:
    # the check above means something: without the regex location $jiomosa_sid is unknown
    text = render(chart_ingresses(), slices_for([("10.1.0.5", True)]), str(tmp_path))
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("(?<jiomosa_sid>[^/]+)", "[^/]+"))
    proc = nginx_test(conf, tmp_path)
    assert proc.returncode != 0
    assert 'unknown "jiomosa_sid" variable' in proc.stderr


@needs_nginx
def test_install_keeps_the_last_good_config(tmp_path: Path) -> None:
    nginx = front.Nginx(NGINX, tmp_path)
    good = render(chart_ingresses(), slices_for([("10.1.0.5", True)]), str(tmp_path))
    assert nginx.install(good) is None
    assert nginx.install(good.replace("worker_processes 1;", "worker_processes x;")) is not None
    assert (tmp_path / "nginx.conf").read_text() == good
    assert sorted(p.name for p in tmp_path.glob("nginx.conf*")) == ["nginx.conf"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Pod:
    """A stand-in streamer pod: answers who it is, on HTTP and on a websocket."""

    name: str
    addr: str


async def _pod(host: str) -> tuple[web.AppRunner, Pod]:
    sock = socket.socket()
    sock.bind((host, 0))
    pod = Pod(f"pod-{host}", f"{host}:{sock.getsockname()[1]}")

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_json({"pod": pod.name, "path": request.path_qs})
            await ws.close()
            return ws
        return web.json_response({"pod": pod.name, "path": request.path_qs,
                                  "host": request.headers.get("Host"),
                                  "xff": request.headers.get("X-Forwarded-For")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, pod


@contextlib.contextmanager
def running_nginx(conf: Path, prefix: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", f"{prefix}/", "-g", "daemon off;"],
                            start_new_session=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], prefix: Path) -> None:
    for _ in range(100):
        assert proc.poll() is None, (prefix / "error.log").read_text()
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nginx does not listen on {port}")


@pytest.fixture
async def pods() -> AsyncIterator[list[Pod]]:
    started = [await _pod("127.0.0.2"), await _pod("127.0.0.3")]
    yield [pod for _, pod in started]
    for runner, _ in started:
        await runner.cleanup()


@needs_nginx
@pytest.mark.timeout(20)
async def test_real_nginx_keeps_a_session_on_one_pod(tmp_path: Path, pods: list[Pod]) -> None:
    # the pods listen on ports of their own, so each gets a slice of its own (as pods whose
    # named port differs do)
    slices = {(NS, svc): [endpoint_slice(svc, [(p.addr.split(":")[0], True)],
                                         port=int(p.addr.split(":")[1]), name=p.name)
                          for p in pods]
              for svc in (STREAMER, SESSIONS)}
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(chart_ingresses(), slices, str(tmp_path), f"127.0.0.1:{port}"))
    base = f"http://127.0.0.1:{port}"
    by_name = {p.name: p for p in pods}

    with running_nginx(conf, tmp_path) as proc:
        await _wait_listening(port, proc, tmp_path)
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> dict[str, Any]:
                async with http.get(base + path) as resp:
                    assert resp.status == 200, await resp.text()
                    body: dict[str, Any] = await resp.json()
                    return body

            owners: dict[str, str] = {}
            for i in range(24):
                sid = f"session-{i:02d}"
                frame = await get(f"/api/session/{sid}/frame")
                assert frame["path"] == f"/api/session/{sid}/frame"
                owners[sid] = frame["pod"]
            assert set(owners.values()) == set(by_name), owners  # spread over both pods

            for sid in list(owners)[:6]:
                polling = await get(f"/socket.io/?session_id={sid}&EIO=4&transport=polling")
                assert polling["pod"] == owners[sid], sid
                async with http.ws_connect(f"{base}/api/session/{sid}/stream") as ws:
                    hello = await ws.receive_json(timeout=5)
                assert hello == {"pod": owners[sid], "path": f"/api/session/{sid}/stream"}
                again = await get(f"/api/session/{sid}/frame")
                assert again["pod"] == owners[sid]

            listing = await get("/api/sessions")
            assert listing["pod"] in by_name
            assert listing["host"] == f"127.0.0.1:{port}"
            assert listing["xff"] == "127.0.0.1"

    # the access log tells which pod (upstream_addr) and which upstream got each request
    entries = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    by_uri = {e["request_uri"]: e for e in entries}
    frame = by_uri["/api/session/session-00/frame"]
    assert frame["upstream"] == UP_SESSIONS
    assert frame["upstream_addr"] == by_name[owners["session-00"]].addr
    assert by_uri["/api/sessions"]["upstream"] == UP_STREAMER
    assert by_uri["/api/sessions"]["upstream_addr"] == by_name[listing["pod"]].addr
    ws_entry = by_uri["/api/session/session-00/stream"]
    assert ws_entry["status"] == "101"
    assert ws_entry["upstream_addr"] == by_name[owners["session-00"]].addr
