"""The MCP endpoint inside Jupyter: both protocol eras, auth, bad input, streaming, audit."""

from __future__ import annotations

import hashlib
import json
import uuid

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from contextlab.state import StateStore
from tests.conftest import PROTOCOL_MODES
from tests.support.server import error_text, mcp_session, structured, wait_for

BUILTIN_TOOLS = {
    "notebooks__list",
    "notebooks__read",
    "notebooks__search",
    "kernels__list",
    "kernels__variables",
    "kernels__describe",
    "sql__databases",
    "sql__schema",
    "sql__query",
    "logs__recent",
    "metrics__snapshot",
}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_both_protocol_eras_list_namespaced_tools(server, mode):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            assert client.protocol_version == PROTOCOL_MODES[mode]
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert BUILTIN_TOOLS <= set(tools)
            assert tools["sql__query"].annotations.read_only_hint is True
            assert tools["sql__schema"].output_schema["type"] == "object"
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert {"notebooks__explain", "sql__write_sql", "kernels__analyze_dataframe"} <= prompts
            templates = (await client.list_resource_templates()).resource_templates
            assert any(t.uri_template == "notebook://{+path}" for t in templates)

    anyio.run(go)


def test_notebook_resources_are_listed_and_readable(server, mode):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert "notebook://sales_overview.ipynb" in uris
            contents = (await client.read_resource("notebook://sales_overview.ipynb")).contents
            notebook = json.loads(contents[0].text)
            assert notebook["path"] == "sales_overview.ipynb"
            assert notebook["cells"][0]["source"].startswith("# Sales overview")

    anyio.run(go)


def test_notebook_and_log_prompts_embed_their_context(server, mode):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            explain = await client.get_prompt("notebooks__explain", {"path": "data_quality.ipynb"})
            diagnose = await client.get_prompt("logs__diagnose", {"minutes": "30"})
            return explain.messages[0].content.text, diagnose.messages[0].content.text

    explain, diagnose = anyio.run(go)
    assert "Notebook `data_quality.ipynb`" in explain and "orders without items" in explain
    assert "last 30 minutes" in diagnose


def test_prompt_embeds_the_live_schema(server, mode):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            prompt = await client.get_prompt("sql__write_sql", {"question": "top customers"})
            text = prompt.messages[0].content.text
            assert "main.orders(order_id INTEGER" in text
            assert "customer_id references customers(customer_id)" in text

    anyio.run(go)


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_requests_without_valid_jupyter_credentials_are_refused(server, token):
    headers = {"Authorization": f"token {token}"} if token else {}
    response = httpx.post(server.mcp_url, headers={**MCP_HEADERS, **headers}, json=INIT, timeout=10)
    assert response.status_code == 403
    assert "mcp-session-id" not in response.headers
    with pytest.raises(BaseExceptionGroup) as info:
        anyio.run(_list_tools_with_token, server.mcp_url, token)
    cause = info.value
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    assert isinstance(cause, MCPError)


async def _list_tools_with_token(url: str, token: str | None) -> None:
    async with mcp_session(url, token, "legacy") as client:
        await client.list_tools()


def test_token_in_authorization_bearer_form_is_accepted(server):
    response = httpx.post(
        server.mcp_url,
        headers={**MCP_HEADERS, "Authorization": f"Bearer {server.token}"},
        json=INIT,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["mcp-session-id"]


@pytest.mark.parametrize(
    ("body", "code", "phrase"),
    [
        (b"{not json", -32700, "not valid JSON"),
        (b'{"jsonrpc": "2.0", "id": 1}', -32600, '"method"'),
        (b"[]", -32600, "batches are not supported"),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}', -32600, '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}', -32600, '"params" must be'),
        (b"\xff\xfe", -32700, "not valid JSON"),
    ],
    ids=["not-json", "no-method", "batch", "wrong-version", "params-not-object", "not-utf8"],
)
def test_malformed_json_rpc_gets_a_precise_error_and_the_server_stays_healthy(server, body, code, phrase):
    response = httpx.post(server.mcp_url, headers={**MCP_HEADERS, **server.auth}, content=body, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert phrase in error["message"]
    anyio.run(_assert_healthy, server)


async def _assert_healthy(server) -> None:
    async with mcp_session(server.mcp_url, server.token) as client:
        assert structured(await client.call_tool("sql__databases", {}))["databases"][0]["name"] == "shop"


def test_oversized_payload_is_refused_with_413(server):
    big = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "sql__query", "arguments": {"sql": "SELECT '" + "x" * 70_000 + "'"}},
    }
    response = httpx.post(server.mcp_url, headers={**MCP_HEADERS, **server.auth}, json=big, timeout=10)
    assert response.status_code == 413
    assert "max_request_bytes" in response.json()["error"]["message"]
    anyio.run(_assert_healthy, server)


def test_unknown_tool_is_a_json_rpc_invalid_params_error(server, mode):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("sql__drop_everything", {})
            assert info.value.code == -32602
            assert "sql__drop_everything" in info.value.message
            assert structured(await client.call_tool("sql__databases", {}))  # the session survives

    anyio.run(go)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"sql": 42}, "sql"),
        ({}, "sql"),
        ({"sql": "SELECT 1", "limit": "many"}, "limit"),
        ({"sql": "SELECT 1", "limit": 0}, "limit"),
    ],
    ids=["wrong-type", "missing", "not-an-int", "below-minimum"],
)
def test_arguments_that_fail_the_schema_name_the_field(server, mode, arguments, field):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            text = error_text(await client.call_tool("sql__query", arguments))
            assert field in text
            assert "validation error" in text

    anyio.run(go)


def test_progress_notifications_stream_before_the_call_finishes(server, mode):
    """The slow tool waits until the client has seen its progress event: a buffered response would hang."""
    marker = f"release-{uuid.uuid4().hex}"

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        (server.root / marker).touch()

    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            result = await client.call_tool("slow__wait", {"marker": marker}, progress_callback=on_progress)
            assert structured(result) == {"released": True}

    try:
        anyio.run(go)
    finally:
        (server.root / marker).unlink(missing_ok=True)


def test_every_call_is_audited_with_principal_tool_args_hash_latency_and_outcome(server, mode):
    marker = uuid.uuid4().hex
    calls = [
        ("sql__query", {"sql": f"SELECT '{marker}' AS m"}, "ok"),
        ("sql__query", {"sql": f"DELETE FROM orders -- {marker}"}, "tool_error"),
        ("notebooks__search", {"query": marker}, "ok"),
    ]

    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            for name, arguments, _ in calls:
                await client.call_tool(name, arguments)

    anyio.run(go)
    store = StateStore(f"sqlite:///{server.state_db}")
    try:
        expected = {hashlib.sha256(json.dumps(a, sort_keys=True).encode()).hexdigest(): (n, o) for n, a, o in calls}

        def rows():
            found = [r for r in store.audit(method="tools/call", limit=500) if r["args_sha256"] in expected]
            return found if len(found) == len(calls) else None

        audited = wait_for(rows)
        assert audited, "not every call has an audit row"
        for row in audited:
            name, outcome = expected[row["args_sha256"]]
            assert row["target"] == name
            assert row["outcome"] == outcome
            assert row["principal"]  # Jupyter's user name for the token
            assert row["latency_ms"] > 0  # the latency was recorded; no time budget is asserted
            assert row["protocol_version"] == PROTOCOL_MODES[mode]
        refused = next(r for r in audited if r["outcome"] == "tool_error")
        assert "read-only" in refused["error"]
    finally:
        store.close()


def test_state_survives_bad_input(server):
    """After every kind of refused request, the database is unchanged and the endpoint answers."""

    async def go():
        async with mcp_session(server.mcp_url, server.token) as client:
            count = structured(await client.call_tool("sql__query", {"sql": "SELECT count(*) FROM orders"}))
            for sql in ["DELETE FROM orders", "DROP TABLE orders", "COPY orders TO 'out.csv'"]:
                error_text(await client.call_tool("sql__query", {"sql": sql}))
            again = structured(await client.call_tool("sql__query", {"sql": "SELECT count(*) FROM orders"}))
            assert again["rows"] == count["rows"] == [[3000]]

    anyio.run(go)
    assert not (server.root / "out.csv").exists()


@pytest.mark.parametrize(
    ("path", "phrase"),
    [
        ("../../etc/passwd.ipynb", "outside the server root"),
        ("/etc/passwd", "Absolute paths are not allowed"),
        (".contextlab/state.db", "Hidden files"),
    ],
)
def test_notebook_paths_outside_the_root_are_refused_through_the_endpoint(server, path, phrase):
    async def go():
        async with mcp_session(server.mcp_url, server.token) as client:
            assert phrase in error_text(await client.call_tool("notebooks__read", {"path": path}))
            with pytest.raises(MCPError):
                await client.read_resource(f"notebook://{path}")

    anyio.run(go)


def test_status_api_reports_version_and_the_tools_tools_list_serves(server):
    status = server.api("GET", "contextlab/api/status").json()
    assert status["mcp_path"] == "/contextlab/mcp"

    async def go():
        async with mcp_session(server.mcp_url, server.token) as client:
            return {t.name for t in (await client.list_tools()).tools}

    listed = anyio.run(go)
    assert {t for p in status["providers"] for t in p["tools"]} | set(status["meta_tools"]) == listed
    assert status["meta_tools"] == ["search_tools"]
    assert status["tool_count"] == len(listed)
    assert httpx.get(f"{server.url}contextlab/api/status", timeout=10).status_code == 403


def test_a_client_that_leaves_mid_stream_does_not_hurt_the_server(server, mode):
    """The bridge must unblock the SDK when the HTTP client goes away during an SSE response."""
    marker = f"never-{uuid.uuid4().hex}"
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async def abandon():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            with anyio.move_on_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        lambda: client.call_tool("slow__wait", {"marker": marker}, progress_callback=on_progress)
                    )
                    await started.wait()
                    tg.cancel_scope.cancel()  # drop the call while its stream is open

    anyio.run(abandon)
    assert started.is_set()
    for _ in range(3):
        anyio.run(_assert_healthy, server)
