"""Java and JavaScript argument literals: reading them, and writing them back."""

import pytest

from contextlab.evaluation import language_for_category, parse_literal, render_literal
from contextlab.evaluation.languages import split_top_level


@pytest.mark.parametrize(
    ("text", "bfcl_type", "item_type", "expected"),
    [
        ("42", "integer", None, 42),
        ("42L", "long", None, 42),
        ("42", "long", None, "42"),  # a long literal needs its L, as in BFCL
        ("2.5f", "float", None, 2.5),
        ("3e2", "double", None, 300.0),
        ("true", "boolean", None, True),
        ("'x'", "char", None, "x"),
        ('"quoted"', "String", None, '"quoted"'),  # a top-level String is the text itself
        ("new int[]{2, 7, 11}", "Array", "integer", [2, 7, 11]),
        ("new String[] {-v, --no-strict}", "Array", "String", ["-v", "--no-strict"]),
        ('new String[]{"a, b", "c"}', "Array", "String", ["a, b", "c"]),
        ("new ArrayList<>(Arrays.asList(101L, 202L))", "ArrayList", "long", [101, 202]),
        ('new ArrayList<String>() {{ add("a"); add("b"); }}', "ArrayList", "String", ["a", "b"]),
        ("new ArrayList<>()", "ArrayList", "integer", []),
        ('List.of("x", 1, true)', "ArrayList", None, ["x", 1, True]),
        (
            'new HashMap<String, Object>() {{ put("limit", 50); put("on", true); }}',
            "HashMap",
            None,
            {"limit": 50, "on": True},
        ),
        ('Map.of("a", "b")', "HashMap", None, {"a": "b"}),
        ("new HashMap<>()", "HashMap", None, {}),
        ("userList", "ArrayList", "String", "userList"),  # not a literal: a variable name, kept as text
        ("count", "integer", None, "count"),
    ],
)
def test_java_literals(text, bfcl_type, item_type, expected):
    assert parse_literal(text, bfcl_type, item_type, "java") == expected


@pytest.mark.parametrize(
    ("text", "bfcl_type", "item_type", "expected"),
    [
        ("'abc'", "String", None, "abc"),
        ("abc", "String", None, "abc"),
        ("12", "integer", None, 12),
        ("12.5", "float", None, 12.5),
        ("12", "float", None, 12.0),
        ("12n", "Bigint", None, 12),
        ("false", "Boolean", None, False),
        ('["a", "b,c"]', "array", "String", ["a", "b,c"]),
        ("new Array(4.4, 5.5)", "array", "float", [4.4, 5.5]),
        ("[[1, 2], [3]]", "array", None, [[1, 2], [3]]),
        ("{key: 'v', 'n': [1, 2], o: {a: true}}", "dict", None, {"key": "v", "n": [1, 2], "o": {"a": True}}),
        ("{}", "dict", None, {}),
        ("[1] + [2]", "array", None, "[1] + [2]"),  # an expression, not one array
        ("fetchData()", "any", None, "fetchData()"),
    ],
)
def test_javascript_literals(text, bfcl_type, item_type, expected):
    assert parse_literal(text, bfcl_type, item_type, "javascript") == expected


@pytest.mark.parametrize(
    ("value", "bfcl_type", "item_type", "language", "literal"),
    [
        (42, "long", None, "java", "42L"),
        (2, "float", None, "java", "2f"),
        (0.5, "double", None, "java", "0.5"),
        ([1, 2], "Array", "integer", "java", "new int[]{1, 2}"),
        (["-v", "x"], "Array", "String", "java", "new String[]{-v, x}"),
        (["a b"], "ArrayList", "String", "java", 'new ArrayList<>(Arrays.asList("a b"))'),
        ({"limit": 50}, "HashMap", None, "java", 'new HashMap<String, Object>() {{ put("limit", 50); }}'),
        ("hello", "String", None, "javascript", '"hello"'),
        ('say "hi"', "String", None, "javascript", "'say \"hi\"'"),
        (7, "Bigint", None, "javascript", "7n"),
        ({"a": [1, "x"], "b c": True}, "dict", None, "javascript", '{a: [1, "x"], "b c": true}'),
    ],
)
def test_render_literal_writes_what_parse_literal_reads_back(value, bfcl_type, item_type, language, literal):
    assert render_literal(value, bfcl_type, item_type, language) == literal
    assert parse_literal(literal, bfcl_type, item_type, language) == value


def test_python_is_not_a_literal_language():
    with pytest.raises(ValueError, match="java and javascript"):
        parse_literal("1", "integer", None, "python")
    with pytest.raises(ValueError, match="java and javascript"):
        render_literal(1, "integer", None, "python")


def test_split_top_level_respects_quotes_and_brackets():
    assert split_top_level('a, "b, c", f(d, e), [g, h]') == ["a", '"b, c"', "f(d, e)", "[g, h]"]
    assert split_top_level("k: {x: 1}: z", ":", maxsplit=1) == ["k", "{x: 1}: z"]


def test_language_for_category():
    assert [language_for_category(c) for c in ("simple_java", "simple_javascript", "live_simple", "")] == [
        "java",
        "javascript",
        "python",
        "python",
    ]
