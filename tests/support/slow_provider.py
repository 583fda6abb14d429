"""A provider used by the streaming test: it reports progress, then waits for the client to answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel

from contextlab.providers.base import Provider, ToolSpec


class WaitResult(BaseModel):
    released: bool


class SlowProvider(Provider):
    name = "slow"
    description = "Test provider: reports progress, then waits until a release file exists."
    context_types = ["Test"]

    def __init__(self, app: Any) -> None:
        self.root = Path(app.serverapp.root_dir)

    def tool_specs(self) -> list[ToolSpec]:
        return [ToolSpec(self.wait_for_release, "wait", "Report progress, then wait for <root>/<marker>.")]

    async def wait_for_release(self, marker: str, ctx: Context) -> WaitResult:
        await ctx.report_progress(1, 2, "waiting for the client")
        path = self.root / marker
        for _ in range(300):
            if path.exists():
                return WaitResult(released=True)
            await asyncio.sleep(0.05)
        return WaitResult(released=False)
