"""The AST checker: BFCL's rules on hand-made calls, and agreement with BFCL's own checker on the real data."""

import copy
import types

import pytest

from contextlab.evaluation import (
    AcceptedCall,
    ToolSelectionCase,
    bfcl_function_to_tool,
    check_call,
    check_calls,
    language_for_category,
    mcp_safe_name,
    reference_calls,
    standardize_string,
)
from contextlab.evaluation.languages import PYTHON_VALUE_TYPES

# BFCL possible answers that contradict their own function docs: both checkers reject them.
KNOWN_BAD_GROUND_TRUTH = {
    "simple_python_200": "omits required 'fuel_efficiency'",
    "parallel_multiple_26": "passes 'type', which bank.calculate_balance does not declare",
    "live_simple_106-63-0": "omits required 'auto_loan_payment_start'",
    "live_simple_112-68-0": "omits required 'acc_routing_start'",
    "live_multiple_144-56-0": "omits required 'perPage'",
    "live_multiple_507-149-4": "omits required 'origin_airport'",
    "live_multiple_834-178-9": "omits required 'track'",
    "live_multiple_862-181-3": "passes 'journey_start_time', which the function does not declare",
    "live_multiple_964-207-0": "omits required 'statement'",
    "simple_java_36": "items typed `any` must be strings, but the answer lists 42 and true",
    "simple_java_65": "items typed `any` must be strings, but the answer lists true",
}
# Where ours accepts what BFCL rejects, on purpose.
DIVERGES_FROM_BFCL = {
    "simple_java_64": "a dict key's accepted value is a bare string; BFCL iterates it as a list of characters",
}
# Both reject, for different reasons: BFCL keeps the text of `any`-typed list elements ('"userID"'),
# so it fails on the values; we parse them ("userID", 42) and fail on the item type.
REJECTED_FOR_ANOTHER_REASON = {"simple_java_36", "simple_java_65"}
NO_MATCH = "parallel_function_checker_no_order:cannot_find_match"

BOOK = {
    "name": "hotel.book",
    "description": "Book a hotel.",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string"},
            "nights": {"type": "integer"},
            "budget": {"type": "float"},
            "guests": {"type": "array", "items": {"type": "string"}},
            "prefs": {"type": "dict", "properties": {"view": {"type": "string"}, "floor": {"type": "integer"}}},
            "rooms": {"type": "array", "items": {"type": "dict"}},
            "pet": {"type": "boolean"},
        },
        "required": ["city", "nights"],
    },
}
BOOK_ACCEPTED = AcceptedCall(
    "hotel.book",
    {
        "city": ["New York City", "NYC"],
        "nights": [2],
        "budget": [300.0, ""],
        "guests": [["Ann", "Bob"], ""],
        "prefs": [{"view": ["sea", ""], "floor": [3]}, ""],
        "rooms": [[{"kind": ["double"], "count": [1]}, {"kind": ["single"], "count": [2, ""]}], ""],
        "pet": [False, ""],
    },
)


def book(**arguments):
    return check_call(
        {"name": "hotel.book", "arguments": {"city": "NYC", "nights": 2, **arguments}}, BOOK, BOOK_ACCEPTED
    )


# -- BFCL's rules, one at a time --------------------------------------------------------------


def test_minimal_call_passes_and_optional_parameters_may_be_omitted():
    assert book() == book(budget=300.0, pet=False)
    assert book().valid


def test_int_is_accepted_for_a_float_but_bool_is_not_an_int():
    assert book(budget=300).valid
    result = book(nights=True)
    assert (result.valid, result.error_type) == (False, "type_error:simple")
    assert "nights" in result.reason


def test_strings_compare_after_bfcl_normalisation():
    assert standardize_string("New-York, City.") == "newyorkcity"
    assert standardize_string("It's") == 'it"s'
    assert book(city="new york_city").valid
    result = book(city="New York")
    assert (result.valid, result.error_type) == (False, "value_error:string")


def test_lists_compare_in_order_with_normalised_strings():
    assert book(guests=["ann", "B-o-b"]).valid
    assert book(guests=[]).valid  # "" among the accepted values also accepts an empty list, as in BFCL
    result = book(guests=["Bob", "Ann"])
    assert (result.valid, result.error_type) == (False, "value_error:list/tuple")


def test_list_items_are_type_checked_when_the_parameter_is_not_optional():
    accepted = AcceptedCall("hotel.book", {"city": ["NYC"], "nights": [2], "guests": [["Ann", "Bob"]]})
    result = check_call(
        {"name": "hotel.book", "arguments": {"city": "NYC", "nights": 2, "guests": [1, 2]}}, BOOK, accepted
    )
    assert (result.valid, result.error_type) == (False, "type_error:nested")


def test_dicts_compare_key_by_key():
    assert book(prefs={"floor": 3}).valid
    assert book(prefs={"floor": 3, "view": "SEA"}).valid
    assert book(prefs={"floor": 4}).error_type == "value_error:dict_value"
    assert book(prefs={"floor": 3, "bed": "king"}).error_type == "value_error:dict_key"
    assert book(prefs={"view": "sea"}).error_type == "value_error:dict_key"


def test_lists_of_dicts_compare_position_by_position():
    assert book(rooms=[{"kind": "Double", "count": 1}, {"kind": "single"}]).valid
    # As in BFCL, the error reported is the last accepted option's: here "" (an empty list).
    assert book(rooms=[{"kind": "single"}, {"kind": "double", "count": 1}]).error_type == "value_error:list_dict_count"
    strict = AcceptedCall("hotel.book", {"city": ["NYC"], "nights": [2], "rooms": BOOK_ACCEPTED.arguments["rooms"][:1]})
    swapped = {"city": "NYC", "nights": 2, "rooms": [{"kind": "single"}, {"kind": "double", "count": 1}]}
    assert check_call({"name": "hotel.book", "arguments": swapped}, BOOK, strict).error_type == "value_error:dict_value"
    short = {"city": "NYC", "nights": 2, "rooms": [{"kind": "double", "count": 1}]}
    assert (
        check_call({"name": "hotel.book", "arguments": short}, BOOK, strict).error_type == "value_error:list_dict_count"
    )


def test_name_required_unknown_and_missing_optional_parameters():
    wrong_name = check_call({"name": "hotel.cancel", "arguments": {"city": "NYC", "nights": 2}}, BOOK, BOOK_ACCEPTED)
    assert wrong_name.error_type == "simple_function_checker:wrong_func_name"
    missing = check_call({"name": "hotel.book", "arguments": {"city": "NYC"}}, BOOK, BOOK_ACCEPTED)
    assert missing.error_type == "simple_function_checker:missing_required"
    assert book(stars=5).error_type == "simple_function_checker:unexpected_param"
    strict = AcceptedCall("hotel.book", {"city": ["NYC"], "nights": [2], "budget": [300.0]})
    result = check_call({"name": "hotel.book", "arguments": {"city": "NYC", "nights": 2}}, BOOK, strict)
    assert result.error_type == "simple_function_checker:missing_optional"
    # A parameter the tool declares but the accepted call does not list may not be passed.
    assert check_call(
        {"name": "hotel.book", "arguments": {"city": "NYC", "nights": 2, "pet": True}}, BOOK, strict
    ).error_type == ("simple_function_checker:unexpected_param")


def test_accepted_values_of_another_type_stand_for_variables_and_must_match_exactly():
    accepted = AcceptedCall("hotel.book", {"city": ["NYC"], "nights": ["stay_length"]})
    call = {"name": "hotel.book", "arguments": {"city": "NYC", "nights": "stay_length"}}
    assert check_call(call, BOOK, accepted).valid
    call["arguments"]["nights"] = "Stay_Length"
    assert check_call(call, BOOK, accepted).error_type == "value_error:others"


def test_call_shapes_json_arguments_and_mcp_tools():
    as_object = types.SimpleNamespace(name="hotel.book", arguments='{"city": "NYC", "nights": 2}')
    assert check_call(as_object, BOOK, BOOK_ACCEPTED).valid
    broken = check_call({"name": "hotel.book", "arguments": "{city: NYC"}, BOOK, BOOK_ACCEPTED)
    assert broken.error_type == "ast_decoder:decoder_failed"
    assert check_call({"arguments": {}}, BOOK, BOOK_ACCEPTED).error_type == "ast_decoder:decoder_wrong_output_format"
    tool = bfcl_function_to_tool(BOOK)
    calls = [
        {"city": "NYC", "nights": 2, "budget": 300},
        {"city": "NYC", "nights": 2.0},
        {"city": "NYC", "nights": 2, "guests": ["Ann"]},
        {"city": "NYC", "nights": 2, "prefs": {"floor": 3}},
    ]
    for arguments in calls:
        call = {"name": "hotel.book", "arguments": arguments}
        assert check_call(call, tool, BOOK_ACCEPTED) == check_call(call, BOOK, BOOK_ACCEPTED)


def test_java_checks_need_the_bfcl_types():
    tool = {"name": "f", "inputSchema": {"type": "object", "properties": {"n": {"type": "string"}}}}
    with pytest.raises(ValueError, match="bfcl_parameters"):
        check_call({"name": "f", "arguments": {"n": "1"}}, tool, AcceptedCall("f", {"n": [1]}), language="java")


def test_java_and_javascript_arguments_are_literal_strings():
    java = {
        "name": "g",
        "parameters": {"type": "dict", "properties": {"ids": {"type": "ArrayList", "items": {"type": "long"}}}},
    }
    accepted = AcceptedCall("g", {"ids": [[101, 202]]})
    good = {"name": "g", "arguments": {"ids": "new ArrayList<>(Arrays.asList(101L, 202L))"}}
    assert check_call(good, java, accepted, "java").valid
    assert (
        check_call({"name": "g", "arguments": {"ids": [101, 202]}}, java, accepted, "java").error_type
        == "type_error:java"
    )
    no_suffix = check_call(
        {"name": "g", "arguments": {"ids": "new ArrayList<>(Arrays.asList(101, 202))"}}, java, accepted, "java"
    )
    assert no_suffix.error_type == "type_error:nested"  # a Java long literal needs its L, as in BFCL
    js = {"name": "h", "parameters": {"type": "dict", "properties": {"opts": {"type": "dict"}}}}
    accepted = AcceptedCall("h", {"opts": [{"method": ["GET"], "retry": [True, ""]}]})
    assert check_call({"name": "h", "arguments": {"opts": "{method: 'get'}"}}, js, accepted, "javascript").valid
    assert (
        check_call({"name": "h", "arguments": {"opts": {"method": "GET"}}}, js, accepted, "javascript").error_type
        == "type_error:js"
    )


def test_parallel_calls_match_in_any_order():
    tool = bfcl_function_to_tool(
        {
            "name": "add",
            "description": "",
            "parameters": {"type": "dict", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        }
    )
    case = ToolSelectionCase(
        id="p",
        query="",
        messages=[],
        tools=[tool],
        accepted=[AcceptedCall("add", {"a": [1]}), AcceptedCall("add", {"a": [2]})],
    )
    one, two = {"name": "add", "arguments": {"a": 1}}, {"name": "add", "arguments": {"a": 2}}
    assert check_calls([two, one], case).valid
    assert check_calls([one, one], case).error_type == NO_MATCH
    assert check_calls([one], case).error_type == "parallel_function_checker_no_order:wrong_count"
    single = ToolSelectionCase(id="s", query="", messages=[], tools=[tool], accepted=[AcceptedCall("add", {"a": [1]})])
    assert check_calls([one], single).valid
    assert check_calls([one, one], single).error_type == "simple_function_checker:wrong_count"
    assert check_calls([], single).error_type == "simple_function_checker:wrong_count"


# -- the real BFCL data ---------------------------------------------------------------------


def test_reference_calls_render_java_and_javascript_literals(bfcl_suite):
    cases = {case.id: case for case in bfcl_suite.cases}
    assert (
        reference_calls(cases["simple_java_22"])[0]["arguments"]["ids"]
        == "new ArrayList<>(Arrays.asList(101L, 202L, 303L))"
    )
    assert reference_calls(cases["simple_javascript_3"])[0]["arguments"]["coordinates"] == "[60, 30]"


def test_reference_calls_pass_except_where_bfcl_answers_contradict_their_functions(bfcl_suite):
    failing = {}
    for case in bfcl_suite.cases:
        result = check_calls(reference_calls(case), case)
        if not result.valid:
            failing[case.id] = result.error_type
    assert set(failing) == set(KNOWN_BAD_GROUND_TRUTH), failing


def mutations(case, calls, entry):
    """(label, calls, expected error type): one mistake each, made in the first call of a passing case."""
    language = language_for_category(case.category)
    parallel = len(case.accepted) > 1 or "parallel" in case.category
    kind = "multiple" if "multiple" in case.category else "simple"
    first, accepted = calls[0], case.accepted[0]
    fn = next(fn for fn in entry["function"] if mcp_safe_name(fn["name"]) == accepted.name)
    properties, required = fn["parameters"]["properties"], fn["parameters"].get("required", [])

    def changed(error_type, arguments, name=None):
        call = {"name": name or first["name"], "arguments": arguments}
        return [call, *calls[1:]], NO_MATCH if parallel else error_type

    out = [
        ("wrong_name", *changed("simple_function_checker:wrong_func_name", first["arguments"], first["name"] + "_x")),
        (
            "unknown_param",
            *changed("simple_function_checker:unexpected_param", {**first["arguments"], "zz_unknown": 1}),
        ),
    ]
    present_required = [param for param in required if param in first["arguments"]]
    if present_required:
        arguments = {k: v for k, v in first["arguments"].items() if k != present_required[0]}
        out.append(("drop_required", *changed("simple_function_checker:missing_required", arguments)))
    for param in first["arguments"]:
        bfcl_type = properties[param].get("type") or "any"
        expected = PYTHON_VALUE_TYPES[language].get(bfcl_type, str)
        options = [v for v in accepted.arguments[param] if v != ""]
        if not options or any(type(v) is not expected for v in options):
            continue  # the accepted values stand for variables
        if language == "python":
            wrong = 12345 if expected is str else "wrong"
            out.append(("wrong_type", *changed("type_error:simple", {**first["arguments"], param: wrong})))
        else:
            short = "java" if language == "java" else "js"
            out.append(("wrong_type", *changed(f"type_error:{short}", {**first["arguments"], param: 12345})))
        if expected is str:
            bad = '"zzz not accepted"' if bfcl_type == "String" and language == "javascript" else "zzz not accepted"
            out.append(("bad_value", *changed("value_error:string", {**first["arguments"], param: bad})))
        elif expected is int and language == "python":
            out.append(("bad_value", *changed("value_error:others", {**first["arguments"], param: 987654321})))
        break
    if parallel:
        out.append(("wrong_count", calls[:-1], "parallel_function_checker_no_order:wrong_count"))
    else:
        out.append(("wrong_count", calls + calls, f"{kind}_function_checker:wrong_count"))
    return out


@pytest.fixture(scope="module")
def checked_calls(bfcl_suite, bfcl_entries):
    """(case, label, calls, expected error type or None) for every case's reference calls and their mutations."""
    rows = []
    for case in bfcl_suite.cases:
        calls = reference_calls(case)
        rows.append((case, "reference", calls, None))
        if case.id not in KNOWN_BAD_GROUND_TRUTH and case.id not in DIVERGES_FROM_BFCL:
            rows.extend((case, *mutation) for mutation in mutations(case, calls, bfcl_entries[case.id]))
    return rows


def test_each_mistake_fails_with_bfcl_error_type(checked_calls):
    counts = {}
    for case, label, calls, expected in checked_calls:
        if expected is None:
            continue
        counts[label] = counts.get(label, 0) + 1
        result = check_calls(calls, case)
        assert (result.valid, result.error_type) == (False, expected), (case.id, label, result)
    assert min(counts.values()) >= 200, counts
    assert set(counts) == {"wrong_name", "unknown_param", "drop_required", "wrong_type", "bad_value", "wrong_count"}


def test_verdicts_agree_with_bfcls_own_checker(checked_calls, bfcl_entries, bfcl_ast_checker):
    ast_checker, language_enum = bfcl_ast_checker
    languages = {"python": language_enum.PYTHON, "java": language_enum.JAVA, "javascript": language_enum.JAVASCRIPT}
    verdict_differs, error_type_differs = set(), set()
    categories = set()
    for case, _label, calls, _ in checked_calls:
        ours = check_calls(calls, case)
        theirs = ast_checker(
            copy.deepcopy(bfcl_entries[case.id]["function"]),
            [{call["name"]: copy.deepcopy(call["arguments"])} for call in calls],
            [{call.name: copy.deepcopy(call.arguments)} for call in case.accepted],
            languages[language_for_category(case.category)],
            case.category,
            "contextlab-reference",
        )
        categories.add(case.category)
        if ours.valid != theirs["valid"]:
            verdict_differs.add(case.id)
        elif not ours.valid and ours.error_type != theirs["error_type"]:
            error_type_differs.add(case.id)
    assert len(checked_calls) > 10000
    assert len(categories) == 10
    assert verdict_differs == set(DIVERGES_FROM_BFCL)
    assert error_type_differs == REJECTED_FOR_ANOTHER_REASON
