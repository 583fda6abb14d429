"""The workspace suite (a real server's tools + YAML cases), variants read from the prompts REST API,
and explicit promotion through it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from contextlab.copilot.context import Endpoint
from contextlab.copilot.llm import ModelSpec
from contextlab.evaluation.ast_checker import check_calls, reference_calls
from contextlab.evaluation.suite import SuiteFormatError
from contextlab.evaluation.tool_choice import evaluate, promote, propose, results_frame, variants_from_server
from contextlab.evaluation.workspace_suite import load_workspace_suite, server_tools, workspace_suite_from_server
from tests.support.fake_llm import FakeLLM

SHIPPED = Path(__file__).resolve().parents[2] / "evaluation" / "suites" / "workspace_cases.yaml"
CASES = """
name: shop-tools
cases:
  - id: schema
    question: Which tables and columns does the shop database have?
    call: {name: sql__schema, arguments: {database: [shop, ""]}}
  - id: databases
    question: Which databases can I query?
    call: {name: sql__databases}
  - id: weather
    question: What will the weather be in Paris tomorrow?
    call: none
  - question: List the databases and the running kernels.
    tools: [sql__databases, kernels__list, logs__recent]
    calls:
      - {name: sql__databases}
      - {name: kernels__list}
"""


@pytest.fixture(scope="module")
def tools(server):
    return server_tools(Endpoint(server.mcp_url, server.token))


def test_suite_from_server_tools_and_yaml(server, tools, tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    suite = workspace_suite_from_server(path, server_url=server.url, token=server.token)
    assert suite.name == "shop-tools" and [c.id for c in suite.cases] == ["schema", "databases", "weather", "case-4"]
    assert {t["name"] for t in suite.cases[0].tools} == {t["name"] for t in tools}
    assert suite.cases[0].accepted[0].arguments == {"database": ["shop", ""]}
    assert suite.cases[1].accepted[0].arguments == {}
    assert suite.cases[2].accepted == [] and suite.cases[2].category == "workspace_irrelevance"
    parallel = suite.cases[3]
    assert [t["name"] for t in parallel.tools] == ["sql__databases", "kernels__list", "logs__recent"]
    assert parallel.category == "workspace_parallel" and [a.name for a in parallel.accepted] == [
        "sql__databases",
        "kernels__list",
    ]


def test_the_shipped_example_cases_load_and_can_be_answered(tools) -> None:
    suite = load_workspace_suite(SHIPPED, tools)
    assert len(suite.cases) >= 10 and sum(not c.accepted for c in suite.cases) >= 2
    called = {a.name for c in suite.cases for a in c.accepted}
    assert {"sql__schema", "sql__query", "notebooks__search", "kernels__list", "logs__recent"} <= called
    for case in suite.cases:
        if case.accepted:  # each case's own reference answer passes the checker
            assert check_calls(reference_calls(case), case).valid, case.id


@pytest.mark.parametrize(
    ("text", "message", "field", "line"),
    [
        ("cases: [\n  - {id: a\n", "is not valid YAML", "", 2),
        ("- question: q\n", "must be a mapping with a `cases:` list", "", 1),
        ("name: x\n", "needs a non-empty `cases:` list", "cases", 1),
        ("name: x\ncases: []\n", "needs a non-empty `cases:` list", "cases", 2),
        ("naem: x\ncases: []\n", "unknown key 'naem' (did you mean 'name'?)", "naem", 1),
        (
            "cases:\n  - question: q\n    call: {name: sql__schemas}\n",
            "names 'sql__schemas', which the server does not list (did you mean 'sql__schema'?)",
            "cases[0].call.name",
            3,
        ),
        (
            "cases:\n  - question: q\n    call:\n      name: sql__schema\n      arguments: {colour: red}\n",
            "sql__schema has no parameter 'colour' (its parameters: database)",
            "cases[0].call.arguments.colour",
            5,
        ),
        (
            "cases:\n  - question: q\n    call: {name: sql__query, arguments: {database: [shop]}}\n",
            "sql__query requires 'sql': list the accepted values",
            "cases[0].call.arguments",
            3,
        ),
        ("cases:\n  - {question: '', call: none}\n", "needs a non-empty `question`", "cases[0].question", 2),
        (
            "cases:\n  - {id: a, question: q, call: none}\n  - {id: a, question: r, call: none}\n",
            "duplicate id 'a' (first at cases[0])",
            "cases[1].id",
            3,
        ),
        ("cases:\n  - {question: q}\n", "needs `call:`", "cases[0]", 2),
        (
            "cases:\n  - {qestion: q, call: none}\n",
            "unknown key 'qestion' (did you mean 'question'?)",
            "cases[0].qestion",
            2,
        ),
        ("cases:\n  - {question: q, call: nothing}\n", "or `none`", "cases[0].call", 2),
        ("cases:\n  - {question: q, calls: []}\n", "write `call: none`", "cases[0].calls", 2),
        (
            "cases:\n  - question: q\n    call: none\n    calls: [{name: kernels__list}]\n",
            "not both",
            "cases[0].calls",
            4,
        ),
        (
            "cases:\n  - question: q\n    tools: [kernels__list, nope]\n    call: none\n",
            "names 'nope', which the server does not list",
            "cases[0].tools[1]",
            3,
        ),
        (
            "cases:\n  - question: q\n    tools: [kernels__list]\n    call: {name: sql__databases}\n",
            "sql__databases is not among the case's `tools:`",
            "cases[0].call.name",
            4,
        ),
        (
            "cases:\n  - question: q\n    calls:\n      - {name: kernels__list}\n"
            "      - {name: sql__query, args: {}}\n",
            "unknown key 'args' (did you mean 'arguments'?)",
            "cases[0].calls[1].args",
            5,
        ),
    ],
)
def test_malformed_yaml_is_named_precisely(
    tools, tmp_path: Path, text: str, message: str, field: str, line: int
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteFormatError) as caught:
        load_workspace_suite(path, tools)
    error = caught.value
    assert message in str(error) and (error.field, error.line, error.path) == (field, line, str(path))
    assert str(error).startswith(f"{path}:{line}: ")


def test_a_missing_file_is_reported(tools, tmp_path: Path) -> None:
    with pytest.raises(SuiteFormatError, match="cannot be read"):
        load_workspace_suite(tmp_path / "absent.yaml", tools)


def test_variants_from_labels_and_explicit_promotion(
    server, tools, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tool = "sql__databases"
    created = server.api(
        "POST",
        f"contextlab/api/prompts/{tool}/versions",
        json={
            "description": "CLEAR: list every DuckDB database name.",
            "message": "clearer wording",
            "promote": False,
            "labels": ["candidate"],
        },
    )
    assert created.status_code == 201, created.text
    new_version = created.json()["version"]
    try:
        variants, versions = variants_from_server(server.url, server.token, ["stable", "candidate"])
        assert variants["candidate"][tool]["description"] == "CLEAR: list every DuckDB database name."
        assert variants["stable"][tool]["description"] != variants["candidate"][tool]["description"]
        assert versions["candidate"] == {tool: new_version} and versions["stable"][tool] < new_version
        with caplog.at_level(logging.WARNING, logger="contextlab.evaluation.tool_choice"):
            nightly, _ = variants_from_server(server.url, server.token, ["stable", "nightly"])
        assert nightly["nightly"] == {} and "carries the label(s) ['nightly']" in caplog.text

        path = tmp_path / "cases.yaml"
        path.write_text(CASES)
        suite = load_workspace_suite(path, tools)

        def reply(body: dict):  # right only when the tool text is the candidate's
            offered = {t["function"]["name"]: t["function"]["description"] for t in body.get("tools", [])}
            question = body["messages"][-1]["content"]
            if "weather" in question:
                return "No tool fits."
            if "CLEAR" not in offered.get(tool, ""):
                return {"tool_calls": [{"name": "logs__recent", "arguments": {}}]}
            if "tables" in question:
                return {"tool_calls": [{"name": "sql__schema", "arguments": {}}]}
            if "kernels" in question:
                return {"tool_calls": [{"name": tool, "arguments": {}}, {"name": "kernels__list", "arguments": {}}]}
            return {"tool_calls": [{"name": tool, "arguments": {}}]}

        with FakeLLM(reply) as llm:
            model = ModelSpec(name="scripted", backend="openai", model="m", base_url=llm.base_url, timeout_s=20)
            results = evaluate(suite, variants, [model], progress=False)
        proposal = propose(results, current="stable", min_cases=3, versions=versions)
        assert proposal["promote"] == "candidate" and proposal["versions"] == {tool: new_version}
        stable_failures = {f["case_id"]: f for f in proposal["failures"]["stable"]}
        assert set(stable_failures) == {"schema", "databases", "case-4"}
        assert stable_failures["schema"]["error_type"] == "simple_function_checker:wrong_func_name"
        assert "'logs__recent'" in stable_failures["schema"]["reason"]
        assert results_frame(results)["suite"].unique().tolist() == ["shop-tools"]

        def stable_version() -> int:
            labels = server.api("GET", f"contextlab/api/prompts/{tool}").json()["labels"]
            return next(label["version"] for label in labels if label["label"] == "stable")

        assert stable_version() != new_version  # evaluating and proposing changed nothing
        with pytest.raises(ValueError, match="nothing to promote: no gain"):
            promote({"promote": None, "reason": "no gain"}, server_url=server.url, token=server.token)
        with pytest.raises(ValueError, match="carries no prompt versions"):
            promote({"promote": "short"}, server_url=server.url, token=server.token)
        with pytest.raises(ValueError, match=f"{tool} has no version 99"):
            promote(proposal, server_url=server.url, token=server.token, versions={tool: 99})
        assert stable_version() != new_version

        moved = promote(proposal, server_url=server.url, token=server.token)
        assert moved == [{"tool": tool, "label": "stable", "version": new_version}]
        assert stable_version() == new_version
        assert server_tools(Endpoint(server.mcp_url, server.token))  # the server still lists its tools
    finally:  # leave the session server as it was
        server.api("POST", f"contextlab/api/prompts/{tool}/rollback", json={"label": "stable"})
        server.api("DELETE", f"contextlab/api/prompts/{tool}/labels/candidate")
