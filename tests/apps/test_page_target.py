"""The Copilot `page` target: natural language → a PageDSL draft, validated and repaired through the engine."""

from __future__ import annotations

from pathlib import Path

from contextlab.apps import dsl
from contextlab.copilot.engine import Copilot
from contextlab.copilot.llm import LLMRouter, MemoryUsage, ModelSpec
from contextlab.copilot.targets import PageTarget
from tests.support.fake_llm import FakeLLM

EXAMPLE = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()


class Client:
    def __init__(self, results: dict) -> None:
        self.results = results
        self.calls: list[str] = []

    def list_tools(self) -> list[str]:
        return list(self.results)

    def call_tool(self, name: str, arguments: dict) -> dict:
        self.calls.append(name)
        return self.results[name]


def test_accepts_a_valid_app_and_describes_it():
    result = PageTarget().validate(EXAMPLE, None)
    assert result.ok, result.error
    assert result.detail == {
        "app": "expenses",
        "pages": ["/submit", "/review"],
        "tables": ["expenses"],
        "components": 8,
    }


def test_errors_carry_paths_and_lines():
    broken = EXAMPLE.replace("type: chart", "type: piechart").replace("FROM expenses GROUP", "FROM spend GROUP")
    result = PageTarget().validate(broken, None)
    assert not result.ok
    line = broken.splitlines().index("      - id: totals") + 2
    assert f"pages[1].components[3].type (line {line}): unknown component type 'piechart'" in result.error


def test_semantic_errors_after_a_valid_schema():
    result = PageTarget().validate(EXAMPLE.replace("FROM expenses GROUP", "FROM spend GROUP"), None)
    assert not result.ok and "table 'spend' does not exist in source 'main'" in result.error


def test_yaml_and_version_errors():
    assert "line" in PageTarget().validate("app: [", None).error
    assert "PageDSL 2.0" in PageTarget().validate(EXAMPLE.replace('dsl: "1.0"', 'dsl: "2.0"'), None).error


def test_gather_lists_existing_apps():
    client = Client({"apps__list": {"apps": [{"name": "tickets", "title": "Support", "tables": ["tickets"]}]}})
    items = PageTarget().gather(client)
    assert [i.source for i in items] == ["apps__list"] and "tickets: Support (tables: tickets)" in items[0].text


def test_generate_repairs_an_invalid_draft_through_a_real_http_model():
    broken = "```yaml\n" + EXAMPLE.replace("query: pending_total", "query: pending_count") + "\n```"
    fixed = "```yaml\n" + EXAMPLE + "\n```"
    with FakeLLM([broken, fixed]) as llm:
        router = LLMRouter(
            [ModelSpec(name="scripted", backend="openai", model="m", base_url=llm.base_url, timeout_s=10)],
            usage=MemoryUsage(),
        )
        suggestion = Copilot(router, None, max_tokens=2000).generate("page", "an expense approval app")
    assert suggestion.valid and suggestion.repaired and len(suggestion.attempts) == 2
    assert "unknown query 'pending_count'" in suggestion.attempts[0].error
    assert "unknown query 'pending_count'" in llm.requests[1]["messages"][-1]["content"]
    assert "PageDSL" in llm.requests[0]["messages"][0]["content"]
    assert dsl.load(suggestion.code)["app"]["name"] == "expenses"
