"""The Copilot engine: gather context, prompt, generate, validate, repair.

`Copilot.generate(target, request)` asks the MCP endpoint for context (for `sql`: the schema of the
DuckDB databases; plus whatever the caller adds, such as the DataFrames alive in the kernel),
renders the target's Jinja2 template, asks the LLM router, extracts the code, validates it with the
target's validator and, on a validation error, feeds the error back to the model for a bounded
number of repairs. The result (`Suggestion`) records the model, the template version, the context
items used and every attempt.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import jinja2

from contextlab.copilot.context import ContextClient, Endpoint, ToolFailed
from contextlab.copilot.llm import LLMRouter
from contextlab.copilot.recipes import ContextRecipe, run_recipe

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False)


MAX_TOOL_RESULT = 8000  # characters of one tool result shown to the model


class CopilotError(Exception):
    """A request the Copilot cannot serve (unknown target, empty prompt, no context); the text says why."""


@dataclass
class ContextItem:
    """One piece of context put in the prompt, and where it came from."""

    source: str
    title: str
    text: str


@dataclass
class Validation:
    ok: bool
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    model: str
    text: str
    code: str
    ok: bool
    error: str | None
    latency_s: float


@dataclass
class Suggestion:
    id: str
    target: str
    request: str
    code: str
    valid: bool
    model: str
    prompt_version: str
    context: list[dict[str, str]]
    attempts: list[Attempt]
    validation: dict[str, Any] = field(default_factory=dict)
    context_dropped: list[str] = field(default_factory=list)
    context_skipped: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return self.valid and len(self.attempts) > 1

    def provenance(self) -> dict[str, Any]:
        """What the inserted cell records in its metadata."""
        return {
            "suggestion_id": self.id,
            "target": self.target,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "context": [{"source": c["source"], "title": c["title"]} for c in self.context],
            "valid": self.valid,
            "attempts": len(self.attempts),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Target(Protocol):
    name: str
    template_name: str
    template: str
    language: str

    def gather(self, client: ContextClient | None) -> list[ContextItem]: ...

    def extract(self, text: str) -> str: ...

    def validate(self, code: str, client: ContextClient | None) -> Validation: ...


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, languages: Sequence[str]) -> str:
    """The code in a model answer: the first fenced block (preferring one tagged with `languages`), else all."""
    blocks = _FENCE.findall(text)
    for lang, body in blocks:
        if lang.lower() in languages:
            return body.strip()
    if blocks:
        return blocks[0][1].strip()
    return text.strip()


SQL_TEMPLATE = """\
You write DuckDB SQL. Answer with one SELECT query in a ```sql block and nothing else.
Use only the tables and columns below; qualify columns when two tables share a name.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""


def schema_text(schema: dict[str, Any]) -> str:
    """`sql__schema`'s result as compact lines: table(column type, ...) -- rows, then its foreign keys."""
    lines = []
    for db in schema.get("databases", []):
        for table in db.get("tables", []):
            columns = ", ".join(f"{c['name']} {c['type']}" for c in table.get("columns", []))
            lines.append(f"{table['name']}({columns})  -- {table.get('row_count', '?')} rows")
            for fk in table.get("foreign_keys", []):
                lines.append(
                    f"  -- {', '.join(fk['columns'])} references {fk['references_table']}"
                    f"({', '.join(fk['references_columns'])})"
                )
    return "\n".join(lines)


def docs_context(client: ContextClient | None, request: str, k: int = 2) -> list[ContextItem]:
    """The workspace documents closest to the request (metric definitions, data dictionaries), if served."""
    if client is None:
        return []
    try:
        page = client.call_tool("docs__search", {"query": request, "k": k})
    except ToolFailed:  # no docs provider, an empty index, or not allowed for this caller
        return []
    blocks = [
        f"[{c['doc_id']}{' > ' + c['location'] if c.get('location') else ''}]\n{c['text']}"
        for c in page.get("chunks", [])
    ]
    return [ContextItem("docs__search", "Related documentation", "\n\n".join(blocks))] if blocks else []


class SQLTarget:
    """DuckDB SQL: parsed with sqlglot (one read-only statement), then run with a row limit through the
    endpoint's read-only `sql__query` tool (which refuses writes again, server side)."""

    name = "sql"
    template_name = "copilot.sql"
    template = SQL_TEMPLATE
    language = "sql"

    def __init__(self, database: str | None = None, check_rows: int = 5) -> None:
        self.database = database
        self.check_rows = check_rows

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        if client is None:
            return []
        arguments = {"database": self.database} if self.database else {}
        text = schema_text(client.call_tool("sql__schema", arguments))
        return [ContextItem("sql__schema", "Database schema", text)] if text else []

    def examples(self, client: ContextClient | None, request: str, k: int = 3) -> list[ContextItem]:
        """Similar worked examples (accepted suggestions, workspace pairs), when the endpoint serves them."""
        if client is None:
            return []
        arguments: dict[str, Any] = {"query": request, "target": "sql", "k": k}
        if self.database:
            arguments["database"] = self.database
        try:
            page = client.call_tool("examples__search", arguments)
        except ToolFailed:  # no examples provider, or this caller may not use it
            return []
        blocks = [f"Q: {e['request']}\n```sql\n{e['code']}\n```" for e in page.get("examples", [])]
        return (
            [ContextItem("examples__search", "Similar questions and their SQL", "\n\n".join(blocks))] if blocks else []
        )

    def extract(self, text: str) -> str:
        code = extract_code(text, ("sql", "duckdb"))
        return code.rstrip().rstrip(";").strip()

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        from contextlab.providers.sql import SQLRefused, check_read_only

        if not code:
            return Validation(False, "The answer holds no SQL query.")
        try:
            check_read_only(code)
        except SQLRefused as exc:
            return Validation(False, str(exc))
        if client is None:
            return Validation(True, detail={"checked": "parsed only (no ContextLab server)"})
        arguments: dict[str, Any] = {"sql": code, "limit": self.check_rows}
        if self.database:
            arguments["database"] = self.database
        try:
            result = client.call_tool("sql__query", arguments)
        except ToolFailed as exc:
            return Validation(False, str(exc))
        return Validation(True, detail={"columns": result.get("columns"), "rows": result.get("rows")})


TARGETS: dict[str, Callable[[], Target]] = {"sql": SQLTarget}


TemplateSource = Callable[[str], "tuple[str, str] | None"]
"""Template name -> (Jinja2 text, version tag) of a managed template, or None for the built-in one."""


def server_templates(endpoint: Endpoint, *, timeout: float = 10.0) -> TemplateSource:
    """Templates managed on the server (`contextlab prompts set copilot.sql ...`), canary included."""
    import httpx

    base = endpoint.url.rsplit("contextlab/mcp", 1)[0]
    headers = {}
    if endpoint.token:
        scheme = "Bearer" if endpoint.token.startswith("cl_") else "token"
        headers["Authorization"] = f"{scheme} {endpoint.token}"

    def fetch(name: str) -> tuple[str, str] | None:
        try:
            response = httpx.get(
                f"{base}contextlab/api/copilot/templates", params={"name": name}, headers=headers, timeout=timeout
            )
        except httpx.HTTPError:
            return None  # the built-in template still works; context errors are reported elsewhere
        data = response.json() if response.status_code == 200 else {}
        if not data.get("template"):
            return None
        return data["template"], f"{name}@v{data['version']}" + (":canary" if data.get("label") == "canary" else "")

    return fetch


class Copilot:
    """Natural language to validated code for one target, grounded in MCP context."""

    def __init__(
        self,
        router: LLMRouter,
        client: ContextClient | None,
        *,
        user: str = "",
        project: str = "default",
        max_repairs: int = 2,
        max_tokens: int = 400,
        templates: TemplateSource | None = None,
    ) -> None:
        self.templates = templates
        self.router = router
        self.client = client
        self.user = user
        self.project = project
        self.max_repairs = max_repairs
        self.max_tokens = max_tokens

    def generate(
        self,
        target: str,
        request: str,
        *,
        model: str | None = None,
        extra_context: Sequence[ContextItem] = (),
        use_context: bool = True,
        validate: bool = True,
        sensitivity: str = "internal",
        on_token: Callable[[str], None] | None = None,
        recipe: ContextRecipe | None = None,
        tool_steps: int = 0,
    ) -> Suggestion:
        if target not in TARGETS:
            raise CopilotError(f"Unknown target {target!r}. Targets: {', '.join(sorted(TARGETS))}.")
        if not request or not request.strip():
            raise CopilotError(f"Write what you need below `%%copilot {target}`, e.g. 'top 5 customers by revenue'.")
        spec = TARGETS[target]()
        context: list[ContextItem] = []
        dropped: list[str] = []
        skipped: list[str] = []
        if use_context and recipe is not None:
            gathered = run_recipe(
                recipe,
                self.client,
                target=target,
                request=request,
                sensitivity=sensitivity,
                kernel_items=extra_context,
            )
            context, dropped, skipped = gathered.items, gathered.dropped, gathered.skipped
        elif use_context:
            try:
                context = [*spec.gather(self.client), *extra_context]
                if hasattr(spec, "examples"):  # worked examples come after the schema, which matters more
                    context.extend(spec.examples(self.client, request))
                context.extend(docs_context(self.client, request))
            except ToolFailed as exc:
                raise CopilotError(f"The context for {target} could not be gathered: {exc}") from exc
        if hasattr(spec, "use_context"):  # targets that read the context themselves (e.g. the function under test)
            spec.use_context(context)
        template, prompt_version = spec.template, f"{spec.template_name}@builtin"
        managed = self.templates(spec.template_name) if self.templates is not None else None
        if managed is not None:
            template, prompt_version = managed
        try:
            system = _ENV.from_string(template).render(context=context, target=target)
        except jinja2.TemplateError as exc:
            raise CopilotError(
                f"The template {prompt_version} does not render ({exc}); roll it back with "
                f"`contextlab prompts rollback {spec.template_name}`."
            ) from exc
        messages = [{"role": "system", "content": system}, {"role": "user", "content": request.strip()}]
        attempts: list[Attempt] = []
        validation = Validation(False, "not generated")
        code = ""
        completion_model = model or ""
        tools = self._offered_tools(request) if tool_steps and self.client is not None else []
        tool_log: list[dict[str, Any]] = []
        for round_ in range(self.max_repairs + 1):
            started = time.perf_counter()
            for step in range(tool_steps + 1):
                completion = self.router.complete(
                    messages,
                    target=target,
                    sensitivity=sensitivity,
                    project=self.project,
                    user=self.user,
                    model=model,
                    max_tokens=max(self.max_tokens, getattr(spec, "max_tokens", 0)),
                    on_token=on_token,
                    tools=tools if step < tool_steps else None,
                )
                if not completion.tool_calls:
                    break
                messages = [*messages, *self._run_tools(completion, {t["function"]["name"] for t in tools}, tool_log)]
            completion_model = completion.model
            code = spec.extract(completion.text)
            validation = spec.validate(code, self.client) if validate else Validation(True)
            attempts.append(
                Attempt(
                    completion.model,
                    completion.text,
                    code,
                    validation.ok,
                    validation.error,
                    round(time.perf_counter() - started, 4),
                )
            )
            if validation.ok or round_ == self.max_repairs:
                break
            messages += [
                {"role": "assistant", "content": completion.text},
                {
                    "role": "user",
                    "content": f"That failed: {validation.error}\nReturn the corrected {spec.language} only.",
                },
            ]
        return Suggestion(
            id=uuid.uuid4().hex,
            target=target,
            request=request.strip(),
            code=code,
            valid=validation.ok,
            model=completion_model,
            prompt_version=prompt_version,
            context=[asdict(c) for c in context],
            attempts=attempts,
            validation=validation.detail if validation.ok else {"error": validation.error},
            context_dropped=dropped,
            context_skipped=skipped,
            tool_calls=tool_log,
        )

    def _offered_tools(self, request: str, k: int = 8) -> list[dict[str, Any]]:
        """The tools most relevant to the request (the gateway's search_tools), as OpenAI function specs."""
        assert self.client is not None
        try:
            found = self.client.call_tool("search_tools", {"query": request, "k": k}).get("tools", [])
        except ToolFailed:
            return []
        return [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t["description"][:1000], "parameters": t["inputSchema"]},
            }
            for t in found
        ]

    def _run_tools(self, completion: Any, offered: set[str], log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The assistant's tool calls run through the gateway (audited there), as chat messages."""
        assert self.client is not None
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for c in completion.tool_calls
        ]
        out: list[dict[str, Any]] = [{"role": "assistant", "content": completion.text or None, "tool_calls": calls}]
        for call in completion.tool_calls:
            if call["name"] not in offered:
                result, ok = f"error: {call['name']!r} is not one of the offered tools", False
            else:
                try:
                    result, ok = json.dumps(self.client.call_tool(call["name"], call["arguments"]), default=str), True
                except ToolFailed as exc:
                    result, ok = f"error: {exc}", False
            log.append({"name": call["name"], "arguments": call["arguments"], "ok": ok})
            out.append({"role": "tool", "tool_call_id": call["id"], "content": result[:MAX_TOOL_RESULT]})
        return out


def _register_builtin_targets() -> None:
    """Fill TARGETS with the targets of `contextlab.copilot.targets` (python, test, er, flow, api, alert).

    That package imports the names above, so it is imported last; it registers itself when its import
    completes, which also covers the case where it is imported before this module.
    """
    import contextlab.copilot.targets  # noqa: F401


_register_builtin_targets()
