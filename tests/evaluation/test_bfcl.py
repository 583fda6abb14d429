"""The BFCL loader on the real data: schemas, the suite and the tool pool."""

import importlib.util
import json
import re

import pytest
from jsonschema import Draft202012Validator

from contextlab.evaluation import (
    DEFAULT_CATEGORIES,
    bfcl_data_dir,
    bfcl_function_to_tool,
    language_for_category,
    load_bfcl_suite,
    load_bfcl_tool_pool,
    mcp_safe_name,
)

MCP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# Cases per category in bfcl-eval 2026.3.23.
CATEGORY_SIZES = {
    "simple_python": 400,
    "simple_java": 100,
    "simple_javascript": 50,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "live_simple": 258,
    "live_multiple": 1053,
    "live_parallel": 16,
    "live_parallel_multiple": 24,
}


def test_every_bfcl_function_converts_to_a_valid_2020_12_schema(bfcl_function_docs):
    assert len(bfcl_function_docs) > 8000
    distinct = {}
    for language, fn in bfcl_function_docs:
        # Each function as its category presents it, and in the native (Python) type mapping.
        for as_language in {language, "python"}:
            schema = bfcl_function_to_tool(fn, as_language)["inputSchema"]
            distinct.setdefault(json.dumps(schema, sort_keys=True), schema)
    for schema in distinct.values():
        Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"


def test_conversion_maps_bfcl_types_to_json_schema():
    fn = {
        "name": "plan.trip",
        "description": "Plan a trip.",
        "parameters": {
            "type": "dict",
            "properties": {
                "budget": {"type": "float", "description": "Money.", "default": 100.0},
                "stops": {"type": "tuple", "items": {"type": "string"}, "minItems": 1},
                "extra": {"type": "any", "description": "Anything."},
                "mode": {"type": "string", "enum": ["car", "train"], "optional": True},
                "options": {
                    "type": "dict",
                    "properties": {"days": {"type": "integer"}, "pets": {"type": "boolean"}},
                    "required": ["days"],
                },
                "legs": {"type": "array", "items": {"type": "dict", "properties": {"to": {"type": "string"}}}},
            },
            "required": ["budget", "stops"],
        },
    }
    tool = bfcl_function_to_tool(fn)
    assert tool["name"] == "plan.trip"
    assert tool["description"] == "Plan a trip."
    assert tool["_meta"] == {"bfcl_name": "plan.trip"}
    assert tool["inputSchema"] == {
        "type": "object",
        "properties": {
            "budget": {"type": "number", "description": "Money.", "default": 100.0},
            "stops": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "extra": {"description": "Anything."},
            "mode": {"type": "string", "enum": ["car", "train"]},
            "options": {
                "type": "object",
                "properties": {"days": {"type": "integer"}, "pets": {"type": "boolean"}},
                "required": ["days"],
            },
            "legs": {"type": "array", "items": {"type": "object", "properties": {"to": {"type": "string"}}}},
        },
        "required": ["budget", "stops"],
    }
    validator = Draft202012Validator(tool["inputSchema"])
    assert validator.is_valid({"budget": 3, "stops": ["Rome"], "extra": [1, {"a": None}]})
    assert not validator.is_valid({"budget": "3", "stops": ["Rome"]})


def test_unknown_bfcl_type_is_an_error_naming_where():
    with pytest.raises(ValueError, match=r"f\.x\[\]: unknown BFCL type 'vector'"):
        bfcl_function_to_tool(
            {
                "name": "f",
                "description": "",
                "parameters": {"type": "dict", "properties": {"x": {"type": "array", "items": {"type": "vector"}}}},
            }
        )


def test_java_and_javascript_tools_take_literal_strings_and_keep_the_bfcl_types(bfcl_entries):
    fn = bfcl_entries["simple_java_22"]["function"][0]
    tool = bfcl_function_to_tool(fn, "java")
    assert tool["description"].endswith(" Note that the provided function is in Java 8 SDK syntax.")
    assert {spec["type"] for spec in tool["inputSchema"]["properties"].values()} == {"string"}
    assert (
        "This is Java ArrayList type parameter in string representation. The list elements are of type long"
        in (tool["inputSchema"]["properties"]["ids"]["description"])
    )
    assert tool["_meta"]["bfcl_parameters"] == fn["parameters"]
    js = bfcl_function_to_tool(bfcl_entries["simple_javascript_5"]["function"][0], "javascript")
    assert js["description"].endswith(" Note that the provided function is in JavaScript syntax.")
    assert "The dictionary entries have the following schema" in js["inputSchema"]["properties"]["store"]["description"]
    with pytest.raises(ValueError, match="unknown BFCL language"):
        bfcl_function_to_tool(fn, "kotlin")


def test_mcp_safe_name_maps_other_characters_and_length():
    assert mcp_safe_name("math.factorial") == "math.factorial"
    assert mcp_safe_name("get weather/now?") == "get_weather_now_"
    assert mcp_safe_name("x" * 200) == "x" * 128
    assert mcp_safe_name("") == "_"


def test_suite_has_every_answered_single_turn_case(bfcl_suite, bfcl_entries):
    sizes = {category: 0 for category in DEFAULT_CATEGORIES}
    for case in bfcl_suite.cases:
        sizes[case.category] += 1
    assert sizes == CATEGORY_SIZES
    assert len({case.id for case in bfcl_suite.cases}) == len(bfcl_suite.cases) == 2501
    for case in bfcl_suite.cases:
        entry = bfcl_entries[case.id]
        assert case.messages == [message for turn in entry["question"] for message in turn]
        assert case.query == [m["content"] for m in case.messages if m["role"] == "user"][-1]
        assert [tool["_meta"]["bfcl_name"] for tool in case.tools] == [fn["name"] for fn in entry["function"]]
        assert {call.name for call in case.accepted} <= {tool["name"] for tool in case.tools}
    parallel = next(case for case in bfcl_suite.cases if case.id == "parallel_0")
    assert len(parallel.accepted) > 1


def test_suite_refuses_categories_without_expected_calls():
    with pytest.raises(ValueError, match="unsupported BFCL categories.*multi_turn_base"):
        load_bfcl_suite(["simple_python", "multi_turn_base"])
    assert {case.category for case in load_bfcl_suite(["live_parallel"]).cases} == {"live_parallel"}


def test_pool_holds_every_definition_once_under_unique_mcp_names(bfcl_pool, bfcl_function_docs):
    names = [tool["name"] for tool in bfcl_pool.tools]
    # 8,888 function docs, 1,998 distinct BFCL names, 3,415 distinct definitions in bfcl-eval 2026.3.23.
    assert len(bfcl_pool.tools) >= 3000
    assert len(set(names)) == len(names)
    assert all(MCP_NAME.fullmatch(name) for name in names)
    definitions = {
        (tool["_meta"]["bfcl_name"], tool["description"], json.dumps(tool["inputSchema"], sort_keys=True))
        for tool in bfcl_pool.tools
    }
    assert len(definitions) == len(bfcl_pool.tools), "identical definitions must appear once"
    for language, fn in bfcl_function_docs:
        tool = bfcl_function_to_tool(fn, language)
        key = (fn["name"], tool["description"], json.dumps(tool["inputSchema"], sort_keys=True))
        assert key in definitions, f"{fn['name']} missing from the pool"
    assert len({tool["_meta"]["bfcl_name"] for tool in bfcl_pool.tools}) == len(
        {fn["name"] for _, fn in bfcl_function_docs}
    )
    # Irrelevance and multi-turn functions are in the pool too.
    categories = {category for tool in bfcl_pool.tools for category in tool["_meta"]["bfcl_categories"]}
    assert {"irrelevance", "live_irrelevance", "multi_turn"} <= categories


def test_pool_renames_differing_definitions_deterministically(bfcl_pool):
    by_bfcl_name = {}
    for tool in bfcl_pool.tools:
        by_bfcl_name.setdefault(tool["_meta"]["bfcl_name"], []).append(tool)
    renamed = {name: tools for name, tools in by_bfcl_name.items() if len(tools) > 1}
    assert renamed, "BFCL reuses names with different definitions"
    for bfcl_name, tools in renamed.items():
        expected = [bfcl_name] + [f"{bfcl_name}--{n}" for n in range(2, len(tools) + 1)]
        assert sorted(tool["name"] for tool in tools) == sorted(expected)
    again = load_bfcl_tool_pool()
    assert [tool["name"] for tool in again.tools] == [tool["name"] for tool in bfcl_pool.tools]
    assert [case.gold for case in again.cases] == [case.gold for case in bfcl_pool.cases]


def test_pool_gold_names_point_at_the_definition_each_case_shipped(bfcl_pool, bfcl_suite, bfcl_entries):
    tools = {tool["name"]: tool for tool in bfcl_pool.tools}
    assert [case.id for case in bfcl_pool.cases] == [case.id for case in bfcl_suite.cases]
    suite_cases = {case.id: case for case in bfcl_suite.cases}
    for case in bfcl_pool.cases:
        entry = bfcl_entries[case.id]
        language = language_for_category(case.category)
        shipped = {fn["name"]: bfcl_function_to_tool(fn, language) for fn in entry["function"]}
        assert case.query == suite_cases[case.id].query
        expected_names = list(dict.fromkeys(call.name for call in suite_cases[case.id].accepted))
        assert [tools[name]["_meta"]["bfcl_name"] for name in case.gold] == expected_names
        for name in case.gold:
            pooled = tools[name]
            original = shipped[pooled["_meta"]["bfcl_name"]]
            assert (pooled["description"], pooled["inputSchema"]) == (original["description"], original["inputSchema"])
            assert pooled["_meta"].get("bfcl_parameters") == original["_meta"].get("bfcl_parameters")


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps bfcl-eval"):
        bfcl_data_dir()
