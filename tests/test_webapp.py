"""The web app (launcher + viewer at /) in a real headless Chromium driven by Selenium, against
the real streamer: tiles, a custom URL, frames on the canvas, taps, swipes, wheel, keys, text,
quality control, stats, a 240x320 KaiOS-like touch screen, and reconnection after the network
drops."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from helpers import Api, PageServer, StreamerProcess
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parent.parent / "streamer" / "jiomosa" / "static"
KAIOS_UA = ("Mozilla/5.0 (Mobile; LYF/F300B/LYF-F300B-001-01-15-130718-i; Android; rv:48.0) "
            "Gecko/48.0 Firefox/48.0 KAIOS/2.5")
T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """``fn()``'s first truthy value, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = fn()
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s (last value: {last!r})")


def chrome(width: int = 900, height: int = 700, mobile: dict[str, Any] | None = None
           ) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions",
                "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    if mobile:
        options.add_experimental_option("mobileEmulation", mobile)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser() -> Iterator[Callable[..., WebDriver]]:
    drivers: list[WebDriver] = []

    def start(**kwargs: Any) -> WebDriver:
        driver = chrome(**kwargs)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        with contextlib.suppress(Exception):
            driver.quit()


def live(driver: WebDriver) -> dict[str, Any]:
    return driver.execute_script("return window.jiomosa || null") or {}


def canvas_pixel(driver: WebDriver, x: int, y: int) -> list[int]:
    return list(driver.execute_script(
        "var c = document.getElementById('screen');"
        "return Array.prototype.slice.call("
        "c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data, 0, 3);",
        x, y))


def to_viewport(driver: WebDriver, fx: float, fy: float) -> tuple[int, int]:
    """A point in frame pixels as browser-viewport CSS pixels over the canvas."""
    x, y = driver.execute_script(
        "var c = document.getElementById('screen'), r = c.getBoundingClientRect();"
        "return [r.left + arguments[0] * r.width / c.width,"
        "        r.top + arguments[1] * r.height / c.height];", fx, fy)
    return round(x), round(y)


def mouse_click_frame(driver: WebDriver, fx: float, fy: float) -> None:
    x, y = to_viewport(driver, fx, fy)
    builder = ActionBuilder(driver)
    builder.pointer_action.move_to_location(x, y).click()
    builder.perform()


def tap(driver: WebDriver, x: int, y: int) -> None:
    builder = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
    builder.pointer_action.move_to_location(x, y).pointer_down().pause(0.05).pointer_up()
    builder.perform()


def swipe(driver: WebDriver, x: int, y0: int, y1: int, steps: int = 6) -> None:
    builder = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
    action = builder.pointer_action.move_to_location(x, y0).pointer_down()
    for i in range(1, steps + 1):
        action = action.move_to_location(x, round(y0 + (y1 - y0) * i / steps))
    action.pointer_up()
    builder.perform()


def rest(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    r = requests.request(method, base + path, json=body, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def title(base: str, sid: str) -> str:
    status, info = rest(base, "GET", f"/api/session/{sid}/info")
    return str(info["page_info"]["title"]) if status == 200 else ""


def open_from_launcher(driver: WebDriver, base: str, url: str) -> str:
    """Open the launcher, type ``url``, go; the session id once frames are on the canvas."""
    driver.get(base + "/")
    box = wait_until(lambda: driver.find_element(By.ID, "url"), what="launcher")
    box.send_keys(url, Keys.ENTER)
    state = wait_until(lambda: live(driver).get("drawn", 0) > 0 and live(driver),
                       timeout=30, what="a frame drawn on the canvas")
    assert driver.find_element(By.ID, "launcher").is_displayed() is False
    return str(state["sid"])


def sites() -> list[dict[str, Any]]:
    return list(json.loads((STATIC / "sites.json").read_text())["sites"])


# --------------------------------------------------------------------------- static files
async def test_app_and_static_files_served(api: Api) -> None:
    async with api.http.get(api.base + "/") as r:
        page = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
    assert "Jiomosa" in page and "__JIOMOSA_VERSION__" not in page
    scripts = re.findall(r'src="([^"]+)"', page)
    assert any(s.startswith("static/vendor/socket.io.min.js?v=") for s in scripts), scripts
    for src in scripts:
        async with api.http.get(f"{api.base}/{src}") as r:
            assert r.status == 200 and "javascript" in r.content_type, src
    # The vendored client is exactly the npm file its README names (version and hash).
    readme = (STATIC / "vendor" / "README.md").read_text()
    async with api.http.get(api.base + "/static/vendor/socket.io.min.js") as r:
        body = await r.read()
    assert hashlib.sha256(body).hexdigest() in readme
    version = re.search(r"\| (4\.\d+\.\d+) \|", readme)
    assert version and body.startswith(f"/*!\n * Socket.IO v{version.group(1)}".encode())
    async with api.http.get(api.base + "/static/sites.json") as r:
        served = await r.json(content_type=None)
    assert served["sites"] == sites() and len(sites()) >= 6
    assert all(re.match(r"^https?://", s["url"]) and s["name"] for s in sites())
    # Nothing outside static/ is reachable, and misses are JSON errors.
    for path in ("/static/../api.py", "/static/%2e%2e/api.py", "/static/nope.js",
                 "/static/..%2fsettings.py"):
        async with api.http.get(api.base + path) as r:
            assert r.status in (403, 404), (path, r.status)
            assert "import" not in await r.text()


# --------------------------------------------------------------------------- desktop flow
def test_launcher_viewer_input_and_controls(
        browser: Callable[..., WebDriver], streamer: StreamerProcess, pages: PageServer) -> None:
    base = streamer.base
    driver = browser(width=900, height=700)
    driver.get(base + "/")
    tiles = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#tiles .tile"),
                       what="tiles")
    assert [t.get_attribute("data-url") for t in tiles] == [s["url"] for s in sites()]
    assert tiles[0].text.strip().endswith(sites()[0]["name"])

    sid = open_from_launcher(driver, base, pages.url("/app"))
    try:
        # The session id (its owner's key) stays in storage, out of the address bar.
        assert driver.current_url.endswith("#view") and sid not in driver.current_url
        status, info = rest(base, "GET", f"/api/session/{sid}/info")
        assert status == 200 and info["page_info"]["url"] == pages.url("/app")
        # The canvas shows the page: the grey button at frame (200, 150), white around it.
        wait_until(lambda: canvas_pixel(driver, 200, 150)[0] in range(220, 250)
                   and canvas_pixel(driver, 600, 450) == [255, 255, 255], what="page pixels")

        # A click on the button (in frame pixels) reaches the page.
        mouse_click_frame(driver, 200, 150)
        wait_until(lambda: title(base, sid) == "count:1", what="count:1")
        stats = wait_until(lambda: re.search(r"rtt (\d+) ms", driver.find_element(
            By.ID, "stats").text) and driver.find_element(By.ID, "stats").text,
            what="rtt in the stats overlay")
        assert re.match(r"^[\d.]+ fps \d+ kbit/s\nrtt \d+ ms q\d+$", stats), stats

        # Keys typed on the viewer go to the page.
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        wait_until(lambda: title(base, sid) == "key:Escape", what="key:Escape")
        # Text: focus the page's text field with a click, type through the keyboard bar.
        mouse_click_frame(driver, 250, 320)
        driver.find_element(By.ID, "kbd-btn").click()
        field = driver.find_element(By.ID, "kbd-input")
        field.send_keys("héllo", Keys.ENTER)
        wait_until(lambda: title(base, sid) == "text:héllo", what="text:héllo")
        field.send_keys(Keys.ESCAPE)  # back to the canvas, whose keys go to the page
        assert driver.switch_to.active_element.get_attribute("id") == "screen"
        ActionChains(driver).send_keys("xy").perform()
        wait_until(lambda: title(base, sid) == "text:hélloxy", what="typed keys")

        # The mouse wheel scrolls the page.
        canvas = driver.find_element(By.ID, "screen")
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 400
                                                ).perform()
        wait_until(lambda: re.match(r"scroll:[1-9]", title(base, sid)), what="scrolled")

        # Quality and fps controls reach the server.
        driver.find_element(By.ID, "menu-btn").click()
        driver.find_element(By.CSS_SELECTOR, "#quality option[value='30']").click()
        wait_until(lambda: live(driver)["quality"] == 30, what="quality 30")
        driver.find_element(By.CSS_SELECTOR, "#fps option[value='5']").click()
        wait_until(lambda: any(c["fps"] == 5 and c["quality"] == 30 for c in rest(
            base, "GET", f"/api/session/{sid}/info")[1]["clients"]), what="fps 5 on the server")
        assert not live(driver)["errors"], live(driver)["errors"]

        # Closing the session from elsewhere tells the viewer.
        rest(base, "POST", f"/api/session/{sid}/close")
        wait_until(lambda: driver.find_element(By.ID, "ended").is_displayed(),
                   what="session-ended notice")
        assert "closed by client" in driver.find_element(By.ID, "ended-msg").text
    finally:
        rest(base, "POST", f"/api/session/{sid}/close")


# --------------------------------------------------------------------------- small touch screen
def test_kaios_sized_touch_screen(
        browser: Callable[..., WebDriver], streamer: StreamerProcess, pages: PageServer) -> None:
    base = streamer.base
    driver = browser(mobile={"deviceMetrics": {"width": 240, "height": 320, "pixelRatio": 1.0,
                                               "touch": True}, "userAgent": KAIOS_UA})
    driver.get(base + "/")
    wait_until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#tiles .tile")) == len(sites()),
               what="tiles")
    # Fits 240 px: no sideways scrolling, three tiles a row, the URL box focused for the keypad.
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 240
    tops = [t.rect["y"] for t in driver.find_elements(By.CSS_SELECTOR, "#tiles .tile")[:4]]
    assert tops[0] == tops[1] == tops[2] < tops[3], tops
    assert driver.switch_to.active_element.get_attribute("id") == "url"
    # The D-pad moves focus: down into the tiles, then along a row and down a column.
    urls = [s["url"] for s in sites()]

    def press(key: str) -> int:
        ActionChains(driver).send_keys(key).perform()
        return urls.index(driver.switch_to.active_element.get_attribute("data-url"))

    first = press(Keys.ARROW_DOWN)
    assert first < 3
    assert press(Keys.ARROW_LEFT if first else Keys.ARROW_RIGHT) == (first - 1 if first else 1)
    assert press(Keys.ARROW_DOWN) == (first - 1 if first else 1) + 3

    sid = open_from_launcher(driver, base, pages.url("/color"))
    try:
        _, info = rest(base, "GET", f"/api/session/{sid}/info")
        assert info["viewport"]["width"] == 240 and info["viewport"]["mobile"] is True
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 240
        wait_until(lambda: canvas_pixel(driver, 20, 20) == [0, 0, 0], what="black page")
        # A tap: the page turns white, on the server and then on the canvas.
        tap(driver, *to_viewport(driver, 60, 60))
        wait_until(lambda: title(base, sid) == "clicks:1", what="clicks:1 after a tap")
        wait_until(lambda: canvas_pixel(driver, 20, 20)[0] > 220, what="white frame drawn")
        # KaiOS mode: a D-pad cursor, moved by arrows, clicks with the centre key.
        assert driver.find_element(By.ID, "cursor").is_displayed()
        ActionChains(driver).send_keys(Keys.ARROW_DOWN, Keys.ARROW_LEFT, Keys.ENTER).perform()
        wait_until(lambda: title(base, sid) == "clicks:2", what="clicks:2 from the D-pad")

        # The viewer's address bar loads another page in the same session; a swipe scrolls it.
        nav = driver.find_element(By.ID, "nav-url")
        nav.clear()
        nav.send_keys(pages.url("/app"), Keys.ENTER)
        wait_until(lambda: title(base, sid) == "app", what="the /app page")
        x, y = to_viewport(driver, 120, 250)
        swipe(driver, x, y, y - 150)
        wait_until(lambda: re.match(r"scroll:[1-9]", title(base, sid)), what="scroll by swipe")
    finally:
        rest(base, "POST", f"/api/session/{sid}/close")


# --------------------------------------------------------------------------- network loss
class CuttableProxy:
    """A TCP relay to the streamer whose connections the test can cut, like a network loss."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.blocked = False
        self.closed = False
        self.accepted = 0
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            with self._lock:
                self._socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.blocked = True
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def test_viewer_reconnects_after_network_loss(
        browser: Callable[..., WebDriver], streamer: StreamerProcess, pages: PageServer) -> None:
    proxy = CuttableProxy(streamer.port)
    base = f"http://127.0.0.1:{proxy.port}"
    driver = browser(width=640, height=480)
    sid = ""
    try:
        sid = open_from_launcher(driver, base, pages.url("/anim"))
        wait_until(lambda: live(driver)["drawn"] >= 5, what="frames streaming")
        proxy.cut()  # the network is gone: open sockets die, new ones are refused
        wait_until(lambda: not live(driver)["connected"], what="disconnect noticed")
        banner = driver.find_element(By.ID, "banner")
        assert banner.is_displayed() and "connect" in banner.text.lower(), banner.text
        # While offline nothing arrives.
        frozen = live(driver)["frames"]
        time.sleep(1.0)
        assert live(driver)["frames"] == frozen
        proxy.blocked = False  # the network is back
        state = wait_until(lambda: live(driver)["connects"] >= 2 and live(driver)["subscribed"]
                           and live(driver), timeout=20, what="reconnected and re-subscribed")
        wait_until(lambda: live(driver)["drawn"] >= state["drawn"] + 10,
                   what="frames flowing again after the reconnect")
        assert not driver.find_element(By.ID, "banner").is_displayed()
        # Still the same session, with exactly one subscriber (the old one was dropped).
        info = wait_until(lambda: (i := rest(streamer.base, "GET", f"/api/session/{sid}/info")[1])
                          ["subscribers"] == 1 and i, what="one subscriber")
        assert info["status"] == "ready"
    finally:
        proxy.close()
        if sid:
            rest(streamer.base, "POST", f"/api/session/{sid}/close")



# --------------------------------------------------------------------------- someone else's session
def stored_sid(driver: WebDriver) -> str | None:
    return driver.execute_script("return localStorage.getItem('jiomosa.sid')")  # type: ignore[no-any-return]


def everything_the_page_knows(driver: WebDriver) -> str:
    """The viewer's URL, DOM, storage and live figures, as one text."""
    return json.dumps([driver.current_url, driver.page_source, driver.execute_script(
        "var s = {}; for (var i = 0; i < localStorage.length; i++) {"
        "  var k = localStorage.key(i); s[k] = localStorage.getItem(k); }"
        "return [s, JSON.stringify(window.jiomosa || null)];")])


def test_a_view_link_is_not_adopted_as_the_visitors_session(
        browser: Callable[..., WebDriver], streamer: StreamerProcess, pages: PageServer) -> None:
    """Session fixation: an attacker opens a page with a login form in a session of its own and
    sends the victim a ``#view=<id>`` link. The victim's app must not take that session as its
    own: what the victim types must never reach the attacker's page."""
    base = streamer.base
    status, made = rest(base, "POST", "/api/session/create", {"url": pages.url("/app")})
    assert status == 201, made
    attacker = made["session_id"]
    driver = browser(width=640, height=480)
    own = ""
    try:
        own = open_from_launcher(driver, base, pages.url("/static"))  # the victim's own session
        driver.get("about:blank")
        driver.get(f"{base}/#view={attacker}")  # the victim follows the link

        def settled() -> bool:
            warning = driver.find_elements(By.ID, "launcher-msg")
            return bool(live(driver).get("subscribed") or (
                warning and warning[0].is_displayed() and warning[0].text))
        wait_until(settled, what="the link handled (a viewer or a warning)")
        # The victim types a password wherever the app put the focus, and in its text bar.
        ActionChains(driver).send_keys("hunter2", Keys.ENTER).perform()
        if driver.find_element(By.ID, "kbd-btn").is_displayed():
            driver.find_element(By.ID, "kbd-btn").click()
            driver.find_element(By.ID, "kbd-input").send_keys("hunter2", Keys.ENTER)
        # Nothing reaches the attacker's page (its title reports keys and typed text).
        typed = ""
        with contextlib.suppress(AssertionError):
            typed = wait_until(lambda: title(base, attacker) != "app" and title(base, attacker),
                               timeout=4, what="input at the attacker's page")
        assert not typed, f"the victim's typing reached the attacker's session: {typed}"
        # The app refused the link visibly and kept the victim's own session.
        assert driver.find_element(By.ID, "launcher").is_displayed()
        assert not driver.find_element(By.ID, "viewer").is_displayed()
        warning = driver.find_element(By.ID, "launcher-msg").text
        assert "not yours" in warning, warning
        assert stored_sid(driver) == own
        wait_until(lambda: driver.find_element(By.ID, "resume").is_displayed(),
                   what="Back to the victim's own page")
        assert rest(base, "GET", f"/api/session/{attacker}/info")[1]["subscribers"] == 0
    finally:
        rest(base, "POST", f"/api/session/{attacker}/close")
        if own:
            rest(base, "POST", f"/api/session/{own}/close")


def test_a_share_link_opens_a_marked_read_only_viewer(
        browser: Callable[..., WebDriver], streamer: StreamerProcess, pages: PageServer) -> None:
    """The owner makes a share link in the viewer's menu; on a 240x320 KaiOS-like phone the
    link shows the session marked as shared and read-only, sends no input and never learns
    the session's id; Stop cuts the viewer off. A link that grants input lets a viewer tap."""
    base = streamer.base
    owner = browser(width=900, height=700)
    sid = open_from_launcher(owner, base, pages.url("/app"))
    try:
        owner.find_element(By.ID, "menu-btn").click()
        owner.find_element(By.ID, "share-btn").click()
        link = wait_until(lambda: owner.find_element(By.ID, "share-url").get_attribute("value"),
                          what="the share link")
        assert owner.find_element(By.ID, "share-box").is_displayed()
        assert re.search(r"/#share=[A-Za-z0-9_-]{32}$", link) and sid not in link, link

        phone = browser(mobile={"deviceMetrics": {"width": 240, "height": 320, "pixelRatio": 1.0,
                                                  "touch": True}, "userAgent": KAIOS_UA})
        phone.get(link)
        wait_until(lambda: live(phone).get("drawn", 0) > 0, timeout=30, what="frames drawn")
        bar = phone.find_element(By.ID, "shared-bar")
        assert bar.is_displayed() and bar.text == "Viewing a shared session \u2014 read only"
        assert phone.execute_script("return document.documentElement.scrollWidth") <= 240
        assert not phone.find_element(By.ID, "kbd-btn").is_displayed()
        phone.find_element(By.ID, "menu-btn").click()
        assert not phone.find_element(By.ID, "close-session").is_displayed()
        assert not phone.find_element(By.ID, "share-btn").is_displayed()
        phone.find_element(By.ID, "menu-btn").click()
        # Taps, the D-pad and keys send nothing.
        tap(phone, *to_viewport(phone, 200, 150))
        ActionChains(phone).send_keys(Keys.ENTER, "x", Keys.ARROW_DOWN).perform()
        mouse_click_frame(owner, 200, 150)  # the owner's click is the first the page counts
        wait_until(lambda: title(base, sid) == "count:1", what="the owner's click")
        assert live(phone)["acks"] == 0 and not live(phone)["errors"], live(phone)
        assert title(base, sid) == "count:1"
        # The viewer knows the share, not the session: nothing of the id anywhere.
        assert live(phone)["share"].startswith("share-")
        assert sid not in everything_the_page_knows(phone)
        assert stored_sid(phone) is None

        # Stop: the viewer is told at once; the owner keeps its session.
        owner.find_element(By.ID, "share-stop").click()
        wait_until(lambda: phone.find_element(By.ID, "ended").is_displayed(), what="ended")
        assert "stopped sharing" in phone.find_element(By.ID, "ended-msg").text
        assert not phone.find_element(By.ID, "restart").is_displayed()
        assert rest(base, "GET", f"/api/session/{sid}/info")[1]["status"] == "ready"
        assert stored_sid(owner) == sid

        # A link that grants input: the viewer's tap reaches the page.
        status, share = rest(base, "POST", f"/api/session/{sid}/share", {"input": True})
        assert status == 201
        phone.get("about:blank")
        phone.get(f"{base}/#share={share['share_token']}")
        wait_until(lambda: live(phone).get("drawn", 0) > 0 and live(phone)["subscribed"],
                   timeout=30, what="frames drawn")
        assert phone.find_element(By.ID, "shared-bar").text.endswith("you can control it")
        tap(phone, *to_viewport(phone, 200, 150))
        wait_until(lambda: title(base, sid) == "count:2", what="the viewer's tap")
        assert sid not in everything_the_page_knows(phone)
    finally:
        rest(base, "POST", f"/api/session/{sid}/close")
