"""A small async Kubernetes REST client (aiohttp), for the few calls the operator and the
streamer's Kubernetes backend make themselves. Credentials come from the ``kubernetes``
package's loaders: in-cluster service account, else ``$KUBECONFIG`` / ``~/.kube/config``.
No Kopf here: the streamer imports this module."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from jiomosa.k8s import model

MERGE_PATCH = "application/merge-patch+json"
MAX_WATCH_LINE = 4 * 1024 * 1024  # bytes of one watch event (an object is at most ~1.5 MiB)


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def session_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{_q(namespace)}/{model.PLURAL}"
    if name:
        path += f"/{_q(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def pod_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/api/v1/namespaces/{_q(namespace)}/pods"
    if name:
        path += f"/{_q(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def secret_path(namespace: str, name: str = "") -> str:
    path = f"/api/v1/namespaces/{_q(namespace)}/secrets"
    return f"{path}/{_q(name)}" if name else path


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class KubeApi:
    """Authenticated JSON calls against one API server."""

    def __init__(self, host: str, ssl_context: ssl.SSLContext | bool,
                 auth: Any = None, timeout: float = 30.0) -> None:
        self.host = host.rstrip("/")
        self._ssl = ssl_context
        self._auth = auth  # a kubernetes Configuration (for tokens that refresh), or None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    async def from_environment(cls, kubeconfig: str | None = None) -> KubeApi:
        """In-cluster credentials when running in a pod, else the kubeconfig (``kubeconfig``,
        else ``$KUBECONFIG``, else ``~/.kube/config``)."""
        return await asyncio.to_thread(cls._load, kubeconfig)

    @classmethod
    def _load(cls, kubeconfig: str | None = None) -> KubeApi:
        from kubernetes import client, config

        cfg = client.Configuration()
        if (not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST")
                and not os.environ.get("KUBECONFIG")):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                                    client_configuration=cfg, persist_config=False)
        context: ssl.SSLContext | bool
        if cfg.verify_ssl:
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None,
                                                 cadata=cfg.ca_cert_data or None)
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            if cfg.assert_hostname is False:
                context.check_hostname = False
        else:
            context = False
        return cls(cfg.host, context, cfg)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        cfg = self._auth
        if cfg is not None:
            # The generated client's own view of its credentials (tokens refresh here).
            for auth in cfg.auth_settings().values():
                if auth.get("in") == "header" and auth.get("value"):
                    headers[auth["key"]] = str(auth["value"])
        return headers

    async def close(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """One call; returns (status, decoded JSON or text)."""
        if self._closed:
            raise ApiError(503, "the API client is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        async with self._http.request(method, self.host + path, data=data, headers=headers,
                                      params=params, ssl=self._ssl) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json",
                   params: Mapping[str, str] | None = None) -> Any:
        """One call that must succeed (2xx); else ApiError."""
        status, data = await self.request(method, path, body, content_type, params)
        if status >= 300:
            message = data.get("message", "") if isinstance(data, dict) else str(data)[:300]
            raise ApiError(status, message)
        return data

    async def watch(self, path: str, resource_version: str,
                    params: Mapping[str, str] | None = None,
                    opened: Callable[[], None] | None = None) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch of the collection at ``path`` from ``resource_version``,
        until the server ends it (``timeoutSeconds`` in ``params``); ``opened()`` is called
        once the server has accepted the watch."""
        if self._closed:
            raise ApiError(503, "the API client is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        query = {**(params or {}), "watch": "1", "resourceVersion": resource_version}
        server_timeout = float(query.get("timeoutSeconds", "300"))
        # No total timeout: a watch lasts; a silent connection still ends (sock_read).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30,
                                        sock_read=server_timeout + 60)
        async with self._http.get(self.host + path, params=query, headers=self._headers(),
                                  ssl=self._ssl, timeout=timeout) as response:
            if response.status >= 300:
                text = await response.text()
                raise ApiError(response.status, text[:300])
            if opened is not None:
                opened()
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
                if len(buffer) > MAX_WATCH_LINE:
                    raise ApiError(502, "a watch event is too large")

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            data: dict[str, Any] = await self.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return data

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("POST", path, body)
        return data

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("PATCH", path, patch, MERGE_PATCH)
        return data

    async def delete(self, path: str, body: Mapping[str, Any] | None = None) -> bool:
        """Delete; False if it was already gone."""
        try:
            await self.call("DELETE", path, body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
