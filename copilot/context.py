"""The Copilot's view of the ContextLab MCP endpoint: a small blocking client for kernels and scripts.

Context flows through the gateway like any other client's: the kernel authenticates with the
connection details the server gave it (`CONTEXTLAB_MCP_URL` and `CONTEXTLAB_TOKEN`, or the
Jupyter token), so policy, DLP and audit apply to the Copilot too. Each call runs the official
`mcp` client on its own event loop in a worker thread, so it works inside a running kernel loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class ContextUnavailable(Exception):
    """The ContextLab endpoint cannot be reached or refused the request; the message says what to do."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None = None

    @classmethod
    def from_env(cls) -> Endpoint:
        """The endpoint a kernel was started with (or that the user exported)."""
        url = os.environ.get("CONTEXTLAB_MCP_URL")
        if not url:
            raise ContextUnavailable(
                "No ContextLab server is known to this kernel: start the kernel from a Jupyter server with "
                "the ContextLab extension (`contextlab up`), or set CONTEXTLAB_MCP_URL (and CONTEXTLAB_TOKEN)."
            )
        return cls(url, os.environ.get("CONTEXTLAB_TOKEN") or os.environ.get("JUPYTER_TOKEN") or None)


class ContextClient:
    """Blocking calls to the MCP endpoint: tools, structured results, errors as ContextUnavailable."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tool's structured result; a tool error raises ContextUnavailable with its text."""

        async def run(client: Any) -> dict[str, Any]:
            result = await client.call_tool(name, arguments)
            if result.is_error:
                text = result.content[0].text if result.content else "tool error"
                raise ToolFailed(text)
            return result.structured_content or {}

        return self._run(run)

    def list_tools(self) -> list[str]:
        async def run(client: Any) -> list[str]:
            return [tool.name for tool in (await client.list_tools()).tools]

        return self._run(run)

    def _run(self, body: Callable[[Any], Awaitable[T]]) -> T:
        outcome: dict[str, Any] = {}

        async def main() -> None:
            import httpx2
            from mcp import Client
            from mcp.client.streamable_http import streamable_http_client

            headers = {}
            token = self.endpoint.token
            if token:
                headers["Authorization"] = f"Bearer {token}" if token.startswith("cl_") else f"token {token}"
            with anyio.fail_after(self.timeout):
                async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(self.timeout)) as http:
                    async with Client(streamable_http_client(self.endpoint.url, http_client=http)) as client:
                        outcome["value"] = await body(client)

        def worker() -> None:
            try:
                anyio.run(main)
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=worker, name="contextlab-context", daemon=True)
        thread.start()
        thread.join(self.timeout + 5)
        if thread.is_alive():
            raise ContextUnavailable(f"The ContextLab endpoint at {self.endpoint.url} did not answer in time.")
        error = outcome.get("error")
        if error is not None:
            raise _explain(error, self.endpoint.url) from error
        return outcome["value"]


class ToolFailed(Exception):
    """A tool answered with an error (e.g. the SQL did not run)."""


def _explain(error: BaseException, url: str) -> Exception:
    from mcp.shared.exceptions import MCPError

    leaves = _leaves(error)
    for leaf in leaves:
        if isinstance(leaf, ToolFailed):
            return leaf
        if isinstance(leaf, MCPError):  # the server answered: unknown tool, forbidden, rate limited
            return ToolFailed(str(leaf))
    text = "; ".join(f"{type(e).__name__}: {e}" for e in leaves)
    return ContextUnavailable(
        f"Cannot reach the ContextLab endpoint at {url} ({text}). Is the server running (`contextlab up`)?"
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
