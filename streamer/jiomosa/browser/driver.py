"""Selenium owns each browser's life: it starts Chromium (locally through chromedriver, or on a
Grid) and quits it. Everything fast goes over CDP instead (``jiomosa.browser.page``).

Selenium is blocking, so these functions run in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from jiomosa.browser.flags import CHROME_ARGS
from jiomosa.core.types import BrowserEndpoint, BrowserStartError

__all__ = ["CHROME_ARGS", "LocalBrowser", "quit_remote", "start_local", "start_remote"]

log = logging.getLogger(__name__)

def chrome_options(
    binary: str | None, width: int, height: int, extra: tuple[str, ...] = ()
) -> Options:
    options = Options()
    if binary:
        options.binary_location = binary
    for arg in (*CHROME_ARGS, f"--window-size={width},{height}", *extra):
        options.add_argument(arg)
    # The default page-load strategy makes New Session wait until chromedriver's own first
    # navigation (to data:,) is done; with "none" it could land after ours and replace it.
    options.set_capability("webSocketUrl", False)
    return options


class LocalBrowser:
    """A Chromium started on this machine by chromedriver."""

    def __init__(self, driver: webdriver.Chrome, endpoint: BrowserEndpoint) -> None:
        self.driver = driver
        self.endpoint = endpoint

    def quit(self) -> None:
        process = getattr(self.driver.service, "process", None)
        if process is not None and process.poll() is not None:
            # chromedriver is gone already (Ctrl-C reaches the whole process group, browser
            # included): asking it to quit would only retry against a closed port.
            return
        try:
            self.driver.quit()
        except Exception:  # already gone: nothing left to free
            log.debug("quit of a local browser failed", exc_info=True)


def start_local(
    chromium: str, chromedriver: str, width: int, height: int, extra: tuple[str, ...] = ()
) -> LocalBrowser:
    """Start Chromium through chromedriver (blocking)."""
    try:
        service = Service(executable_path=chromedriver, port=0)
        driver = webdriver.Chrome(
            service=service, options=chrome_options(chromium, width, height, extra)
        )
    except Exception as exc:
        log.warning("local browser failed to start: %s", exc)
        raise BrowserStartError("the browser could not be started") from exc
    try:
        address = driver.capabilities["goog:chromeOptions"]["debuggerAddress"]
        cdp_url = _browser_ws_url(_http_base(address, prefer_host="127.0.0.1"))
    except Exception as exc:
        driver.quit()
        raise BrowserStartError("the browser started without a DevTools endpoint") from exc
    endpoint = BrowserEndpoint(
        kind="local",
        cdp_url=cdp_url,
        webdriver_url=str(service.service_url),
        webdriver_session_id=str(driver.session_id),
    )
    return LocalBrowser(driver, endpoint)


def start_remote(grid_url: str, width: int, height: int, extra: tuple[str, ...] = ()) -> (
        BrowserEndpoint):
    """Open a session on a Selenium Grid / standalone / chromedriver (blocking).

    The browser belongs to the Grid, not to this process: only the endpoint is returned, and
    :func:`quit_remote` ends it, from any streamer.
    """
    try:
        driver = webdriver.Remote(
            command_executor=grid_url, options=chrome_options(None, width, height, extra)
        )
    except Exception as exc:
        log.warning("grid session failed to start: %s", exc)
        raise BrowserStartError("the browser grid could not start a browser") from exc
    caps: dict[str, Any] = driver.capabilities
    try:
        cdp_url = caps.get("se:cdp") or ""
        if not cdp_url:
            # A bare chromedriver speaks WebDriver but has no se:cdp; its debuggerAddress is
            # relative to the chromedriver host.
            address = caps["goog:chromeOptions"]["debuggerAddress"]
            host = urllib.parse.urlsplit(grid_url).hostname or "127.0.0.1"
            cdp_url = _browser_ws_url(_http_base(address, prefer_host=host))
    except Exception as exc:
        quit_remote(grid_url, str(driver.session_id))
        raise BrowserStartError("the grid browser has no DevTools endpoint") from exc
    # Detach the Python object without ending the remote session.
    executor = driver.command_executor
    if not isinstance(executor, str):
        executor.close()
    return BrowserEndpoint(
        kind="grid",
        cdp_url=cdp_url,
        webdriver_url=grid_url,
        webdriver_session_id=str(driver.session_id),
    )


def quit_remote(webdriver_url: str, session_id: str, timeout: float = 10.0) -> bool:
    """End a WebDriver session over plain HTTP (what ``driver.quit()`` sends)."""
    if not webdriver_url or not session_id:
        return False
    url = webdriver_url.rstrip("/") + "/session/" + urllib.parse.quote(session_id)
    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except Exception:
        log.debug("quit of remote session %s failed", session_id, exc_info=True)
        return False


def _http_base(address: str, prefer_host: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("localhost", "", "0.0.0.0", "::1", "[::1]"):
        host = prefer_host
    return f"http://{host}:{port}"


def _browser_ws_url(http_base: str) -> str:
    with urllib.request.urlopen(http_base + "/json/version", timeout=10) as response:
        info = json.load(response)
    url = str(info["webSocketDebuggerUrl"])
    # Chrome reports its own idea of the host; keep the one we reached it at.
    base_host = urllib.parse.urlsplit(http_base).netloc
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, base_host, parts.path, "", ""))
