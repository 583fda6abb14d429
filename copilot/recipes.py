"""Context recipes: which providers the Copilot asks, in what order, under which conditions, within a budget.

A recipe is YAML:

```yaml
name: analyst
budget_tokens: 2500          # the context may not exceed this (estimated at 4 characters a token)
steps:
  - tool: sql__schema        # an MCP tool of the endpoint (through the gateway, audited)
    title: Database schema
    priority: 1              # lower survives trimming first
    when: {target: [sql, python, er]}
  - source: kernel           # items the kernel passes (live DataFrames)
    priority: 2
    top_k: 3
  - tool: notebooks__search
    arguments: {query: "{{ request }}"}
    title: Related notebook cells
    priority: 3
    top_k: 5
    unless: {sensitivity: [secret]}
  - tool: docs__search       # workspace docs: metric definitions, data dictionaries
    arguments: {query: "{{ request }}", k: 3}
    title: Related documentation
    priority: 4
    top_k: 3
    when: {target: [sql, python]}
```

Steps run in order; a step whose condition fails, or whose tool this caller cannot see, is
skipped and said so. When the items exceed the budget, the ones with the highest priority number
are dropped first (whole items, never half a schema) and the result lists what was dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contextlab.copilot.context import ContextClient, ContextUnavailable, ToolFailed

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
CHARS_PER_TOKEN = 4


class RecipeError(ValueError):
    """A recipe that cannot be read; the message names the file and the field."""


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: list[str] | None = None
    sensitivity: list[str] | None = None

    def holds(self, target: str, sensitivity: str) -> bool:
        return (self.target is None or target in self.target) and (
            self.sensitivity is None or sensitivity in self.sensitivity
        )


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str | None = None
    source: str | None = Field(None, pattern="^kernel$")
    arguments: dict[str, Any] = Field(default_factory=dict)
    title: str | None = None
    priority: int = Field(1, ge=0)
    top_k: int | None = Field(None, ge=1)
    when: Condition | None = None
    unless: Condition | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.tool is None) == (self.source is None):
            raise ValueError("a step has either `tool` (an MCP tool) or `source: kernel`")
        return self

    def applies(self, target: str, sensitivity: str) -> bool:
        if self.when is not None and not self.when.holds(target, sensitivity):
            return False
        return not (self.unless is not None and self.unless.holds(target, sensitivity))


class ContextRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "recipe"
    budget_tokens: int = Field(3000, ge=1)
    steps: list[Step]

    @classmethod
    def parse(cls, text: str, source: str = "<recipe>") -> ContextRecipe:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source}: not valid YAML ({exc})") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(recipe)'}: {e['msg']}" for e in exc.errors()
            )
            raise RecipeError(f"{source}: {problems}") from exc

    @classmethod
    def load(cls, path: str | Path) -> ContextRecipe:
        path = Path(path)
        try:
            return cls.parse(path.read_text(), str(path))
        except OSError as exc:
            raise RecipeError(f"Cannot read the recipe {path}: {exc}") from exc


@dataclass
class Gathered:
    """The context a recipe produced, what it dropped to fit the budget, and the steps it skipped."""

    items: list[Any]
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tokens: int = 0


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def run_recipe(
    recipe: ContextRecipe,
    client: ContextClient | None,
    *,
    target: str,
    request: str,
    sensitivity: str = "internal",
    kernel_items: Sequence[Any] = (),
) -> Gathered:
    """Run the recipe's steps, then trim to its budget by priority."""
    from contextlab.copilot.engine import ContextItem, schema_text

    candidates: list[tuple[int, int, Any]] = []  # (priority, order, item)
    skipped: list[str] = []
    order = 0
    for step in recipe.steps:
        label = step.tool or "kernel"
        if not step.applies(target, sensitivity):
            skipped.append(f"{label}: condition not met for target {target!r} and {sensitivity} data")
            continue
        if step.source == "kernel":
            found = list(kernel_items)[: step.top_k] if step.top_k else list(kernel_items)
        else:
            if client is None:
                skipped.append(f"{label}: no ContextLab server")
                continue
            arguments = {k: _render(v, request=request, target=target) for k, v in step.arguments.items()}
            try:
                result = client.call_tool(step.tool, arguments)
            except ToolFailed as exc:
                skipped.append(f"{label}: {exc}")
                continue
            except ContextUnavailable:
                raise
            if step.tool.endswith("sql__schema"):
                texts = [schema_text(result)]
            elif step.tool.endswith("docs__search"):
                texts = [doc_chunk_text(chunk) for chunk in result.get("chunks", [])[: step.top_k]]
            else:
                texts = _texts(result, step.top_k)
            found = [ContextItem(step.tool, step.title or step.tool, text) for text in texts]
        for item in found:
            candidates.append((step.priority, order, item))
            order += 1
    kept, dropped, used = [], [], 0
    for priority, position, item in sorted(candidates, key=lambda c: (c[0], c[1])):
        cost = estimate_tokens(item.text)
        if used + cost <= recipe.budget_tokens:
            kept.append((position, item))
            used += cost
        else:
            dropped.append(f"{item.title} ({item.source}, priority {priority}, ~{cost} tokens)")
    return Gathered([item for _, item in sorted(kept, key=lambda k: k[0])], dropped, skipped, used)


def _render(value: Any, **variables: Any) -> Any:
    if isinstance(value, str):
        return _ENV.from_string(value).render(**variables)
    return value


def doc_chunk_text(chunk: dict[str, Any]) -> str:
    """A `docs__search` chunk as context: where it comes from, then its text."""
    where = " > ".join(part for part in (chunk["doc_id"], chunk.get("location")) if part)
    return f"[{where}, lines {chunk['start_line']}-{chunk['end_line']}]\n{chunk['text']}"


def _texts(result: dict[str, Any], top_k: int | None) -> list[str]:
    """A tool result as context texts: one per list entry for list-shaped results (for top-k), else one."""
    lists = [v for v in result.values() if isinstance(v, list)]
    if len(result) == 1 and lists and top_k:
        return [json.dumps(entry, default=str) for entry in lists[0][:top_k]]
    return [json.dumps(result, default=str, indent=1)]
