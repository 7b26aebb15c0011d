"""HTTP API service: NomadicML-compatible livestream sessions, served from Kafka.

``create_app(ApiSettings())`` builds the FastAPI app; ``python -m api`` serves it.
"""

from api.app import create_app
from api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
