"""The `contextlab` command: start the workbench, print client configuration, check the install."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import contextlab
from contextlab.connect import client_configs, connection_banner, mcp_url, python_snippet

_CHECKED_PACKAGES = [
    "jupyter_server",
    "jupyterlab",
    "mcp",
    "duckdb",
    "sqlglot",
    "sqlalchemy",
    "alembic",
    "ipykernel",
    "pandas",
]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if extra and args.command != "up":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args, extra)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contextlab",
        description="ContextLab: a JupyterLab workbench whose notebooks, kernels, databases, logs and metrics "
        "are served to AI clients over MCP.",
    )
    parser.add_argument("--version", action="version", version=f"contextlab {contextlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="Start JupyterLab with the ContextLab extension on a workspace (demo created if missing).",
        description="Start JupyterLab with ContextLab. A missing or empty workspace folder gets the demo "
        "workspace (DuckDB shop, two notebooks, docs). Jupyter options such as --ServerApp.base_url=/x/ "
        "are passed through; JUPYTER_TOKEN and Jupyter config files apply as usual.",
    )
    up.add_argument("--workspace", default="contextlab-demo", help="Workspace folder (default: ./contextlab-demo).")
    up.add_argument("--port", type=int, help="Port to listen on (default: Jupyter's, 8888, or the next free one).")
    up.add_argument("--no-browser", action="store_true", help="Do not open a browser.")
    up.set_defaults(func=_cmd_up)

    config = sub.add_parser(
        "mcp-config",
        help="Print MCP client configuration for a running server.",
        description="Print configuration for Cursor, VS Code, Claude Desktop and the Python mcp client, for a "
        "running Jupyter server with ContextLab (the newest one, or the one given by --url).",
    )
    _add_server_arguments(config)
    config.add_argument(
        "--format",
        choices=["all", "cursor", "vscode", "claude_desktop", "python", "url"],
        default="all",
        help="What to print (default: all).",
    )
    config.set_defaults(func=_cmd_mcp_config)

    doctor = sub.add_parser(
        "doctor",
        help="Check the install, the versions, and whether the MCP endpoint answers.",
        description="Check Python and package versions, that the server extension is enabled, and that the "
        "MCP endpoint of a running server answers. Exits 1 when a check fails.",
    )
    _add_server_arguments(doctor)
    doctor.set_defaults(func=_cmd_doctor)

    enable = sub.add_parser(
        "enable",
        help="Enable the server extension in Jupyter's config (for editable installs and custom setups).",
        description="Write jupyter_server_config.d/contextlab.json so that plain `jupyter lab` and "
        "`jupyter server` load ContextLab. A regular `pip install` does this already; an editable "
        "install (`pip install -e`) cannot, so run this once after it.",
    )
    enable.add_argument(
        "--user",
        action="store_true",
        help="Write to the user's Jupyter config folder instead of this Python environment's (sys.prefix).",
    )
    enable.set_defaults(func=_cmd_enable)

    demo = sub.add_parser(
        "demo",
        help="Create the demo workspace without starting a server.",
        description="Create the demo workspace (DuckDB shop, notebooks, docs) in a folder.",
    )
    demo.add_argument("path", nargs="?", default="contextlab-demo", help="Folder (default: ./contextlab-demo).")
    demo.set_defaults(func=_cmd_demo)

    from contextlab.admin_cli import add_admin_commands

    add_admin_commands(sub, _add_server_arguments)
    from contextlab.provider_cli import add_provider_commands

    add_provider_commands(sub, _add_server_arguments)
    from contextlab.pipeline_cli import add_pipeline_commands

    add_pipeline_commands(sub)
    from contextlab.docs_cli import add_docs_commands

    add_docs_commands(sub)
    from contextlab.apps_cli import add_apps_commands

    add_apps_commands(sub)
    return parser


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="Jupyter server URL including base_url (default: newest running server).")
    parser.add_argument("--token", help="Jupyter token (default: the running server's).")


# -- up ---------------------------------------------------------------------------------------------
def _cmd_up(args: argparse.Namespace, extra: list[str]) -> int:
    from contextlab.workspace import create_demo_workspace

    workspace = Path(args.workspace).expanduser().resolve()
    if not workspace.exists() or not any(workspace.iterdir()):
        create_demo_workspace(workspace)
        print(f"Created the demo workspace in {workspace}", flush=True)
    argv = [f"--ServerApp.root_dir={workspace}", "--ContextLab.show_connection_banner=True"]
    if args.port is not None:
        argv.append(f"--ServerApp.port={args.port}")
    if args.no_browser:
        argv.append("--ServerApp.open_browser=False")
    argv.append("--ServerApp.jpserver_extensions={'contextlab.extension': True}")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not any("allow_root" in a for a in extra):
        print("Running as root (as in most containers): passing --ServerApp.allow_root=True.", flush=True)
        argv.append("--ServerApp.allow_root=True")
    argv += extra
    from jupyterlab.labapp import LabApp

    LabApp.launch_instance(argv=argv)
    return 0


# -- mcp-config -------------------------------------------------------------------------------------
def find_server(url: str | None, token: str | None) -> tuple[str, str]:
    from jupyter_server.serverapp import list_running_servers

    servers = sorted(list_running_servers(), key=lambda s: s.get("pid", 0))
    if url:
        match = next((s for s in servers if s["url"].rstrip("/") == url.rstrip("/")), None)
        return url, token if token is not None else (match or {}).get("token", "")
    if not servers:
        raise SystemExit("No running Jupyter server found. Start one with `contextlab up`, or pass --url.")
    server = servers[-1]
    return server["url"], token if token is not None else server.get("token", "")


def _cmd_mcp_config(args: argparse.Namespace, _extra: list[str]) -> int:
    url, token = find_server(args.url, args.token)
    endpoint = mcp_url(url)
    if args.format == "all":
        print(connection_banner(url, token))
    elif args.format == "url":
        print(endpoint)
    elif args.format == "python":
        print(python_snippet(endpoint, token))
    else:
        print(json.dumps(client_configs(endpoint, token)[args.format], indent=2))
    return 0


# -- doctor -----------------------------------------------------------------------------------------
def _cmd_doctor(args: argparse.Namespace, _extra: list[str]) -> int:
    checks: list[tuple[bool, str]] = []
    checks.append((sys.version_info >= (3, 11), f"Python {sys.version.split()[0]} (3.11+ needed)"))
    for package in _CHECKED_PACKAGES:
        try:
            checks.append((True, f"{package} {importlib.metadata.version(package)}"))
        except importlib.metadata.PackageNotFoundError:
            checks.append((False, f"{package} is not installed: pip install contextlab"))
    mcp_major = int(importlib.metadata.version("mcp").split(".")[0]) if _installed("mcp") else 0
    checks.append(
        (
            mcp_major >= 2,
            "mcp SDK is 2.x" if mcp_major >= 2 else "mcp SDK must be 2.x: pip install 'mcp>=2.3'",
        )
    )
    checks.append(_extension_enabled())
    try:
        url, token = find_server(args.url, args.token)
    except SystemExit as exc:
        checks.append((False, str(exc)))
    else:
        checks.append(asyncio.run(_probe_endpoint(mcp_url(url), token)))
    failed = 0
    for ok, message in checks:
        print(f"[{'ok' if ok else 'FAIL'}] {message}")
        failed += not ok
    print(f"\n{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _extension_enabled() -> tuple[bool, str]:
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    manager = ExtensionConfigManager(read_config_path=jupyter_config_path())
    if manager.enabled("contextlab.extension"):
        return True, "server extension contextlab.extension is enabled"
    return False, "server extension contextlab.extension is not enabled: run `contextlab enable`"


def _cmd_enable(args: argparse.Namespace, _extra: list[str]) -> int:
    from jupyter_core.paths import ENV_CONFIG_PATH, jupyter_config_dir

    config_dir = Path(jupyter_config_dir() if args.user else ENV_CONFIG_PATH[0]) / "jupyter_server_config.d"
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "contextlab.json"
    path.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {"contextlab.extension": True}}}, indent=2) + "\n")
    print(f"Enabled contextlab.extension in {path}")
    return 0


async def _probe_endpoint(endpoint: str, token: str) -> tuple[bool, str]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        async with httpx2.AsyncClient(headers=headers, timeout=10) as http:
            async with Client(streamable_http_client(endpoint, http_client=http)) as client:
                tools = await client.list_tools()
                return True, (f"MCP endpoint {endpoint} answers ({client.protocol_version}, {len(tools.tools)} tools)")
    except Exception as exc:  # the report names the failure; doctor must not crash
        return False, f"MCP endpoint {endpoint} does not answer: {_root_cause(exc)}"


def _root_cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _cmd_demo(args: argparse.Namespace, _extra: list[str]) -> int:
    from contextlab.workspace import create_demo_workspace

    path = create_demo_workspace(Path(args.path).expanduser().resolve())
    print(f"Demo workspace ready in {path}")
    return 0
