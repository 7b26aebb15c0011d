"""``python -m api``: serve the HTTP API with uvicorn, configured from the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn

from api.app import create_app
from api.logs import install_redaction
from api.settings import ApiSettings
from livestream.errors import ConfigurationError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ApiSettings()
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        print(f"livestream API: {exc}", file=sys.stderr)
        return 2
    # SSE streams are long-lived: bound how long shutdown waits for them.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=10)
    # After Config, which (re)configures uvicorn's loggers: access lines print the query string.
    install_redaction("uvicorn.access", "uvicorn.error")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
