"""An in-process IPython shell with the extension loaded, a stand-in ContextLab server and scripted models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

from contextlab.kernels.magic import session_for
from contextlab.workspace import create_demo_workspace
from tests.kernels.fake_server import FakeContextLab


@pytest.fixture(scope="session")
def kernel_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_workspace(tmp_path_factory.mktemp("kernel-workspace"))


@pytest.fixture(scope="session")
def contextlab(kernel_root: Path) -> Iterator[FakeContextLab]:
    with FakeContextLab(kernel_root) as server:
        yield server


@pytest.fixture(scope="session")
def ipython(tmp_path_factory: pytest.TempPathFactory) -> InteractiveShell:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    return InteractiveShell.instance(config=config, ipython_dir=str(tmp_path_factory.mktemp("ipython")))


class Shell:
    """The shell, what it inserted with set_next_input, and helpers to run cells and read their outputs."""

    def __init__(self, ip: InteractiveShell, server: FakeContextLab) -> None:
        self.ip = ip
        self.server = server
        self.inserted: list[tuple[str, bool]] = []

    @property
    def session(self) -> Any:
        return session_for(self.ip)

    def run(self, cell: str) -> tuple[Any, Any]:
        with capture_output() as captured:
            result = self.ip.run_cell(cell, store_history=True)
        return result, captured


@pytest.fixture
def shell(ipython: InteractiveShell, contextlab: FakeContextLab, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shell]:
    """A fresh Copilot session per test, pointed at the stand-in server (models set per test)."""
    contextlab.reset()
    contextlab.models = None
    monkeypatch.setenv("CONTEXTLAB_MCP_URL", contextlab.mcp_url)
    monkeypatch.setenv("CONTEXTLAB_TOKEN", "cl_test_token")
    monkeypatch.delenv("CONTEXTLAB_MODELS", raising=False)
    monkeypatch.delenv("CONTEXTLAB_PROJECT", raising=False)
    wrapper = Shell(ipython, contextlab)
    monkeypatch.setattr(ipython, "set_next_input", lambda text, replace=False: wrapper.inserted.append((text, replace)))
    ipython.run_line_magic("load_ext", "contextlab.kernels")
    saved = dict(ipython.user_ns)
    try:
        yield wrapper
    finally:
        ipython.run_line_magic("unload_ext", "contextlab.kernels")
        for name in set(ipython.user_ns) - set(saved):
            del ipython.user_ns[name]


def model(llm: Any, name: str = "scripted", **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "openai", "model": "m", "base_url": llm.base_url, "timeout_s": 10, **extra}


def serve_models(server: FakeContextLab, *models: dict[str, Any], **config: Any) -> None:
    server.models = {"models": list(models), "default_chain": [m["name"] for m in models], **config}


def models_file(path: Path, *models: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"models": list(models)}), encoding="utf-8")
    return path
