"""A real Jupyter server with ContextLab, started as a subprocess on a free port, and MCP helpers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class JupyterServer:
    root: Path
    port: int
    token: str
    base_url: str = "/"
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    @property
    def mcp_url(self) -> str:
        return f"{self.url}contextlab/mcp"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    @property
    def state_db(self) -> Path:
        return self.root / ".contextlab" / "state.db"

    def api(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=headers or self.auth, timeout=30, **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen | None, timeout: float = 20) -> None:
    """Terminate a child process, killing it if it does not exit within `timeout` seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def isolated_env(home: Path) -> dict[str, str]:
    """Environment for a subprocess server that cannot see the developer's Jupyter config or runtime."""
    env = dict(os.environ)
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR"):
        env.pop(key, None)
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "runtime").mkdir(parents=True, exist_ok=True)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_server(root: Path, home: Path, *, base_url: str = "/", extra_args: list[str] | None = None) -> JupyterServer:
    token = uuid.uuid4().hex
    server = JupyterServer(root=root, port=free_port(), token=token, base_url=base_url)
    server.env = isolated_env(home)
    server.env["JUPYTER_TOKEN"] = token
    server.log_path = home / f"server-{server.port}.log"
    args = [
        sys.executable,
        "-m",
        "jupyter_server",
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.port={server.port}",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.base_url={base_url}",
        "--ServerApp.jpserver_extensions={'contextlab.extension': True}",
        *(extra_args or []),
    ]
    log = server.log_path.open("wb")
    server.process = subprocess.Popen(args, cwd=root, env=server.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(server)
    except BaseException:
        server.stop()  # a server that never became ready must not outlive the test run
        raise
    return server


def wait_until_ready(server: JupyterServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process and server.process.poll() is not None:
            raise RuntimeError(f"Jupyter server exited early:\n{server.log_text()[-4000:]}")
        if "contextlab.extension | extension failed loading" in server.log_text():
            raise RuntimeError(f"ContextLab failed to load:\n{server.log_text()[-6000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if server.api("GET", "contextlab/api/status").status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Jupyter server did not become ready:\n{server.log_text()[-4000:]}")


@contextlib.asynccontextmanager
async def mcp_session(url: str, token: str | None, mode: str = "auto", **client_kwargs: Any) -> AsyncIterator[Client]:
    """The official MCP client over streamable HTTP, with a Jupyter token or a ContextLab API token (cl_…)."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}" if token.startswith("cl_") else f"token {token}"
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, **client_kwargs) as client:
            yield client


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, f"expected a tool error, got {result.structured_content}"
    return result.content[0].text


def wait_for(predicate: Any, timeout: float = 15, interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy (for effects that land asynchronously, like audit rows)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
