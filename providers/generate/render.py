"""Write the generated providers as readable Python that passes `ruff check` (line length 120).

A tiny expression printer keeps every line within the limit: calls, subscripts, dicts and lists
are put on one line when they fit and split one item per line (with a trailing comma) when not;
long strings become implicitly concatenated pieces.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from contextlab.providers.generate.names import class_name
from contextlab.providers.generate.openapi import ApiModel, Operation, Param

WIDTH = 120


# -- the expression printer -----------------------------------------------------------------------
@dataclass
class Raw:
    """Python source written as is."""

    text: str


@dataclass
class Call:
    func: str
    args: list[Any] = field(default_factory=list)
    kwargs: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Sub:
    base: str
    items: list[Any]


def literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f'float("{value}")'
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"not a literal: {value!r}")


def flat(node: Any) -> str:
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Call):
        parts = [flat(a) for a in node.args] + [f"{k}={flat(v)}" for k, v in node.kwargs]
        return f"{node.func}({', '.join(parts)})"
    if isinstance(node, Sub):
        return f"{node.base}[{', '.join(flat(i) for i in node.items)}]"
    if isinstance(node, dict):
        return "{" + ", ".join(f"{literal(str(k))}: {flat(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list | tuple):
        return "[" + ", ".join(flat(v) for v in node) + "]"
    return literal(node)


def lines(node: Any, indent: int, prefix: str = "", suffix: str = "", bracketed: bool = True) -> list[str]:
    """`node` as source lines at `indent`, the first starting with `prefix`, the last ending with `suffix`."""
    pad = " " * indent
    one = f"{pad}{prefix}{flat(node)}{suffix}"
    if len(one) <= WIDTH:
        return [one]
    if isinstance(node, str):
        if not bracketed:
            return [f"{pad}{prefix}(", *_string_lines(node, indent + 4, "", ""), f"{pad}){suffix}"]
        return _string_lines(node, indent, prefix, suffix)
    children: list[tuple[str, Any]]
    if isinstance(node, Call):
        head, close = f"{node.func}(", ")"
        children = [("", a) for a in node.args] + [(f"{k}=", v) for k, v in node.kwargs]
    elif isinstance(node, Sub):
        head, close = f"{node.base}[", "]"
        children = [("", i) for i in node.items]
    elif isinstance(node, dict):
        head, close = "{", "}"
        children = [(f"{literal(str(k))}: ", v) for k, v in node.items()]
    elif isinstance(node, list | tuple):
        head, close = "[", "]"
        children = [("", v) for v in node]
    else:
        return [one]
    out = [f"{pad}{prefix}{head}"]
    for child_prefix, child in children:
        out += lines(child, indent + 4, child_prefix, ",")
    out.append(f"{pad}{close}{suffix}")
    return out


def _string_lines(text: str, indent: int, prefix: str, suffix: str) -> list[str]:
    pad = " " * indent
    pieces = [p for p in re.split(r"(?<=[\s\n])", text) if p]
    out: list[str] = []
    current = ""
    lead = prefix
    for piece in pieces:
        while piece:
            room = WIDTH - len(pad) - len(lead) - len(suffix) - 2
            candidate = current + piece
            if len(literal(candidate)) - 2 <= room or not current and len(literal(piece)) - 2 <= room:
                current = candidate
                piece = ""
                if current.endswith("\n"):
                    out.append(f"{pad}{lead}{literal(current)}")
                    current, lead = "", ""
            elif current:
                out.append(f"{pad}{lead}{literal(current)}")
                current, lead = "", ""
            else:  # one word longer than the line: cut it
                cut = max(room // 2, 10)
                out.append(f"{pad}{lead}{literal(piece[:cut])}")
                piece, lead = piece[cut:], ""
    if current or not out:
        out.append(f"{pad}{lead}{literal(current)}")
    out[-1] += suffix
    return out


def docstring(text: str, indent: int) -> list[str]:
    """A triple-quoted docstring with the text wrapped to the line limit."""
    pad = " " * indent
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", " ", text.expandtabs(4)).replace("\\", "\\\\").replace('"""', '\\"""')
    body: list[str] = []
    for raw in text.strip().splitlines() or [""]:
        line = raw.rstrip()
        if not line.strip():
            body.append("")
            continue
        lead = line[: len(line) - len(line.lstrip())]
        body += textwrap.wrap(
            line.strip(),
            width=max(WIDTH - indent - len(lead) - 3, 40),
            initial_indent=lead,
            subsequent_indent=lead,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [""]
    while len(body) > 1 and body[-1] == "":
        body.pop()
    body = [re.sub(r"\n{3,}", "\n\n", b) for b in body]
    if body[-1].endswith('"'):
        body[-1] = body[-1][:-1] + '\\"'
    if len(body) == 1 and len(pad) + 6 + len(body[0]) <= WIDTH:
        return [f'{pad}"""{body[0]}"""']
    out = [f'{pad}"""{body[0]}']
    out += [f"{pad}{b}" if b else "" for b in body[1:]]
    out.append(f'{pad}"""')
    return _squeeze_blank(out)


def _squeeze_blank(out: list[str]) -> list[str]:
    squeezed: list[str] = []
    for line in out:
        if line == "" and squeezed and squeezed[-1] == "":
            continue
        squeezed.append(line)
    return squeezed


class Imports:
    """The names a generated module uses, written as sorted import blocks (stdlib, then ContextLab)."""

    def __init__(self) -> None:
        self.stdlib: set[str] = set()
        self.typing: set[str] = set()
        self.runtime: set[str] = set()

    def render(self) -> list[str]:
        out = sorted(self.stdlib)
        if self.typing:
            out.append(_from("typing", self.typing))
        if out:
            out.append("")
        out.append(_from("contextlab.providers.runtime", self.runtime))
        return out


def _from(module: str, names: set[str]) -> str:
    def order(name: str) -> tuple[int, str]:  # ruff/isort: CONSTANTS, Classes, functions
        kind = 0 if name.isupper() and len(name) > 1 else 1 if name[0].isupper() else 2
        return kind, name

    ordered = sorted(names, key=order)
    one = f"from {module} import {', '.join(ordered)}"
    if len(one) <= WIDTH:
        return one
    return "\n".join([f"from {module} import (", *[f"    {n}," for n in ordered], ")"])


def module_docstring(text: str) -> list[str]:
    return docstring(text, 0)


# -- OpenAPI providers ----------------------------------------------------------------------------
_PRIMITIVES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}
# Keys the Python annotation (with the Field description) already says, or that need not reach the model.
_PLAIN_KEYS = {"type", "description", "title", "default", "examples", "readOnly", "writeOnly"}


def _schema_types(schema: dict[str, Any]) -> list[str]:
    value = schema.get("type")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def python_type(schema: dict[str, Any], imports: Imports) -> tuple[str, bool]:
    """(annotation, exact): `exact` is False when the schema says more than the annotation does."""
    types = [t for t in _schema_types(schema) if t != "null"]
    enum = schema.get("enum")
    extra = set(schema) - _PLAIN_KEYS - {"enum", "items"}
    if isinstance(enum, list) and enum and all(isinstance(v, str) or v is None for v in enum) and len(enum) <= 64:
        values = [v for v in enum if v is not None]
        if values and types in ([], ["string"]):
            imports.typing.add("Literal")
            return f"Literal[{', '.join(literal(v) for v in values)}]", not extra
    if len(types) == 1 and types[0] in _PRIMITIVES and not enum:
        return _PRIMITIVES[types[0]], not extra
    if types == ["array"]:
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        inner, exact = python_type(items, imports)
        return f"list[{inner}]", exact and not extra
    imports.typing.add("Any")
    if types == ["object"]:
        return "dict[str, Any]", not (extra or "properties" in schema)
    return "Any", not schema


class _Constants:
    def __init__(self) -> None:
        self.blocks: list[list[str]] = []
        self.names: set[str] = set()

    def add(self, name: str, value: dict[str, Any], comment: str) -> Raw:
        base, n = name, 2
        while name in self.names:
            name = f"{base}_{n}"
            n += 1
        self.names.add(name)
        self.blocks.append([f"# {comment}", *lines(value, 0, f"{name} = ", "", bracketed=False)])
        return Raw(name)


def _annotation(
    schema: dict[str, Any],
    description: str,
    required: bool,
    imports: Imports,
    constants: _Constants,
    constant_name: str,
    comment: str,
) -> tuple[Any, bool]:
    """(annotation node, has default None)."""
    annotation, exact = python_type(schema, imports)
    optional = not required
    if optional and annotation != "Any":
        annotation += " | None"
    meta: list[Any] = []
    if description:
        imports.runtime.add("Field")
        meta.append(Call("Field", kwargs=[("description", description)]))
    if not exact:
        imports.runtime.add("WithJsonSchema")
        clean = {k: v for k, v in schema.items() if k != "description"}
        nullable = "null" in _schema_types(clean) or "anyOf" in clean and {"type": "null"} in clean["anyOf"]
        value: Any = clean
        if len(flat(clean)) > 60:
            value = constants.add(constant_name, clean, comment)
        if optional and not nullable:
            value = {"anyOf": [value, {"type": "null"}]}
        meta.append(Call("WithJsonSchema", [value]))
    if not meta:
        return Raw(annotation), optional
    imports.typing.add("Annotated")
    return Sub("Annotated", [Raw(annotation), *meta]), optional


def _param_description(param: Param) -> str:
    text = param.description
    if param.location in ("header", "cookie"):
        text = f"{text} ({param.location} {param.name})".strip()
    default = param.schema.get("default")
    if default is not None and isinstance(default, str | int | float | bool):
        text = f"{text} Default: {json.dumps(default)}.".strip()
    return text


def _operation_doc(op: Operation) -> str:
    parts = [p for p in (op.summary, op.description) if p]
    if parts and len(parts) == 2 and parts[1].rstrip(".").strip() == parts[0].rstrip(".").strip():
        parts = parts[:1]
    text = "\n\n".join(parts) or f"{op.method} {op.path}"
    return f"Deprecated. {text}" if op.deprecated else text


def render_openapi(model: ApiModel, *, name: str, source_label: str) -> str:
    imports = Imports()
    imports.runtime.update({"OpenAPIProvider", "SaaSRecord", "operation"})
    constants = _Constants()
    methods: list[str] = []
    for op in model.operations:
        methods += [""] + _render_operation(op, imports, constants)
    cls = f"{class_name(name)}Provider"
    prefix = name.upper()
    body = [
        f"class {cls}(OpenAPIProvider):",
        *docstring(f"{model.title} {model.version}: {len(model.operations)} operations as tools.", 4),
        "",
        *lines(name, 4, "name = ", "", bracketed=False),
        *lines(
            model.description or model.title,
            4,
            "description = ",
            "",
            bracketed=False,
        ),
        *lines(model.version, 4, "version = ", "", bracketed=False),
        "    # The API's address; the environment variable named by base_url_env overrides it.",
        *lines(model.base_url, 4, "base_url = ", "", bracketed=False),
        f'    base_url_env = "{prefix}_BASE_URL"',
    ]
    body.append("    # Header -> environment variable with its value (a registry secret, stored encrypted).")
    body += lines(model.secret_headers, 4, "secret_headers = ", "", bracketed=False)
    if model.schemes:
        body.append("    # Security scheme -> how its credential is sent; the value comes from the variable `env`.")
        schemes: dict[str, Any] = {}
        for scheme in model.schemes:
            if scheme.kind == "api_key":
                imports.runtime.add("ApiKey")
                schemes[scheme.key] = Call(
                    "ApiKey",
                    kwargs=[("name", scheme.name), ("location", scheme.location), ("env", scheme.env)],
                )
            elif scheme.kind == "bearer":
                imports.runtime.add("HTTPBearer")
                schemes[scheme.key] = Call("HTTPBearer", kwargs=[("env", scheme.env)])
            else:
                imports.runtime.add("HTTPBasic")
                schemes[scheme.key] = Call("HTTPBasic", kwargs=[("env", scheme.env)])
        body += lines(schemes, 4, "security_schemes = ", "", bracketed=False)
    body += methods
    header = module_docstring(
        f"{model.title}: a ContextLab provider generated from an OpenAPI {model.openapi_version} spec.\n\n"
        f"Generated by `contextlab provider new --from-openapi {source_label}`. Each operation is one "
        "method: its docstring is the tool's description, its parameters the tool's input schema, and "
        "`self.call(...)` sends the request with httpx and returns a SaaSRecord. Edit freely: "
        "`contextlab provider regenerate` will not overwrite an edited file unless given --force."
    )
    out = [*header, "", *imports.render()]
    for block in constants.blocks:
        out += ["", *block]
    out += ["", "", *body]
    return "\n".join(out).rstrip() + "\n"


def _render_operation(op: Operation, imports: Imports, constants: _Constants) -> list[str]:
    decorator_kwargs: list[tuple[str, Any]] = []
    if op.method_name != op.tool:
        decorator_kwargs.append(("name", op.tool))
    if op.auth:
        decorator_kwargs.append(("auth", op.auth))
    if op.body is not None and op.body.content_type:
        decorator_kwargs.append(("content_type", op.body.content_type))
    out = lines(Call("operation", [op.method, op.path], decorator_kwargs), 4, "@")
    signature: list[str] = []
    call_kwargs: dict[str, dict[str, Any]] = {"path": {}, "query": {}, "headers": {}, "cookies": {}}
    location_arg = {"path": "path", "query": "query", "header": "headers", "cookie": "cookies"}
    entries: list[tuple[str, Any, bool]] = []
    for param in op.params:
        node, default = _annotation(
            param.schema,
            _param_description(param),
            param.required,
            imports,
            constants,
            f"{op.tool}_{param.py_name}".upper(),
            f"JSON Schema of the {param.location} parameter {param.name!r} of {op.tool}.",
        )
        entries.append((param.py_name, node, default))
        value: Any = Raw(param.py_name)
        if "array" in _schema_types(param.schema) and not param.explode:
            imports.runtime.add("comma")
            value = Call("comma", [Raw(param.py_name)])
        call_kwargs[location_arg[param.location]][param.name] = value
    body_kw: tuple[str, Any] | None = None
    if op.body is not None:
        node, default = _annotation(
            op.body.schema,
            op.body.description or "The request body.",
            op.body.required,
            imports,
            constants,
            f"{op.tool}_body".upper(),
            f"JSON Schema of the request body of {op.tool}.",
        )
        entries.append((op.body.py_name, node, default))
        body_kw = ({"json": "json", "form": "form", "text": "text"}[op.body.kind], Raw(op.body.py_name))
    entries.sort(key=lambda e: e[2])  # parameters with defaults last
    for py_name, node, default in entries:
        signature += lines(node, 8, f"{py_name}: ", " = None," if default else ",")
    returns = "SaaSRecord"
    if signature:
        out.append(f"    async def {op.method_name}(")
        out.append("        self,")
        out += signature
        out.append(f"    ) -> {returns}:")
    else:
        out.append(f"    async def {op.method_name}(self) -> {returns}:")
    out += docstring(_operation_doc(op), 8)
    kwargs = [(k, v) for k, v in call_kwargs.items() if v]
    if body_kw:
        kwargs.append(body_kw)
    out += lines(Call("self.call", kwargs=kwargs), 8, "return await ")
    return out


# -- database providers ---------------------------------------------------------------------------
def render_database(model: Any, *, source_label: str) -> str:
    """Source of a database provider; `model` is a `database.DatabaseModel`."""
    imports = Imports()
    imports.runtime.update({"DatabaseProvider", "Page", "Row", "tool", "Field"})
    imports.typing.add("Annotated")
    classes: list[str] = []
    methods: list[str] = []
    for table in model.tables:
        classes += ["", "", f"class {table.row_class}(Row):"]
        classes += docstring(f"A row of {table.label}.", 4)
        classes.append("")
        for column in table.columns:
            annotation = column.py_type
            if annotation.startswith("dt."):
                imports.stdlib.add("import datetime as dt")
            if annotation == "Any":
                imports.typing.add("Any")
            if column.nullable and annotation != "Any":
                annotation += " | None"
            if column.py_name != column.name:
                default = "None, " if column.nullable else ""
                alias = Raw(f"Field({default}alias={literal(column.name)})")
                classes += lines(alias, 4, f"{column.py_name}: {annotation} = ")
            elif column.nullable:
                classes.append(f"    {column.py_name}: {annotation} = None")
            else:
                classes.append(f"    {column.py_name}: {annotation}")
        classes += ["", "", f"class {table.page_class}(Page):", f"    rows: list[{table.row_class}]"]
        methods += [""] + _render_lookup(table, model, imports)
    cls = f"{class_name(model.name)}Provider"
    body = [
        f"class {cls}(DatabaseProvider):",
        *docstring(
            f"The {model.kind_label} database {model.name}: schema, read-only queries and a lookup per table.", 4
        ),
        "",
        *lines(model.name, 4, "name = ", "", bracketed=False),
        *lines(model.description, 4, "description = ", "", bracketed=False),
        "    # The database; the environment variable named by database_url_env overrides it (put passwords there).",
        *lines(model.url_in_code, 4, "database_url = ", "", bracketed=False),
        f'    database_url_env = "{model.name.upper()}_DATABASE_URL"',
        *methods,
    ]
    header = module_docstring(
        f"{model.name}: a ContextLab provider generated from the {model.kind_label} database {model.display_url}.\n\n"
        f"Generated by `contextlab provider new --from-db {source_label}`. The base class serves the `schema` "
        "tool and resource and a read-only `query` tool; each table below gets a typed row model and a lookup "
        "tool that filters by key and column values and pages with a cursor. Edit freely: `contextlab provider "
        "regenerate` will not overwrite an edited file unless given --force."
    )
    out = [*header, "", *imports.render(), *classes, "", "", *body]
    return "\n".join(out).rstrip() + "\n"


def _render_lookup(table: Any, model: Any, imports: Imports) -> list[str]:
    out = lines(Call("tool", kwargs=[("title", f"Look up {table.label}")]), 4, "@")
    signature: list[str] = []
    filters: dict[str, Any] = {}
    for column in table.filter_columns:
        role = "key" if column.name in table.key else "column"
        text = f"{'Key' if role == 'key' else 'Equals'}: {column.name} ({column.type or 'untyped'}"
        text += ", primary key)" if column.primary_key else ")"
        annotation = column.py_type if column.py_type != "Any" else "str"
        node = Sub("Annotated", [Raw(f"{annotation} | None"), Call("Field", kwargs=[("description", text)])])
        signature += lines(node, 8, f"{column.param}: ", " = None,")
        filters[column.name] = Raw(column.param)
    limit = Sub(
        "Annotated",
        [Raw("int"), Call("Field", kwargs=[("ge", 1), ("le", model.max_page), ("description", "Rows per page.")])],
    )
    signature += lines(limit, 8, f"{table.limit_param}: ", f" = {model.default_page},")
    cursor = Sub(
        "Annotated",
        [Raw("str | None"), Call("Field", kwargs=[("description", "The next_cursor of the previous page.")])],
    )
    signature += lines(cursor, 8, f"{table.cursor_param}: ", " = None,")
    out += [f"    async def {table.tool}(", "        self,", *signature, f"    ) -> {table.page_class}:"]
    order = ", ".join(table.key) if table.unique_key else "all columns"
    key_text = {
        "primary key": f"Key: {', '.join(table.key)} (the primary key)",
        "guess": f"Key: {', '.join(table.key)} (a guess: the {table.kind} has no primary key)",
    }[table.key_source]
    rows = f", about {table.row_count} rows" if table.row_count is not None else ""
    doc = (
        f"Rows of {table.label}{rows}, where every column given equals its value; ordered by {order}.\n\n"
        f"{key_text}. Omitted filters match any value. A page holds at most "
        f"`{table.limit_param}` rows; pass its next_cursor as `{table.cursor_param}` for the next page."
    )
    out += docstring(doc, 8)
    kwargs: list[tuple[str, Any]] = [("table", table.name)]
    if table.schema:
        kwargs.append(("schema", table.schema))
    kwargs += [
        ("key", list(table.key)),
        ("unique", table.unique_key),
        ("filters", filters),
        ("limit", Raw(table.limit_param)),
        ("cursor", Raw(table.cursor_param)),
    ]
    out += lines(Call("self.lookup", [Raw(table.page_class)], kwargs), 8, "return await ")
    return out
