"""Typed keys of the aiohttp application's state that request handlers read."""

from __future__ import annotations

from aiohttp import web

from jiomosa.core.guard import Guard
from jiomosa.core.settings import Settings
from jiomosa.sessions.manager import SessionManager

SETTINGS = web.AppKey("settings", Settings)
MANAGER = web.AppKey("manager", SessionManager)
GUARD = web.AppKey("guard", Guard)
"""The abuse limits (rates, quotas, API keys) every transport asks."""
