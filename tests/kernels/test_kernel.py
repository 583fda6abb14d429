"""The extension in a real kernel: started by jupyter_client, talking to a real ContextLab server."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from contextlab.kernels import KERNEL_NAME, install_kernelspec
from contextlab.workspace import create_demo_workspace
from tests.kernels.conftest import model, models_file
from tests.support.fake_llm import FakeLLM
from tests.support.server import isolated_env, start_server

COUNT = "```sql\nSELECT count(*) AS n FROM customers\n```"


class Kernel:
    def __init__(self, env: dict[str, str], cwd: Path, **manager: Any) -> None:
        self.manager = KernelManager(**manager)
        self.manager.start_kernel(env=env, cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 120) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The execute_reply and the iopub messages of one cell."""
        messages: list[dict[str, Any]] = []
        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=messages.append)
        return reply, messages

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def stdout(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Any]:
    root = create_demo_workspace(tmp_path_factory.mktemp("kernel-e2e-root"))
    server = start_server(root, tmp_path_factory.mktemp("kernel-e2e-home"), extra_args=["--ContextLab.providers=sql"])
    yield server
    server.stop()


def test_a_copilot_cell_in_a_real_kernel_inserts_duckdb_sql_that_runs(srv, tmp_path):
    with FakeLLM([COUNT]) as llm:
        env = isolated_env(tmp_path / "home")
        env.update(
            CONTEXTLAB_MCP_URL=srv.mcp_url,
            CONTEXTLAB_TOKEN=srv.token,
            CONTEXTLAB_MODELS=str(models_file(tmp_path / "models.json", model(llm))),
        )
        kernel = Kernel(env, srv.root, kernel_name="python3")
        try:
            reply, _ = kernel.execute("%load_ext contextlab.kernels")
            assert reply["content"]["status"] == "ok"
            reply, messages = kernel.execute("%%copilot sql\nhow many customers are there?")
            assert reply["content"]["status"] == "ok", stdout(messages)
            assert not [m for m in messages if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
            inserts = [p for p in reply["content"]["payload"] if p["source"] == "set_next_input"]
            assert len(inserts) == 1 and inserts[0]["replace"] is False
            cell = inserts[0]["text"]
            lines = cell.splitlines()
            assert (
                lines[0] == "%%duckdb"
                and lines[1].startswith("-- copilot:")
                and lines[2:] == ["SELECT count(*) AS n FROM customers"]
            )
            suggestion_id = lines[1].split(":", 1)[1]
            provenance = [
                m["content"]["metadata"]["contextlab"]
                for m in messages
                if m["msg_type"] in ("display_data", "update_display_data")
                and "contextlab" in m["content"].get("metadata", {})
            ]
            assert provenance and provenance[-1]["suggestion_id"] == suggestion_id and provenance[-1]["valid"]
            assert provenance[-1]["context"] == [{"source": "sql__schema", "title": "Database schema"}]
            assert "customers(customer_id INTEGER" in llm.requests[0]["messages"][0]["content"]

            reply, messages = kernel.execute(cell)
            assert reply["content"]["status"] == "ok", stdout(messages)
            assert any(m["msg_type"] == "execute_result" for m in messages)
            reply, messages = kernel.execute("print(type(_).__name__, len(_), int(_.iloc[0, 0]))")
            with duckdb.connect(str(srv.root / "data" / "shop.duckdb"), read_only=True) as con:
                expected = con.execute("SELECT count(*) FROM customers").fetchone()[0]
            assert stdout(messages).split() == ["DataFrame", "1", str(expected)]
            reply, messages = kernel.execute(
                "s = __import__('contextlab.kernels.magic', fromlist=['x']).session_for(get_ipython())\n"
                "print([f['kind'] for f in s.sent_feedback], s.history[-1].runs[-1]['edit_distance'])"
            )
            assert stdout(messages).split() == ["['ran']", "0.0"]
        finally:
            kernel.close()


def test_the_kernelspec_installs_for_this_python_and_loads_the_extension(tmp_path):
    path = Path(install_kernelspec(user=False, prefix=str(tmp_path / "prefix")))
    assert path == tmp_path / "prefix" / "share" / "jupyter" / "kernels" / KERNEL_NAME
    spec = json.loads((path / "kernel.json").read_text())
    assert spec["argv"] == [
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--ext=contextlab.kernels",
    ]
    assert spec["display_name"] == "ContextLab Python" and spec["language"] == "python"
    specs = KernelSpecManager(kernel_dirs=[str(path.parent)])
    assert KERNEL_NAME in specs.find_kernel_specs()
    env = isolated_env(tmp_path / "home")
    env.pop("CONTEXTLAB_MCP_URL", None)
    kernel = Kernel(env, tmp_path, kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    try:
        reply, messages = kernel.execute(
            "cell = get_ipython().magics_manager.magics['cell']\nprint('copilot' in cell, 'duckdb' in cell)"
        )
        assert stdout(messages).split() == ["True", "True"]
        reply, messages = kernel.execute("%%copilot sql\ntop customers")
        assert reply["content"]["status"] == "error"  # no server: one clear message, no traceback
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert len(errors) == 1 and len(errors[0]["traceback"]) == 1
        assert errors[0]["traceback"][0].startswith("Copilot: No ContextLab server is known to this kernel")
    finally:
        kernel.close()
