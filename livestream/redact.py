"""Credential redaction of URLs, for logs, status reasons and API responses.

Source URLs often carry secrets: ``https://user:pass@cam/live.m3u8`` or signed CDN URLs
(``?token=...``, ``?X-Amz-Signature=...``, ``?hdnts=...``). Everything that shows a URL to a
person (a log line, a FAILED reason, an API response) shows ``redact_url(url)`` instead; the
real URL is only ever used to fetch.
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

REDACTED = "***"

# A query parameter whose (lower-cased) name contains one of these holds a secret.
SECRET_PARAMETER_FRAGMENTS = (
    "token",
    "key",
    "pass",
    "pwd",
    "secret",
    "sig",
    "auth",
    "cred",
    "session",
    "jwt",
    "hdnt",
    "policy",
    "expires",
    "hmac",
    "nonce",
    "code",
)


def is_secret_parameter(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(fragment in lowered for fragment in SECRET_PARAMETER_FRAGMENTS)


def _redact_query(query: str) -> str:
    parts: list[str] = []
    for item in query.split("&"):
        name, sep, _value = item.partition("=")
        parts.append(f"{name}={REDACTED}" if sep and is_secret_parameter(name) else item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` with its user info and secret-looking query values replaced by ``***``.

    Never raises: a string that does not parse as a URL is reduced to a placeholder rather
    than shown as it is (it might be all secret).
    """
    try:
        parts = urlsplit(url.strip())
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        redacted = SplitResult(
            scheme=parts.scheme,
            netloc=netloc,
            path=parts.path,
            query=_redact_query(parts.query) if parts.query else "",
            fragment=REDACTED if parts.fragment else "",
        )
        return urlunsplit(redacted)
    except (ValueError, TypeError, AttributeError):
        return "<unparseable URL>"
