"""The Berkeley Function Calling Leaderboard (BFCL v4) as ContextLab suites and tool pools.

The data ships inside the `bfcl-eval` package. We read its files directly and never import the
package, whose own imports pull in every model vendor's SDK: `pip install --no-deps bfcl-eval`
is enough.

Tool names. MCP tool names match `[A-Za-z0-9_.-]{1,128}`. `mcp_safe_name` replaces every other
character with `_` and cuts names to 128 characters; every tool made here records the original
BFCL name in `_meta["bfcl_name"]`. Java and JavaScript tools also keep the original BFCL
parameter types in `_meta["bfcl_parameters"]`, because their `inputSchema` asks for every
argument as a string holding a literal (as BFCL does) and the checker needs the real types.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .languages import language_for_category
from .suite import AcceptedCall, ToolSelectionCase, ToolSelectionSuite

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
# Categories whose questions none of the offered functions answers: the right answer is no call.
NO_CALL_CATEGORIES: tuple[str, ...] = ("irrelevance", "live_irrelevance")
BFCL_VERSION_PREFIX = "BFCL_v4_"
MCP_NAME_MAX = 128

_MCP_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# BFCL's parameter dialect (Python, Java and JavaScript type names) -> JSON Schema type; None: no constraint.
_JSON_SCHEMA_TYPES: dict[str, str | None] = {
    "dict": "object",
    "object": "object",
    "HashMap": "object",
    "Hashtable": "object",
    "float": "number",
    "number": "number",
    "double": "number",
    "integer": "integer",
    "byte": "integer",
    "short": "integer",
    "long": "integer",
    "Bigint": "integer",
    "string": "string",
    "String": "string",
    "char": "string",
    "boolean": "boolean",
    "Boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "tuple": "array",
    "list": "array",
    "Array": "array",
    "ArrayList": "array",
    "Queue": "array",
    "Stack": "array",
    "Set": "array",
    "any": None,
    "Any": None,
    "": None,
}
# JSON Schema keywords carried over unchanged; BFCL-only keys (such as `optional`) are dropped.
_KEPT_KEYWORDS = (
    "title",
    "description",
    "enum",
    "const",
    "default",
    "examples",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
)
# The sentences BFCL appends for Java and JavaScript, kept word for word so prompts stay comparable.
_LANGUAGE_HINTS = {
    "java": (" Note that the provided function is in Java 8 SDK syntax.", "Java", ("Array", "ArrayList")),
    "javascript": (" Note that the provided function is in JavaScript syntax.", "JavaScript", ("array",)),
}


@dataclass
class RetrievalCase:
    """A question and the pool names of the tools its answer calls."""

    id: str
    query: str
    gold: list[str]
    category: str = ""


@dataclass
class ToolPool:
    """Every tool BFCL defines, each under a unique MCP name, with the questions that need them."""

    tools: list[dict[str, Any]]
    cases: list[RetrievalCase] = field(default_factory=list)


def bfcl_data_dir() -> Path:
    """The `data` folder of the installed `bfcl-eval` package, found without importing it."""
    spec = importlib.util.find_spec("bfcl_eval")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        data = Path(location) / "data"
        if data.is_dir():
            return data
    raise FileNotFoundError(
        "BFCL data not found: install it with `pip install --no-deps bfcl-eval` "
        "(no extra dependencies are needed; ContextLab only reads its data files)"
    )


def mcp_safe_name(name: str) -> str:
    """`name` as a valid MCP tool name: characters outside `[A-Za-z0-9_.-]` become `_`, cut to 128 characters."""
    return (_MCP_NAME_UNSAFE.sub("_", name) or "_")[:MCP_NAME_MAX]


def bfcl_function_to_tool(fn: dict[str, Any], language: str = "python") -> dict[str, Any]:
    """An MCP tool dict (`name`, `description`, `inputSchema`, `_meta`) for a BFCL function doc.

    The schema is JSON Schema 2020-12: `dict` becomes `object`, `float` `number`, `tuple`
    `array`, `any` no type constraint, and Java/JavaScript type names their JSON counterparts.
    For `language="java"` or `"javascript"` each top-level parameter is a string holding a
    literal of that language, as BFCL presents those categories to function-calling models.
    """
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"BFCL function without a name: {json.dumps(fn)[:200]}")
    description = fn.get("description", "")
    schema = _json_schema(fn.get("parameters", {}), where=name)
    schema["type"] = "object"
    schema.setdefault("properties", {})
    meta: dict[str, Any] = {"bfcl_name": name}
    if language in _LANGUAGE_HINTS:
        hint, language_name, list_types = _LANGUAGE_HINTS[language]
        description += hint
        schema["properties"] = {
            param: _literal_property(spec, language, language_name, list_types)
            for param, spec in fn.get("parameters", {}).get("properties", {}).items()
        }
        meta["bfcl_parameters"] = copy.deepcopy(fn.get("parameters", {}))
    elif language != "python":
        raise ValueError(f"unknown BFCL language {language!r}: expected python, java or javascript")
    return {"name": mcp_safe_name(name), "description": description, "inputSchema": schema, "_meta": meta}


def load_bfcl_suite(categories: Sequence[str] = DEFAULT_CATEGORIES) -> ToolSelectionSuite:
    """BFCL's single-turn categories as one tool-selection suite, cases in the order of `categories`.

    Each question of `DEFAULT_CATEGORIES` is joined with its possible answer by id. The
    `NO_CALL_CATEGORIES` (`irrelevance`, `live_irrelevance`; asked for by name, never by default) give
    cases with no accepted call: the right answer is to call nothing. Multi-turn, memory, web-search,
    format-sensitivity and relevance categories are not loaded: they need an executable environment
    or have no answer to check.
    """
    known = (*DEFAULT_CATEGORIES, *NO_CALL_CATEGORIES)
    unsupported = [category for category in categories if category not in known]
    if unsupported:
        raise ValueError(f"unsupported BFCL categories {unsupported}: choose from {list(known)}")
    cases = []
    for category in categories:
        if category in NO_CALL_CATEGORIES:
            entries = _read_jsonl(bfcl_data_dir() / f"{BFCL_VERSION_PREFIX}{category}.json")
            cases.extend(_case(entry, {"ground_truth": []}, category) for entry in entries)
        else:
            cases.extend(_case(entry, answer, category) for _, entry, answer in _answered_entries([category]))
    return ToolSelectionSuite(name="bfcl-v4", cases=cases)


def load_bfcl_tool_pool() -> ToolPool:
    """One pool of every function doc in every BFCL data file, and a retrieval case per answered question.

    The pool includes the irrelevance and relevance files and `multi_turn_func_doc/`; the
    `unused_datasets/` folder and the format-sensitivity file (a list of other cases' ids) are
    left out. Identical definitions (same name, description and schema) appear once. When BFCL
    gives one name several definitions, they are sorted by their JSON and named `name`,
    `name--2`, `name--3`, ..., so each case's gold names point at the definition it shipped.
    """
    data = bfcl_data_dir()
    definitions: dict[str, dict[str, Any]] = {}
    categories_of: dict[str, set[str]] = {}
    for category, fn in _all_function_docs(data):
        tool = bfcl_function_to_tool(fn, language_for_category(category))
        key = _definition_key(tool)
        definitions.setdefault(key, tool)
        categories_of.setdefault(key, set()).add(category)

    pool_names = _assign_pool_names(definitions)
    tools = []
    for key in sorted(definitions, key=lambda k: pool_names[k]):
        tool = copy.deepcopy(definitions[key])
        tool["name"] = pool_names[key]
        tool["_meta"]["bfcl_categories"] = sorted(categories_of[key])
        tools.append(tool)

    cases = []
    for category, entry, answer in _answered_entries(DEFAULT_CATEGORIES):
        language = language_for_category(category)
        key_of = {fn["name"]: _definition_key(bfcl_function_to_tool(fn, language)) for fn in entry["function"]}
        gold = list(dict.fromkeys(pool_names[key_of[name]] for call in answer["ground_truth"] for name in call))
        cases.append(RetrievalCase(id=entry["id"], query=_last_user_text(entry), gold=gold, category=category))
    return ToolPool(tools=tools, cases=cases)


def _json_schema(node: Any, where: str) -> dict[str, Any]:
    """A BFCL parameter spec as JSON Schema 2020-12, recursing into properties, items and additionalProperties."""
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected a parameter spec object, got {type(node).__name__}")
    bfcl_type = node.get("type", "any")
    if bfcl_type not in _JSON_SCHEMA_TYPES:
        raise ValueError(f"{where}: unknown BFCL type {bfcl_type!r}")
    schema: dict[str, Any] = {}
    if _JSON_SCHEMA_TYPES[bfcl_type]:
        schema["type"] = _JSON_SCHEMA_TYPES[bfcl_type]
    schema.update({key: copy.deepcopy(node[key]) for key in _KEPT_KEYWORDS if key in node})
    if "properties" in node:
        schema["properties"] = {
            name: _json_schema(spec, f"{where}.{name}") for name, spec in node["properties"].items()
        }
    if isinstance(node.get("required"), list):
        schema["required"] = list(node["required"])
    if "items" in node:
        schema["items"] = _json_schema(node["items"], f"{where}[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, bool):
        schema["additionalProperties"] = extra
    elif extra is not None:
        schema["additionalProperties"] = _json_schema(extra, f"{where}.*")
    return schema


def _literal_property(spec: dict[str, Any], language: str, language_name: str, list_types: tuple[str, ...]) -> dict:
    """A Java/JavaScript parameter as a string property whose description says which literal to write."""
    bfcl_type = spec.get("type", "any")
    description = spec.get("description", "")
    if bfcl_type == "any":
        description += f" This parameter can be of any type of {language_name} object in string representation."
    else:
        description += f" This is {language_name} {bfcl_type} type parameter in string representation."
    if bfcl_type in list_types and "items" in spec:
        item_type = spec["items"].get("type", "any")
        description += f" The list elements are of type {item_type}; they are not in string representation."
    if language == "javascript" and bfcl_type == "dict" and "properties" in spec:
        description += (
            " The dictionary entries have the following schema; they are not in string representation. "
            + json.dumps(spec["properties"])
        )
    prop: dict[str, Any] = {"type": "string", "description": description}
    prop.update({key: copy.deepcopy(spec[key]) for key in ("enum", "default") if key in spec})
    return prop


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _answered_entries(categories: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(category, question entry, possible-answer entry) for every question of `categories`, in file order."""
    data = bfcl_data_dir()
    for category in categories:
        answers = {
            row["id"]: row for row in _read_jsonl(data / "possible_answer" / f"{BFCL_VERSION_PREFIX}{category}.json")
        }
        for entry in _read_jsonl(data / f"{BFCL_VERSION_PREFIX}{category}.json"):
            if entry["id"] not in answers:
                raise ValueError(f"BFCL case {entry['id']} has no possible answer")
            yield category, entry, answers[entry["id"]]


def _all_function_docs(data: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(category, function doc) for every function in every BFCL question file and in multi_turn_func_doc/."""
    for path in sorted(data.glob(f"{BFCL_VERSION_PREFIX}*.json")):
        category = path.stem.removeprefix(BFCL_VERSION_PREFIX)
        if category == "format_sensitivity":
            continue  # a JSON object listing other categories' case ids, not JSON Lines
        for entry in _read_jsonl(path):
            for fn in entry.get("function", []):
                yield category, fn
    for path in sorted((data / "multi_turn_func_doc").glob("*.json")):
        for fn in _read_jsonl(path):
            yield "multi_turn", fn


def _case(entry: dict[str, Any], answer: dict[str, Any], category: str) -> ToolSelectionCase:
    language = language_for_category(category)
    tools = [bfcl_function_to_tool(fn, language) for fn in entry["function"]]
    names = [tool["name"] for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"BFCL case {entry['id']}: two functions share the MCP name of {names}")
    accepted = [
        AcceptedCall(name=mcp_safe_name(name), arguments=arguments)
        for call in answer["ground_truth"]
        for name, arguments in call.items()
    ]
    return ToolSelectionCase(
        id=entry["id"],
        query=_last_user_text(entry),
        messages=[dict(message) for turn in entry["question"] for message in turn],
        tools=tools,
        accepted=accepted,
        category=category,
    )


def _last_user_text(entry: dict[str, Any]) -> str:
    user_messages = [message for turn in entry["question"] for message in turn if message.get("role") == "user"]
    if not user_messages:
        raise ValueError(f"BFCL case {entry['id']} has no user message")
    content = user_messages[-1]["content"]
    return content if isinstance(content, str) else json.dumps(content)


def _definition_key(tool: dict[str, Any]) -> str:
    """What makes two definitions the same tool: BFCL name, description and input schema."""
    return json.dumps([tool["_meta"]["bfcl_name"], tool["description"], tool["inputSchema"]], sort_keys=True)


def _assign_pool_names(definitions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A unique MCP name for each definition: `name` for the first of its BFCL name, then `name--2`, ..."""
    by_name: dict[str, list[str]] = {}
    for key, tool in definitions.items():
        by_name.setdefault(tool["_meta"]["bfcl_name"], []).append(key)
    taken: set[str] = set()
    names: dict[str, str] = {}
    for bfcl_name in sorted(by_name):
        base = mcp_safe_name(bfcl_name)
        for position, key in enumerate(sorted(by_name[bfcl_name]), start=1):
            names[key] = _free_name(base, position, taken)
            taken.add(names[key])
    return names


def _free_name(base: str, position: int, taken: set[str]) -> str:
    while True:
        suffix = "" if position == 1 else f"--{position}"
        candidate = base[: MCP_NAME_MAX - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        position += 1
