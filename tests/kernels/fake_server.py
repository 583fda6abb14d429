"""A stand-in ContextLab server for kernel tests: a real MCP endpoint and the Copilot REST contract.

`FakeContextLab(root)` serves, on a free port in a thread:

- `/contextlab/mcp`: an MCP server with the real SQL provider over the DuckDB files in `root`
  (tools `sql__schema`, `sql__query`, ...), so context and validation are real;
- `/contextlab/api/copilot/{models,suggestions,feedback,usage}` exactly as the server's contract says,
  keeping what was posted (`suggestions`, `feedback`, `usage`) and every request (`requests`).

`models` is the reply of `GET copilot/models` (None: 404, as a server without the endpoint);
`down = True` makes every REST call answer 503.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contextlab.copilot.llm import summarise
from contextlab.providers.sql import SQLProvider
from tests.support.server import free_port

FEEDBACK_KINDS = ("accepted", "rejected", "ran", "edited", "reverted")


class FakeContextLab:
    def __init__(self, root: Path | None = None, *, models: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.models = models
        self.down = False
        self.requests: list[dict[str, Any]] = []
        self.suggestions: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []
        self.usage: list[dict[str, Any]] = []
        mcp = MCPServer("fake-contextlab", log_level="WARNING")
        if root is not None:
            SQLProvider.discover(root).register(mcp, namespaced=True)
        app = mcp.streamable_http_app(streamable_http_path="/contextlab/mcp")
        app.router.routes.append(Route("/contextlab/api/copilot/{what}", self._copilot, methods=["GET", "POST"]))
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}contextlab/mcp"

    def reset(self) -> None:
        self.down = False
        for kept in (self.requests, self.suggestions, self.feedback, self.usage):
            kept.clear()

    def __enter__(self) -> FakeContextLab:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    async def _copilot(self, request: Request) -> JSONResponse:
        what = request.path_params["what"]
        body = await request.json() if request.method == "POST" else None
        self.requests.append(
            {
                "method": request.method,
                "what": what,
                "params": dict(request.query_params),
                "body": body,
                "authorization": request.headers.get("authorization"),
            }
        )
        if self.down:
            return JSONResponse({"error": "down for maintenance"}, status_code=503)
        if request.method == "GET" and what == "models":
            if self.models is None:
                return JSONResponse({"error": "not found"}, status_code=404)
            return JSONResponse(self.models)
        if request.method == "GET" and what == "usage":
            project = request.query_params.get("project")
            rows = [r for r in self.usage if project is None or r["project"] == project]
            spent = sum(r["cost"] for r in rows) if project is not None else None
            return JSONResponse({"summary": summarise(rows), "spent": spent})
        if request.method == "POST" and what == "suggestions":
            if not isinstance(body, dict) or not body.get("target"):
                return JSONResponse({"error": '"target" must be a non-empty string.'}, status_code=422)
            if any(s["id"] == body["id"] for s in self.suggestions):
                return JSONResponse({"error": "already recorded"}, status_code=409)
            self.suggestions.append(body)
            return JSONResponse({"id": body["id"]}, status_code=201)
        if request.method == "POST" and what == "feedback":
            if body.get("kind") not in FEEDBACK_KINDS:
                return JSONResponse({"error": '"kind" must be one of ...'}, status_code=422)
            if not any(s["id"] == body.get("suggestion_id") for s in self.suggestions):
                return JSONResponse({"error": f"No suggestion {body.get('suggestion_id')!r}"}, status_code=404)
            self.feedback.append(body)
            return JSONResponse({"id": len(self.feedback)}, status_code=201)
        if request.method == "POST" and what == "usage":
            records = body.get("records") if isinstance(body, dict) else None
            if not isinstance(records, list) or not records:
                return JSONResponse({"error": '"records" must be a non-empty list'}, status_code=422)
            self.usage.extend(records)
            return JSONResponse({"recorded": len(records)}, status_code=201)
        return JSONResponse({"error": "no such route"}, status_code=405)
