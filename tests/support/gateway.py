"""Helpers for gateway tests: upstream servers, API tokens, tool listings."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import httpx

from contextlab.extension.gateway import Gateway
from contextlab.extension.principals import Caller, ToolTarget
from tests.support.server import REPO, JupyterServer, mcp_session


def start_upstream(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream_server", "http", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("upstream did not start")


def stdio(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def create_token(server: JupyterServer, name: str, scopes: list[str], **attributes) -> str:
    body = {"name": name, "scopes": scopes, "expires": "1h", "attributes": attributes or {"roles": ["Viewer"]}}
    response = server.api("POST", "contextlab/api/tokens", json=body)
    assert response.status_code == 201, response.text
    return response.json()["token"]


async def tool_names(server: JupyterServer, token: str, mode: str) -> set[str]:
    async with mcp_session(server.mcp_url, token, mode) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


class HideEchoGateway(Gateway):
    """A gateway subclass swapped in through `ContextLab.gateway_class`: it hides every `*__echo` tool."""

    def may_list(self, caller: Caller, target: ToolTarget) -> bool:
        return not target.name.endswith("__echo") and super().may_list(caller, target)


def local_upstream(name: str, **attributes) -> dict:
    """A registry entry for the test upstream server over stdio."""
    entry = {
        "name": name,
        "transport": "stdio",
        "command": stdio("tests.support.upstream_server", "stdio"),
        "cwd": str(REPO),
    }
    if attributes:
        entry["attributes"] = attributes
    return entry


def write_manifest(path, servers: list[dict]):
    """A registry manifest file for `ContextLab.registry_manifests`."""
    path.write_text(json.dumps({"version": 1, "servers": servers}))
    return path


def listed_names(server) -> set[str]:
    """Tool names the server lists to its Jupyter token (a blocking helper for sync tests)."""
    return anyio.run(tool_names, server, server.token, "auto")


def call_tool(server, tool: str, arguments: dict):
    """Call a tool as the Jupyter token's user and return the raw result (a blocking helper)."""

    async def run():
        async with mcp_session(server.mcp_url, server.token) as client:
            return await client.call_tool(tool, arguments)

    return anyio.run(run)
