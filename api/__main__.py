"""``python -m api``: serve the HTTP API with uvicorn, configured from the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.logs import install_redaction
from api.settings import ApiSettings
from livestream.errors import ConfigurationError


def server_config(app: FastAPI, settings: ApiSettings) -> uvicorn.Config:
    """uvicorn's configuration, with credentials redacted from its access and error logs."""
    # SSE streams are long-lived: bound how long shutdown waits for them.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=10)
    # After Config, which (re)configures uvicorn's loggers: access lines print the query string.
    install_redaction("uvicorn.access", "uvicorn.error")
    return config


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ApiSettings()
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        print(f"livestream API: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(server_config(app, settings))
    fatal: list[Exception] = []

    def stop_process(error: Exception) -> None:
        # The runtime gave up on the broker (logged there): stop serving, exit 2 for the supervisor.
        fatal.append(error)
        server.should_exit = True

    app.state.stop_process = stop_process
    server.run()
    # A failed start-up (e.g. no broker before the startup timeout) is logged by uvicorn.
    return 2 if fatal or not server.started else 0


if __name__ == "__main__":
    raise SystemExit(main())
