"""The Copilot engine end to end: a real ContextLab server on the demo workspace supplies the schema and
runs the validation query; the model is a local OpenAI-compatible server with scripted replies."""

from __future__ import annotations

import sqlite3

import pytest

from contextlab.copilot.context import ContextClient, ContextUnavailable, Endpoint
from contextlab.copilot.engine import ContextItem, Copilot, CopilotError
from contextlab.copilot.llm import LLMError, LLMRouter, MemoryUsage, ModelSpec, PolicyRefused
from contextlab.workspace import create_demo_workspace
from tests.support.fake_llm import FakeLLM
from tests.support.server import free_port, start_server

GOOD = (
    "```sql\nSELECT c.name, count(*) AS orders FROM customers c JOIN orders o USING (customer_id) "
    "GROUP BY 1 ORDER BY 2 DESC LIMIT 5\n```"
)
BAD_COLUMN = "```sql\nSELECT name, total_revenue FROM customers ORDER BY total_revenue DESC LIMIT 5\n```"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("copilot-root")
    home = tmp_path_factory.mktemp("copilot-home")
    create_demo_workspace(root)
    server = start_server(root, home, extra_args=["--ContextLab.providers=sql"])
    yield server
    server.stop()


def copilot(srv, llm: FakeLLM, usage: MemoryUsage | None = None, locality: str = "public", **kwargs) -> Copilot:
    router = LLMRouter(
        [
            ModelSpec(
                name="scripted", backend="openai", model="m", base_url=llm.base_url, timeout_s=10, locality=locality
            )
        ],
        usage=usage or MemoryUsage(),
    )
    return Copilot(router, ContextClient(Endpoint(srv.mcp_url, srv.token)), user="ada", **kwargs)


def test_sql_is_grounded_in_the_schema_and_validated_by_running_it(srv):
    with FakeLLM([GOOD]) as llm:
        pieces = []
        suggestion = copilot(srv, llm).generate("sql", "top 5 customers by order count", on_token=pieces.append)
    assert suggestion.valid and not suggestion.repaired
    assert suggestion.code.startswith("SELECT c.name") and "".join(pieces) == GOOD
    assert [c["name"] for c in suggestion.validation["columns"]] == ["name", "orders"]
    assert len(suggestion.validation["rows"]) == 5
    system = llm.requests[0]["messages"][0]["content"]
    assert "customers(customer_id INTEGER" in system and "orders(order_id" in system
    assert llm.requests[0]["messages"][1] == {"role": "user", "content": "top 5 customers by order count"}
    provenance = suggestion.provenance()
    assert provenance["model"] == "scripted" and provenance["prompt_version"] == "copilot.sql@builtin"
    assert provenance["context"] == [{"source": "sql__schema", "title": "Database schema"}]


def test_a_failing_query_is_repaired_with_the_error_fed_back(srv):
    with FakeLLM([BAD_COLUMN, GOOD]) as llm:
        suggestion = copilot(srv, llm).generate("sql", "top 5 customers by revenue")
    assert suggestion.valid and suggestion.repaired and len(suggestion.attempts) == 2
    assert not suggestion.attempts[0].ok and "total_revenue" in suggestion.attempts[0].error
    feedback = llm.requests[1]["messages"]
    assert feedback[-2] == {"role": "assistant", "content": BAD_COLUMN}
    assert "That failed:" in feedback[-1]["content"] and "total_revenue" in feedback[-1]["content"]


def test_a_write_is_refused_and_repairs_are_bounded(srv):
    with FakeLLM(["```sql\nDELETE FROM customers\n```"]) as llm:
        suggestion = copilot(srv, llm, max_repairs=2).generate("sql", "remove all customers")
    assert not suggestion.valid and len(suggestion.attempts) == 3 and len(llm.requests) == 3
    assert "read-only" in suggestion.validation["error"]
    db = srv.root / "data" / "shop.duckdb"
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customers").fetchone()[0] > 0


def test_garbage_from_the_model_ends_invalid_with_a_reason(srv):
    with FakeLLM(["I am a teapot and cannot help with that."]) as llm:
        suggestion = copilot(srv, llm, max_repairs=1).generate("sql", "top customers")
    assert not suggestion.valid and len(suggestion.attempts) == 2
    assert "does not parse" in suggestion.validation["error"] or "read-only" in suggestion.validation["error"]


def test_without_context_the_model_sees_only_the_question(srv):
    with FakeLLM([GOOD]) as llm:
        suggestion = copilot(srv, llm).generate("sql", "top customers", use_context=False)
    assert suggestion.context == [] and "customers(" not in llm.requests[0]["messages"][0]["content"]
    assert suggestion.valid  # still validated against the real database


def test_extra_context_items_reach_the_prompt(srv):
    with FakeLLM([GOOD]) as llm:
        copilot(srv, llm).generate(
            "sql", "top customers", extra_context=[ContextItem("kernel", "DataFrame df", "df: 3 rows x 2 cols")]
        )
    assert "## DataFrame df\ndf: 3 rows x 2 cols" in llm.requests[0]["messages"][0]["content"]


@pytest.mark.parametrize(
    ("target", "request_text", "error"),
    [
        ("poem", "roses", "Unknown target 'poem'. Targets: alert, api, er, flow, page, python, sql, test"),
        ("sql", "   ", "Write what you need below"),
    ],
)
def test_bad_requests_are_refused_before_any_model_call(srv, target, request_text, error):
    with FakeLLM([GOOD]) as llm:
        with pytest.raises(CopilotError, match=error):
            copilot(srv, llm).generate(target, request_text)
    assert llm.requests == []


def test_a_dead_model_endpoint_and_a_forbidding_policy_give_clear_errors(srv):
    router = LLMRouter(
        [ModelSpec(name="gone", backend="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1")]
    )
    engine = Copilot(router, ContextClient(Endpoint(srv.mcp_url, srv.token)))
    with pytest.raises(LLMError, match="Every model failed: gone: APIConnectionError"):
        engine.generate("sql", "top customers")
    with pytest.raises(PolicyRefused, match="public models may not receive secret context"):
        engine.generate("sql", "top customers", sensitivity="secret")


def test_no_reachable_server_says_what_to_do(monkeypatch):
    with FakeLLM([GOOD]) as llm:
        router = LLMRouter([ModelSpec(name="m", backend="openai", model="m", base_url=llm.base_url)])
        engine = Copilot(router, ContextClient(Endpoint(f"http://127.0.0.1:{free_port()}/contextlab/mcp"), timeout=5))
        with pytest.raises(ContextUnavailable, match="Cannot reach the ContextLab endpoint.*contextlab up"):
            engine.generate("sql", "top customers")
    monkeypatch.delenv("CONTEXTLAB_MCP_URL", raising=False)
    with pytest.raises(ContextUnavailable, match="set CONTEXTLAB_MCP_URL"):
        Endpoint.from_env()


def test_the_copilot_goes_through_the_gateway_and_is_audited(srv):
    with FakeLLM([GOOD]) as llm:
        copilot(srv, llm).generate("sql", "top customers")
    srv.api("GET", "contextlab/api/audit", params={"flush": 1})
    with sqlite3.connect(srv.state_db) as db:
        targets = {row[0] for row in db.execute("SELECT target FROM audit_log WHERE method = 'tools/call'")}
    assert {"sql__schema", "sql__query"} <= targets


def test_a_managed_template_version_is_used_and_recorded(srv):
    from contextlab.copilot.engine import server_templates

    custom = (
        "Answer in DuckDB SQL inside a ```sql block. TEAM RULE: always alias aggregates.\n"
        "{% for item in context %}{{ item.text }}{% endfor %}"
    )
    created = srv.api(
        "POST", "contextlab/api/prompts/copilot.sql/versions", json={"description": custom, "message": "team rule"}
    )
    assert created.status_code == 201, created.text
    assert srv.api("GET", "contextlab/api/prompts/copilot.sql").json()["versions"][0]["kind"] == "template"
    try:
        with FakeLLM([GOOD]) as llm:
            endpoint = Endpoint(srv.mcp_url, srv.token)
            suggestion = copilot(srv, llm, templates=server_templates(endpoint)).generate("sql", "top customers")
        assert suggestion.prompt_version == "copilot.sql@v2"
        assert llm.requests[0]["messages"][0]["content"].startswith("Answer in DuckDB SQL inside a ```sql block. TEAM")
        broken = srv.api("POST", "contextlab/api/prompts/copilot.sql/versions", json={"description": "{% for x in %}"})
        assert broken.status_code == 201
        with FakeLLM([GOOD]) as llm, pytest.raises(CopilotError, match=r"copilot.sql@v3 does not render.*rollback"):
            copilot(srv, llm, templates=server_templates(endpoint)).generate("sql", "top customers")
        assert llm.requests == []
    finally:
        srv.api("POST", "contextlab/api/prompts/copilot.sql/rollback", json={"to": 1})


RECIPE = """
name: analyst
budget_tokens: {budget}
steps:
  - tool: sql__schema
    title: Database schema
    priority: 1
    when: {{target: [sql]}}
  - source: kernel
    priority: 2
    top_k: 1
  - tool: sql__query
    arguments: {{sql: "SELECT name FROM products ORDER BY product_id LIMIT 3"}}
    title: Product names
    priority: 3
    unless: {{sensitivity: [confidential, secret]}}
  - tool: docs__search
    arguments: {{query: "{{{{ request }}}}"}}
    priority: 4
"""


def test_a_recipe_orders_conditions_and_trims_context_to_its_budget(srv):
    from contextlab.copilot.recipes import ContextRecipe

    frames = [ContextItem("kernel", "DataFrame df", "df: 3 rows"), ContextItem("kernel", "DataFrame other", "x")]
    with FakeLLM([GOOD]) as llm:
        roomy = ContextRecipe.parse(RECIPE.format(budget=5000))
        suggestion = copilot(srv, llm).generate("sql", "top products", recipe=roomy, extra_context=frames)
    assert [c["title"] for c in suggestion.context] == ["Database schema", "DataFrame df", "Product names"]
    assert any(s.startswith("docs__search: ") for s in suggestion.context_skipped)
    assert suggestion.context_dropped == []
    with FakeLLM([GOOD]) as llm:
        tight = ContextRecipe.parse(RECIPE.format(budget=120))
        suggestion = copilot(srv, llm, locality="private").generate(
            "sql", "top products", recipe=tight, extra_context=frames, sensitivity="confidential"
        )
    titles = [c["title"] for c in suggestion.context]
    assert "Product names" not in titles and any(
        "sql__query: condition not met" in s for s in suggestion.context_skipped
    )
    assert titles == ["DataFrame df"] and suggestion.context_dropped[0].startswith(
        "Database schema (sql__schema, priority 1"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: [{tool: a, source: kernel}]", "either `tool`"),
        ("steps: [{tool: a, colour: red}]", "steps.0.colour: Extra inputs are not permitted"),
        ("budget_tokens: 0\nsteps: []", "budget_tokens"),
        ("steps: [{tool: a", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_field(text, message):
    from contextlab.copilot.recipes import ContextRecipe, RecipeError

    with pytest.raises(RecipeError, match=message):
        ContextRecipe.parse(text, "team.yaml")


def test_the_model_may_call_gateway_tools_within_a_step_budget(srv):
    def reply(body):
        roles = [m["role"] for m in body["messages"]]
        if "tool" not in roles:
            return {"tool_calls": [{"name": "sql__query", "arguments": {"sql": "SELECT DISTINCT status FROM orders"}}]}
        return GOOD

    with FakeLLM(reply) as llm:
        suggestion = copilot(srv, llm).generate("sql", "orders by status", tool_steps=2)
    assert suggestion.valid and suggestion.tool_calls == [
        {"name": "sql__query", "arguments": {"sql": "SELECT DISTINCT status FROM orders"}, "ok": True}
    ]
    offered = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert "sql__query" in offered and len(offered) <= 8
    tool_message = next(m for m in llm.requests[1]["messages"] if m["role"] == "tool")
    assert "rows" in tool_message["content"] and tool_message["tool_call_id"] == "call_0"
    srv.api("GET", "contextlab/api/audit", params={"flush": 1})
    with sqlite3.connect(srv.state_db) as db:
        assert db.execute("SELECT count(*) FROM audit_log WHERE target = 'search_tools'").fetchone()[0] >= 1


def test_tool_steps_are_bounded_and_unoffered_tools_are_refused(srv):
    with FakeLLM([{"tool_calls": [{"name": "made_up__tool", "arguments": {}}]}, GOOD]) as llm:
        suggestion = copilot(srv, llm).generate("sql", "top customers", tool_steps=1)
    assert suggestion.tool_calls == [{"name": "made_up__tool", "arguments": {}, "ok": False}]
    assert "tools" not in llm.requests[1]  # the last step offers no tools: the model must answer
    assert "not one of the offered tools" in llm.requests[1]["messages"][-1]["content"]


def test_sql_that_does_not_even_tokenize_is_a_validation_error_not_a_crash(srv):
    with FakeLLM(["```sql\nSELECT 'unterminated FROM customers\n```"]) as llm:
        suggestion = copilot(srv, llm, max_repairs=0).generate("sql", "top customers")
    assert not suggestion.valid and "does not parse" in suggestion.validation["error"]
