"""Top-k tool retrieval end to end: the `search_tools` meta-tool and the `top_k` listing mode on a
real Jupyter server with upstream MCP servers, under a policy that hides some tools from some callers."""

from __future__ import annotations

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.gateway import create_token, local_upstream, write_manifest
from tests.support.server import mcp_session, start_server, structured, wait_for

POLICY = """
version: 1
default: deny
rules:
  - name: admins
    effect: allow
    caller: {roles: [Owner, Admin]}
  - name: viewers-no-confidential
    effect: deny
    caller: {roles: [Viewer]}
    target: {sensitivity: {at_least: confidential}}
  - name: everyone-else
    effect: allow
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-root")
    home = tmp_path_factory.mktemp("search-home")
    (root / ".contextlab").mkdir()
    (root / ".contextlab" / "policy.yaml").write_text(POLICY)
    manifest = write_manifest(
        home / "upstreams.json",
        [
            local_upstream("local", sensitivity="internal"),
            local_upstream("vault", sensitivity="confidential"),
            {
                "name": "time",
                "transport": "stdio",
                "command": ["mcp-server-time", "--local-timezone", "UTC"],
                "attributes": {"sensitivity": "public"},
            },
        ],
    )
    server = start_server(
        root,
        home,
        extra_args=[
            "--ContextLab.providers=logs",
            f"--ContextLab.registry_manifests={manifest}",
            "--ContextLab.pinned_tools=logs__*",
            "--ContextLab.upstream_list_ttl_seconds=0.5",
        ],
    )
    server.viewer = create_token(server, "search-viewer", ["*"], roles=["Viewer"])
    yield server
    server.stop()


async def search(server, token: str, query: str, k: int = 5) -> dict:
    async with mcp_session(server.mcp_url, token, "auto") as client:
        return structured(await client.call_tool("search_tools", {"query": query, "k": k}))


def test_search_tools_finds_the_relevant_tool_across_servers(srv):
    found = anyio.run(search, srv, srv.token, "current time in Tokyo", 3)
    names = [t["name"] for t in found["tools"]]
    assert names[0] == "time__get_current_time", names
    assert found["tools"][0]["inputSchema"]["properties"]["timezone"]
    assert found["searched"] >= 10
    reverse = anyio.run(search, srv, srv.token, "reverse the characters of a string", 3)
    assert reverse["tools"][0]["name"] in {"local__reverse", "vault__reverse"}


def test_a_denied_tool_is_never_retrieved(srv):
    admin = anyio.run(search, srv, srv.token, "reverse the characters of a string", 10)
    assert "vault__reverse" in {t["name"] for t in admin["tools"]}
    viewer = anyio.run(search, srv, srv.viewer, "reverse the characters of a string", 10)
    names = {t["name"] for t in viewer["tools"]}
    assert names and not any(n.startswith("vault__") for n in names)
    assert "local__reverse" in names
    # k is still filled from the tools the viewer may see.
    assert len(viewer["tools"]) == 10
    assert viewer["searched"] < admin["searched"]


def test_top_k_listing_by_meta_and_by_url(srv):
    async def run():
        async with mcp_session(srv.mcp_url, srv.token, "auto") as client:
            full = (await client.list_tools()).tools
            top = await client.list_tools(
                meta={
                    "contextlab/filter": "top_k",
                    "contextlab/query": "convert time between timezones",
                    "contextlab/k": 2,
                },
                cache_mode="bypass",
            )
        async with mcp_session(srv.mcp_url + "?tools=top_k&k=2", srv.token, "legacy") as client:
            before = [t.name for t in (await client.list_tools()).tools]
            await client.call_tool("search_tools", {"query": "add two numbers", "k": 2})
            after = [t.name for t in (await client.list_tools(cache_mode="bypass")).tools]
        return full, [t.name for t in top.tools], before, after

    full, top, before, after = anyio.run(run)
    assert len(full) > 15
    assert top[0] == "search_tools" and "time__convert_time" in top
    assert any(n.startswith("logs__") for n in top)  # pinned essentials
    assert len(top) <= 2 + 1 + sum(n.startswith("logs__") for n in top)
    assert before[0] == "search_tools" and not any(n.endswith("__add") for n in before)
    assert any(n.endswith("__add") for n in after)  # the caller's latest search results are listed


def test_description_changes_and_new_servers_reach_the_index(srv):
    query = "count the vowels in a sentence"
    assert anyio.run(search, srv, srv.token, query, 1)["tools"][0]["name"] != "local__pid"
    response = srv.api(
        "POST",
        "contextlab/api/prompts/local__pid/versions",
        json={"description": "Count the vowels in a sentence and report the total."},
    )
    assert response.status_code == 201, response.text
    assert anyio.run(search, srv, srv.token, query, 1)["tools"][0]["name"] == "local__pid"
    spec = local_upstream("later")
    assert srv.api("POST", "contextlab/api/registry", json=spec).status_code == 201
    found = wait_for(
        lambda: (
            "later__reverse"
            in {t["name"] for t in anyio.run(search, srv, srv.token, "reverse the characters of a string", 10)["tools"]}
        ),
        timeout=20,
    )
    assert found


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"query": "   "}, "must describe the task"), ({"query": "x", "k": 0}, "k"), ({"query": "x", "k": "many"}, "k")],
)
def test_bad_search_arguments_get_a_clear_tool_error(srv, arguments, message):
    async def run():
        async with mcp_session(srv.mcp_url, srv.token, "legacy") as client:
            return await client.call_tool("search_tools", arguments)

    result = anyio.run(run)
    assert result.is_error and message in result.content[0].text


def test_an_unknown_listing_filter_is_rejected(srv):
    async def run():
        async with mcp_session(srv.mcp_url, srv.token, "legacy") as client:
            try:
                await client.list_tools(meta={"contextlab/filter": "everything"}, cache_mode="bypass")
            except MCPError as exc:
                return exc
            return None

    error = anyio.run(run)
    assert error is not None and "the only filter is 'top_k'" in str(error)
