"""A tool-choice suite for your own workspace: the tools a running ContextLab server lists, plus the
cases users write in YAML.

```yaml
name: shop-tools
cases:
  - id: schema
    question: Which tables are in the shop database?
    call: {name: sql__schema, arguments: {database: [shop, ""]}}   # accepted values; "" = may be omitted
  - id: weather
    question: What will the weather be in Paris tomorrow?
    call: none                                                      # no tool fits: the model must decline
  - id: two-calls
    question: List the databases and the running kernels.
    calls:
      - {name: sql__databases}
      - {name: kernels__list}
```

An argument maps to its accepted values: a list, or one scalar (read as a list of one). For an
array parameter each accepted value is itself a list (`columns: [[id, name]]`). Every required
parameter of the tool must be listed, else no answer could pass. Every case offers all the server's
tools, or `tools:` a list of names to offer only those. Errors name the file, line and field.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from contextlab.evaluation.suite import AcceptedCall, SuiteFormatError, ToolSelectionCase, ToolSelectionSuite

SUITE_KEYS = {"name", "description", "cases"}
CASE_KEYS = {"id", "question", "call", "calls", "tools", "note"}
NO_CALL = "none"


def server_tools(endpoint: Any) -> list[dict[str, Any]]:
    """The tools a ContextLab endpoint lists (MCP dicts: name, description, inputSchema), via the official client.

    `endpoint` is a `copilot.context.Endpoint` (the MCP URL and a token), as the caller sees them: with the
    stable (or the caller's canary) descriptions applied, and only the tools its token may see.
    """
    from contextlab.copilot.context import ContextClient

    async def run(session: Any) -> list[dict[str, Any]]:
        listed = await session.list_tools()
        return [
            {"name": t.name, "description": t.description or "", "inputSchema": dict(t.input_schema or {})}
            for t in listed.tools
        ]

    return ContextClient(endpoint)._run(run)


def workspace_suite_from_server(path: str | Path, *, server_url: str, token: str) -> ToolSelectionSuite:
    """`load_workspace_suite` with the tools of the server at `server_url` (the Jupyter base URL)."""
    from contextlab.copilot.context import Endpoint

    return load_workspace_suite(path, server_tools(Endpoint(server_url.rstrip("/") + "/contextlab/mcp", token)))


def load_workspace_suite(path: str | Path, tools: list[dict[str, Any]]) -> ToolSelectionSuite:
    """Read the YAML cases and attach the tools; a `SuiteFormatError` names the file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteFormatError(f"cannot be read: {exc}", path=path) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SuiteFormatError(f"is not valid YAML ({getattr(exc, 'problem', exc)})", path=path, line=line) from exc
    return _Reader(path, root, tools).suite(data)


class _Reader:
    """Checks the parsed YAML against the tools, pointing each error at the line of the offending node."""

    def __init__(self, path: Path, root: Any, tools: list[dict[str, Any]]) -> None:
        self.path = path
        self.root = root
        self.tools = {t["name"]: t for t in tools}

    def fail(self, message: str, where: tuple[Any, ...]) -> SuiteFormatError:
        field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(where))
        return SuiteFormatError(message, field=field, path=self.path, line=self.line(where))

    def line(self, where: tuple[Any, ...]) -> int | None:
        """The 1-based line of the node at `where` (or of its nearest parent that exists)."""
        node = self.root
        if node is None:
            return None
        for part in where:
            child = None
            if isinstance(node, yaml.MappingNode):
                child = next((value for key, value in node.value if key.value == part), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    def suite(self, data: Any) -> ToolSelectionSuite:
        if not isinstance(data, dict):
            raise self.fail("the file must be a mapping with a `cases:` list", ())
        self.unknown_keys(data, SUITE_KEYS, ())
        cases_data = data.get("cases")
        if not isinstance(cases_data, list) or not cases_data:
            raise self.fail("needs a non-empty `cases:` list", ("cases",))
        name = data.get("name", self.path.stem)
        if not isinstance(name, str) or not name.strip():
            raise self.fail("must be a non-empty string", ("name",))
        cases: list[ToolSelectionCase] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(cases_data):
            case = self.case(item, ("cases", index))
            if case.id in seen:
                raise self.fail(f"duplicate id {case.id!r} (first at cases[{seen[case.id]}])", ("cases", index, "id"))
            seen[case.id] = index
            cases.append(case)
        return ToolSelectionSuite(name=name.strip(), cases=cases)

    def unknown_keys(self, item: dict[str, Any], allowed: set[str], where: tuple[Any, ...]) -> None:
        for key in item:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, 1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(allowed))}"
                raise self.fail(f"unknown key {key!r}{hint}", (*where, key))

    def case(self, item: Any, where: tuple[Any, ...]) -> ToolSelectionCase:
        if not isinstance(item, dict):
            raise self.fail("must be a mapping with `question` and `call`", where)
        self.unknown_keys(item, CASE_KEYS, where)
        case_id = item.get("id", f"case-{where[-1] + 1}")
        if not isinstance(case_id, str | int) or isinstance(case_id, bool) or not str(case_id).strip():
            raise self.fail("must be a non-empty string", (*where, "id"))
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise self.fail("needs a non-empty `question`", (*where, "question"))
        offered = self.offered(item, where)
        accepted = self.accepted(item, where, offered)
        category = (
            "workspace_irrelevance" if not accepted else "workspace_parallel" if len(accepted) > 1 else "workspace"
        )
        return ToolSelectionCase(
            id=str(case_id).strip(),
            query=question.strip(),
            messages=[{"role": "user", "content": question.strip()}],
            tools=[self.tools[name] for name in offered],
            accepted=accepted,
            category=category,
        )

    def offered(self, item: dict[str, Any], where: tuple[Any, ...]) -> list[str]:
        if "tools" not in item:
            return list(self.tools)
        names = item["tools"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise self.fail("must be a non-empty list of tool names", (*where, "tools"))
        for index, name in enumerate(names):
            if name not in self.tools:
                raise self.fail(self.not_listed(name), (*where, "tools", index))
        return list(dict.fromkeys(names))

    def accepted(self, item: dict[str, Any], where: tuple[Any, ...], offered: list[str]) -> list[AcceptedCall]:
        if "call" in item and "calls" in item:
            raise self.fail("give `call:` or `calls:`, not both", (*where, "calls"))
        if "call" in item:
            call = item["call"]
            if isinstance(call, str) and call.strip().lower() == NO_CALL:
                return []
            if not isinstance(call, dict):
                raise self.fail("must be {name: ..., arguments: {...}} or `none` (no tool fits)", (*where, "call"))
            return [self.call(call, (*where, "call"), offered)]
        if "calls" in item:
            calls = item["calls"]
            if not isinstance(calls, list) or not calls:
                raise self.fail(
                    "must be a non-empty list of calls (for no call, write `call: none`)", (*where, "calls")
                )
            return [self.call(call, (*where, "calls", i), offered) for i, call in enumerate(calls)]
        raise self.fail("needs `call:` (or `calls:`, or `call: none` when no tool fits)", where)

    def call(self, call: Any, where: tuple[Any, ...], offered: list[str]) -> AcceptedCall:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise self.fail("must be {name: ..., arguments: {...}}", where)
        self.unknown_keys(call, {"name", "arguments"}, where)
        name = call["name"]
        if name not in self.tools:
            raise self.fail(self.not_listed(name), (*where, "name"))
        if name not in offered:
            raise self.fail(f"{name} is not among the case's `tools:`", (*where, "name"))
        arguments = call.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise self.fail("must be a mapping of parameter → accepted values", (*where, "arguments"))
        schema = self.tools[name].get("inputSchema") or {}
        properties = schema.get("properties") or {}
        accepted: dict[str, list[Any]] = {}
        for param, values in arguments.items():
            if param not in properties:
                known = ", ".join(properties) or "none"
                raise self.fail(
                    f"{name} has no parameter {param!r} (its parameters: {known})", (*where, "arguments", param)
                )
            values = values if isinstance(values, list) else [values]
            if not values:
                raise self.fail("needs at least one accepted value", (*where, "arguments", param))
            if (properties[param] or {}).get("type") == "array" and any(
                not isinstance(v, list) and v != "" for v in values
            ):
                raise self.fail(
                    f"{param!r} is an array: list each accepted value as a list, e.g. [[a, b]]",
                    (*where, "arguments", param),
                )
            accepted[param] = values
        missing = [p for p in schema.get("required") or [] if p not in accepted]
        if missing:
            raise self.fail(
                f"{name} requires {', '.join(map(repr, missing))}: list the accepted values", (*where, "arguments")
            )
        return AcceptedCall(name, accepted)

    def not_listed(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.tools, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"names {name!r}, which the server does not list{hint}"
