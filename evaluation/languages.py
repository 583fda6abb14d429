"""How BFCL's three languages write argument values, and the Python type each BFCL type is checked as.

BFCL's Java and JavaScript categories ask the model for every argument as a *string holding
the language's literal*: `"42L"` for a Java long, `"new int[]{1, 2}"` for a Java array,
`"[1, 2]"` or `"{key: 'v'}"` for JavaScript. `parse_literal` turns such a string into the
Python value the checker compares; when the text is not a literal of the declared type it is
returned unchanged, so a variable name such as `"userList"` can still match an accepted
variable name. `render_literal` writes a Python value back as a literal.

Where this parser is more careful than BFCL's regex converters, the difference is deliberate:

- quoted strings inside Java arrays and lists are unquoted: BFCL keeps the quotes of
  `new String[]{"a"}` elements (so only `new String[]{a}` passes there) and keeps the text of
  list elements typed `any`; `render_literal` writes the forms both read alike;
- a quoted Java `char` (`'a'`) is unquoted; JavaScript object values keep their string type
  (BFCL turns `{n: "5"}` into `{n: 5}`); numbers may carry an exponent.

Top-level Java `String` and `any` arguments, and JavaScript `any` arguments, are taken verbatim,
as BFCL does: the prompt tells the model that the string *is* the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

LANGUAGES = ("python", "java", "javascript")

# The Python type a value of each BFCL type must have once parsed. Unknown types check as `any`.
PYTHON_VALUE_TYPES: dict[str, dict[str, type]] = {
    "python": {
        "string": str,
        "integer": int,
        "float": float,
        "boolean": bool,
        "array": list,
        "tuple": list,
        "dict": dict,
        "any": str,
    },
    "java": {
        "byte": int,
        "short": int,
        "integer": int,
        "long": int,
        "float": float,
        "double": float,
        "boolean": bool,
        "char": str,
        "String": str,
        "any": str,
        "Array": list,
        "ArrayList": list,
        "Queue": list,
        "Stack": list,
        "Set": list,
        "HashMap": dict,
        "Hashtable": dict,
    },
    "javascript": {
        "String": str,
        "integer": int,
        "float": float,
        "Bigint": int,
        "Boolean": bool,
        "dict": dict,
        "array": list,
        "any": str,
    },
}

# Types whose items BFCL type-checks one level deep (the rest are checked as a whole).
NESTED_TYPES: dict[str, frozenset[str]] = {
    "python": frozenset({"array", "tuple"}),
    "java": frozenset({"Array", "ArrayList"}),
    "javascript": frozenset({"array"}),
}

_QUOTES = "\"'`"
_OPEN = {"(": ")", "[": "]", "{": "}"}
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_INT_RE = re.compile(r"-?\d+")
_JAVA_LONG_RE = re.compile(r"(-?\d+)[lL]")
_JAVA_FLOAT_RE = re.compile(rf"({_NUMBER})[fF]")
_JAVA_DOUBLE_RE = re.compile(rf"({_NUMBER})[dD]?")
_JS_NUMBER_RE = re.compile(_NUMBER)
_JS_BIGINT_RE = re.compile(r"(-?\d+)n")
_JAVA_UTIL = r"(?:java\.util\.)?"
_JAVA_GENERICS = r"\s*(?:<[^()]*>)?\s*"
_JAVA_LIST_CLASS = rf"new\s+{_JAVA_UTIL}(?:ArrayList|LinkedList|ArrayDeque|Stack)\b"
_JAVA_MAP_START = rf"new\s+{_JAVA_UTIL}(?:HashMap|Hashtable|LinkedHashMap|TreeMap)\b|{_JAVA_UTIL}Map\.of\b"
_JAVA_NEW_ARRAY_RE = re.compile(r"new\s+[\w.<>, ]+?\s*(?:\[\s*\]\s*)+\{(.*)\}", re.S)
_JAVA_LIST_CTOR_RE = re.compile(rf"{_JAVA_LIST_CLASS}{_JAVA_GENERICS}\((.*)\)", re.S)
_JAVA_LIST_FACTORY_RE = re.compile(rf"{_JAVA_UTIL}(?:Arrays\.asList|List\.of)\s*\((.*)\)", re.S)
_JAVA_EMPTY_CTOR = rf"new\s+{_JAVA_UTIL}\w+{_JAVA_GENERICS}\(\s*\)"
_JAVA_EMPTY_CTOR_RE = re.compile(_JAVA_EMPTY_CTOR)
# `new HashMap<>() {{ put(k, v); }}` (double-brace initialisation; one brace pair is accepted too)
_JAVA_INIT_BLOCK_RE = re.compile(rf"{_JAVA_EMPTY_CTOR}\s*(?:\{{\s*\{{(.*)\}}\s*\}}|\{{(.*)\}})", re.S)
_JAVA_MAP_FACTORY_RE = re.compile(rf"{_JAVA_UTIL}Map\.of\s*\((.*)\)", re.S)
_JS_NEW_ARRAY_RE = re.compile(r"new\s+Array\s*\((.*)\)", re.S)
_IDENTIFIER_RE = re.compile(r"[A-Za-z_$][\w$]*")
_JAVA_ELEMENT_TYPES = {
    "integer": "int",
    "long": "long",
    "short": "short",
    "byte": "byte",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "char": "char",
    "String": "String",
}


def language_for_category(category: str) -> str:
    """The language of a BFCL category: `java`, `javascript` (for `simple_javascript`) or `python`."""
    if "javascript" in category:
        return "javascript"
    return "java" if "java" in category else "python"


def python_value_type(bfcl_type: str | None, language: str) -> type:
    """The Python type a parsed value of `bfcl_type` must have in `language` (`str` for `any` and unknown types)."""
    return PYTHON_VALUE_TYPES[language].get(bfcl_type or "any", str)


def parse_literal(text: str, bfcl_type: str | None, item_type: str | None, language: str) -> Any:
    """The Python value a Java or JavaScript literal of `bfcl_type` denotes, or `text` unchanged if it is not one."""
    text = text.strip()
    if language == "java":
        return _parse_java(text, bfcl_type or "any", item_type)
    if language == "javascript":
        return _parse_js(text, bfcl_type or "any", item_type)
    raise ValueError(f"parse_literal handles java and javascript, not {language!r}")


def render_literal(value: Any, bfcl_type: str | None, item_type: str | None, language: str) -> str:
    """`value` written as the Java or JavaScript literal of `bfcl_type` that `parse_literal` (and BFCL) read back."""
    if language == "java":
        return _render_java(value, bfcl_type or "any", item_type)
    if language == "javascript":
        return _render_js(value, bfcl_type or "any", item_type)
    raise ValueError(f"render_literal handles java and javascript, not {language!r}")


# -- shared lexical helpers ------------------------------------------------------------------


def _unquoted(text: str) -> Iterator[tuple[int, str, int]]:
    """(index, character, bracket depth after it) for every character outside quoted strings."""
    depth = 0
    quote = ""
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in _QUOTES:
            quote = char
        else:
            if char in _OPEN:
                depth += 1
            elif char in ")]}":
                depth -= 1
            yield index, char, depth
        index += 1


def split_top_level(text: str, separator: str = ",", maxsplit: int = -1) -> list[str]:
    """Split `text` at `separator` where it is outside quotes and brackets; blank pieces are dropped."""
    parts: list[str] = []
    start = 0
    for index, char, depth in _unquoted(text):
        if char == separator and depth == 0 and maxsplit != len(parts):
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _is_quoted(text: str, quotes: str = _QUOTES) -> bool:
    return len(text) >= 2 and text[0] in quotes and text[-1] == text[0]


def _unquote(text: str) -> str:
    quote = text[0]
    return text[1:-1].replace("\\" + quote, quote).replace("\\\\", "\\")


def _quote(text: str) -> str:
    for quote in "\"'":
        if quote not in text:
            return f"{quote}{text}{quote}"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_call_args(statement: str, method: str) -> list[str] | None:
    match = re.fullmatch(rf"{method}\s*\((.*)\)", statement.strip(), re.S)
    return split_top_level(match.group(1)) if match else None


# -- Java ----------------------------------------------------------------------------------


def _parse_java(text: str, bfcl_type: str, item_type: str | None) -> Any:
    if bfcl_type == "char":
        return _unquote(text) if len(text) == 3 and _is_quoted(text, "'") else text
    value_type = python_value_type(bfcl_type, "java")
    if value_type is str:
        return text
    if value_type is list:
        items = _java_list_items(text)
        return text if items is None else [_parse_java_item(item, item_type) for item in items]
    if value_type is dict:
        pairs = _java_map_pairs(text)
        return text if pairs is None else {_parse_java_item(k, None): _parse_java_item(v, None) for k, v in pairs}
    return _parse_java_scalar(text, bfcl_type)


def _parse_java_scalar(text: str, bfcl_type: str) -> Any:
    if bfcl_type in ("byte", "short", "integer"):
        return int(text) if _INT_RE.fullmatch(text) else text
    if bfcl_type == "long":
        match = _JAVA_LONG_RE.fullmatch(text)
        return int(match.group(1)) if match else text
    if bfcl_type == "float":
        match = _JAVA_FLOAT_RE.fullmatch(text)
        return float(match.group(1)) if match else text
    if bfcl_type == "double":
        match = _JAVA_DOUBLE_RE.fullmatch(text)
        return float(match.group(1)) if match else text
    if bfcl_type == "boolean":
        return {"true": True, "false": False}.get(text, text)
    return text


def _parse_java_item(text: str, item_type: str | None) -> Any:
    """An element of a Java collection: typed by `item_type` when known, else read as any literal."""
    if item_type in ("String", "char"):
        return _unquote(text) if _is_quoted(text, "\"'") else text
    if item_type in PYTHON_VALUE_TYPES["java"] and item_type != "any":
        return _parse_java(text, item_type, None)
    if _is_quoted(text, "\"'"):
        return _unquote(text)
    if text in ("true", "false"):
        return text == "true"
    for bfcl_type in ("integer", "long", "float", "double"):
        value = _parse_java_scalar(text, bfcl_type)
        if value is not text:
            return value
    items = _java_list_items(text)
    if items is not None:
        return [_parse_java_item(item, None) for item in items]
    pairs = _java_map_pairs(text)
    if pairs is not None:
        return {_parse_java_item(k, None): _parse_java_item(v, None) for k, v in pairs}
    return text


def _java_list_items(text: str) -> list[str] | None:
    """The element texts of a Java array or list expression, or None if `text` is not one."""
    match = _JAVA_NEW_ARRAY_RE.fullmatch(text)
    if match:
        return split_top_level(match.group(1))
    match = _JAVA_INIT_BLOCK_RE.fullmatch(text)
    if match and re.match(_JAVA_LIST_CLASS, text):
        items = []
        for statement in split_top_level(match.group(1) or match.group(2) or "", ";"):
            args = _split_call_args(statement, "add")
            if args is None or len(args) != 1:
                return None
            items.append(args[0])
        return items
    match = _JAVA_LIST_CTOR_RE.fullmatch(text)
    if match:
        inner = match.group(1).strip()
        return [] if not inner else _java_list_items(inner)
    match = _JAVA_LIST_FACTORY_RE.fullmatch(text)
    if match:
        return split_top_level(match.group(1))
    return None


def _java_map_pairs(text: str) -> list[tuple[str, str]] | None:
    """The (key, value) texts of a Java map expression, or None if `text` is not one."""
    if not re.match(_JAVA_MAP_START, text):
        return None
    match = _JAVA_INIT_BLOCK_RE.fullmatch(text)
    if match:
        pairs = []
        for statement in split_top_level(match.group(1) or match.group(2) or "", ";"):
            args = _split_call_args(statement, "put")
            if args is None or len(args) != 2:
                return None
            pairs.append((args[0], args[1]))
        return pairs
    if _JAVA_EMPTY_CTOR_RE.fullmatch(text):
        return []
    match = _JAVA_MAP_FACTORY_RE.fullmatch(text)
    if match:
        args = split_top_level(match.group(1))
        if len(args) % 2:
            return None
        return list(zip(args[0::2], args[1::2], strict=True))
    return None


def _render_java(value: Any, bfcl_type: str, item_type: str | None) -> str:
    if isinstance(value, str):
        return value  # a String's text, or a variable name standing for a value of another type
    if isinstance(value, list) and bfcl_type == "Array":
        element = _JAVA_ELEMENT_TYPES.get(item_type or "", "Object")
        return f"new {element}[]{{{', '.join(_render_java_array_element(item, item_type) for item in value)}}}"
    if isinstance(value, list):
        items = ", ".join(_render_java_element(item, item_type) for item in value)
        return f"new ArrayList<>(Arrays.asList({items}))" if items else "new ArrayList<>()"
    if isinstance(value, dict):
        puts = " ".join(
            f"put({_render_java_element(k, None)}, {_render_java_element(v, None)});" for k, v in value.items()
        )
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}" if puts else "new HashMap<>()"
    return _render_scalar(value, {"long": "L", "float": "f"}.get(bfcl_type, ""))


def _render_java_element(value: Any, item_type: str | None) -> str:
    return _quote(value) if isinstance(value, str) else _render_java(value, item_type or "any", None)


def _render_java_array_element(value: Any, item_type: str | None) -> str:
    if isinstance(value, str) and item_type in ("String", "char"):
        return value  # unquoted: BFCL's converter keeps the quotes of `new String[]{"a"}` elements
    return _render_java_element(value, item_type)


def _render_scalar(value: Any, number_suffix: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{int(value) if number_suffix in ('L', 'n') else value!r}{number_suffix}"
    if value is None:
        return "null"
    raise TypeError(f"cannot write a {type(value).__name__} as a literal")


# -- JavaScript ------------------------------------------------------------------------------


def _parse_js(text: str, bfcl_type: str, item_type: str | None) -> Any:
    if bfcl_type == "String":
        return _unquote(text) if _is_quoted(text) else text
    if bfcl_type in ("integer", "float", "Bigint", "Boolean"):
        return _parse_js_scalar(text, bfcl_type)
    if bfcl_type == "array":
        items = _js_array_items(text)
        return text if items is None else [_parse_js_item(item, item_type) for item in items]
    if bfcl_type == "dict":
        pairs = _js_object_pairs(text)
        return text if pairs is None else {k: _parse_js_item(v, None) for k, v in pairs}
    return text


def _parse_js_scalar(text: str, bfcl_type: str) -> Any:
    if bfcl_type == "integer":
        return int(text) if _INT_RE.fullmatch(text) else text
    if bfcl_type == "float":
        return float(text) if _JS_NUMBER_RE.fullmatch(text) else text
    if bfcl_type == "Bigint":
        match = _JS_BIGINT_RE.fullmatch(text)
        return int(match.group(1)) if match else text
    return {"true": True, "false": False}.get(text, text)


def _parse_js_item(text: str, item_type: str | None) -> Any:
    """An element of a JavaScript array or object: typed by `item_type` when known, else read as any literal."""
    if item_type in PYTHON_VALUE_TYPES["javascript"] and item_type != "any":
        return _parse_js(text, item_type, None)
    if _is_quoted(text):
        return _unquote(text)
    if text in ("true", "false"):
        return text == "true"
    if _INT_RE.fullmatch(text):
        return int(text)
    if _JS_NUMBER_RE.fullmatch(text):
        return float(text)
    if _JS_BIGINT_RE.fullmatch(text):
        return int(text[:-1])
    items = _js_array_items(text)
    if items is not None:
        return [_parse_js_item(item, None) for item in items]
    pairs = _js_object_pairs(text)
    if pairs is not None:
        return {k: _parse_js_item(v, None) for k, v in pairs}
    return text


def _js_array_items(text: str) -> list[str] | None:
    if text.startswith("[") and text.endswith("]") and _balanced(text):
        return split_top_level(text[1:-1])
    match = _JS_NEW_ARRAY_RE.fullmatch(text)
    return split_top_level(match.group(1)) if match else None


def _js_object_pairs(text: str) -> list[tuple[str, str]] | None:
    if not (text.startswith("{") and text.endswith("}") and _balanced(text)):
        return None
    pairs = []
    for entry in split_top_level(text[1:-1]):
        pieces = split_top_level(entry, ":", maxsplit=1)
        if len(pieces) != 2:
            return None
        key, value = pieces
        pairs.append((_unquote(key) if _is_quoted(key) else key, value))
    return pairs


def _balanced(text: str) -> bool:
    """Whether the brackets opening and closing `text` enclose all of it (so `[a] + [b]` is not one array)."""
    depth = 0
    for index, char, depth in _unquoted(text):
        if char in ")]}" and depth == 0 and index != len(text) - 1:
            return False
    return depth == 0


def _render_js(value: Any, bfcl_type: str, item_type: str | None) -> str:
    if isinstance(value, str):
        # A String is quoted; any other type's string is an expression such as a variable name.
        return _quote(value) if bfcl_type == "String" else value
    if isinstance(value, list):
        return f"[{', '.join(_render_js_element(item, item_type) for item in value)}]"
    if isinstance(value, dict):
        entries = (
            f"{k if _IDENTIFIER_RE.fullmatch(str(k)) else _quote(str(k))}: {_render_js_element(v, None)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(entries) + "}"
    return _render_scalar(value, "n" if bfcl_type == "Bigint" else "")


def _render_js_element(value: Any, item_type: str | None) -> str:
    return _quote(value) if isinstance(value, str) else _render_js(value, item_type or "any", None)
