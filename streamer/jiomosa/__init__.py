"""Jiomosa: a cloud browser for devices that cannot run a modern browser."""

__version__ = "0.2.0"
SERVICE_NAME = "jiomosa-streamer"
