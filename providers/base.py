"""The small contract every context provider shares: tools, prompts, resources and a manifest.

A provider knows nothing of Jupyter. It can be mounted behind the extension's endpoint
(tool names namespaced as `<provider>__<tool>`) or served on its own with `as_server()`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.tools import Tool
from mcp_types import Resource as MCPResource
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

import contextlab

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
NAMESPACE_SEPARATOR = "__"


class ProviderError(ToolError):
    """A failure the caller can act on; its message is returned to the client as the tool error."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool a provider offers, before it is namespaced.

    The SDK runs a sync `fn` in a worker thread: write blocking I/O as sync functions and cheap
    in-memory work as `async def`, which skips the thread hop.
    """

    fn: Callable[..., Any]
    name: str
    description: str
    title: str | None = None
    read_only: bool = True
    idempotent: bool = True
    open_world: bool = False


@dataclass(frozen=True)
class PromptSpec:
    fn: Callable[..., Any]
    name: str
    description: str
    title: str | None = None


@dataclass(frozen=True)
class ResourceTemplateSpec:
    """A family of resources addressed by an RFC 6570 URI template, e.g. `notebook://{+path}`."""

    fn: Callable[..., Any]
    uri_template: str
    name: str
    description: str
    mime_type: str = "application/json"


class ToolManifest(BaseModel):
    name: str
    title: str | None = None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = Field(default_factory=dict)


class ProviderManifest(BaseModel):
    """What a provider serves, with a JSON Schema 2020-12 for each tool's input and output."""

    name: str
    version: str
    description: str
    context_types: list[str]
    tools: list[ToolManifest]
    prompts: list[str] = Field(default_factory=list)
    resource_templates: list[str] = Field(default_factory=list)


class Provider:
    """Base class of context providers. Subclasses set the class attributes and the three spec methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    context_types: ClassVar[list[str]] = []
    version: ClassVar[str] = contextlab.__version__

    def tool_specs(self) -> list[ToolSpec]:
        return []

    def prompt_specs(self) -> list[PromptSpec]:
        return []

    def resource_templates(self) -> list[ResourceTemplateSpec]:
        return []

    async def dynamic_resources(self) -> list[MCPResource]:
        """Concrete resources that exist right now (listed by resources/list next to the templates)."""
        return []

    def resource_versions(self) -> dict[str, Hashable]:
        """A version marker per resource URI that can change (e.g. mtime and size); polled for subscriptions."""
        return {}

    async def close(self) -> None:
        """Release what the provider holds (connections, clients) when the server stops."""

    def qualified(self, tool_name: str, namespaced: bool = True) -> str:
        return f"{self.name}{NAMESPACE_SEPARATOR}{tool_name}" if namespaced else tool_name

    def _tool_kwargs(self, spec: ToolSpec, namespaced: bool) -> dict[str, Any]:
        return {
            "name": self.qualified(spec.name, namespaced),
            "title": spec.title,
            "description": spec.description,
            "annotations": ToolAnnotations(
                read_only_hint=spec.read_only,
                idempotent_hint=spec.idempotent,
                open_world_hint=spec.open_world,
                destructive_hint=False if spec.read_only else None,
            ),
            "meta": {"contextlab/provider": self.name},
        }

    def build_tools(self, namespaced: bool = True) -> list[Tool]:
        return [Tool.from_function(spec.fn, **self._tool_kwargs(spec, namespaced)) for spec in self.tool_specs()]

    def register(self, server: MCPServer, namespaced: bool = True) -> None:
        """Add this provider's tools, prompts and resource templates to `server`."""
        for spec in self.tool_specs():
            server.add_tool(spec.fn, **self._tool_kwargs(spec, namespaced))
        for spec in self.prompt_specs():
            server.add_prompt(
                Prompt.from_function(
                    spec.fn,
                    name=self.qualified(spec.name, namespaced),
                    title=spec.title,
                    description=spec.description,
                )
            )
        for spec in self.resource_templates():
            server.resource(spec.uri_template, name=spec.name, description=spec.description, mime_type=spec.mime_type)(
                spec.fn
            )

    def manifest(self) -> ProviderManifest:
        tools = []
        for tool in self.build_tools(namespaced=True):
            tools.append(
                ToolManifest(
                    name=tool.name,
                    title=tool.title,
                    description=tool.description,
                    input_schema=_as_2020_12(tool.parameters),
                    output_schema=_as_2020_12(tool.output_schema) if tool.output_schema else None,
                    annotations=tool.annotations.model_dump(exclude_none=True, by_alias=True)
                    if tool.annotations
                    else {},
                )
            )
        return ProviderManifest(
            name=self.name,
            version=self.version,
            description=self.description,
            context_types=list(self.context_types),
            tools=tools,
            prompts=[self.qualified(p.name) for p in self.prompt_specs()],
            resource_templates=[r.uri_template for r in self.resource_templates()],
        )

    def as_server(self) -> MCPServer:
        """This provider alone, as a standalone MCP server (stdio or HTTP), with un-namespaced names."""
        server = MCPServer(
            f"contextlab-{self.name}",
            version=self.version,
            instructions=self.description,
            log_level="WARNING",
        )
        self.register(server, namespaced=False)
        return server

    def registry_entry(
        self,
        *,
        command: list[str] | None = None,
        url: str | None = None,
        name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A gateway registry entry for this provider served on its own, generated from its manifest.

        Give `command` (stdio, e.g. `python -m contextlab.providers.serve pkg.mod:Cls`) or `url`
        (streamable HTTP). Read-only, idempotent tools are marked cacheable.
        """
        if (command is None) == (url is None):
            raise ValueError("give exactly one of command (stdio) or url (http)")
        manifest = self.manifest()
        cacheable = [
            tool.name.split(NAMESPACE_SEPARATOR, 1)[1]
            for tool in manifest.tools
            if tool.annotations.get("readOnlyHint") and tool.annotations.get("idempotentHint")
        ]
        entry: dict[str, Any] = {
            "name": (name or self.name).replace("_", "-").lower(),
            "description": f"{manifest.description} (ContextLab provider {manifest.name} {manifest.version}; "
            f"context: {', '.join(manifest.context_types) or 'none'})",
            "cacheable_tools": cacheable,
            "attributes": dict(attributes or {}),
        }
        if command is not None:
            entry.update(transport="stdio", command=list(command))
        else:
            entry.update(transport="http", url=url)
        return entry


def _as_2020_12(schema: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out.setdefault("$schema", JSON_SCHEMA_DIALECT)
    return out
