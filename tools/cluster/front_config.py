"""What the sticky front (front.py) renders, as pure functions: the `ingressClassName: nginx`
Ingresses and the EndpointSlices of their Services -> a plan (upstreams, servers, locations) ->
one nginx.conf, the way ingress-nginx renders them (upstream names, location order, use-regex,
upstream-hash-by and the proxy-* annotations). tests/cluster/test_front_render.py checks them
without a cluster, and with a real nginx.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLASS_NAME = "nginx"
ANN = "nginx.ingress.kubernetes.io/"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NGINX = "/usr/sbin/nginx"
# With no ready endpoint the upstream keeps a placeholder (nginx rejects an empty upstream)
# and its locations answer 503 themselves, as ingress-nginx does.
PLACEHOLDER = "127.0.0.1:1"

_TIME = re.compile(r"^\d+(ms|s|m|h|d)?$")
_OFFSET = re.compile(r"^\d+[kKmMgG]?$")  # client_max_body_size takes an offset (g allowed)
_SIZE = re.compile(r"^\d+[kKmM]?$")
_INT = re.compile(r"^\d+$")
_NEXT_UPSTREAM = {"error", "timeout", "invalid_header", "http_500", "http_502", "http_503",
                  "http_504", "http_403", "http_404", "http_429", "non_idempotent", "off"}
_HASH_BY = re.compile(r"^[A-Za-z0-9_$.:/-]+$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9/_.~%-]*$")
_LISTEN = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


# ---------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Upstream:
    name: str  # ingress-nginx's: <namespace>-<service>-<port name or number>
    namespace: str
    service: str
    port: str
    hash_by: str | None  # None: round robin
    servers: tuple[str, ...]  # ready endpoints, "IP:PORT", sorted


@dataclass(frozen=True)
class Location:
    match: str  # what follows `location`: '~* "^/x"', '= /x' or '/x/'
    upstream: str
    directives: tuple[tuple[str, str], ...]  # from the annotations, with ingress-nginx defaults
    source: str  # namespace/name of the Ingress


@dataclass(frozen=True)
class Server:
    host: str  # "_" = any host (the default server)
    locations: tuple[Location, ...]


@dataclass(frozen=True)
class Plan:
    upstreams: tuple[Upstream, ...]
    servers: tuple[Server, ...]
    notes: tuple[str, ...]  # what was ignored and why; rendered as comments


@dataclass
class _Path:
    path: str
    path_type: str
    upstream: str
    directives: tuple[tuple[str, str], ...]
    own_regex: bool
    source: str


@dataclass
class _Acc:
    upstreams: dict[str, tuple[str, str, str, str | None]] = field(default_factory=dict)
    hosts: dict[str, list[_Path]] = field(default_factory=dict)
    regex_hosts: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _ann(annotations: Mapping[str, Any], key: str) -> str | None:
    value = annotations.get(ANN + key)
    return None if value is None else str(value).strip()


def _directives(annotations: Mapping[str, Any], source: str,
                notes: list[str]) -> tuple[tuple[str, str], ...]:
    """Location directives from the annotations that map onto plain nginx directives."""

    def pick(key: str, directive: str, default: str | None, check: re.Pattern[str],
             unit: str = "") -> tuple[str, str] | None:
        value = _ann(annotations, key)
        if value is not None:
            if check.match(value):
                # ingress-nginx takes bare seconds for its timeouts
                return directive, (value + unit if unit and _INT.match(value) else value)
            notes.append(f"{source}: {key}={value!r} is not valid, using the default")
        return None if default is None else (directive, default)

    onoff = re.compile(r"^(on|off)$")
    out = [
        pick("proxy-connect-timeout", "proxy_connect_timeout", "5s", _TIME, "s"),
        pick("proxy-send-timeout", "proxy_send_timeout", "60s", _TIME, "s"),
        pick("proxy-read-timeout", "proxy_read_timeout", "60s", _TIME, "s"),
        pick("proxy-body-size", "client_max_body_size", "1m", _OFFSET),
        # ingress-nginx buffers request bodies by default; a front for frames and long polls
        # should not, so both default to off here.
        pick("proxy-buffering", "proxy_buffering", "off", onoff),
        pick("proxy-request-buffering", "proxy_request_buffering", "off", onoff),
        pick("proxy-buffer-size", "proxy_buffer_size", None, _SIZE),
        pick("proxy-http-version", "proxy_http_version", "1.1", re.compile(r"^1\.[01]$")),
    ]
    # ingress-nginx's default is `error timeout`; a pod that is going away answers 502/503
    # (or its Service port is refused) and the request is better retried on another one.
    nxt = _ann(annotations, "proxy-next-upstream")
    if nxt is not None and not (nxt.split() and set(nxt.split()) <= _NEXT_UPSTREAM):
        notes.append(f"{source}: proxy-next-upstream={nxt!r} is not valid, using the default")
        nxt = None
    out.append(("proxy_next_upstream", " ".join(nxt.split()) if nxt
                else "error timeout http_502 http_503"))
    out.append(pick("proxy-next-upstream-tries", "proxy_next_upstream_tries", "3", _INT))
    out.append(pick("proxy-next-upstream-timeout", "proxy_next_upstream_timeout", "0", _INT))
    return tuple(d for d in out if d is not None)


_HANDLED = {"use-regex", "upstream-hash-by", "proxy-connect-timeout", "proxy-send-timeout",
            "proxy-read-timeout", "proxy-body-size", "proxy-buffering", "proxy-request-buffering",
            "proxy-buffer-size", "proxy-http-version", "proxy-next-upstream",
            "proxy-next-upstream-tries", "proxy-next-upstream-timeout"}


def _ingress_order(ing: Mapping[str, Any]) -> tuple[str, str, str]:
    # ingress-nginx: the oldest Ingress wins a (host, path) claimed twice
    meta = ing.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace") or ""),
            str(meta.get("name") or ""))


def _add_ingress(acc: _Acc, ing: Mapping[str, Any]) -> None:
    meta = ing.get("metadata") or {}
    spec = ing.get("spec") or {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    source = f"{ns}/{name}"
    annotations: Mapping[str, Any] = meta.get("annotations") or {}
    ignored = sorted(k.removeprefix(ANN) for k in annotations
                     if k.startswith(ANN) and k.removeprefix(ANN) not in _HANDLED)
    if ignored:
        acc.notes.append(f"{source}: annotations not supported here: {', '.join(ignored)}")
    use_regex = (_ann(annotations, "use-regex") or "").lower() == "true"
    hash_by = _ann(annotations, "upstream-hash-by")
    if hash_by is not None and not _HASH_BY.match(hash_by):
        acc.notes.append(f"{source}: upstream-hash-by={hash_by!r} is not valid, round robin")
        hash_by = None
    directives = _directives(annotations, source, acc.notes)

    entries: list[tuple[str, str, str, Mapping[str, Any]]] = []
    for rule in spec.get("rules") or []:
        host = str(rule.get("host") or "_").lower()
        for p in (rule.get("http") or {}).get("paths") or []:
            service = (p.get("backend") or {}).get("service")
            if not service:
                acc.notes.append(f"{source}: only Service backends are supported")
                continue
            entries.append((host, str(p.get("path") or "/"),
                            str(p.get("pathType") or "ImplementationSpecific"), service))
    default_backend = (spec.get("defaultBackend") or {}).get("service")
    if default_backend:
        entries.append(("_", "/", "Prefix", default_backend))

    for host, path, path_type, service in entries:
        if host != "_" and not _HOST.match(host):
            acc.notes.append(f"{source}: host {host!r} is not valid, skipped")
            continue
        if not path.startswith("/") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            acc.notes.append(f"{source}: path {path!r} is not valid, skipped")
            continue
        svc = str(service.get("name") or "")
        port_ref = service.get("port") or {}
        port = str(port_ref.get("number") or port_ref.get("name") or "")
        if not _NAME.match(svc) or not _NAME.match(port) or not _NAME.match(ns):
            acc.notes.append(f"{source}: backend {svc!r} port {port!r} is not valid, skipped")
            continue
        upstream = f"{ns}-{svc}-{port}"
        known = acc.upstreams.get(upstream)
        if known is None or (known[3] is None and hash_by is not None):
            acc.upstreams[upstream] = (ns, svc, port, hash_by)
        if use_regex:
            acc.regex_hosts.add(host)
        paths = acc.hosts.setdefault(host, [])
        if any(x.path == path and x.path_type == path_type for x in paths):
            acc.notes.append(f"{source}: {host}{path} is already defined, skipped")
            continue
        paths.append(_Path(path, path_type, upstream, directives, use_regex, source))


def _expand_prefixes(paths: list[_Path]) -> list[_Path]:
    """ingress-nginx's updateServerLocations: a Prefix /x is served as /x/ plus an exact /x."""
    exact = {p.path for p in paths if p.path_type == "Exact"}
    out: list[_Path] = []
    for p in paths:
        if p.path == "/" or p.path_type != "Prefix" or p.own_regex:
            out.append(p)
            continue
        normal = p.path if p.path.endswith("/") else p.path + "/"
        out.append(_Path(normal, p.path_type, p.upstream, p.directives, False, p.source))
        if p.path not in exact:
            out.append(_Path(p.path, "Exact", p.upstream, p.directives, False, p.source))
    return out


def _quote(text: str) -> str:
    # nginx unescapes \\ and \" inside quotes; every other backslash sequence of a regex
    # reaches PCRE unchanged once its backslash is doubled
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _match(p: _Path, regex: bool) -> str:
    if regex:  # ingress-nginx's buildLocation with enforceRegex
        return "~* " + _quote("^" + p.path)
    target = p.path if _PLAIN_PATH.match(p.path) else _quote(p.path)
    return f"= {target}" if p.path_type == "Exact" else target


def _endpoints(slices: Iterable[Mapping[str, Any]], port_ref: str) -> tuple[str, ...]:
    servers: set[str] = set()
    for sl in slices:
        ports = sl.get("ports") or []
        if port_ref.isdigit():
            # The Ingress names the Service port by number and a slice only knows target
            # ports: the target with that number, else the slice's only port.
            chosen = [p for p in ports if str(p.get("port")) == port_ref] or (
                ports if len(ports) == 1 else [])
        else:
            chosen = [p for p in ports if (p.get("name") or "") == port_ref]
        if not chosen or chosen[0].get("port") is None:
            continue
        number = int(chosen[0]["port"])
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            try:  # only the first address counts (discovery.k8s.io/v1); FQDNs are skipped
                ip = ipaddress.ip_address(addresses[0])
            except ValueError:
                continue
            servers.add(f"[{ip}]:{number}" if ip.version == 6 else f"{ip}:{number}")
    return tuple(sorted(servers))


def plan(ingresses: Iterable[Mapping[str, Any]],
         slices: Mapping[tuple[str, str], list[dict[str, Any]]]) -> Plan:
    """What nginx should serve: upstreams with their ready endpoints and servers with their
    locations, in the order ingress-nginx writes them."""
    acc = _Acc()
    ours = [i for i in ingresses if (i.get("spec") or {}).get("ingressClassName") == CLASS_NAME]
    for ing in sorted(ours, key=_ingress_order):
        _add_ingress(acc, ing)

    upstreams = tuple(
        Upstream(name, ns, svc, port, hash_by, _endpoints(slices.get((ns, svc), []), port))
        for name, (ns, svc, port, hash_by) in sorted(acc.upstreams.items()))
    servers = []
    for host in sorted(acc.hosts):
        paths = _expand_prefixes(acc.hosts[host])
        # ingress-nginx: by path descending, then (stable) longest first
        paths.sort(key=lambda p: p.path, reverse=True)
        paths.sort(key=lambda p: len(p.path), reverse=True)
        regex = host in acc.regex_hosts
        locations: dict[str, Location] = {}
        for p in paths:
            m = _match(p, regex)
            if m in locations:
                acc.notes.append(f"{p.source}: location {m} of {host} twice, kept the first")
                continue
            locations[m] = Location(m, p.upstream, p.directives, p.source)
        servers.append(Server(host, tuple(locations.values())))
    return Plan(upstreams, tuple(servers), tuple(acc.notes))


# ---------------------------------------------------------------------------- nginx.conf
_LOG_FORMAT = (
    '{"time":"$time_iso8601","remote_addr":"$remote_addr","host":"$host",'
    '"method":"$request_method","request_uri":"$request_uri","status":"$status",'
    '"upstream":"$proxy_host","upstream_addr":"$upstream_addr",'
    '"upstream_status":"$upstream_status","request_time":"$request_time",'
    '"bytes_sent":"$bytes_sent"}'
)

_PROXY_HEADERS = """\
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $best_http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $best_http_host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_redirect off;
"""


def _comment(text: str) -> str:
    return "# " + "".join(c if c.isprintable() else "?" for c in text)


def _file(path: str) -> str:
    return path if re.match(r"^[A-Za-z0-9/_.+-]+$", path) else _quote(path)


def render_plan(p: Plan, listen: str, pid: str, prefix: str) -> str:
    if not _LISTEN.match(listen):
        raise ValueError(f"listen address {listen!r} is not valid")
    prefix = prefix.rstrip("/") or "/"
    out = [
        "# Rendered by tools/cluster/front.py from the Ingresses of class nginx; do not edit.",
        *(_comment(n) for n in p.notes),
        f"pid {_file(pid)};",
        "worker_processes 1;",
        "worker_rlimit_nofile 10240;",
        # as ingress-nginx: a reload lets old workers finish websockets for this long at most
        "worker_shutdown_timeout 240s;",
        f"error_log {_file(prefix + '/error.log')} warn;",
        "",
        "events {",
        "    worker_connections 4096;",
        "}",
        "",
        "http {",
        f"    log_format front escape=json '{_LOG_FORMAT}';",
        f"    access_log {_file(prefix + '/access.log')} front;",
        *(f"    {kind}_temp_path {_file(f'{prefix}/{kind}_temp')};"
          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        "    server_tokens off;",
        "    map_hash_bucket_size 128;",
        "    server_names_hash_bucket_size 128;",
        "",
        # as ingress-nginx: the Host the client sent, port included (the streamer builds its
        # URLs from it), not $host
        "    map $http_host $best_http_host {",
        "        default $http_host;",
        "        '' $host;",
        "    }",
        "",
        "    map $http_upgrade $connection_upgrade {",
        "        default upgrade;",
        "        '' close;",
        "    }",
    ]
    empty = {u.name for u in p.upstreams if not u.servers}
    for u in p.upstreams:
        out += ["", f"    upstream {u.name} {{"]
        if u.hash_by:
            # ingress-nginx's upstream-hash-by is its Lua chash balancer (resty.chash);
            # nginx's own `hash ... consistent` (ketama) is the native counterpart: a key
            # stays on its endpoint when other endpoints come or go.
            out.append(f"        hash {u.hash_by} consistent;")
        out += [f"        server {s} max_fails=1 fail_timeout=5s;" for s in u.servers]
        if not u.servers:
            out.append(f"        server {PLACEHOLDER} down;  # no ready endpoint: 503")
        out.append("    }")
    servers = list(p.servers)
    if all(s.host != "_" for s in servers):
        servers.append(Server("_", ()))  # unknown hosts get 404, as from ingress-nginx
    for s in servers:
        out += _server(s, listen, empty)
    out.append("}")
    return "\n".join(out) + "\n"


def _server(s: Server, listen: str, empty: set[str]) -> list[str]:
    default = " default_server" if s.host == "_" else ""
    out = ["", "    server {", f"        listen {listen}{default};",
           f"        server_name {s.host};"]
    for loc in s.locations:
        out += ["", f"        location {loc.match} {{", "            " + _comment(loc.source)]
        out += [f"            {k} {v};" for k, v in loc.directives]
        if loc.upstream in empty:
            out.append("            return 503;")
        else:
            out.append(_PROXY_HEADERS + f"            proxy_pass http://{loc.upstream};")
        out.append("        }")
    if not any(loc.match in ("/", '~* "^/"') for loc in s.locations):
        out += ["", "        location / {", "            return 404;", "        }"]
    out.append("    }")
    return out


def render(ingresses: Iterable[Mapping[str, Any]],
           slices: Mapping[tuple[str, str], list[dict[str, Any]]],
           listen: str, pid: str, prefix: str) -> str:
    """The complete nginx.conf (pure: same input, same text)."""
    return render_plan(plan(ingresses, slices), listen, pid, prefix)


def describe(p: Plan) -> str:
    """One line of upstreams and their servers, for the log."""
    parts = []
    for u in p.upstreams:
        how = f"hash {u.hash_by}" if u.hash_by else "round robin"
        parts.append(f"{u.name} ({how}): {' '.join(u.servers) or 'no ready endpoint'}")
    return "; ".join(parts) or "no upstreams"


