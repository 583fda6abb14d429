"""Run cells in a kernel of the test server the way JupyterLab does: over the kernel's websocket."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import websocket

from tests.support.server import JupyterServer


class KernelSession:
    """A notebook session with a running kernel, started through Jupyter's REST API."""

    def __init__(self, server: JupyterServer, notebook: str, kernel: str = "python3") -> None:
        self.server = server
        response = server.api(
            "POST",
            "api/sessions",
            json={
                "path": notebook,
                "type": "notebook",
                "name": notebook,
                "kernel": {"name": kernel},
            },
        )
        response.raise_for_status()
        self.session_id = response.json()["id"]
        self.kernel_id = response.json()["kernel"]["id"]
        ws_url = server.url.replace("http://", "ws://") + f"api/kernels/{self.kernel_id}/channels"
        self.client_session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            f"{ws_url}?session_id={self.client_session}",
            header=[f"Authorization: token {server.token}"],
            timeout=60,
        )

    def execute(self, code: str, timeout: float = 60) -> dict[str, Any]:
        """Run `code` like a notebook cell; return the execute_reply content plus collected stdout."""
        return self.wait_reply(self.send_execute(code), timeout)

    def send_execute(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "session": self.client_session,
                        "username": "test",
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        return msg_id

    def wait_reply(self, msg_id: str, timeout: float = 60) -> dict[str, Any]:
        """Wait for the execute_reply and for the kernel to go idle (stream output may come after the reply)."""
        deadline = time.monotonic() + timeout
        stdout: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        while time.monotonic() < deadline and not (reply is not None and idle):
            message = json.loads(self.ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                stdout.append(message["content"]["text"])
            elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                idle = True
            elif message["channel"] == "shell" and message["msg_type"] == "execute_reply":
                reply = message["content"]
        if reply is None or not idle:
            raise TimeoutError(f"no complete execute_reply for {msg_id}")
        return {**reply, "stdout": "".join(stdout)}

    def close(self) -> None:
        self.ws.close()
        self.server.api("DELETE", f"api/sessions/{self.session_id}")
