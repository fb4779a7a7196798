"""What the operator does to a browser: open its WebDriver session (Selenium pods) or hand an
agent pod its token (warm pool), check it, navigate it over CDP, quit it. Built on the
streamer's browser-control layer (``jiomosa.browser``)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp

from jiomosa.browser import driver
from jiomosa.browser.cdp import CDPConnection, CDPError
from jiomosa.browser.page import BrowserPage
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa_operator.state import stray_sessions

log = logging.getLogger(__name__)

# Selenium blocks; its calls get threads of their own so that a slow pod never starves the
# event loop's default executor.
_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webdriver")


async def _blocking(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)


async def open_session(webdriver_url: str, viewport: Viewport, extra_args: tuple[str, ...],
                       timeout: float) -> BrowserEndpoint:
    """Start the browser on the pod's WebDriver endpoint; raise BrowserStartError."""
    try:
        endpoint: BrowserEndpoint = await asyncio.wait_for(
            _blocking(driver.start_remote, webdriver_url, viewport.width, viewport.height,
                      extra_args),
            timeout,
        )
    except TimeoutError:
        raise BrowserStartError("the browser did not start in time") from None
    return endpoint


def _http(method: str, url: str, timeout: float, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


async def session_alive(webdriver_url: str, session_id: str, timeout: float = 5.0) -> bool | None:
    """True if the WebDriver session answers, False if the endpoint says it is gone, None if the
    endpoint cannot be reached (which may pass)."""
    # "Get Window Handle" touches no user prompt (unlike "Get Current URL", which would
    # dismiss a page's alert).
    url = f"{webdriver_url.rstrip('/')}/session/{urllib.parse.quote(session_id)}/window"
    try:
        status, _ = await _blocking(_http, "GET", url, timeout)
    except OSError:
        return None
    if status == 200:
        return True
    return False if status in (404, 500) else None


async def quit_strays(webdriver_url: str, keep: str = "") -> list[str]:
    """Quit every session a Selenium endpoint lists but ``keep``: on a session's own pod they are
    orphans of an operator that died between opening a browser and recording it."""
    try:
        status, data = await _blocking(_http, "GET", webdriver_url.rstrip("/") + "/status", 5.0)
    except OSError:
        return []
    if status != 200 or not isinstance(data, dict):
        return []
    strays = [s for s in stray_sessions(data) if s != keep]
    for session_id in strays:
        await quit_session(webdriver_url, session_id)
    return strays


async def webdriver_get(webdriver_url: str, session_id: str, url: str) -> None:
    """Navigate with WebDriver ("Navigate To"); OSError if the endpoint refuses."""
    endpoint = f"{webdriver_url.rstrip('/')}/session/{urllib.parse.quote(session_id)}/url"
    status, _ = await _blocking(_http, "POST", endpoint, 15.0, {"url": url})
    if status != 200:
        raise OSError(f"WebDriver answered {status}")


async def quit_session(webdriver_url: str, session_id: str) -> bool:
    if not webdriver_url or not session_id:
        return False
    return bool(await _blocking(driver.quit_remote, webdriver_url, session_id, 10.0))


async def navigate(cdp_url: str, url: str, policy: UrlPolicy, viewport: Viewport,
                   timeout: float, token: str = "") -> dict[str, Any]:
    """Load ``url`` in the browser's page (URL policy checked); return ``{title, url}``."""
    page = await BrowserPage.attach(cdp_url, policy, viewport, timeout=min(timeout, 15.0),
                                    token=token)
    try:
        return await page.navigate(url, timeout)
    finally:
        await page.close()


async def blank(cdp_url: str, token: str, timeout: float = 15.0) -> None:
    """Show about:blank in the browser's first page over CDP (an agent pod has no WebDriver;
    about:blank is no web page for the URL policy)."""
    conn = await CDPConnection.connect(cdp_url, timeout=timeout, token=token)
    try:
        targets = await conn.send("Target.getTargets", timeout=timeout)
        pages = [t for t in targets.get("targetInfos", []) if t.get("type") == "page"]
        if not pages:
            return
        target = pages[0]["targetId"]
        attached = await conn.send("Target.attachToTarget",
                                   {"targetId": target, "flatten": True}, timeout=timeout)
        await conn.send("Page.navigate", {"url": "about:blank"},
                        session_id=attached["sessionId"], timeout=timeout)
        # Page.navigate answers before the page is committed: return once it shows.
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            info = await conn.send("Target.getTargetInfo", {"targetId": target})
            if (info.get("targetInfo") or {}).get("url") == "about:blank":
                return
            await asyncio.sleep(0.05)
    except CDPError as exc:
        raise OSError(f"the browser did not answer: {exc}") from None
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- agent pods
AGENT_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def agent_alive(agent_url: str) -> bool | None:
    """True if the agent's browser answers (``/readyz``), False if the agent says it does not,
    None if the agent cannot be reached."""
    try:
        async with aiohttp.ClientSession(timeout=AGENT_TIMEOUT) as http, http.get(
                agent_url + "/readyz") as answer:
            return answer.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def agent_claim(agent_url: str, claim_token: str, token: str) -> bool | None:
    """Hand a warm-pool pod the session's ``token`` (its ``/claim``, once). True if the pod
    now serves that token: it took it now, or had taken it before (an operator restarted, or
    an answer was lost, between the claim and recording it); False if it refuses (it serves
    someone else, or another key made it); None if it cannot be reached (try again)."""
    try:
        async with aiohttp.ClientSession(timeout=AGENT_TIMEOUT) as http:
            async with http.post(agent_url + "/claim", json={"token": token},
                                 headers={"Authorization": f"Bearer {claim_token}"}) as answer:
                if answer.status == 200:
                    return True
                if answer.status != 409:
                    log.warning("the warm pod at %s refused its claim (%d)", agent_url,
                                answer.status)
                    return False
            # Already claimed: by this session's token, or not.
            async with http.get(agent_url + "/json/version",
                                headers={"Authorization": f"Bearer {token}"}) as answer:
                return answer.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("cannot claim the warm pod at %s: %s", agent_url, exc)
        return None
