"""API keys with scopes, and a per-key rate limit, for every ``/api`` route.

Keys come from the setting ``[api] api_keys`` as ``"key:scope+scope,key2:scope"``.
Only their SHA-256 digests are kept in memory; a presented key is hashed and
compared with :func:`hmac.compare_digest`. Keys are never logged: requests are
identified by ``key_id``, the first 12 hex digits of the digest.

Views are protected with :func:`require_scope`::

    @bp.get("/api/v1/telemetry")
    @require_scope("read")
    def telemetry(): ...

    @bp.post("/api/v1/telemetry")
    @require_scope("write", cost=lambda: 1)   # the ingest may charge per request or per batch

The rate limit is a token bucket per key *in this process*: with gunicorn's
N workers a key may reach up to N times the configured rate. Over the limit
the answer is 429 with ``Retry-After`` (whole seconds, at least 1).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, g, request

from api.errors import ApiError

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeyStore",
    "AuthConfigError",
    "RateLimiter",
    "TokenBucket",
    "authenticate",
    "configured_api_key",
    "parse_api_keys",
    "require_scope",
]

_LOGGER = logging.getLogger(__name__)

SCOPES = frozenset({"read", "write"})
EXTENSION = "dcmms_auth"

F = TypeVar("F", bound=Callable[..., Any])


class AuthConfigError(ValueError):
    """The API key setting is malformed; the message names the setting, never a key."""


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its digest, a printable id and its scopes."""

    digest: bytes
    key_id: str
    scopes: frozenset[str]


def parse_api_keys(spec: str, origin: str = "[api] api_keys") -> list[tuple[str, frozenset[str]]]:
    """``[(key, scopes), ...]`` of a ``"key:read+write,key2:read"`` spec, in order: the one
    parser of the setting (the API's key store, and the benchmark and chaos tools that
    pick a key to call the API with). Errors name ``origin`` and the entry index, never a key.
    """
    entries = []
    for index, entry in enumerate(spec.split(",")):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, scope_text = entry.rpartition(":")
        if not sep or not key.strip():
            raise AuthConfigError(
                f"setting {origin}: entry {index} must look like 'key:read+write'")
        scopes = frozenset(s.strip() for s in scope_text.split("+") if s.strip())
        unknown = scopes - SCOPES
        if not scopes or unknown:
            raise AuthConfigError(
                f"setting {origin}: entry {index} has unknown or no scopes "
                f"{sorted(unknown)}; allowed: {sorted(SCOPES)}")
        entries.append((key.strip(), scopes))
    if not entries:
        raise AuthConfigError(f"setting {origin} defines no API key")
    return entries


def configured_api_key(settings: Any, needs: Iterable[str] = ("read", "write")) -> str:
    """The first key of ``[api] api_keys`` with every scope in ``needs``: what the benchmark
    and chaos tools call the API with."""
    origin = settings.origin("api", "api_keys")
    needs = frozenset(needs)
    for key, scopes in parse_api_keys(settings.api.api_keys, origin):
        if needs <= scopes:
            return key
    raise AuthConfigError(f"setting {origin} has no key with the scopes {sorted(needs)}")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyStore:
    """Hashed API keys; :meth:`lookup` finds the key a request presented."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        if not self._keys:
            raise AuthConfigError("no API key configured")

    @classmethod
    def from_spec(cls, spec: str, origin: str = "[api] api_keys") -> ApiKeyStore:
        """Parse ``"key:read+write,key2:read"``; errors name ``origin`` and the entry index."""
        keys = []
        for key, scopes in parse_api_keys(spec, origin):
            digest = _digest(key)
            keys.append(ApiKey(digest, digest.hex()[:12], scopes))
        return cls(keys)

    def lookup(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found = None
        # Compare against every key (no early exit) so timing says nothing about which matched.
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` stored."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self, cost: float) -> float:
        """Take ``cost`` tokens; return 0 on success or the seconds to wait before retrying."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if cost <= self._tokens:
            self._tokens -= cost
            return 0.0
        if cost > self.burst:  # can never succeed: tell the client to come back in a while
            return max(1.0, cost / self.rate)
        return (cost - self._tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per key id, thread-safe; ``rate <= 0`` disables limiting."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, cost: float = 1.0) -> float:
        if self.rate <= 0:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst, self._clock)
            return bucket.take(cost)


@dataclass
class AuthState:
    """What :func:`require_scope` needs, stored in ``app.extensions``."""

    keys: ApiKeyStore
    limiter: RateLimiter


def authenticate() -> ApiKey:
    """The key of the current request, or raise a 401 :class:`ApiError`."""
    state: AuthState = current_app.extensions[EXTENSION]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "unauthorized", "missing Authorization header",
                       {"expected": "Authorization: Bearer <api key>"},
                       {"WWW-Authenticate": 'Bearer realm="dcmms"'})
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Authorization header must be 'Bearer <api key>'",
                       {}, {"WWW-Authenticate": 'Bearer realm="dcmms"'})
    key = state.keys.lookup(token.strip())
    if key is None:
        raise ApiError(401, "unauthorized", "invalid API key", {},
                       {"WWW-Authenticate": 'Bearer realm="dcmms", error="invalid_token"'})
    return key


def require_scope(scope: str, cost: Callable[[], float] | None = None) -> Callable[[F], F]:
    """Decorator: 401 without a valid key, 403 without ``scope``, 429 over the key's rate.

    ``cost`` returns how many tokens the request takes (default 1); it runs after
    authentication, so it may look at the request (e.g. a batch size).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; allowed: {sorted(SCOPES)}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = authenticate()
            g.api_key_id = key.key_id
            if scope not in key.scopes:
                raise ApiError(403, "forbidden", f"API key lacks the '{scope}' scope",
                               {"required_scope": scope, "key_scopes": sorted(key.scopes)})
            state: AuthState = current_app.extensions[EXTENSION]
            wait = state.limiter.check(key.key_id, cost() if cost else 1.0)
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                _LOGGER.info("rate limit hit by key %s", key.key_id)
                raise ApiError(429, "rate_limited", "too many requests for this API key",
                               {"retry_after_seconds": retry_after},
                               {"Retry-After": str(retry_after)})
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
