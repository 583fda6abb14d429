"""A local OpenAI-compatible chat endpoint with scripted replies, for testing the real `openai` client code.

`FakeLLM(replies)` serves `POST /v1/chat/completions` (streaming and not) on a free port in a thread.
Each request takes the next scripted reply (the last one repeats); a reply may be a string, or
`("status", 503)` for an HTTP error, `("sleep", seconds, text)` for a slow answer, or
`{"tool_calls": [{"name": ..., "arguments": {...}}]}` for a turn that calls tools. `replies` may
also be a callable that takes the request body (a dict) and returns such a reply, for answers that
depend on the question. Every request body is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tests.support.server import free_port


class FakeLLM:
    def __init__(self, replies: list[Any] | Callable[[dict[str, Any]], Any]) -> None:
        self.replies = replies if callable(replies) else list(replies)
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    async def _chat(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append(body)
        if callable(self.replies):
            reply = self.replies(body)
        else:
            reply = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        if isinstance(reply, tuple) and reply[0] == "status":
            return JSONResponse(
                {"error": {"message": "scripted failure", "type": "server_error"}}, status_code=reply[1]
            )
        if isinstance(reply, tuple) and reply[0] == "sleep":
            await asyncio.sleep(reply[1])
            reply = reply[2]
        if isinstance(reply, dict) and "tool_calls" in reply:
            return StreamingResponse(_tool_call_stream(body, reply["tool_calls"]), media_type="text/event-stream")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(reply.split()),
            "total_tokens": prompt_tokens + len(reply.split()),
        }
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                }
            )

        async def stream():
            words = reply.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                chunk = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            final = {
                "id": "cmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            yield f"data: {json.dumps(final)}\n\n"
            yield f"data: {json.dumps({**final, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def _messages(self, request: Request) -> Any:
        """Anthropic's Messages API, streamed as its server-sent events."""
        body = await request.json()
        self.requests.append(body)
        if callable(self.replies):
            reply = self.replies(body)
        else:
            reply = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        if isinstance(reply, tuple) and reply[0] == "status":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "scripted failure"}}
            return JSONResponse(error, status_code=reply[1])
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))

        def event(kind: str, data: dict[str, Any]) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

        async def stream():
            message = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
            }
            yield event("message_start", {"message": message})
            yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            for i, word in enumerate(reply.split(" ")):
                piece = word if i == 0 else " " + word
                yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
            yield event("content_block_stop", {"index": 0})
            yield event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(reply.split())},
                },
            )
            yield event("message_stop", {})

        return StreamingResponse(stream(), media_type="text/event-stream")


async def _tool_call_stream(body: dict[str, Any], calls: list[dict[str, Any]]):
    """A streamed assistant turn that only calls tools (`{"tool_calls": [{"name", "arguments"}]}` replies)."""
    for index, call in enumerate(calls):
        arguments = json.dumps(call.get("arguments", {}))
        for part, delta in enumerate((arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :])):
            function = {"arguments": delta} if part else {"name": call["name"], "arguments": delta}
            tool_call = {"index": index, "function": function, "type": "function"}
            if not part:
                tool_call["id"] = f"call_{index}"
            chunk = {
                "id": "cmpl-2",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": {"tool_calls": [tool_call]}, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
    final = {
        "id": "cmpl-2",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
    }
    yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"
