"""Is a tool call right? BFCL's AST checking rules, with a reason for every failure.

The rules follow BFCL v4's `ast_checker` (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`), and
the `error_type` strings are BFCL's, so results can be compared with the leaderboard's:

- the name must be the accepted one; every required parameter must be present; no parameter
  may be passed that the tool lacks or the accepted call does not list;
- each value must have its parameter's type (Python rules: an int is accepted for a float,
  a bool is not an int; array items are checked one level deep); when the accepted values of a
  parameter have another type than the declared one, they stand for variables and the value
  must equal one of them exactly;
- strings are compared after BFCL's normalisation (`standardize_string`): lowercase, with
  spaces and `,./-_*^` removed and `'` read as `"`; the same goes for the string items of lists
  and the string values of dicts;
- dicts are compared key by key, lists of dicts position by position;
- a parameter missing from the call is fine only if `""` is among its accepted values.

`check_calls` applies BFCL's case rules: exactly one call for simple and multiple cases, and for
parallel cases the same number of calls as accepted calls, matched in any order (greedily, each
accepted call taking the first unmatched call that passes, as BFCL does).

Java and JavaScript cases (`simple_java`, `simple_javascript`) pass every argument as a string
holding a literal of the language; `languages.parse_literal` reads it before the checks above.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .languages import (
    LANGUAGES,
    NESTED_TYPES,
    language_for_category,
    parse_literal,
    python_value_type,
    render_literal,
)
from .suite import AcceptedCall, ToolSelectionCase

SIMPLE = "simple_function_checker"
_STRIPPED_CHARS = str.maketrans("", "", " ,./-_*^")
# MCP inputSchema types back in BFCL's dialect, for tools that carry no `_meta.bfcl_parameters`.
_BFCL_TYPES = {
    "object": "dict",
    "number": "float",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
    "array": "array",
}


@dataclass
class CheckResult:
    """The verdict on a call (or a case's calls): valid, or why not, with BFCL's error type."""

    valid: bool
    error_type: str | None = None
    reason: str | None = None


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: drop spaces and `,./-_*^`, lowercase, and read `'` as `"`."""
    return text.translate(_STRIPPED_CHARS).lower().replace("'", '"')


def check_call(call: Any, tool: Mapping[str, Any], accepted: AcceptedCall, language: str = "python") -> CheckResult:
    """Check one call (a `{"name", "arguments"}` dict or an object with those attributes) against one accepted call.

    `tool` is the MCP tool (or the BFCL function doc) the accepted call names; its parameter
    types decide the type checks. `arguments` may be a dict or a JSON string.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}: expected one of {LANGUAGES}")
    parsed = _name_and_arguments(call)
    if isinstance(parsed, CheckResult):
        return parsed
    name, arguments = parsed
    if name != accepted.name:
        return _fail(f"{SIMPLE}:wrong_func_name", f"called {name!r}, expected {accepted.name!r}")
    properties, required = _parameter_specs(tool, language)
    for param in required:
        if param not in arguments:
            return _fail(f"{SIMPLE}:missing_required", f"missing required parameter {param!r}")
    for param, value in arguments.items():
        if param not in properties or param not in accepted.arguments:
            return _fail(f"{SIMPLE}:unexpected_param", f"unexpected parameter {param!r}")
        result = _check_argument(param, value, properties[param], accepted.arguments[param], language)
        if not result.valid:
            return result
    for param, values in accepted.arguments.items():
        if param not in arguments and "" not in values:
            return _fail(f"{SIMPLE}:missing_optional", f"parameter {param!r} is not provided and may not be omitted")
    return CheckResult(valid=True)


def check_calls(calls: Sequence[Any], case: ToolSelectionCase) -> CheckResult:
    """Check all the calls made for a case: one call for simple/multiple cases, any order for parallel ones.

    The case's category decides the rules as in BFCL (`parallel` in the name: parallel;
    `multiple`: one call among several tools; else simple). A case without a category is parallel
    when it accepts several calls, multiple when it offers several tools, else simple.
    """
    language = language_for_category(case.category)
    kind = _case_kind(case)
    if kind == "parallel":
        return _check_parallel(calls, case, language)
    checker = f"{kind}_function_checker"
    if len(calls) != 1:
        return _fail(f"{checker}:wrong_count", f"expected exactly one call, got {len(calls)}")
    accepted = case.accepted[0]
    return check_call(calls[0], _tool_named(case, accepted.name), accepted, language)


def reference_calls(case: ToolSelectionCase) -> list[dict[str, Any]]:
    """The calls made of each parameter's first accepted value (omitting those whose first value is `""`).

    For Java and JavaScript cases the values are written as literals of the language. The calls
    pass `check_calls` unless the accepted calls contradict the tools (11 BFCL v4 answers do), so
    they serve as an oracle baseline and as examples of the expected format.
    """
    language = language_for_category(case.category)
    calls = []
    for accepted in case.accepted:
        properties, _ = _parameter_specs(_tool_named(case, accepted.name), language)
        arguments = {}
        for param, values in accepted.arguments.items():
            if not values or values[0] == "":
                continue
            spec = properties.get(param, {})
            value = _first_accepted(values[0], spec, language)
            if language != "python":
                value = render_literal(value, spec.get("type"), _item_type(spec, language), language)
            arguments[param] = value
        calls.append({"name": accepted.name, "arguments": arguments})
    return calls


# -- one argument --------------------------------------------------------------------------


def _check_argument(param: str, value: Any, spec: Mapping[str, Any], accepted: list[Any], language: str) -> CheckResult:
    bfcl_type = spec.get("type") or "any"
    item_type = _item_type(spec, language)
    expected = python_value_type(bfcl_type, language)
    item_expected = python_value_type(item_type, language) if item_type else None

    if language != "python":
        if type(value) is not str:
            short = "js" if language == "javascript" else "java"
            return _fail(
                f"type_error:{short}",
                f"parameter {param!r} must be a string holding a {language} literal, got {type(value).__name__}",
            )
        value = parse_literal(value, bfcl_type, item_type, language)
    elif bfcl_type == "tuple" and type(value) is tuple:
        value = list(value)
    elif bfcl_type == "float" and type(value) is int:
        value = float(value)  # Python would convert it too

    type_result, is_variable = _check_type(param, value, accepted, expected, item_expected, bfcl_type)
    if not type_result.valid:
        return type_result
    if not is_variable:
        if expected is dict:
            return _check_dict(param, value, accepted)
        if expected is list and item_expected is dict:
            return _check_list_of_dicts(param, value, accepted)
        if expected is str:
            if standardize_string(value) in {standardize_string(v) for v in accepted if type(v) is str}:
                return CheckResult(valid=True)
            return _fail("value_error:string", f"{param!r} is {value!r}; accepted (case-insensitive): {accepted}")
        if expected is list:
            options = [[] if v == "" else v for v in accepted if v == "" or type(v) is list]  # "": may be empty
            if [_std(item) for item in value] in [[_std(item) for item in option] for option in options]:
                return CheckResult(valid=True)
            return _fail("value_error:list/tuple", f"{param!r} is {value!r}; accepted: {accepted}")
    if value in accepted:
        return CheckResult(valid=True)
    return _fail("value_error:others", f"{param!r} is {value!r}; accepted: {accepted}")


def _check_type(
    param: str, value: Any, accepted: list[Any], expected: type, item_expected: type | None, type_name: str
) -> tuple[CheckResult, bool]:
    """The type verdict and whether the accepted values stand for variables (their type is not the declared one)."""
    accepted_type = next((type(v) for v in accepted if v != ""), None)
    is_variable = accepted_type is not None and accepted_type is not expected
    nested_failed = False
    if type(value) is expected:
        if item_expected is None or _items_have_type(param, value, accepted, item_expected):
            return CheckResult(valid=True), is_variable
        nested_failed = True
    if accepted_type is not None and type(value) is accepted_type:
        if nested_failed:
            return _fail("type_error:nested", f"items of {param!r} should be {item_expected.__name__}: {value!r}"), True
        return CheckResult(valid=True), True
    return _fail(
        "type_error:simple", f"{param!r} should be {type_name}, got {type(value).__name__}: {value!r}"
    ), is_variable


def _items_have_type(param: str, value: list[Any], accepted: list[Any], item_expected: type) -> bool:
    """BFCL's one-level item check: some accepted value is not a list, or every item type-checks against one."""
    for option in accepted:
        if type(option) is not list:
            return True
        if all(
            _check_type(param, item, option, item_expected, None, item_expected.__name__)[0].valid for item in value
        ):
            return True
    return False


def _check_dict(param: str, value: dict[str, Any], accepted: list[Any]) -> CheckResult:
    result = _fail("dict_checker:unclear", f"no accepted value of {param!r} is a dict")
    for option in accepted:
        if type(option) is not dict:
            continue
        result = _dict_mismatch(param, value, option)
        if result.valid:
            return result
    return result


def _dict_mismatch(param: str, value: dict[str, Any], option: dict[str, Any]) -> CheckResult:
    for key, item in value.items():
        if key not in option:
            return _fail("value_error:dict_key", f"unexpected key {key!r} in {param!r}")
        accepted_items = _as_list(option[key])
        if _std(item) not in [_std(v) for v in accepted_items]:
            return _fail("value_error:dict_value", f"{param!r}[{key!r}] is {item!r}; accepted: {accepted_items}")
    for key, accepted_items in option.items():
        if key not in value and "" not in _as_list(accepted_items):
            return _fail("value_error:dict_key", f"missing key {key!r} in {param!r}")
    return CheckResult(valid=True)


def _check_list_of_dicts(param: str, value: list[Any], accepted: list[Any]) -> CheckResult:
    result = _fail("list_dict_checker:unclear", f"no accepted value of {param!r} is a list of dicts")
    for option in accepted:
        option = [] if option == "" else option
        if type(option) is not list:
            continue
        if len(value) != len(option):
            result = _fail("value_error:list_dict_count", f"{param!r} has {len(value)} dicts, expected {len(option)}")
            continue
        for index, (item, expected) in enumerate(zip(value, option, strict=True)):
            if type(item) is not dict:
                result = _fail("type_error:nested", f"{param!r}[{index}] should be a dict, got {type(item).__name__}")
                break
            result = _check_dict(f"{param}[{index}]", item, [expected])
            if not result.valid:
                break
        else:
            return CheckResult(valid=True)
    return result


# -- cases ---------------------------------------------------------------------------------


def _check_parallel(calls: Sequence[Any], case: ToolSelectionCase, language: str) -> CheckResult:
    checker = "parallel_function_checker_no_order"
    if len(calls) != len(case.accepted):
        return _fail(f"{checker}:wrong_count", f"expected {len(case.accepted)} calls, got {len(calls)}")
    unmatched = list(range(len(calls)))
    for position, accepted in enumerate(case.accepted):
        tool = _tool_named(case, accepted.name)
        failures = []
        for index in unmatched:
            result = check_call(calls[index], tool, accepted, language)
            if result.valid:
                unmatched.remove(index)
                break
            failures.append(f"call {index}: {result.error_type}: {result.reason}")
        else:
            return _fail(
                f"{checker}:cannot_find_match",
                f"no call matches accepted call {position} ({accepted.name}): " + "; ".join(failures),
            )
    return CheckResult(valid=True)


def _case_kind(case: ToolSelectionCase) -> str:
    if "parallel" in case.category or len(case.accepted) > 1:
        return "parallel"
    if "multiple" in case.category or (not case.category and len(case.tools) > 1):
        return "multiple"
    return "simple"


def _tool_named(case: ToolSelectionCase, name: str) -> Mapping[str, Any]:
    for tool in case.tools:
        if tool["name"] == name:
            return tool
    raise ValueError(f"case {case.id}: accepted call {name!r} names none of its tools")


# -- helpers -------------------------------------------------------------------------------


def _fail(error_type: str, reason: str) -> CheckResult:
    return CheckResult(valid=False, error_type=error_type, reason=reason)


def _name_and_arguments(call: Any) -> tuple[str, dict[str, Any]] | CheckResult:
    if isinstance(call, Mapping):
        name, arguments = call.get("name"), call.get("arguments")
    else:
        name, arguments = getattr(call, "name", None), getattr(call, "arguments", None)
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str | bytes):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as error:
            return _fail("ast_decoder:decoder_failed", f"arguments are not valid JSON: {error}")
    if not isinstance(name, str) or not isinstance(arguments, Mapping):
        return _fail("ast_decoder:decoder_wrong_output_format", "a call needs a string name and an arguments object")
    return name, dict(arguments)


def _parameter_specs(tool: Mapping[str, Any], language: str) -> tuple[dict[str, Any], list[str]]:
    """BFCL-style property specs and the required names, from a BFCL function or an MCP tool."""
    parameters = tool.get("parameters") or tool.get("_meta", {}).get("bfcl_parameters")
    if parameters is None:
        if language != "python":
            raise ValueError(
                f"tool {tool.get('name')!r}: {language} checks need the BFCL parameter types; pass the BFCL "
                "function or a tool made by bfcl_function_to_tool (it keeps them in _meta.bfcl_parameters)"
            )
        parameters = _bfcl_view(tool.get("inputSchema", {}))
    return parameters.get("properties", {}), list(parameters.get("required", []))


def _bfcl_view(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema in BFCL's dialect, as far as the checks need it (types, items, properties)."""
    json_type = schema.get("type")
    view: dict[str, Any] = {"type": _BFCL_TYPES.get(json_type, "any") if isinstance(json_type, str) else "any"}
    if isinstance(schema.get("items"), Mapping):
        view["items"] = _bfcl_view(schema["items"])
    if isinstance(schema.get("properties"), Mapping):
        view["properties"] = {name: _bfcl_view(spec) for name, spec in schema["properties"].items()}
        view["required"] = list(schema.get("required", []))
    return view


def _item_type(spec: Mapping[str, Any], language: str) -> str | None:
    if spec.get("type") in NESTED_TYPES[language] and isinstance(spec.get("items"), Mapping):
        return spec["items"].get("type") or "any"
    return None


def _first_accepted(option: Any, spec: Mapping[str, Any], language: str) -> Any:
    """An accepted value made concrete: dict options map keys to accepted lists, so take each list's first value."""
    expected = python_value_type(spec.get("type") or "any", language)
    item_type = _item_type(spec, language)
    if expected is dict and type(option) is dict:
        return _first_of_each_key(option)
    if expected is list and item_type and python_value_type(item_type, language) is dict and type(option) is list:
        return [_first_of_each_key(item) if type(item) is dict else item for item in option]
    return option


def _first_of_each_key(option: dict[str, Any]) -> dict[str, Any]:
    concrete = {}
    for key, values in option.items():
        values = _as_list(values)
        if values and values[0] != "":
            concrete[key] = values[0]
    return concrete


def _as_list(values: Any) -> list[Any]:
    return values if type(values) is list else [values]


def _std(value: Any) -> Any:
    """A string standardised; anything else (lists and dicts too) as is, as BFCL compares them."""
    return standardize_string(value) if type(value) is str else value
