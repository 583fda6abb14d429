"""ContextLab API tokens: `cl_<id>_<secret>`, of which only the SHA-256 of the secret is stored.

The secret is 256 random bits, so a plain SHA-256 is enough (no salt or slow hash is needed: there
is nothing to brute-force). `TokenService.verify` runs on every request, so it keeps a short-lived
in-memory copy of each token's row: a warm verify is one dict lookup and one SHA-256. Revoking
through the service drops the copy at once; a revocation made by another process (sharing the
database) takes effect within `cache_seconds`.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.extension.principals import ROLES, Caller
from contextlab.state import StateStore
from contextlab.state.models import ApiTokenRow

TOKEN_PREFIX = "cl_"
DEFAULT_ROLES = ("Viewer",)
CREATE_HINT = "create a new one with `contextlab token create`"

_TOKEN_RE = re.compile(r"^cl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# `*`, `admin`, `sql:query`, `notebooks:*`, `upstream:github__*`: glob characters plus those of tool names.
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_.*?-]+(?::[A-Za-z0-9_.*?-]+)?$")
_EXPIRES_RE = re.compile(r"^(\d+)\s*([mhdw])$")
_EXPIRES_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STRING_ATTRIBUTES = ("org", "project", "tenant")
_CACHE_MAX_ENTRIES = 4096

TokenStatus = Literal["active", "expired", "revoked"]
ErrorReason = Literal["missing", "malformed", "unknown", "expired", "revoked"]


class TokenError(Exception):
    """A token that does not authenticate. `reason` is one of missing, malformed, unknown, expired, revoked.

    The message is safe to show to the caller (it never contains the secret) and says what to do next.
    """

    def __init__(self, reason: ErrorReason, message: str, token_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.token_id = token_id


@dataclass(frozen=True)
class TokenRecord:
    """What is known about a token, without its secret."""

    id: str
    name: str
    scopes: tuple[str, ...]
    attributes: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def display_id(self) -> str:
        return _display(self.id)

    @property
    def status(self) -> TokenStatus:
        """The status now (wall clock); use `status_at` to ask about another moment."""
        return self.status_at(datetime.now(UTC))

    def status_at(self, now: datetime) -> TokenStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """A JSON-ready view (timestamps as ISO 8601 UTC) for the API and the CLI."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "attributes": self.attributes,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "status": self.status_at(now or datetime.now(UTC)),
        }


@dataclass(frozen=True)
class _Cached:
    """A token row as `verify` needs it."""

    secret_sha256: str
    name: str
    scopes: tuple[str, ...]
    attributes: dict[str, Any]
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenService:
    """Creates, verifies, lists and revokes ContextLab API tokens kept in the state store.

    Thread-safe. `clock` gives the current time (inject one in tests); `cache_seconds` bounds how
    long a row read from the database is trusted (0 disables the cache).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        # token id -> (monotonic load time, row or None for an id the database does not know)
        self._cache: dict[str, tuple[float, _Cached | None]] = {}
        self._lock = threading.Lock()
        self._generation = 0

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        expires_in: timedelta | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> tuple[str, TokenRecord]:
        """Create a token; returns its plaintext (shown this once, never stored) and its record."""
        name = _validate_name(name)
        clean_scopes = validate_scopes(scopes)
        clean_attributes = validate_attributes(attributes)
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError(f"expires_in must be positive, not {expires_in}.")
        now = self._now()
        secret = secrets.token_urlsafe(32)
        row = ApiTokenRow(
            id=secrets.token_hex(6),
            name=name,
            secret_sha256=_sha256(secret),
            scopes=list(clean_scopes),
            attributes=clean_attributes,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            revoked_at=None,
        )
        with Session(self._store.engine) as session, session.begin():
            session.add(row)
            record = _record(row)
        with self._lock:
            self._generation += 1
            self._cache.pop(record.id, None)  # forget a cached "unknown" for this id
        return f"{TOKEN_PREFIX}{record.id}_{secret}", record

    def verify(self, token: str | None) -> Caller:
        """The caller a token stands for; raises `TokenError` if it does not authenticate."""
        if not token:
            raise TokenError(
                "missing",
                f"No ContextLab token was given; send `Authorization: Bearer cl_…` ({CREATE_HINT}).",
            )
        match = _TOKEN_RE.match(token)
        if match is None:
            raise TokenError(
                "malformed",
                "Malformed ContextLab token: expected `cl_<12-character id>_<43-character secret>` as printed "
                f"by `contextlab token create`; check it was copied whole, or {CREATE_HINT}.",
            )
        token_id, secret = match.groups()
        entry = self._lookup(token_id)
        # Same answer for an unknown id and a wrong secret: the id alone proves nothing.
        if entry is None or not hmac.compare_digest(_sha256(secret), entry.secret_sha256):
            raise TokenError(
                "unknown",
                f"Token {_display(token_id)} is not known to this server (wrong or deleted token); {CREATE_HINT}.",
                token_id,
            )
        if entry.revoked_at is not None:
            raise TokenError(
                "revoked",
                f"Token {_display(token_id)} was revoked at {_iso(entry.revoked_at)}; {CREATE_HINT}.",
                token_id,
            )
        if entry.expires_at is not None and self._now() >= entry.expires_at:
            raise TokenError(
                "expired",
                f"Token {_display(token_id)} expired at {_iso(entry.expires_at)}; {CREATE_HINT}.",
                token_id,
            )
        return Caller(
            name=f"token:{entry.name}",
            kind="token",
            scopes=entry.scopes,
            attributes=dict(entry.attributes),
            token_id=token_id,
        )

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token (idempotent: revoking twice keeps the first time). KeyError if unknown."""
        with Session(self._store.engine) as session, session.begin():
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                raise KeyError(f"No token with id {token_id!r}; `contextlab token list` shows the ids.")
            if row.revoked_at is None:
                row.revoked_at = self._now()
            record = _record(row)
        self.invalidate(token_id)
        return record

    def invalidate(self, token_id: str | None = None) -> None:
        """Forget the cached row of one token (or of all), so the next verify reads the database."""
        with self._lock:
            self._generation += 1
            if token_id is None:
                self._cache.clear()
            else:
                self._cache.pop(token_id, None)

    def get(self, token_id: str) -> TokenRecord:
        """The record of one token; KeyError if unknown."""
        with Session(self._store.engine) as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                raise KeyError(f"No token with id {token_id!r}; `contextlab token list` shows the ids.")
            return _record(row)

    def _now(self) -> datetime:
        # Stored in UTC: SQLite keeps only the wall-clock time.
        now = self._clock()
        return now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)

    def _lookup(self, token_id: str) -> _Cached | None:
        if self._cache_seconds > 0:
            hit = self._cache.get(token_id)
            if hit is not None and time.monotonic() - hit[0] < self._cache_seconds:
                return hit[1]
        generation = self._generation
        loaded_at = time.monotonic()
        with Session(self._store.engine) as session:
            row = session.get(ApiTokenRow, token_id)
            entry = (
                None
                if row is None
                else _Cached(
                    secret_sha256=row.secret_sha256,
                    name=row.name,
                    scopes=tuple(row.scopes or ()),
                    attributes=_freeze(row.attributes or {}),
                    expires_at=_utc(row.expires_at),
                    revoked_at=_utc(row.revoked_at),
                )
            )
        if self._cache_seconds > 0:
            with self._lock:
                # A revoke or create that ran while we read may have made this row stale: do not cache it.
                if generation == self._generation:
                    self._cache.pop(token_id, None)
                    if len(self._cache) >= _CACHE_MAX_ENTRIES:
                        self._cache.pop(next(iter(self._cache)))  # the oldest entry
                    self._cache[token_id] = (loaded_at, entry)
        return entry

    # Defined last, so that `list` in the annotations above still names the builtin for type checkers.
    def list(self, include_revoked: bool = False) -> builtins.list[TokenRecord]:
        """All tokens, oldest first; revoked ones only if asked."""
        query = select(ApiTokenRow).order_by(ApiTokenRow.created_at, ApiTokenRow.id)
        if not include_revoked:
            query = query.where(ApiTokenRow.revoked_at.is_(None))
        with Session(self._store.engine) as session:
            return [_record(row) for row in session.scalars(query)]


def token_from_headers(authorization: str | None) -> str | None:
    """The ContextLab token in an `Authorization` header (`Bearer cl_…` or `token cl_…`), else None.

    Anything else (no header, a Jupyter token) returns None, so Jupyter's own auth handles it.
    """
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() not in ("bearer", "token") or not credentials.startswith(TOKEN_PREFIX):
        return None
    return credentials


def parse_expires(text: str) -> timedelta | None:
    """`30m`, `12h`, `7d`, `2w` as a timedelta; `never` as None (a token that does not expire)."""
    value = text.strip().lower()
    if value == "never":
        return None
    match = _EXPIRES_RE.match(value)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"Cannot read expiry {text!r}: give a positive number with a unit, m (minutes), h (hours), "
            "d (days) or w (weeks), such as 30m, 12h, 7d or 2w; or `never`."
        )
    return timedelta(**{_EXPIRES_UNITS[match.group(2)]: int(match.group(1))})


def validate_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """The scopes, deduplicated in order; ValueError names the first bad one."""
    if isinstance(scopes, str):
        raise ValueError(f"scopes must be a list of scopes, not the string {scopes!r}.")
    clean: list[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or len(scope) > 200 or not _SCOPE_RE.match(scope):
            raise ValueError(
                f"Invalid scope {scope!r}: use `*`, `admin`, `<server>:<tool>` or a glob over them, such as "
                "`sql:query`, `notebooks:*` or `upstream:github__*`."
            )
        if scope not in clean:
            clean.append(scope)
    if not clean:
        raise ValueError("A token needs at least one scope, such as `sql:query`; `*` grants everything.")
    return tuple(clean)


def validate_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes as stored: JSON-ready, with `roles` a list of known roles (default Viewer)."""
    clean: dict[str, Any] = dict(attributes or {})
    if any(not isinstance(key, str) for key in clean):
        raise ValueError("Token attribute names must be strings.")
    roles = clean.get("roles", DEFAULT_ROLES)
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, Sequence) or not roles:
        raise ValueError(f"roles must be a non-empty list drawn from {', '.join(ROLES)}.")
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"Unknown role(s) {', '.join(map(repr, unknown))}: roles are {', '.join(ROLES)}.")
    clean["roles"] = list(dict.fromkeys(roles))
    for key in _STRING_ATTRIBUTES:
        if key in clean and (not isinstance(clean[key], str) or not clean[key].strip()):
            raise ValueError(f"Token attribute {key!r} must be a non-empty string.")
    try:
        json.dumps(clean)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Token attributes must be JSON values: {error}.") from error
    return clean


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("A token needs a name, such as `ci-bot`, to tell it apart in `contextlab token list`.")
    name = name.strip()
    if len(name) > 128 or not name.isprintable():
        raise ValueError("Token names are at most 128 printable characters.")
    return name


def _record(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        name=row.name,
        scopes=tuple(row.scopes or ()),
        attributes=dict(row.attributes or {}),
        created_at=_utc(row.created_at),
        expires_at=_utc(row.expires_at),
        revoked_at=_utc(row.revoked_at),
    )


def _freeze(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # Lists become tuples so callers that share the cached row cannot change it for each other.
    return {key: tuple(value) if isinstance(value, list) else value for key, value in attributes.items()}


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _display(token_id: str) -> str:
    return f"{TOKEN_PREFIX}{token_id}…"


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything is written in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
