"""The endpoint under a non-root base_url, as behind JupyterHub."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.support.server import mcp_session, start_server, structured


@pytest.fixture(scope="module")
def hub_server(demo_root, tmp_path_factory):
    srv = start_server(demo_root, tmp_path_factory.mktemp("hub-home"), base_url="/user/ada/")
    yield srv
    srv.stop()


def test_endpoint_lives_under_the_base_url(hub_server, mode):
    assert hub_server.mcp_url.endswith("/user/ada/contextlab/mcp")

    async def go():
        async with mcp_session(hub_server.mcp_url, hub_server.token, mode) as client:
            return structured(await client.call_tool("notebooks__list", {}))

    assert {n["path"] for n in anyio.run(go)["notebooks"]} == {"sales_overview.ipynb", "data_quality.ipynb"}
    root_level = httpx.post(
        f"http://127.0.0.1:{hub_server.port}/contextlab/mcp", headers=hub_server.auth, json={}, timeout=10
    )
    assert root_level.status_code == 404
