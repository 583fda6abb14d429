"""Stable Python names for tools, parameters, columns, classes and environment variables."""

from __future__ import annotations

import hashlib
import keyword
import re
from urllib.parse import unquote

MAX_TOOL_NAME = 64


def snake(text: str) -> str:
    """`listPets` -> `list_pets`, `X-Request-ID` -> `x_request_id`, `9lives` -> `n9lives`."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text:
        return "x"
    return f"n{text}" if text[0].isdigit() else text


def capped(name: str, limit: int = MAX_TOOL_NAME) -> str:
    """`name`, shortened with a hash suffix when longer than `limit` (the same name always gives the same result)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('_')}_{digest}"


def path_name(method: str, path: str) -> str:
    """The stable name of an operation without operationId: `GET /lab/api/settings/{schema_name}` ->
    `get_lab_api_settings_schema_name`."""
    return capped(snake(f"{method.lower()} {unquote(path)}"))


def unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`… whichever is free; the result is added to `taken`."""
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    taken.add(candidate)
    return candidate


def identifier(text: str, reserved: set[str] | frozenset[str] = frozenset()) -> str:
    """A valid Python identifier for `text` that is not a keyword nor in `reserved` (a `_` is appended)."""
    name = snake(text)
    while keyword.iskeyword(name) or name in reserved:
        name += "_"
    return name


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in snake(name).split("_")) or "Generated"


def env_name(prefix: str, text: str) -> str:
    return f"{prefix}_{snake(text).upper()}"


def server_name(name: str) -> str:
    """The registry name of a provider: lower-case letters, digits and '-'."""
    return snake(name).replace("_", "-")[:48]
