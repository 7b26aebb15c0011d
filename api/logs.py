"""Logging of the API process: access-log lines never carry credentials.

uvicorn's access log prints each request's path with its query string, where a browser's
``?api_key=``, ``?token=`` or a playback URL's ``?sig=`` would land. ``RedactCredentials``
replaces those values by ``REDACTED`` in every record it sees (installed on uvicorn's loggers by
``api.__main__``).
"""

from __future__ import annotations

import logging
import re

# ``sig``: a signed playback URL is a credential until it expires.
CREDENTIAL_PARAMS = ("api_key", "token", "sig")
REDACTED = "REDACTED"
_CREDENTIAL_VALUE = re.compile(r"(?i)(?P<name>(?:^|[?&;])(?:" + "|".join(CREDENTIAL_PARAMS) + r")=)[^&;#\s]*")


def redact_credentials(text: str) -> str:
    """``text`` (a path with its query string, or a log line) with credential values replaced."""
    return _CREDENTIAL_VALUE.sub(lambda match: match.group("name") + REDACTED, text)


class RedactCredentials(logging.Filter):
    """Rewrites a record's string arguments (uvicorn passes the path as one) and its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_credentials(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        if isinstance(record.msg, str):
            record.msg = redact_credentials(record.msg)
        return True


def install_redaction(*logger_names: str) -> None:
    for name in logger_names:
        logging.getLogger(name).addFilter(RedactCredentials())
