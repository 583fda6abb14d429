"""Shapes shared by every LLM backend."""

from __future__ import annotations

from dataclasses import dataclass


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
