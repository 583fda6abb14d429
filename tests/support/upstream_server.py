"""A small upstream MCP server written with the SDK, served over stdio or streamable HTTP.

python -m tests.support.upstream_server stdio
python -m tests.support.upstream_server http PORT [--legacy-only]
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel

server = MCPServer("upstream-demo", instructions="A demo upstream for gateway tests.")
_counter = {"n": 0}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
def reverse(text: str) -> str:
    """Return the text backwards (a reversed email no longer looks like one)."""
    return text[::-1]


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def increment() -> int:
    """Increment a counter kept by this server process and return it (not idempotent)."""
    _counter["n"] += 1
    return _counter["n"]


class Card(BaseModel):
    id: int
    email: str
    phone: str
    card: str
    note: str


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def customer_card(customer_id: int) -> Card:
    """Look up a customer's contact card."""
    return Card(
        id=customer_id,
        email=f"jane.doe{customer_id}@example.com",
        phone="+1 415-555-0134",
        card="4111 1111 1111 1111",
        note="prefers email",
    )


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    """Kill this server process."""
    os._exit(3)


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.prompt()
def greet(name: str) -> str:
    """Greet someone."""
    return f"Hello {name}, nice to meet you."


@server.resource("memo://readme", mime_type="text/plain")
def readme() -> str:
    """A short readme."""
    return "The upstream readme."


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "stdio":
        server.run("stdio")
        return
    import uvicorn

    port = int(sys.argv[2])
    app = server.streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
