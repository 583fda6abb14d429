"""How MCP clients connect to a running ContextLab server: URLs and ready-to-paste configuration."""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.utils import url_path_join

import contextlab


def mcp_url(server_url: str) -> str:
    """The MCP endpoint of a Jupyter server whose URL (with base_url) is `server_url`."""
    return url_path_join(server_url.rstrip("/") + "/", contextlab.MCP_PATH)


def client_configs(endpoint: str, token: str, name: str = "contextlab") -> dict[str, Any]:
    """Configuration for common MCP clients. Jupyter accepts `Authorization: token <token>`."""
    headers = {"Authorization": f"token {token}"} if token else {}
    remote_args = ["-y", "mcp-remote", endpoint]
    for key, value in headers.items():
        remote_args += ["--header", f"{key}: {value}"]
    return {
        "cursor": {"mcpServers": {name: {"url": endpoint, "headers": headers}}},
        "vscode": {"servers": {name: {"type": "http", "url": endpoint, "headers": headers}}},
        "claude_desktop": {"mcpServers": {name: {"command": "npx", "args": remote_args}}},
    }


def python_snippet(endpoint: str, token: str) -> str:
    header = f'{{"Authorization": "token {token}"}}' if token else "{}"
    return f'''import asyncio

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main():
    async with httpx2.AsyncClient(headers={header}) as http:
        async with Client(streamable_http_client("{endpoint}", http_client=http)) as client:
            tools = await client.list_tools()
            print([tool.name for tool in tools.tools])
            print(await client.call_tool("sql__schema", {{}}))


asyncio.run(main())
'''


def connection_banner(server_url: str, token: str) -> str:
    """The text `contextlab up` prints once the server listens."""
    endpoint = mcp_url(server_url)
    lab = url_path_join(server_url.rstrip("/") + "/", "lab") + (f"?token={token}" if token else "")
    configs = client_configs(endpoint, token)
    lines = [
        "",
        "ContextLab is running.",
        f"  JupyterLab:   {lab}",
        f"  MCP endpoint: {endpoint}",
        "",
        "Cursor / VS Code-style clients (url + headers):",
        json.dumps(configs["cursor"], indent=2),
        "",
        "Claude Desktop (claude_desktop_config.json, through the mcp-remote bridge):",
        json.dumps(configs["claude_desktop"], indent=2),
        "",
        "Python (official mcp client):",
        python_snippet(endpoint, token),
    ]
    return "\n".join(lines)
