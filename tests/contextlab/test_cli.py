"""The `contextlab` command: help everywhere, `up` as the README runs it, `mcp-config` and `doctor`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid

import anyio
import pytest

from tests.support.server import free_port, isolated_env, mcp_session, structured, wait_for

COMMANDS = [
    "up",
    "mcp-config",
    "doctor",
    "enable",
    "demo",
    "registry",
    "token",
    "audit",
    "policy",
    "prompts",
    "provider",
]
SUBCOMMANDS = [
    ["registry", action]
    for action in ("add", "add-provider", "list", "show", "enable", "disable", "remove", "health", "apply", "reviews")
] + [["registry", "approve"], ["token", "create"], ["token", "list"], ["token", "revoke"], ["policy", "show"]]
SUBCOMMANDS += [["prompts", action] for action in ("list", "show", "diff", "set", "label", "rollback")]
SUBCOMMANDS += [["provider", "new"], ["provider", "regenerate"]]


def run_cli(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "contextlab", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]], ids=["contextlab", *COMMANDS])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: contextlab" in result.stdout
    if not command:
        for name in COMMANDS:
            assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=[" ".join(c) for c in SUBCOMMANDS])
def test_every_admin_action_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: contextlab {' '.join(command)}" in result.stdout
    assert "--url" in result.stdout and "--token" in result.stdout


def test_admin_commands_say_what_to_do_when_no_server_runs(tmp_path):
    env = isolated_env(tmp_path)
    result = run_cli("registry", "list", env=env)
    assert result.returncode == 1
    assert "No running Jupyter server found" in result.stderr and "contextlab up" in result.stderr


def test_unknown_arguments_are_refused_with_usage():
    result = run_cli("doctor", "--frobnicate")
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate" in result.stderr


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """`contextlab up --no-browser --port N`, as the README's first command runs it, plus a Jupyter option."""
    home = tmp_path_factory.mktemp("up-home")
    workspace = tmp_path_factory.mktemp("up") / "workspace"
    env = isolated_env(home)
    env["JUPYTER_TOKEN"] = uuid.uuid4().hex
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "contextlab",
            "up",
            "--workspace",
            str(workspace),
            "--no-browser",
            "--port",
            str(port),
            "--ServerApp.base_url=/team/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    # The banner ends with the Python snippet's last line.
    wait_for(lambda: any("asyncio.run(main())" in line for line in lines) or process.poll() is not None, 90)
    output = "".join(lines)
    match = re.search(r"MCP endpoint: (\S+)", output)
    yield {
        "endpoint": match.group(1) if match else None,
        "output": output,
        "env": env,
        "workspace": workspace,
        "port": port,
        "token": env["JUPYTER_TOKEN"],
    }
    process.terminate()
    process.wait(30)


def test_up_creates_the_demo_workspace_and_prints_endpoint_and_client_config(up):
    assert up["endpoint"] == f"http://localhost:{up['port']}/team/contextlab/mcp", up["output"]
    assert "Created the demo workspace" in up["output"]
    assert (up["workspace"] / "data" / "shop.duckdb").exists()
    assert sorted(p.name for p in up["workspace"].glob("*.ipynb")) == [
        "data_quality.ipynb",
        "sales_overview.ipynb",
    ]
    assert f"JupyterLab:   http://localhost:{up['port']}/team/lab?token={up['token']}" in up["output"]
    cursor = json.loads(up["output"].split("Cursor / VS Code-style clients (url + headers):\n")[1].split("\n\n")[0])
    assert cursor["mcpServers"]["contextlab"] == {
        "url": up["endpoint"],
        "headers": {"Authorization": f"token {up['token']}"},
    }
    assert "from mcp import Client" in up["output"]


def test_a_client_connects_to_the_printed_endpoint(up):
    async def go():
        async with mcp_session(up["endpoint"], up["token"]) as client:
            schema = structured(await client.call_tool("sql__schema", {}))
            return {t["name"] for t in schema["databases"][0]["tables"]}

    assert {"customers", "orders", "order_items", "products"} <= anyio.run(go)


def test_mcp_config_finds_the_running_server(up):
    result = run_cli("mcp-config", "--format", "url", env=up["env"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://localhost:{up['port']}/team/contextlab/mcp"
    vscode = json.loads(run_cli("mcp-config", "--format", "vscode", env=up["env"]).stdout)
    assert vscode["servers"]["contextlab"]["type"] == "http"


def test_doctor_reports_each_check_and_fails_until_the_extension_is_enabled(up):
    result = run_cli("doctor", env=up["env"])
    assert result.returncode == 1
    assert "[FAIL] server extension contextlab.extension is not enabled" in result.stdout
    assert "answers (2026-07-28" in result.stdout
    enable = run_cli("enable", "--user", env=up["env"])
    assert enable.returncode == 0, enable.stderr
    assert "jupyter_server_config.d/contextlab.json" in enable.stdout
    result = run_cli("doctor", env=up["env"])
    assert result.returncode == 0, result.stdout
    assert "[ok] server extension contextlab.extension is enabled" in result.stdout
    assert "0 failed" in result.stdout


def test_doctor_says_what_to_do_when_no_server_runs(tmp_path):
    result = run_cli("doctor", env=isolated_env(tmp_path))
    assert result.returncode == 1
    assert "No running Jupyter server found. Start one with `contextlab up`" in result.stdout
