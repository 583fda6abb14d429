"""The ContextLab Jupyter server extension: an MCP endpoint at `{base_url}contextlab/mcp`."""

from contextlab.extension.app import ContextLab


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "contextlab.extension", "app": ContextLab}]


__all__ = ["ContextLab"]
