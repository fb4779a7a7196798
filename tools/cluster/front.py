#!/usr/bin/env python3
"""The sticky front of the local cluster: a tiny ingress controller for Debian's nginx.

It renders (front_config.py) the `ingressClassName: nginx` Ingresses and the EndpointSlices
of their Services into one nginx.conf the way ingress-nginx renders them (upstream names,
location order, use-regex, upstream-hash-by and the proxy-* annotations), runs nginx with it
and reloads nginx when the rendered text changes. ingress-nginx balances in Lua; here the
endpoints are written into `upstream` blocks, so every endpoint change is a reload (old
workers finish their connections, up to `worker_shutdown_timeout`).

    front.py --kubeconfig KUBECONFIG --listen 127.0.0.1:8480 --dir DIR [--interval 1.0]

DIR gets nginx.conf, nginx.pid, error.log, access.log and nginx's temp directories. The access
log has one JSON object per line (the e2e tests read it to see which pod got a request):
time, remote_addr, host, method, request_uri, status, upstream (the upstream's name, e.g.
`demo-jio-jiomosa-streamer-http`), upstream_addr (the pod's IP:port), upstream_status,
request_time, bytes_sent.

Standard library only; runs as root on the host (nginx's workers drop to its default user).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import front_config as fc

log = logging.getLogger("front")


# ---------------------------------------------------------------------------- API client
class ApiError(RuntimeError):
    pass


class Api:
    """GETs against the API server named by a kubeconfig (bearer token or client cert)."""

    def __init__(self, kubeconfig: Path) -> None:
        try:
            cfg = json.loads(kubeconfig.read_text())
        except ValueError as e:
            raise ApiError(f"{kubeconfig}: only JSON kubeconfigs are read ({e})") from e
        contexts = {c["name"]: c["context"] for c in cfg.get("contexts") or []}
        ctx: dict[str, Any] = (contexts.get(cfg.get("current-context") or "")
                               or next(iter(contexts.values()), {}))
        cluster = _named(cfg.get("clusters"), ctx.get("cluster"), "cluster")
        user = _named(cfg.get("users"), ctx.get("user"), "user")
        self.server = str(cluster["server"]).rstrip("/")
        base = kubeconfig.parent
        self.headers = {"Accept": "application/json"}
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = (base / user["tokenFile"]).read_text().strip()
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.context: ssl.SSLContext | None = None
        if self.server.startswith("https:"):
            self.context = self._tls(cluster, user, base)

    @staticmethod
    def _tls(cluster: Mapping[str, Any], user: Mapping[str, Any], base: Path) -> ssl.SSLContext:
        if cluster.get("certificate-authority-data"):
            ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
            ctx = ssl.create_default_context(cadata=ca)
        elif cluster.get("certificate-authority"):
            ctx = ssl.create_default_context(cafile=str(base / cluster["certificate-authority"]))
        else:
            ctx = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if user.get("client-certificate-data") and user.get("client-key-data"):
            # load_cert_chain reads files only; they live just long enough to be read
            with tempfile.TemporaryDirectory(prefix="front-") as tmp:
                crt, key = Path(tmp, "client.crt"), Path(tmp, "client.key")
                for path, data in ((crt, user["client-certificate-data"]),
                                   (key, user["client-key-data"])):
                    path.touch(mode=0o600)
                    path.write_bytes(base64.b64decode(data))
                ctx.load_cert_chain(str(crt), str(key))
        elif user.get("client-certificate") and user.get("client-key"):
            ctx.load_cert_chain(str(base / user["client-certificate"]),
                                str(base / user["client-key"]))
        return ctx

    def list_all(self, path: str, **params: str) -> list[dict[str, Any]]:
        """All items of a collection, page by page."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = {**params, "limit": "500", **({"continue": cont} if cont else {})}
            url = f"{self.server}{path}?{urllib.parse.urlencode(query)}"
            req = urllib.request.Request(url, headers=self.headers)
            try:
                with urllib.request.urlopen(req, context=self.context, timeout=5) as resp:
                    body = json.load(resp)
            except urllib.error.HTTPError as e:
                raise ApiError(f"GET {path}: HTTP {e.code} {e.read()[:200]!r}") from e
            except (OSError, ValueError) as e:
                raise ApiError(f"GET {path}: {e}") from e
            items += body.get("items") or []
            cont = (body.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    def snapshot(self) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[dict[str, Any]]]]:
        ingresses = self.list_all("/apis/networking.k8s.io/v1/ingresses")
        slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for sl in self.list_all("/apis/discovery.k8s.io/v1/endpointslices",
                            labelSelector=fc.SERVICE_NAME_LABEL):
            meta = sl.get("metadata") or {}
            key = (str(meta.get("namespace")),
                   str((meta.get("labels") or {}).get(fc.SERVICE_NAME_LABEL)))
            slices.setdefault(key, []).append(sl)
        return ingresses, slices


def _named(entries: Any, name: Any, what: str) -> dict[str, Any]:
    for e in entries or []:
        if e.get("name") == name:
            return dict(e.get(what) or {})
    raise ApiError(f"kubeconfig: no {what} {name!r}")


# ---------------------------------------------------------------------------- runner
class Nginx:
    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.dir = binary, directory
        self.conf = directory / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def test(self, conf: Path) -> str | None:
        """None when nginx accepts the file, else what it said."""
        proc = subprocess.run([self.binary, "-t", "-q", "-c", str(conf), "-p", f"{self.dir}/"],
                              capture_output=True, text=True, timeout=30, check=False)
        return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()

    def install(self, text: str) -> str | None:
        """Test `text` and, when nginx accepts it, make it nginx.conf (atomically)."""
        nxt = self.dir / "nginx.conf.next"
        with open(nxt, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        error = self.test(nxt)
        if error is None:
            os.replace(nxt, self.conf)
        else:
            nxt.unlink()
        return error

    def start(self) -> None:
        def child() -> None:
            # nginx goes down with us even when we are killed outright
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG

        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf), "-p", f"{self.dir}/", "-g", "daemon off;"],
            start_new_session=True, preexec_fn=child)
        log.info("nginx started (pid %d)", self.proc.pid)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            for sig in (signal.SIGQUIT, signal.SIGTERM):  # graceful, then fast shutdown
                proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                    return  # the master waits for its workers
        # What is left of its process group (nginx has a session of its own): the workers of
        # a master that died (they would go on serving the old config) or did not stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _error_tail(directory: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join((directory / "error.log").read_text().splitlines()[-10:])
    return ""


def run(api: Api, nginx: Nginx, listen: str, interval: float, grace: float,
        stop: threading.Event) -> int:
    d = str(nginx.dir)

    def text_of(p: fc.Plan) -> str:
        return fc.render_plan(p, listen, f"{d}/nginx.pid", d)

    last_error = ""
    try:
        current = fc.plan(*api.snapshot())
    except ApiError as e:
        log.warning("API: %s (starting with no Ingresses)", e)
        last_error, current = str(e), fc.plan([], {})
    text = text_of(current)
    error = nginx.install(text)
    if error is not None:
        log.error("nginx rejects the rendered config, starting with no Ingresses:\n%s", error)
        current = fc.plan([], {})
        text = text_of(current)
        error = nginx.install(text)
        if error is not None:
            log.error("nginx rejects even an empty config:\n%s", error)
            return 1
    log.info("config: %s", fc.describe(current))
    nginx.start()
    assert nginx.proc is not None
    rejected = ""
    while not stop.wait(interval):
        if nginx.proc.poll() is not None:
            log.error("nginx exited (%s):\n%s", nginx.proc.returncode, _error_tail(nginx.dir))
            return 1
        try:
            fresh = fc.plan(*api.snapshot())
        except ApiError as e:
            if str(e) != last_error:
                log.warning("API: %s (keeping the last config)", e)
            last_error = str(e)
            continue
        if last_error:
            log.info("API answers again")
            last_error = ""
        new = text_of(fresh)
        if new in (text, rejected):
            continue
        error = nginx.install(new)
        if error is not None:
            log.error("nginx rejects the new config, keeping the last one:\n%s", error)
            rejected = new
            continue
        nginx.reload()
        text, rejected = new, ""
        log.info("reload: %s", fc.describe(fresh))
    nginx.stop(grace)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:8480", help="nginx listen address")
    parser.add_argument("--dir", type=Path, required=True, help="config, logs, temp files")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds nginx gets for each stop signal (QUIT, then TERM)")
    parser.add_argument("--nginx", default=fc.NGINX, help="the nginx binary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s front: %(message)s")
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # nginx's workers (not root) reach their temp dirs through it
    try:
        api = Api(args.kubeconfig)
    except (ApiError, OSError, KeyError, ssl.SSLError) as e:
        log.error("kubeconfig %s: %s", args.kubeconfig, e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    nginx = Nginx(args.nginx, directory)
    try:
        return run(api, nginx, args.listen, args.interval, args.grace, stop)
    finally:
        nginx.stop(args.grace)


if __name__ == "__main__":
    sys.exit(main())
