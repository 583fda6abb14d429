"""Recent log entries of the Jupyter server and its kernels, kept in a bounded in-memory buffer."""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from mcp.server.mcpserver.prompts.base import Message, UserMessage
from pydantic import BaseModel, Field

from contextlab.providers.base import PromptSpec, Provider, ProviderError, ToolSpec

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_KERNEL_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


class LogEntry(BaseModel):
    """The `LogEntry` context type."""

    time: datetime
    level: Level
    source: str = Field(description="'server', 'kernel' or 'contextlab'.")
    logger: str
    message: str
    kernel_id: str | None = None


class LogPage(BaseModel):
    entries: list[LogEntry]
    matched: int = Field(description="Entries that matched the filters (before the limit).")
    buffer_size: int


class LogBuffer(logging.Handler):
    """A logging handler that keeps the newest `capacity` records."""

    def __init__(self, capacity: int = 2000, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self._entries: deque[LogEntry] = deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}\n{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        match = _KERNEL_ID.search(message)
        kernel_id = match.group(0) if match else None
        lowered = record.name.lower()
        if lowered.startswith(("contextlab", "mcp")):
            source = "contextlab"
        elif kernel_id and "kernel" in message.lower():
            source = "kernel"
        else:
            source = "server"
        level = record.levelname if record.levelname in Level.__args__ else "INFO"
        entry = LogEntry(
            time=datetime.fromtimestamp(record.created, UTC),
            level=level,
            source=source,
            logger=record.name,
            message=message[:4000],
            kernel_id=kernel_id,
        )
        with self._guard:
            self._entries.append(entry)

    def snapshot(self) -> list[LogEntry]:
        with self._guard:
            return list(self._entries)

    @property
    def capacity(self) -> int:
        return self._entries.maxlen or 0


_LEVEL_ORDER = {name: i for i, name in enumerate(Level.__args__)}


class LogsProvider(Provider):
    name = "logs"
    description = "Recent Jupyter server and kernel log entries, filterable by level, source, kernel and time."
    context_types = ["LogEntry"]

    def __init__(self, buffer: LogBuffer) -> None:
        self.buffer = buffer

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.recent,
                "recent",
                "Recent log entries, newest last. Filter by minimum level, source ('server', 'kernel', "
                "'contextlab'), kernel id, time window and text.",
                "Recent logs",
            )
        ]

    def prompt_specs(self) -> list[PromptSpec]:
        return [
            PromptSpec(
                self.diagnose_prompt,
                "diagnose",
                "Diagnose recent warnings and errors from the logs.",
                "Diagnose recent errors",
            )
        ]

    async def recent(
        self,
        level: Level = "INFO",
        source: Literal["server", "kernel", "contextlab"] | None = None,
        kernel_id: str | None = None,
        since_minutes: Annotated[float | None, Field(gt=0, description="Only entries this recent.")] = None,
        since: Annotated[datetime | None, Field(description="Only entries at or after this ISO time.")] = None,
        contains: Annotated[str | None, Field(max_length=500)] = None,
        limit: Annotated[int, Field(ge=1, le=5000)] = 100,
    ) -> LogPage:
        if since is not None and since.tzinfo is None:
            raise ProviderError("`since` needs a timezone, e.g. 2026-01-31T12:00:00Z.")
        floor = _LEVEL_ORDER[level]
        start = since
        if since_minutes is not None:
            window = datetime.now(UTC) - timedelta(minutes=since_minutes)
            start = max(start, window) if start else window
        needle = contains.lower() if contains else None
        matched = [
            e
            for e in self.buffer.snapshot()
            if _LEVEL_ORDER[e.level] >= floor
            and (source is None or e.source == source)
            and (kernel_id is None or e.kernel_id == kernel_id)
            and (start is None or e.time >= start)
            and (needle is None or needle in e.message.lower())
        ]
        return LogPage(entries=matched[-limit:], matched=len(matched), buffer_size=self.buffer.capacity)

    async def diagnose_prompt(self, minutes: float = 60) -> list[Message]:
        page = await self.recent(level="WARNING", since_minutes=minutes, limit=200)
        lines = "\n".join(f"{e.time.isoformat()} {e.level} [{e.logger}] {e.message}" for e in page.entries)
        return [
            UserMessage(
                f"These are the warnings and errors my Jupyter server logged in the last {minutes:g} minutes. "
                "Group them by cause, say which matter, and what to do about each.\n\n"
                + (lines or "(no warnings or errors)")
            )
        ]
