"""What a served app needs at run time besides its document: its flows, and MCP calls through the gateway.

`AppFlows` wraps the flow engine for the renderer: it starts an app's flow from the app's published
version, lists the user tasks waiting for a viewer's roles and completes them. Service tasks call MCP tools
through the ContextLab endpoint (`--mcp-url`, or `CONTEXTLAB_MCP_URL` / `CONTEXTLAB_TOKEN`), so each call
passes the gateway's scopes, policies and audit like any other client's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from contextlab.apps.flows import FlowEngine, FlowError, FlowInstance, TaskView
from contextlab.apps.service import load_flow
from contextlab.apps.store import AppNotFound, AppStore


def mcp_caller(url: str | None = None, token: str | None = None) -> Callable[[str, dict], Any] | None:
    """A blocking `call_tool(name, arguments)` against the ContextLab MCP endpoint, or None if none is known."""
    url = url or os.environ.get("CONTEXTLAB_MCP_URL")
    if not url:
        return None
    from contextlab.copilot.context import ContextClient, ContextUnavailable, Endpoint

    client = ContextClient(Endpoint(url, token or os.environ.get("CONTEXTLAB_TOKEN") or None))

    def call_tool(name: str, arguments: dict) -> Any:
        try:
            return client.call_tool(name, arguments)
        except ContextUnavailable as exc:
            raise FlowError(f"MCP tool `{name}` failed: {exc}") from exc

    return call_tool


class AppFlows:
    """The flows of the apps in `store`, as the renderer and the server use them."""

    def __init__(self, store: AppStore, call_tool: Callable[[str, dict], Any] | None = None) -> None:
        self.store = store
        publish = None
        if store.publish is not None:

            def publish(topic: str, payload: dict) -> Any:
                return store.publish(topic, payload)

        self.engine = FlowEngine(store.state, call_tool=call_tool, publish=publish)

    def start_app_flow(self, app: str, flow: str, data: dict[str, Any], user: str) -> FlowInstance:
        """Start `flow` of `app` (its published version, else its latest) with `data`."""
        try:
            doc = self.store.published(app).dsl
        except AppNotFound:
            doc = self.store.get(app).dsl
        return self.engine.start(load_flow(self.store, doc, flow), data, started_by=user, app=app)

    def pending_tasks(self, roles: set[str] | None = None) -> list[TaskView]:
        return self.engine.pending_tasks(roles)

    def get(self, instance_id: str) -> FlowInstance:
        return self.engine.get(instance_id)

    def list(self, app: str | None = None, status: str | None = None) -> list[FlowInstance]:
        return self.engine.list(app, status)

    def complete(
        self, instance_id: str, task_id: str, values: dict[str, Any], user: str, roles: set[str]
    ) -> FlowInstance:
        return self.engine.complete(instance_id, task_id, values, user, roles)
