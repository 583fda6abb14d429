"""A provider built with ContextLab's helpers that runs on its own, for self-registration tests."""

from __future__ import annotations

from pydantic import BaseModel

from contextlab.providers.base import Provider, ToolSpec


class Greeting(BaseModel):
    text: str


class GreetingsProvider(Provider):
    name = "greetings"
    description = "Greets people."
    context_types = ["Greeting"]

    def tool_specs(self) -> list[ToolSpec]:
        return [ToolSpec(self.hello, "hello", "Greet someone by name.")]

    async def hello(self, name: str) -> Greeting:
        return Greeting(text=f"Hello, {name}!")
