"""The registry of upstream MCP servers, kept in the state store with secrets encrypted at rest.

Three doors lead here and share this one service: the REST API, the CLI (through the REST API)
and manifest files. Secret values (env values, header values, auth tokens) are encrypted with
Fernet under a key file kept outside the workspace; the API only ever shows their names.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.extension.upstreams import ConnectionSpec
from contextlab.state import StateStore
from contextlab.state.models import UpstreamServerRow

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,47}$"
MANIFEST_VERSION = 1


class RegistryError(Exception):
    """A registry request that cannot be honoured; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class UpstreamAttributes(BaseModel):
    """Attributes the gateway's policies match on."""

    model_config = ConfigDict(extra="allow")

    org: str | None = None
    project: str | None = None
    sensitivity: Literal["public", "internal", "confidential", "secret"] = "internal"
    owner: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, value: Any) -> Any:
        # A null attribute is an absent one; keeping it would make equal specs compare unequal.
        return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


class UpstreamAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["bearer"] = "bearer"
    token: str = Field(min_length=1, description="Sent as `Authorization: Bearer <token>`; stored encrypted.")


class UpstreamSpec(BaseModel):
    """One upstream MCP server as written in a manifest or sent to the REST API."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits and '-'; tools appear as `<name>__<tool>`.",
    )
    description: str = ""
    transport: Literal["stdio", "http"]
    command: list[str] | None = Field(default=None, description="stdio: the command and its arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="stdio: environment values (stored encrypted).")
    cwd: str | None = None
    url: str | None = Field(default=None, description="http: the streamable-HTTP endpoint URL.")
    headers: dict[str, str] = Field(default_factory=dict, description="http: extra headers (values encrypted).")
    auth: UpstreamAuth | None = None
    protocol: Literal["auto", "legacy", "modern"] = Field(
        default="auto", description="auto: try 2026-07-28 discovery, fall back to the 2025-11-25 handshake."
    )
    session_scope: Literal["caller", "shared"] | None = Field(
        default=None,
        description="caller: one upstream session (a process, for stdio) per caller identity; shared: one for "
        "all. Default: caller for http, shared for stdio.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    retries: int = Field(default=2, ge=0, le=10, description="Retries for idempotent calls only.")
    cacheable_tools: list[str] = Field(default_factory=list, description="Globs of tools whose results are cached.")
    cache_ttl_seconds: float = Field(default=60.0, ge=0)
    attributes: UpstreamAttributes = Field(default_factory=UpstreamAttributes)
    enabled: bool = True

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError("command must name a program")
        return value

    @model_validator(mode="after")
    def _transport_fields(self) -> UpstreamSpec:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio server needs `command`")
            if self.url or self.headers or self.auth:
                raise ValueError("a stdio server takes `command`/`env`, not `url`/`headers`/`auth`")
        else:
            if not self.url or not re.match(r"^https?://", self.url):
                raise ValueError("an http server needs `url` starting with http:// or https://")
            if self.command or self.env:
                raise ValueError("an http server takes `url`/`headers`/`auth`, not `command`/`env`")
        return self


class SecretBox:
    """Fernet encryption under a key file created on first use with mode 0600."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
        self._fernet = Fernet(key_file.read_bytes().strip())

    def seal(self, values: Mapping[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise RegistryError(
                f"Stored secrets cannot be decrypted with {self.key_file}: the key file changed. "
                "Restore the old key or re-register the server with its secrets.",
                status=500,
            ) from exc


def manifest_schema() -> dict[str, Any]:
    """The published JSON Schema (2020-12) of registry manifest files."""
    text = resources.files("contextlab.extension").joinpath("schemas/registry-manifest.schema.json").read_text()
    return json.loads(text)


def generate_manifest_schema() -> dict[str, Any]:
    """The manifest schema derived from `UpstreamSpec`; the shipped file must equal it (a test checks)."""
    server = UpstreamSpec.model_json_schema(ref_template="#/$defs/{model}")
    defs = server.pop("$defs", {})
    defs["UpstreamSpec"] = server
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://contextlab.dev/schemas/registry-manifest.schema.json",
        "title": "ContextLab registry manifest",
        "description": "Upstream MCP servers to register with the ContextLab gateway.",
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "servers"],
        "properties": {
            "version": {"const": MANIFEST_VERSION},
            "servers": {"type": "array", "items": {"$ref": "#/$defs/UpstreamSpec"}},
        },
        "$defs": defs,
    }


def parse_manifest(text: str, *, source: str = "<manifest>") -> list[UpstreamSpec]:
    """Parse a YAML or JSON manifest; errors name the file and the JSON path of the problem."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: not valid YAML/JSON: {exc}") from exc
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_json_path(e.absolute_path)}: {e.message}" for e in errors[:10]]
        raise RegistryError("Invalid registry manifest:\n" + "\n".join(lines))
    specs: list[UpstreamSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(document["servers"]):
        try:
            spec = UpstreamSpec.model_validate(item)
        except ValidationError as exc:
            raise RegistryError(f"{source}: $.servers[{index}]: {_pydantic_message(exc)}") from exc
        if spec.name in seen:
            raise RegistryError(f"{source}: $.servers[{index}].name: duplicate server name {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _pydantic_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(server)'}: {error['msg']}" for error in exc.errors()
    )


class Registry:
    """CRUD over `upstream_servers`. Every change calls the listeners with (name, action)."""

    def __init__(self, store: StateStore, secrets: SecretBox) -> None:
        self.store = store
        self.secrets = secrets
        self.listeners: list[Callable[[str, str], None]] = []

    # -- reads -----------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        with Session(self.store.engine) as session:
            rows = session.scalars(select(UpstreamServerRow).order_by(UpstreamServerRow.name))
            return [_public(row) for row in rows]

    def get(self, name: str) -> dict[str, Any]:
        with Session(self.store.engine) as session:
            return _public(self._row(session, name))

    def enabled_connections(self) -> list[tuple[ConnectionSpec, dict[str, Any]]]:
        """(how to connect, public record) for every enabled server, secrets decrypted."""
        with Session(self.store.engine) as session:
            rows = session.scalars(select(UpstreamServerRow).where(UpstreamServerRow.enabled.is_(True)))
            return [(self._connection(row), _public(row)) for row in rows]

    def connection(self, name: str) -> ConnectionSpec:
        with Session(self.store.engine) as session:
            return self._connection(self._row(session, name))

    # -- writes ----------------------------------------------------------------------------------
    def add(self, spec: UpstreamSpec, *, source: str = "api") -> dict[str, Any]:
        now = datetime.now(UTC)
        with Session(self.store.engine) as session, session.begin():
            if session.get(UpstreamServerRow, spec.name) is not None:
                raise RegistryError(
                    f"An upstream named {spec.name!r} is already registered; update it or remove it first.", 409
                )
            row = UpstreamServerRow(name=spec.name, created_at=now, source=source, health={})
            self._fill(row, spec, now)
            session.add(row)
            record = _public(row)
        self._changed(spec.name, "added")
        return record

    def update(self, name: str, changes: Mapping[str, Any], *, source: str | None = None) -> dict[str, Any]:
        """Apply a partial update. Secret maps given here replace the stored ones; omitted ones are kept."""
        if "name" in changes and changes["name"] != name:
            raise RegistryError("An upstream cannot be renamed; remove it and add it under the new name.")
        with Session(self.store.engine) as session, session.begin():
            row = self._row(session, name)
            current = self._spec(row)
            merged = current.model_dump() | {k: v for k, v in changes.items() if k != "name"}
            try:
                spec = UpstreamSpec.model_validate(merged | {"name": name})
            except ValidationError as exc:
                raise RegistryError(_pydantic_message(exc)) from exc
            if spec == current and source is None:
                return _public(row)
            self._fill(row, spec, datetime.now(UTC))
            if source is not None:
                row.source = source
            record = _public(row)
        self._changed(name, "updated")
        return record

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        with Session(self.store.engine) as session, session.begin():
            row = self._row(session, name)
            row.enabled = enabled
            row.updated_at = datetime.now(UTC)
            record = _public(row)
        self._changed(name, "enabled" if enabled else "disabled")
        return record

    def remove(self, name: str) -> None:
        with Session(self.store.engine) as session, session.begin():
            session.delete(self._row(session, name))
        self._changed(name, "removed")

    def record_health(self, name: str, health: Mapping[str, Any]) -> None:
        with Session(self.store.engine) as session, session.begin():
            row = session.get(UpstreamServerRow, name)
            if row is not None:
                row.health = dict(health)

    def apply_manifest(self, specs: list[UpstreamSpec], *, source: str = "manifest") -> dict[str, list[str]]:
        """Add new servers and update changed ones; servers not in the manifest are left alone."""
        summary: dict[str, list[str]] = {"added": [], "updated": [], "unchanged": []}
        existing = {record["name"] for record in self.list()}
        for spec in specs:
            if spec.name not in existing:
                self.add(spec, source=source)
                summary["added"].append(spec.name)
                continue
            with Session(self.store.engine) as session:
                same = self._spec(self._row(session, spec.name)) == spec
            if same:
                summary["unchanged"].append(spec.name)
            else:
                self.update(spec.name, spec.model_dump(), source=source)
                summary["updated"].append(spec.name)
        return summary

    # -- internals -------------------------------------------------------------------------------
    def _row(self, session: Session, name: str) -> UpstreamServerRow:
        row = session.get(UpstreamServerRow, name)
        if row is None:
            raise RegistryError(f"No upstream named {name!r}. `contextlab registry list` shows the servers.", 404)
        return row

    def _fill(self, row: UpstreamServerRow, spec: UpstreamSpec, now: datetime) -> None:
        secret_values = {"env": spec.env, "headers": spec.headers, "auth": spec.auth.token if spec.auth else None}
        row.description = spec.description
        row.transport = spec.transport
        row.command = spec.command
        row.url = spec.url
        row.secrets = self.secrets.seal(secret_values)
        row.secret_names = {
            "env": sorted(spec.env),
            "headers": sorted(spec.headers),
            "auth": spec.auth.type if spec.auth else None,
        }
        row.timeout_seconds = spec.timeout_seconds
        row.attributes = spec.attributes.model_dump(exclude_none=True)
        row.options = {
            "cwd": spec.cwd,
            "protocol": spec.protocol,
            "session_scope": spec.session_scope,
            "retries": spec.retries,
            "cacheable_tools": spec.cacheable_tools,
            "cache_ttl_seconds": spec.cache_ttl_seconds,
        }
        row.enabled = spec.enabled
        row.updated_at = now

    def _spec(self, row: UpstreamServerRow) -> UpstreamSpec:
        secret = self.secrets.open(row.secrets) if row.secrets else {}
        options = row.options or {}
        return UpstreamSpec(
            name=row.name,
            description=row.description,
            transport=row.transport,  # type: ignore[arg-type]
            command=row.command,
            env=secret.get("env") or {},
            cwd=options.get("cwd"),
            url=row.url,
            headers=secret.get("headers") or {},
            auth=UpstreamAuth(token=secret["auth"]) if secret.get("auth") else None,
            protocol=options.get("protocol", "auto"),
            session_scope=options.get("session_scope"),
            timeout_seconds=row.timeout_seconds,
            retries=options.get("retries", 2),
            cacheable_tools=options.get("cacheable_tools", []),
            cache_ttl_seconds=options.get("cache_ttl_seconds", 60.0),
            attributes=UpstreamAttributes.model_validate(row.attributes or {}),
            enabled=row.enabled,
        )

    def _connection(self, row: UpstreamServerRow) -> ConnectionSpec:
        spec = self._spec(row)
        headers = dict(spec.headers)
        if spec.auth is not None:
            headers["Authorization"] = f"Bearer {spec.auth.token}"
        return ConnectionSpec(
            name=spec.name,
            transport=spec.transport,
            url=spec.url,
            headers=headers,
            command=list(spec.command or []),
            env=dict(spec.env),
            cwd=spec.cwd,
            protocol=spec.protocol,
            timeout_seconds=spec.timeout_seconds,
        )

    def _changed(self, name: str, action: str) -> None:
        for listener in list(self.listeners):
            listener(name, action)


def _public(row: UpstreamServerRow) -> dict[str, Any]:
    """The record as the API and CLI show it: secret names, never secret values."""
    options = row.options or {}
    return {
        "name": row.name,
        "description": row.description,
        "transport": row.transport,
        "command": row.command,
        "url": row.url,
        "secrets": row.secret_names or {},
        "protocol": options.get("protocol", "auto"),
        "session_scope": options.get("session_scope") or ("shared" if row.transport == "stdio" else "caller"),
        "timeout_seconds": row.timeout_seconds,
        "retries": options.get("retries", 2),
        "cacheable_tools": options.get("cacheable_tools", []),
        "cache_ttl_seconds": options.get("cache_ttl_seconds", 60.0),
        "attributes": row.attributes or {},
        "enabled": row.enabled,
        "source": row.source,
        "health": row.health or {},
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }
