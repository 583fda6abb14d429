"""ContextLab: a JupyterLab-native workbench that serves a workspace's context over MCP."""

__version__ = "0.1.0"

MCP_PATH = "contextlab/mcp"
"""Where the MCP endpoint lives, relative to the Jupyter server's base_url."""
