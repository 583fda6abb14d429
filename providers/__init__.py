"""Context providers: each is a small MCP server module with a manifest, mounted by the extension."""

from contextlab.providers.base import (
    JSON_SCHEMA_DIALECT,
    Provider,
    ProviderError,
    ProviderManifest,
    ToolSpec,
)

__all__ = ["JSON_SCHEMA_DIALECT", "Provider", "ProviderError", "ProviderManifest", "ToolSpec"]
