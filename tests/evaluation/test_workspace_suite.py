"""The workspace suite (a real server's tools + YAML cases), variants read from the prompts API,
and explicit promotion through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from contextlab.copilot.context import Endpoint
from contextlab.copilot.llm import ModelSpec
from contextlab.evaluation.suite import SuiteFormatError
from contextlab.evaluation.tool_choice import evaluate, promote, propose, variants_from_server
from contextlab.evaluation.workspace_suite import load_workspace_suite, server_tools
from tests.support.fake_llm import FakeLLM

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
"""


@pytest.fixture(scope="module")
def tools(server):
    return server_tools(Endpoint(server.mcp_url, server.token))


def test_suite_from_server_tools_and_yaml(tools, tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    suite = load_workspace_suite(path, tools)
    assert suite.name == "shop-tools" and [c.id for c in suite.cases] == ["schema", "databases", "weather"]
    assert {t["name"] for t in suite.cases[0].tools} == {t["name"] for t in tools}
    assert suite.cases[0].accepted[0].arguments == {"database": ["shop", ""]}
    assert suite.cases[2].accepted == [] and suite.cases[2].category == "workspace_irrelevance"


def test_the_shipped_example_cases_load(tools) -> None:
    shipped = Path(__file__).resolve().parents[2] / "evaluation" / "suites" / "workspace_cases.yaml"
    suite = load_workspace_suite(shipped, tools)
    assert len(suite.cases) >= 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cases: [\n  - {id: a\n", "is not valid YAML"),
        ("name: x\n", "needs a non-empty `cases:` list"),
        ("cases:\n  - {question: q, call: {name: nope__tool}}\n", "names 'nope__tool', which the server does not list"),
        ("cases:\n  - {question: q, call: {name: sql__schema, arguments: {colour: red}}}\n", "no parameter 'colour'"),
        ("cases:\n  - {question: '', call: none}\n", "needs a non-empty `question`"),
        ("cases:\n  - {id: a, question: q, call: none}\n  - {id: a, question: r, call: none}\n", "duplicate id 'a'"),
        ("cases:\n  - {question: q}\n", "needs `call:`"),
    ],
)
def test_malformed_yaml_is_named_precisely(tools, tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteFormatError, match=message):
        load_workspace_suite(path, tools)


def test_variants_from_labels_and_explicit_promotion(server, tools, tmp_path: Path) -> None:
    tool = "sql__databases"
    created = server.api(
        "POST",
        f"contextlab/api/prompts/{tool}/versions",
        json={"description": "CLEAR: list every DuckDB database name.", "promote": False, "labels": ["candidate"]},
    )
    assert created.status_code == 201, created.text
    new_version = created.json()["version"]
    variants, versions = variants_from_server(server.url, server.token, ["stable", "candidate"])
    assert variants["candidate"][tool] == "CLEAR: list every DuckDB database name."
    assert variants["stable"][tool] != variants["candidate"][tool]
    assert versions["candidate"][tool] == new_version

    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    suite = load_workspace_suite(path, tools)

    def reply(body: dict):  # right only when the tool text is the candidate's
        offered = {t["function"]["name"]: t["function"]["description"] for t in body.get("tools", [])}
        if "weather" in body["messages"][-1]["content"]:
            return "No tool fits."
        if "CLEAR" in offered.get(tool, ""):
            question = body["messages"][-1]["content"]
            name = "sql__schema" if "tables" in question else tool
            return {"tool_calls": [{"name": name, "arguments": {}}]}
        return {"tool_calls": [{"name": "logs__recent", "arguments": {}}]}

    with FakeLLM(reply) as llm:
        model = ModelSpec(name="scripted", backend="openai", model="m", base_url=llm.base_url, api_key_env="HOME")
        results = evaluate(suite.cases, variants, [model], progress=False)
    proposal = propose(results, current="stable", min_cases=3)
    assert proposal["promote"] == "candidate"
    stable_before = next(
        label["version"]
        for label in server.api("GET", f"contextlab/api/prompts/{tool}").json()["labels"]
        if label["label"] == "stable"
    )
    assert stable_before != new_version  # evaluating promoted nothing
    moved = promote(proposal, server_url=server.url, token=server.token, versions=versions["candidate"])
    assert moved == [{"tool": tool, "label": "stable", "version": new_version}]
    labels = {lb["label"]: lb["version"] for lb in server.api("GET", f"contextlab/api/prompts/{tool}").json()["labels"]}
    assert labels["stable"] == new_version
    with pytest.raises(ValueError, match="nothing to promote"):
        promote({"promote": None, "reason": "no gain"}, server_url=server.url, token=server.token, versions={})
    # Leave the session server as it was.
    server.api("POST", f"contextlab/api/prompts/{tool}/rollback", json={"label": "stable"})
