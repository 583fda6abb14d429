"""The `api` target: an OpenAPI 3.1 document (YAML), validated with openapi-spec-validator; errors name the
JSON path and the YAML line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from contextlab.copilot.context import ContextClient
from contextlab.copilot.engine import ContextItem, Validation, extract_code
from contextlab.copilot.targets._common import YAMLDocument, json_path, schema_context, yaml_error

API_TEMPLATE = """\
You design HTTP APIs. Answer with one ```yaml block holding a complete OpenAPI 3.1 document and nothing else:
- start with `openapi: 3.1.0` and an `info` object with `title` and `version`;
- every operation has an `operationId` (unique), its path parameters declared (`in: path`, `required: true`)
  and `responses`;
- put shared schemas under `components/schemas` and refer to them with local refs
  (`$ref: '#/components/schemas/Order'`); no external or URL refs.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _refs(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path, value
            else:
                yield from _refs(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _refs(value, (*path, index))


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class APITarget:
    """An OpenAPI 3.1 document: YAML that parses, `openapi: 3.1.x`, only local `$ref`s (nothing is fetched),
    and no error from openapi-spec-validator's 3.1 validator (schema and semantic checks such as undeclared
    path parameters, duplicate operationIds and unresolvable refs)."""

    name = "api"
    template_name = "copilot.api"
    template = API_TEMPLATE
    language = "yaml"
    max_tokens = 2000  # answers of this target run long

    def __init__(self, max_errors: int = 6) -> None:
        self.max_errors = max_errors

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        items = schema_context(client)
        for item in items:
            item.title = "Database schema (resources the API may expose)"
        return items

    def extract(self, text: str) -> str:
        return extract_code(text, ("yaml", "yml", "json", "openapi"))

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        from jsonschema.exceptions import best_match
        from openapi_spec_validator import OpenAPIV31SpecValidator
        from referencing.exceptions import Unresolvable

        if not code.strip():
            return Validation(False, "The answer holds no OpenAPI document.")
        try:
            document = YAMLDocument(code)
        except yaml.YAMLError as exc:
            return Validation(False, yaml_error(exc))
        spec = document.data
        if not isinstance(spec, dict):
            return Validation(
                False, f"The document must be a mapping (openapi, info, paths, ...), not {type(spec).__name__}."
            )
        version = spec.get("openapi")
        if version is None:
            return Validation(False, "The document has no `openapi` field: start it with `openapi: 3.1.0`.")
        if not isinstance(version, str):
            return Validation(False, f"`openapi: {version}` is read as a number; write `openapi: 3.1.0`.")
        if not version.startswith("3.1"):
            return Validation(False, f"`openapi` is {version!r}; this target writes OpenAPI 3.1: use `openapi: 3.1.0`.")
        external = [(path, ref) for path, ref in _refs(spec) if not ref.startswith("#")]
        if external:
            path, ref = external[0]
            return Validation(
                False,
                f"`$ref: {ref}` at {json_path(path)} (line {document.line_of(path)}) is not a local reference; "
                "define the schema under components and use `#/components/...`.",
            )
        problems: list[str] = []
        try:
            for error in OpenAPIV31SpecValidator(spec).iter_errors():
                if error.context:
                    error = best_match(error.context) or error
                path = list(error.absolute_path)
                where = json_path(path)
                line = document.line_of(path)
                problems.append(f"at {where}{f' (line {line})' if path and line else ''}: {_clip(error.message)}")
                if len(problems) >= self.max_errors:
                    break
        except Unresolvable as exc:
            ref = getattr(exc, "ref", None) or _clip(str(exc), 120)
            ref = f"#{ref}" if ref.startswith("/") else ref
            lines = [document.line_of(p) for p, r in _refs(spec) if r == ref]
            at = f" (line {lines[0]})" if lines and lines[0] else ""
            problems.append(f"`$ref: {ref}`{at} points at nothing in the document; define it or fix the ref.")
        if problems:
            return Validation(False, "The OpenAPI document is invalid:\n" + "\n".join(f"- {p}" for p in problems))
        paths = spec.get("paths") or {}
        operations = [
            f"{method.upper()} {path}"
            for path, item in paths.items()
            if isinstance(item, dict)
            for method in item
            if method in HTTP_METHODS
        ]
        return Validation(True, detail={"title": spec.get("info", {}).get("title"), "operations": operations})
