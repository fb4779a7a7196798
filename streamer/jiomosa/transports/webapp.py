"""The web app: launcher and viewer at ``/``, its files under ``/static/`` (docs/clients.md).

The launcher's site tiles come from ``static/sites.json``: edit that one file to change them.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from jiomosa import __version__

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VERSION_MARK = "__JIOMOSA_VERSION__"


async def index(_request: web.Request) -> web.Response:
    # The page names its scripts with ?v=<version>, so a new release is never run with an
    # old cached script; the page itself is revalidated every time.
    text = (STATIC_DIR / "index.html").read_text("utf-8").replace(VERSION_MARK, __version__)
    return web.Response(text=text, content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    """Register ``/`` and ``/static/`` (app.py calls this once)."""
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, name="static", follow_symlinks=False)
