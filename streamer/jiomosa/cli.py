"""``jiomosa`` command line: ``serve`` runs the streamer, ``operator`` the Kubernetes operator,
``browser`` a browser pod's agent."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from jiomosa import __version__, logs, memory
from jiomosa.agent.main import add_arguments as agent_arguments
from jiomosa.core.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jiomosa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jiomosa {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the streamer (REST, Socket.IO, web page)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=5000, help="port to listen on")
    commands.add_parser("operator", help="run the Kubernetes operator for BrowserSession "
                        "resources (settings: JIOMOSA_OPERATOR_*, docs/operator.md)")
    browser = commands.add_parser(
        "browser", help="run a browser pod's agent: Chromium, the egress proxy and a CDP "
        "proxy behind the session's bearer token (docs/operator.md)",
        description="Starts headless Chromium with DevTools on loopback, enforces the URL "
        "policy in the pod (egress proxy + CDP Fetch), refuses downloads, and serves one port: "
        "GET /readyz, POST /claim (warm pool) and the DevTools WebSocket paths behind "
        "'Authorization: Bearer <token>'. Settings: JIOMOSA_* (docs/configuration.md).")
    agent_arguments(browser)
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"jiomosa: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_format, settings.log_level)
    if args.command == "operator":
        from jiomosa_operator.main import main as operator_main

        return operator_main()
    if args.command == "browser":
        from jiomosa.agent.main import main as agent_main

        return agent_main(args, settings)
    if args.command == "serve":
        from jiomosa.app import build_app

        memory.return_large_buffers()  # frame buffers back to the system once freed
        web.run_app(build_app(settings), host=args.host, port=args.port,
                    access_log=None, print=None, shutdown_timeout=10.0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
