"""Tenants and their API keys: configuration parsing, salted key lookup, who sees which session.

A *tenant* is an organisation; each has one or more API keys. Configuration maps tenant names
to keys (``LIVESTREAM_API_TENANTS`` JSON, a ``LIVESTREAM_API_TENANTS_FILE`` in JSON or YAML,
and ``LIVESTREAM_API_KEYS`` as the keys of the default tenant; see ``api.settings``).

``KeyRing`` keeps no raw key: each configured key is held as HMAC-SHA256 under a random
per-process salt, and a presented key is hashed the same way and compared against every
stored digest in constant time. Keys are random tokens of at least ``min_key_length``
characters, so a fast keyed hash is enough (no password-style stretching, which would cost
every request tens of milliseconds).

A session belongs to the tenant of the key that started it (``SessionHeader.tenant``);
records written before tenants existed (``tenant`` None) belong to the default tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from livestream.errors import ConfigurationError
from schemas.records import SessionHeader

TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MIN_KEY_LENGTH = 16

TenantKeys = dict[str, tuple[str, ...]]


def key_fingerprint(api_key: str) -> str:
    """Short, stable, non-reversible name of a key (``key-`` + 12 hex digits of its SHA-256).

    Stable across processes (unlike the salted digests), so sessions record it as
    ``created_by`` and ``scope=personal`` still finds them after a restart.
    """
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- configuration


def parse_tenant_map(value: object, *, source: str) -> TenantKeys:
    """``{"tenant": ["key", ...]}`` (a single key string is accepted too) -> tenant -> keys.

    Raises ``ConfigurationError`` naming ``source`` and the tenant, never a key.
    """
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            'tenants must be a mapping of tenant name to a list of keys, e.g. {"acme": ["<key>"]}',
            setting=source,
        )
    tenants: TenantKeys = {}
    for name, keys in value.items():
        if not isinstance(name, str) or not TENANT_NAME.match(name):
            raise ConfigurationError(
                "tenant names are 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
                setting=source,
                tenant=str(name)[:64],
            )
        listed = [keys] if isinstance(keys, str) else keys
        if not isinstance(listed, list | tuple) or not all(isinstance(key, str) for key in listed):
            raise ConfigurationError("a tenant's keys must be a list of strings", setting=source, tenant=name)
        stripped = tuple(key.strip() for key in listed if key.strip())
        if not stripped:
            raise ConfigurationError("tenant has no keys", setting=source, tenant=name)
        tenants[name] = stripped
    return tenants


def load_tenants_file(path: Path) -> TenantKeys:
    """The tenant map of a JSON or YAML file (YAML is a superset of JSON, so one parser reads both)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the tenants file: {exc.strerror}",
            setting="LIVESTREAM_API_TENANTS_FILE",
            path=str(path),
        ) from exc
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The parser's message quotes the offending line, which may hold a key: say where only.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigurationError(
            f"the tenants file is not valid JSON or YAML{where}",
            setting="LIVESTREAM_API_TENANTS_FILE",
            path=str(path),
        ) from None
    return parse_tenant_map(value, source=f"LIVESTREAM_API_TENANTS_FILE ({path})")


def merge_tenants(*maps: TenantKeys) -> TenantKeys:
    """One map: a tenant named in several maps has the keys of all of them (each once)."""
    merged: dict[str, list[str]] = {}
    for tenant_map in maps:
        for tenant, keys in tenant_map.items():
            known = merged.setdefault(tenant, [])
            known.extend(key for key in keys if key not in known)
    return {tenant: tuple(keys) for tenant, keys in merged.items()}


# --------------------------------------------------------------------------- callers and keys


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its tenant and its key's fingerprint (``key_id``)."""

    tenant: str
    key_id: str


class KeyRing:
    """The configured keys as salted digests, each with its tenant and fingerprint.

    Raises ``ConfigurationError`` for a key shorter than ``min_key_length`` or a key given to
    two tenants, naming the tenants (never the key).
    """

    def __init__(self, tenants: Mapping[str, tuple[str, ...]], min_key_length: int = DEFAULT_MIN_KEY_LENGTH):
        self._salt = secrets.token_bytes(32)
        entries: dict[bytes, Caller] = {}
        for tenant, keys in tenants.items():
            for key in keys:
                if len(key) < min_key_length:
                    raise ConfigurationError(
                        f"tenant {tenant!r} has an API key shorter than {min_key_length} characters "
                        "(use long random keys, e.g. "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`)",
                        tenant=tenant,
                    )
                digest = self._digest(key)
                holder = entries.get(digest)
                if holder is not None and holder.tenant != tenant:
                    raise ConfigurationError(
                        f"one API key is configured for two tenants, {holder.tenant!r} and {tenant!r}",
                        tenant=tenant,
                    )
                entries[digest] = Caller(tenant, key_fingerprint(key))
        self._entries = tuple(entries.items())
        self._key_ids = {caller.key_id: caller for caller in entries.values()}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(caller.tenant for _, caller in self._entries)

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._salt, key.encode(), hashlib.sha256).digest()

    def identify(self, presented: str) -> Caller | None:
        """The caller a presented key belongs to, None when it is not configured.

        Compares against every digest (no early exit), so timing says nothing about which matched.
        """
        digest = self._digest(presented)
        found: Caller | None = None
        for stored, caller in self._entries:
            if hmac.compare_digest(digest, stored):
                found = caller
        return found

    def is_current(self, caller: Caller) -> bool:
        """Whether ``caller`` (e.g. from a feed token) still names a configured key of its tenant."""
        return self._key_ids.get(caller.key_id) == caller


# --------------------------------------------------------------------------- who sees what


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a session is: its tenant (None: nobody's yet, a placeholder) and the key that started it."""

    tenant: str | None
    created_by: str | None


def session_tenant(header: SessionHeader, default_tenant: str) -> str | None:
    """The tenant of a session: its recorded one; the default tenant for records older than tenants.

    A placeholder header (the aggregator saw the session's records before its start command, so it
    has no identity yet) belongs to nobody until the start command fills it in.
    """
    if header.tenant is not None:
        return header.tenant
    return default_tenant if header.source_url else None


def owner_of(header: SessionHeader, default_tenant: str) -> Owner:
    return Owner(session_tenant(header, default_tenant), header.created_by)


@dataclass(frozen=True, slots=True)
class Audience:
    """Which sessions a request sees: the caller's tenant's, only its own key's when ``created_by``."""

    tenant: str
    created_by: str | None = None

    def sees(self, owner: Owner) -> bool:
        return owner.tenant == self.tenant and (
            self.created_by is None or owner.created_by == self.created_by
        )
