"""The suite file format: round trips and precise errors."""

import json

import pytest

from contextlab.evaluation import AcceptedCall, SuiteFormatError, ToolSelectionCase, ToolSelectionSuite

TOOL = {
    "name": "hotel.book",
    "description": "Book a hotel.",
    "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def make_case(case_id="c1"):
    return ToolSelectionCase(
        id=case_id,
        query="Book two nights in NYC",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Book two nights in NYC"}],
        tools=[TOOL],
        accepted=[AcceptedCall("hotel.book", {"city": ["NYC", "New York"], "nights": [2, ""]})],
        category="simple_python",
    )


def write_lines(path, *rows):
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")


HEADER = {"format": "contextlab.tool-selection-suite", "version": 1, "name": "demo"}


def test_save_and_load_round_trip(tmp_path):
    suite = ToolSelectionSuite(name="demo", cases=[make_case("c1"), make_case("c2")])
    path = tmp_path / "demo.jsonl"
    suite.save(path)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == HEADER
    assert len(lines) == 3
    assert ToolSelectionSuite.load(path) == suite
    assert ToolSelectionSuite.from_dict(json.loads(json.dumps(suite.to_dict()))) == suite


def test_bfcl_suite_round_trips(tmp_path, bfcl_suite):
    sample = ToolSelectionSuite(name=bfcl_suite.name, cases=bfcl_suite.cases[::25])
    path = tmp_path / "bfcl.jsonl"
    sample.save(path)
    assert ToolSelectionSuite.load(path) == sample


@pytest.mark.parametrize(
    ("rows", "line", "field", "message"),
    [
        ([HEADER, "{not json"], 2, "", "invalid JSON"),
        ([{**HEADER, "format": "other"}], 1, "format", "expected 'contextlab.tool-selection-suite'"),
        ([{**HEADER, "version": 2}], 1, "version", "unsupported version 2"),
        ([HEADER, {**make_case().to_dict(), "tools": None}], 2, "case.tools", "expected a list, missing"),
        (
            [
                HEADER,
                make_case().to_dict(),
                {**make_case("c2").to_dict(), "accepted": [{"name": "hotel.book", "arguments": {"city": "NYC"}}]},
            ],
            3,
            "case.accepted[0].arguments.city",
            "expected a list of accepted values, got str",
        ),
        (
            [HEADER, {**make_case().to_dict(), "accepted": [{"name": "hotel.cancel", "arguments": {}}]}],
            2,
            "case.accepted[0].name",
            "not one of the case's tools",
        ),
        (
            [HEADER, {**make_case().to_dict(), "messages": [{"content": "hi"}]}],
            2,
            "case.messages[0].role",
            "expected a string",
        ),
        (
            [HEADER, make_case().to_dict(), "", make_case().to_dict()],
            4,
            "case.id",
            "duplicate case id 'c1' (first on line 2)",
        ),
    ],
)
def test_malformed_files_say_file_line_and_field(tmp_path, rows, line, field, message):
    path = tmp_path / "bad.jsonl"
    write_lines(path, *rows)
    with pytest.raises(SuiteFormatError) as caught:
        ToolSelectionSuite.load(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert message in str(error)
    assert str(error).startswith(f"{path}:{line}: {field + ': ' if field else ''}")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(SuiteFormatError, match=r"empty\.jsonl:1: empty file"):
        ToolSelectionSuite.load(path)


def test_from_dict_names_the_case_index():
    data = ToolSelectionSuite(name="demo", cases=[make_case("c1"), make_case("c2")]).to_dict()
    data["cases"][1]["query"] = 7
    with pytest.raises(SuiteFormatError, match=r"^cases\[1\]\.query: expected a string, got int$"):
        ToolSelectionSuite.from_dict(data)
