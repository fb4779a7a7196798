"""Typed keys of the aiohttp application's state."""

from __future__ import annotations

from aiohttp import web

from jiomosa.manager import SessionManager
from jiomosa.settings import Settings
from jiomosa.sio import StreamServer

SETTINGS = web.AppKey("settings", Settings)
MANAGER = web.AppKey("manager", SessionManager)
STREAMS = web.AppKey("streams", StreamServer)
