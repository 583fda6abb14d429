"""Read an OpenAPI 3.0 / 3.1 document into the operations a provider is generated from.

Steps, each with a precise error: load YAML or JSON from a path or file:// URL; check it is
OpenAPI 3.x (not Swagger 2.0, not some other YAML); check every `$ref` is local, resolves, and
is not a pure `$ref` cycle; validate with openapi-spec-validator; then build one `Operation` per
path and method, with input schemas converted to JSON Schema 2020-12.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import keyword
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import yaml

from contextlab.providers.generate import GenerationError
from contextlab.providers.generate.names import capped, env_name, identifier, path_name, snake, unique
from contextlab.providers.runtime import OpenAPIProvider

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Names the generated methods must not take: they belong to the provider base classes.
RESERVED_METHODS = frozenset(n for n in dir(OpenAPIProvider) if not n.startswith("__")) | {
    "self",
    "name",
    "description",
}
# Keys whose values are data, not schemas: copied as they are.
_LITERAL_KEYS = {"enum", "const", "default", "examples", "required", "type", "format", "pattern", "description"}
_DROPPED_KEYS = {"discriminator", "xml", "externalDocs", "nullable", "example"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
MAX_SCHEMA_DEPTH = 40


@dataclass
class Param:
    name: str
    location: str
    py_name: str
    required: bool
    schema: dict[str, Any]
    description: str
    explode: bool = True


@dataclass
class Body:
    py_name: str
    required: bool
    kind: str  # json, form or text
    content_type: str | None  # set when not plain application/json
    schema: dict[str, Any]
    description: str


@dataclass
class Operation:
    tool: str
    method_name: str
    method: str
    path: str
    summary: str
    description: str
    deprecated: bool
    params: list[Param]
    body: Body | None
    auth: list[list[str]]
    operation_id: str | None


@dataclass
class Scheme:
    key: str
    kind: str  # api_key, bearer or basic
    env: str
    name: str | None = None
    location: str | None = None


@dataclass
class ApiModel:
    title: str
    description: str
    version: str
    openapi_version: str
    base_url: str
    operations: list[Operation]
    schemes: list[Scheme]
    warnings: list[str] = field(default_factory=list)
    secret_headers: dict[str, str] = field(default_factory=dict)  # header -> environment variable


# -- loading --------------------------------------------------------------------------------------
def read_source(source: str) -> tuple[Path, str]:
    """The local file a spec argument names (a path or a file:// URL) and its text."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        raise GenerationError(
            f"{source}: only local files are read. Download the spec first (e.g. `curl -o openapi.yaml {source}`)."
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise GenerationError(f"{source}: a file:// URL must name a local file (no host).")
        path = Path(url2pathname(unquote(parts.path)))
    elif parts.scheme and len(parts.scheme) > 1:
        raise GenerationError(f"{source}: unsupported URL scheme {parts.scheme!r}; give a file path or file:// URL.")
    else:
        path = Path(source)
    path = path.expanduser()
    try:
        return path.resolve(), path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise GenerationError(f"{source}: no such file.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationError(f"{source}: cannot read it: {exc}") from exc


def parse_document(text: str, source: str) -> dict[str, Any]:
    """Parse YAML or JSON and check that it is an OpenAPI 3.0 or 3.1 document."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        document = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GenerationError(f"{source}: not valid YAML or JSON{where}: {problem}.") from exc
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise GenerationError(
            f"{source}: not an OpenAPI document: the file holds {kind}, not a mapping with an `openapi` field."
        )
    if "swagger" in document:
        raise GenerationError(
            f"{source}: this is a Swagger {document['swagger']} (OpenAPI 2.0) document; only OpenAPI 3.0 and 3.1 "
            "are supported. Convert it first, e.g. with swagger2openapi or https://converter.swagger.io."
        )
    if "openapi" not in document:
        keys = ", ".join(str(k) for k in list(document)[:8]) or "none"
        raise GenerationError(
            f"{source}: not an OpenAPI document: there is no `openapi` field (top-level keys: {keys})."
        )
    version = str(document["openapi"])
    if not (version.startswith("3.0") or version.startswith("3.1")):
        raise GenerationError(f"{source}: OpenAPI {version} is not supported; OpenAPI 3.0.x and 3.1.x are.")
    paths = document.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise GenerationError(f"{source}: the document has no `paths`, so there are no operations to generate.")
    return document


# -- references -----------------------------------------------------------------------------------
class Refs:
    """Local `$ref` resolution (`#/components/...`, any JSON pointer into the document)."""

    def __init__(self, document: dict[str, Any], source: str) -> None:
        self.document = document
        self.source = source

    def target(self, ref: str, where: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise GenerationError(
                f"{self.source}: {where}: the $ref {ref!r} points outside this file; external references are not "
                "supported. Bundle the spec into one file first (e.g. `redocly bundle`)."
            )
        node: Any = self.document
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise GenerationError(f"{self.source}: {where}: the $ref {ref!r} points to nothing in the document.")
        return node

    def deref(self, node: Any, where: str) -> Any:
        """Follow `$ref` chains until a node that is not a reference; a chain that loops is an error."""
        chain: list[str] = []
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in chain:
                cycle = " -> ".join([*chain[chain.index(ref) :], ref])
                raise GenerationError(f"{self.source}: {where}: $ref cycle: {cycle}.")
            chain.append(ref)
            node = self.target(ref, where)
        return node

    def check_all(self) -> None:
        """Every $ref in the document is local, resolves, and no chain of pure references loops."""

        def walk(node: Any, where: str) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("$ref"), str):
                    self.deref(node, where)
                for key, value in node.items():
                    walk(value, f"{where}.{key}")
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    walk(value, f"{where}[{index}]")

        walk(self.document, "$")


def validate(document: dict[str, Any], source: str) -> None:
    """openapi-spec-validator's verdict; the first problems are reported with their location."""
    from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

    version = str(document["openapi"])
    validator_class = OpenAPIV31SpecValidator if version.startswith("3.1") else OpenAPIV30SpecValidator
    try:
        errors = list(validator_class(document).iter_errors())
    except RecursionError as exc:
        raise GenerationError(f"{source}: the spec's references recurse without end.") from exc
    if errors:
        lines = []
        for error in errors[:5]:
            where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            lines.append(f"  {where}: {error.message[:300]}")
        more = f"\n  … and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise GenerationError(
            f"{source}: not a valid OpenAPI {version} document:\n"
            + "\n".join(lines)
            + more
            + "\n(--no-validate skips this check.)"
        )


# -- schemas --------------------------------------------------------------------------------------
class SchemaConverter:
    """OpenAPI schema objects -> self-contained JSON Schema 2020-12 (references inlined).

    A recursive schema (one that contains itself, e.g. a tree node) is expanded once; its inner
    occurrence accepts any value and a warning names the cycle.
    """

    def __init__(self, refs: Refs, openapi_version: str, warnings: list[str]) -> None:
        self.refs = refs
        self.is_30 = openapi_version.startswith("3.0")
        self.warnings = warnings

    def convert(self, schema: Any, where: str) -> dict[str, Any]:
        out = self._convert(schema, where, (), 0)
        return out if isinstance(out, dict) else {}

    def _convert(self, node: Any, where: str, stack: tuple[str, ...], depth: int) -> Any:
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            return {}
        if depth > MAX_SCHEMA_DEPTH:
            return {"description": "(nested too deeply to describe here)"}
        if "$ref" in node:
            ref = node["$ref"]
            if ref in stack:
                cycle = " -> ".join([*stack[stack.index(ref) :], ref])
                message = f"{where}: recursive schema {cycle}; its inner occurrence accepts any value."
                if message not in self.warnings:
                    self.warnings.append(message)
                return {"description": f"Recursive {ref.rsplit('/', 1)[-1]} (not expanded)."}
            target = self.refs.deref({"$ref": ref}, where)
            out = self._convert(target, where, (*stack, ref), depth + 1)
            siblings = {k: v for k, v in node.items() if k in ("description", "title")}
            return {**out, **siblings} if isinstance(out, dict) else out
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key.startswith("x-") or key in _DROPPED_KEYS:
                continue
            if key in _LITERAL_KEYS:
                out[key] = copy.deepcopy(value)
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {k: self._convert(v, f"{where}.{k}", stack, depth + 1) for k, v in value.items()}
            elif isinstance(value, dict):
                out[key] = self._convert(value, where, stack, depth + 1)
            elif isinstance(value, list) and key in ("allOf", "anyOf", "oneOf", "prefixItems"):
                out[key] = [self._convert(v, where, stack, depth + 1) for v in value]
            else:
                out[key] = copy.deepcopy(value)
        if self.is_30:
            self._from_30(node, out)
        return out

    @staticmethod
    def _from_30(node: dict[str, Any], out: dict[str, Any]) -> None:
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(node.get(bound), bool):
                out.pop(bound, None)
                if node[bound] and limit in node:
                    out[bound] = out.pop(limit)
        if "example" in node and "examples" not in out:
            out["examples"] = [copy.deepcopy(node["example"])]
        if node.get("nullable") is True:
            if isinstance(out.get("type"), str):
                out["type"] = [out["type"], "null"]
                if "enum" in out and None not in out["enum"]:
                    out["enum"] = [*out["enum"], None]
            elif "type" not in out:
                inner = dict(out)
                out.clear()
                out["anyOf"] = [inner, {"type": "null"}]


# -- the model ------------------------------------------------------------------------------------
def load(
    source: str,
    *,
    name: str,
    base_url: str | None = None,
    ignore_schemes: list[str] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    check: bool = True,
) -> tuple[ApiModel, str, str]:
    """Read `source` and build the model. Returns (model, the spec text, "yaml" or "json")."""
    path, text = read_source(source)
    document = parse_document(text, source)
    refs = Refs(document, source)
    refs.check_all()
    if check:
        validate(document, source)

    def keep(names: list[str]) -> bool:
        return (not include or _matches(names, include)) and not (exclude and _matches(names, exclude))

    model = build(
        document, refs, name=name, base_url=base_url, ignore_schemes=ignore_schemes or [], source=source, keep=keep
    )
    kind = "json" if path.suffix.lower() == ".json" or text.lstrip().startswith("{") else "yaml"
    return model, text, kind


def _matches(names: list[str], globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)


def build(
    document: dict[str, Any],
    refs: Refs,
    *,
    name: str,
    base_url: str | None,
    ignore_schemes: list[str],
    source: str,
    keep: Callable[[list[str]], bool] = lambda _names: True,
) -> ApiModel:
    """The operations of the document; names are given to every operation before `keep` filters them, so
    filtering never renames a tool."""
    version = str(document["openapi"])
    warnings: list[str] = []
    converter = SchemaConverter(refs, version, warnings)
    info = document.get("info") if isinstance(document.get("info"), dict) else {}
    prefix = snake(name).upper()
    schemes, scheme_problems = _schemes(document, refs, prefix, ignore_schemes, source)
    problems: list[str] = []
    operations: list[Operation] = []
    tools: set[str] = set()
    methods: set[str] = set(RESERVED_METHODS)
    global_security = document.get("security")
    used_schemes: set[str] = set()
    filtered = 0
    for raw_path, raw_item in document["paths"].items():
        path = str(raw_path)
        item = refs.deref(raw_item, f"$.paths[{path}]")
        if not isinstance(item, dict):
            continue
        shared = item.get("parameters") or []
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            where = f"{method.upper()} {path}"
            op_id = op.get("operationId")
            base_name = capped(snake(op_id)) if isinstance(op_id, str) and op_id.strip() else path_name(method, path)
            tool = unique(base_name, tools)
            if not keep([tool, path, f"{method.upper()} {path}", op_id if isinstance(op_id, str) else ""]):
                filtered += 1
                continue
            method_name = tool if tool not in methods and not keyword.iskeyword(tool) else f"op_{tool}"
            method_name = unique(method_name, methods)
            params, param_problems = _parameters(shared, op.get("parameters") or [], refs, converter, where)
            problems += param_problems
            taken = {p.py_name for p in params}
            body, body_problem = _body(op.get("requestBody"), refs, converter, where, taken)
            if body_problem:
                problems.append(body_problem)
            security = op.get("security", global_security)
            auth, auth_problem = _auth(security, schemes, scheme_problems, ignore_schemes, where)
            if auth_problem:
                problems.append(auth_problem)
            used_schemes.update(s for alternative in auth for s in alternative)
            operations.append(
                Operation(
                    tool=tool,
                    method_name=method_name,
                    method=method.upper(),
                    path=path,
                    summary=str(op.get("summary") or "").strip(),
                    description=str(op.get("description") or "").strip(),
                    deprecated=bool(op.get("deprecated")),
                    params=params,
                    body=body,
                    auth=auth,
                    operation_id=op_id if isinstance(op_id, str) else None,
                )
            )
    if problems:
        raise GenerationError(
            f"{source}: cannot generate a provider:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n(--exclude GLOB skips operations; --ignore-auth-scheme NAME skips a scheme whose credentials you "
            "send yourself with --header.)"
        )
    if not operations:
        left = " left after --include/--exclude" if filtered else ""
        raise GenerationError(f"{source}: the document's paths hold no operations{left}.")
    return ApiModel(
        title=str(info.get("title") or name),
        description=str(info.get("description") or info.get("summary") or "").strip(),
        version=str(info.get("version") or "0"),
        openapi_version=version,
        base_url=_base_url(document, base_url, source),
        operations=operations,
        schemes=[s for s in schemes.values() if s.key in used_schemes],
        warnings=warnings,
    )


def _base_url(document: dict[str, Any], given: str | None, source: str) -> str:
    if given:
        if not given.startswith(("http://", "https://")):
            raise GenerationError(f"--base-url must start with http:// or https://, got {given!r}.")
        return given
    servers = document.get("servers") or []
    for server in servers:
        if not isinstance(server, dict) or not isinstance(server.get("url"), str):
            continue
        url = server["url"]
        for variable, spec in (server.get("variables") or {}).items():
            url = url.replace("{" + variable + "}", str((spec or {}).get("default", "")))
        if url.startswith(("http://", "https://")):
            return url
    listed = ", ".join(str((s or {}).get("url")) for s in servers if isinstance(s, dict)) or "none"
    raise GenerationError(
        f"{source}: the spec names no absolute server URL (servers: {listed}); pass --base-url https://…"
    )


def _schemes(
    document: dict[str, Any], refs: Refs, prefix: str, ignore: list[str], source: str
) -> tuple[dict[str, Scheme], dict[str, str]]:
    """Supported schemes by name, and why each unsupported one is not."""
    declared = ((document.get("components") or {}).get("securitySchemes")) or {}
    schemes: dict[str, Scheme] = {}
    problems: dict[str, str] = {}
    for key, raw in declared.items():
        if key in ignore:
            continue
        spec = refs.deref(raw, f"$.components.securitySchemes.{key}")
        kind = str((spec or {}).get("type", ""))
        env = env_name(prefix, f"auth_{key}")
        if kind == "apiKey" and spec.get("in") in ("header", "query") and spec.get("name"):
            schemes[key] = Scheme(key, "api_key", env, name=str(spec["name"]), location=str(spec["in"]))
        elif kind == "http" and str(spec.get("scheme", "")).lower() in ("bearer", "basic"):
            schemes[key] = Scheme(key, str(spec["scheme"]).lower(), env)
        elif kind == "apiKey":
            problems[key] = f"apiKey in {spec.get('in')!r} (only header and query keys are supported)"
        elif kind == "http":
            problems[key] = f"http scheme {spec.get('scheme')!r} (only bearer and basic are supported)"
        else:
            problems[key] = f"{kind or 'untyped'} (supported: apiKey in header/query, http bearer, http basic)"
    return schemes, problems


def _auth(
    security: Any, schemes: dict[str, Scheme], problems: dict[str, str], ignore: list[str], where: str
) -> tuple[list[list[str]], str | None]:
    """The alternatives an operation accepts, as lists of supported scheme names ([] = anonymous)."""
    if not security:
        return [], None
    alternatives: list[list[str]] = []
    refused: list[str] = []
    for requirement in security:
        names = [n for n in (requirement or {}) if n not in ignore]
        bad = [n for n in names if n not in schemes]
        if bad:
            refused += [f"{n!r}: {problems.get(n, 'not declared in components.securitySchemes')}" for n in bad]
            continue
        if names not in alternatives:
            alternatives.append(names)
    if not alternatives:
        return [], f"{where}: unsupported security scheme " + "; ".join(dict.fromkeys(refused))
    if alternatives == [[]]:
        return [], None
    alternatives.sort(key=lambda a: not a)  # anonymous access last: credentials are used when configured
    return alternatives, None


def _parameters(
    shared: list[Any], own: list[Any], refs: Refs, converter: SchemaConverter, where: str
) -> tuple[list[Param], list[str]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*shared, *own]:  # operation parameters override path-level ones with the same name and place
        spec = refs.deref(raw, where)
        if isinstance(spec, dict) and "name" in spec and "in" in spec:
            merged[(str(spec["name"]), str(spec["in"]))] = spec
    problems: list[str] = []
    params: list[Param] = []
    taken: set[str] = {"self", "body"}
    for (name, location), spec in merged.items():
        if location == "header" and name.lower() in ("accept", "content-type", "authorization"):
            continue
        if location not in ("path", "query", "header", "cookie"):
            problems.append(f"{where}: parameter {name!r} is in {location!r}, which OpenAPI does not define.")
            continue
        if "schema" in spec:
            schema = converter.convert(spec["schema"], f"{where} parameter {name}")
        elif "content" in spec:
            problems.append(f"{where}: parameter {name!r} is described by `content`, which is not supported.")
            continue
        else:
            schema = {}
        style = spec.get("style")
        types = _types(schema)
        if style in ("deepObject", "spaceDelimited", "pipeDelimited") or (
            "object" in types and location in ("query", "cookie")
        ):
            problems.append(
                f"{where}: parameter {name!r} ({location}, style {style or 'form'}, type object) cannot be sent; "
                "only scalar and array parameters are supported."
            )
            continue
        default_explode = (style or ("form" if location in ("query", "cookie") else "simple")) == "form"
        explode = bool(spec.get("explode", default_explode)) if location in ("query", "cookie") else False
        py_name = identifier(name)
        if py_name in taken:
            py_name = identifier(f"{name}_{location}", taken)
        taken.add(py_name)
        description = str(spec.get("description") or schema.get("description") or "").strip()
        if spec.get("deprecated"):
            description = f"Deprecated. {description}".strip()
        params.append(
            Param(
                name=name,
                location=location,
                py_name=py_name,
                required=bool(spec.get("required")) or location == "path",
                schema=schema,
                description=description,
                explode=explode,
            )
        )
    params.sort(key=lambda p: (not p.required, ("path", "query", "header", "cookie").index(p.location)))
    return params, problems


def _types(schema: dict[str, Any]) -> set[str]:
    value = schema.get("type")
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {str(v) for v in value}
    return set()


def _body(
    raw: Any, refs: Refs, converter: SchemaConverter, where: str, taken: set[str]
) -> tuple[Body | None, str | None]:
    if raw is None:
        return None, None
    spec = refs.deref(raw, f"{where} requestBody")
    content = (spec or {}).get("content") or {}
    if not content:
        return None, None
    types = {str(t).split(";")[0].strip().lower(): media for t, media in content.items()}
    choice = next((t for t in types if t == "application/json"), None)
    choice = choice or next((t for t in types if t.endswith("+json") or t.endswith("/json")), None)
    kind = "json"
    if choice is None:
        choice = next((t for t in types if t == "application/x-www-form-urlencoded"), None)
        kind = "form"
    if choice is None:
        choice = next((t for t in types if t.startswith("text/")), None)
        kind = "text"
    if choice is None:
        return None, (
            f"{where}: request body media type(s) {', '.join(types)} not supported "
            "(JSON, application/x-www-form-urlencoded and text/* are)."
        )
    media = types[choice] or {}
    schema = converter.convert(media.get("schema") or {}, f"{where} requestBody")
    py_name = "body" if "body" not in taken else "request_body"
    return (
        Body(
            py_name=py_name,
            required=bool(spec.get("required")),
            kind=kind,
            content_type=None if choice in ("application/json", "application/x-www-form-urlencoded") else choice,
            schema=schema,
            description=str(spec.get("description") or schema.get("description") or "").strip(),
        ),
        None,
    )


def dump_json(value: Any) -> Any:
    """`value` made plain JSON (YAML dates and numeric keys become strings)."""
    return json.loads(json.dumps(value, default=str))
