"""The ContextLab Jupyter server extension: an MCP endpoint and gateway at `{base_url}contextlab/mcp`.

The app is imported lazily so that the gateway's Jupyter-free modules (policy, DLP, router…) can
be used without loading the server.
"""

from typing import Any


def _jupyter_server_extension_points() -> list[dict]:
    from contextlab.extension.app import ContextLab

    return [{"module": "contextlab.extension", "app": ContextLab}]


def __getattr__(name: str) -> Any:
    if name == "ContextLab":
        from contextlab.extension.app import ContextLab

        return ContextLab
    raise AttributeError(name)


__all__ = ["ContextLab"]
