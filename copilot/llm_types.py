"""Shapes shared by every LLM backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Completion:
    """One model answer with its accounting."""

    text: str
    model: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "name", "arguments": dict}]
