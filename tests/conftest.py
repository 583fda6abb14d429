from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contextlab.workspace import create_demo_workspace
from tests.support.server import JupyterServer, start_server

PROTOCOL_MODES = {"legacy": "2025-11-25", "auto": "2026-07-28"}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def server(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """One Jupyter server with ContextLab on the demo workspace, plus a slow provider for streaming tests."""
    srv = start_server(
        demo_root,
        tmp_path_factory.mktemp("jupyter-home"),
        extra_args=[
            *[f"--ContextLab.providers={name}" for name in ("notebooks", "kernels", "sql", "logs", "metrics", "slow")],
            "--ContextLab.provider_classes={'slow': 'tests.support.slow_provider.SlowProvider'}",
            "--ContextLab.max_request_bytes=65536",
            "--ContextLab.kernel_timeout_seconds=20",
        ],
    )
    yield srv
    srv.stop()


@pytest.fixture(params=list(PROTOCOL_MODES))
def mode(request: pytest.FixtureRequest) -> str:
    """Each MCP test runs in both protocol eras: the 2025-11-25 session handshake and stateless 2026-07-28."""
    return request.param
