"""ContextLab Apps inside JupyterLab, through jupyter-server-proxy.

The entry point `jupyter_serverproxy_servers: contextlab-apps` makes the Jupyter server start the apps
server (`contextlab apps serve`) on first use and proxy `{base_url}contextlab-apps/` to it, under the
Jupyter server's own authentication, with a "ContextLab Apps" launcher entry. The apps server inherits
the Jupyter server's environment, where the ContextLab extension put the workspace, the state store and
the MCP endpoint (`CONTEXTLAB_WORKSPACE`, `CONTEXTLAB_STATE_URL`, `CONTEXTLAB_MCP_URL`, `CONTEXTLAB_TOKEN`).
Whoever gets past Jupyter's authentication is the server's user, so the proxied server treats them as an
admin of every app; publish with `contextlab apps serve --users …` to give other people roles.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

NAME = "contextlab-apps"
ICON = Path(__file__).parent / "static" / "contextlab-apps.svg"


def setup_apps_proxy() -> dict[str, Any]:
    """The jupyter-server-proxy configuration of the apps server."""
    return {
        "command": [
            sys.executable,
            "-m",
            "contextlab",
            "apps",
            "serve",
            "--port",
            "{port}",
            "--address",
            "127.0.0.1",
            "--prefix",
            "{base_url}" + NAME,
            "--anonymous-role",
            "admin",
            "--allow-websocket-origin",
            "*",
        ],  # fmt: skip
        "absolute_url": True,  # Panel is told its prefix, so it gets the full path
        "timeout": 60,
        "new_browser_tab": False,
        "launcher_entry": {
            "enabled": True,
            "title": "ContextLab Apps",
            "icon_path": str(ICON),
            "path_info": f"{NAME}/apps",
            "category": "Other",
        },
    }
