"""PageDSL: the schema, the checks beyond it, YAML round trips and the version check."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from contextlab.apps import dsl

EXAMPLE = Path(dsl.__file__).parent / "examples" / "expenses.yaml"


@pytest.fixture
def doc() -> dict:
    return dsl.load(EXAMPLE.read_text())


def messages(doc: dict, **kwargs) -> list[str]:
    return [str(i) for i in dsl.validate(doc, **kwargs)]


def test_schema_is_valid_2020_12_and_shipped_with_the_package():
    text = (resources.files("contextlab.apps") / "schema" / dsl.SCHEMA_FILE).read_text()
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["$defs"]["component"]["properties"]["type"]["enum"]) == set(dsl.COMPONENT_TYPES)


def test_example_app_is_valid(doc):
    assert dsl.validate(doc) == []
    assert [p["route"] for p in doc["pages"]] == ["/submit", "/review"]


def test_unknown_component_type_names_the_path_line_and_known_types():
    text = EXAMPLE.read_text().replace("type: indicator", "type: gauge")
    with pytest.raises(dsl.DSLValidationError) as err:
        dsl.load(text)
    (issue,) = err.value.issues
    assert issue.path == "pages[1].components[0].type"
    assert issue.line == text.splitlines().index("      - id: open_count") + 2
    assert "'gauge'" in issue.message and "table" in issue.message and "form" in issue.message


def test_query_on_a_missing_table_is_reported_with_the_known_tables(doc):
    doc["queries"]["by_category"]["sql"] = "SELECT category, sum(amount) AS total FROM expensez GROUP BY 1"
    assert messages(doc) == [
        "queries.by_category.sql: table 'expensez' does not exist in source 'main' (tables: expenses)"
    ]


def test_tables_in_the_existing_database_count_as_known(doc):
    doc["queries"]["by_category"]["sql"] = "SELECT name FROM employees"
    assert messages(doc) != []
    assert messages(doc, catalog={"main": {"employees": ["id", "name"]}}) == []


def test_ctes_are_not_tables(doc):
    doc["queries"]["by_category"]["sql"] = "WITH t AS (SELECT * FROM expenses) SELECT category FROM t"
    assert messages(doc) == []


def test_read_queries_must_not_write(doc):
    doc["queries"]["by_category"]["sql"] = "DELETE FROM expenses"
    assert "a read query must be a SELECT; this is DELETE (set kind: write)" in messages(doc)[0]
    doc["queries"]["by_category"]["kind"] = "write"
    assert messages(doc) == []
    doc["queries"]["by_category"]["sql"] = "DROP TABLE expenses"
    assert "a write query must be INSERT, UPDATE or DELETE" in messages(doc)[0]


def test_sql_that_does_not_parse(doc):
    doc["queries"]["by_category"]["sql"] = "SELECT FROM WHERE ("
    assert "the SQL does not parse" in messages(doc)[0]


def test_parameters_must_be_declared_and_used(doc):
    doc["queries"]["pending"]["sql"] = doc["queries"]["pending"]["sql"].replace("$min_amount", "$min_amt")
    found = messages(doc)
    assert any("uses $min_amt, which is not declared" in m for m in found)
    assert any("'min_amount' is declared but the SQL never uses $min_amount" in m for m in found)


def test_dollar_inside_a_string_is_not_a_parameter(doc):
    doc["queries"]["by_category"]["sql"] = "SELECT category, '$5' AS price FROM expenses"
    assert messages(doc) == []


def test_references_between_parts(doc):
    bad = copy.deepcopy(doc)
    bad["pages"][0]["components"][1]["fields"].append("colour")
    bad["pages"][0]["components"][1]["on_submit"].append({"refresh": ["nowhere"]})
    bad["pages"][1]["components"][1]["targets"] = ["totals"]
    bad["pages"][1]["components"][2]["query"] = "missing"
    bad["events"] = [{"on": "intro.click", "do": [{"navigate": "/nope"}]}]
    found = messages(bad)
    assert "pages[0].components[1].fields[4]: table 'expenses' has no field 'colour'" in found
    assert "pages[0].components[1].on_submit[3].refresh[0]: unknown component 'nowhere'" in found
    assert any(m.startswith("pages[1].components[1].targets[0]: query 'by_category'") for m in found)
    assert any(m.startswith("pages[1].components[2].query: unknown query 'missing'") for m in found)
    assert "events[0].on: 'intro' is a markdown; `click` happens on a button" in found
    assert "events[0].do[0].navigate: no page has route '/nope'" in found


def test_roles_must_be_declared(doc):
    doc["pages"][1]["roles"] = ["boss"]
    assert messages(doc) == ["pages[1].roles: role 'boss' is not declared under roles (employee, manager)"]


def test_layout_must_fit_the_grid_and_not_overlap(doc):
    doc["pages"][1]["components"][3]["position"] = {"x": 8, "y": 2, "w": 5, "h": 6}
    assert messages(doc) == ["pages[1].components[3].position: x + w = 13 exceeds the page's 12 columns"]
    doc["pages"][1]["components"][3]["position"] = {"x": 6, "y": 2, "w": 4, "h": 6}
    assert messages(doc) == ["pages[1].components[3].position: overlaps component 'pending_table' at column 6, row 2"]


def test_duplicate_ids_and_routes(doc):
    doc["pages"][1]["components"][0]["id"] = "intro"
    doc["pages"][1]["route"] = "/submit"
    found = messages(doc)
    assert "pages[1].route: route '/submit' is used by two pages" in found
    assert "pages[1].components[0].id: component id 'intro' is used twice" in found


def test_model_checks(doc):
    fields = doc["data"]["tables"]["expenses"]["fields"]
    fields["status"]["default"] = "open"
    fields["employee"]["references"] = "people.id"
    fields["description"]["generated"] = True
    found = messages(doc)
    assert (
        "data.tables.expenses.fields.status.default: default 'open' is not one of ['pending', 'approved', 'rejected']"
        in found
    )
    assert (
        "data.tables.expenses.fields.employee.references: references table 'people', which the model does not have"
        in found
    )
    assert any("`generated` is for an integer key field" in m for m in found)


def test_schema_errors_carry_paths_and_allowed_keys(doc):
    doc["pages"][0]["components"][0]["colour"] = "red"
    doc["pages"][0]["components"][1]["on_submit"][0] = {"notify": "x", "navigate": "/review"}
    found = messages(doc)
    assert any(m.startswith("pages[0].components[0]: Additional properties") and "allowed here:" in m for m in found)
    assert any("an action does one thing; this one has navigate, notify" in m for m in found)


def test_yaml_round_trip_is_lossless(doc):
    text = dsl.to_yaml(doc)
    assert text.splitlines()[0] == 'dsl: "1.0"' or text.splitlines()[0] == "dsl: '1.0'"
    assert dsl.load(text) == doc


def test_version_check_on_import(doc):
    newer = dsl.to_yaml({**doc, "dsl": "1.7"})
    with pytest.raises(dsl.DSLVersionError, match=r"written for PageDSL 1.7; this ContextLab reads 1.0–1.0: upgrade"):
        dsl.load(newer)
    with pytest.raises(dsl.DSLVersionError, match="PageDSL 0.9"):
        dsl.load(dsl.to_yaml({**doc, "dsl": "0.9"}))
    missing = {k: v for k, v in doc.items() if k != "dsl"}
    with pytest.raises(dsl.DSLVersionError, match='add `dsl: "1.0"`'):
        dsl.check(missing)


def test_text_that_is_not_yaml_or_not_a_mapping():
    with pytest.raises(dsl.DSLValidationError, match="line"):
        dsl.load("dsl: [1.0\napp: {")
    with pytest.raises(dsl.DSLValidationError, match="mapping"):
        dsl.load("- just\n- a list\n")
