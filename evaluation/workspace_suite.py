"""A tool-choice suite for your own workspace: the tools a running ContextLab server lists, plus
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
      - {name: sql__databases, arguments: {}}
      - {name: kernels__list, arguments: {}}
```

A scalar argument value is read as a list of one accepted value. Every case offers all the
server's tools (or `tools:` a list of names to offer only those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contextlab.evaluation.suite import AcceptedCall, SuiteFormatError, ToolSelectionCase, ToolSelectionSuite


def server_tools(endpoint: Any) -> list[dict[str, Any]]:
    """The tools a ContextLab endpoint lists (MCP dicts: name, description, inputSchema), via the official client."""
    from contextlab.copilot.context import ContextClient

    client = ContextClient(endpoint)

    async def run(session: Any) -> list[dict[str, Any]]:
        listed = await session.list_tools()
        return [
            {"name": t.name, "description": t.description or "", "inputSchema": dict(t.input_schema or {})}
            for t in listed.tools
        ]

    return client._run(run)


def load_workspace_suite(path: str | Path, tools: list[dict[str, Any]]) -> ToolSelectionSuite:
    """Read the YAML cases and attach the tools; errors name the file, the case and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SuiteFormatError(f"is not valid YAML ({getattr(exc, 'problem', exc)})", path=path, line=line) from exc
    except OSError as exc:
        raise SuiteFormatError(f"cannot be read: {exc}", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not data["cases"]:
        raise SuiteFormatError("needs a non-empty `cases:` list", field="cases", path=path)
    by_name = {t["name"]: t for t in tools}
    cases = []
    seen: set[str] = set()
    for index, item in enumerate(data["cases"]):
        where = f"cases[{index}]"
        if not isinstance(item, dict):
            raise SuiteFormatError("must be a mapping", field=where, path=path)
        case_id = str(item.get("id") or f"case-{index + 1}")
        if case_id in seen:
            raise SuiteFormatError(f"duplicate id {case_id!r}", field=f"{where}.id", path=path)
        seen.add(case_id)
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise SuiteFormatError("needs a non-empty `question`", field=f"{where}.question", path=path)
        offered_names = item.get("tools") or list(by_name)
        unknown = [n for n in offered_names if n not in by_name]
        if unknown:
            raise SuiteFormatError(
                f"offers tools the server does not list: {unknown}", field=f"{where}.tools", path=path
            )
        raw_calls = item.get("calls", [item["call"]] if "call" in item else None)
        if raw_calls is None:
            raise SuiteFormatError("needs `call:` (or `calls:`, or `call: none`)", field=where, path=path)
        accepted = (
            []
            if raw_calls in (["none"], [None], "none")
            else [_accepted(call, f"{where}.calls[{i}]", by_name, path) for i, call in enumerate(raw_calls)]
        )
        cases.append(
            ToolSelectionCase(
                id=case_id,
                query=question,
                messages=[{"role": "user", "content": question}],
                tools=[by_name[n] for n in offered_names],
                accepted=accepted,
                category="workspace_irrelevance"
                if not accepted
                else ("workspace_parallel" if len(accepted) > 1 else "workspace"),
            )
        )
    return ToolSelectionSuite(name=str(data.get("name") or path.stem), cases=cases)


def _accepted(call: Any, where: str, tools: dict[str, dict[str, Any]], path: Path) -> AcceptedCall:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise SuiteFormatError("must be {name: ..., arguments: {...}}", field=where, path=path)
    if call["name"] not in tools:
        raise SuiteFormatError(
            f"names {call['name']!r}, which the server does not list", field=f"{where}.name", path=path
        )
    arguments = call.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise SuiteFormatError("must be a mapping", field=f"{where}.arguments", path=path)
    properties = tools[call["name"]].get("inputSchema", {}).get("properties", {})
    unknown = [p for p in arguments if p not in properties]
    if unknown:
        raise SuiteFormatError(f"{call['name']} has no parameter {unknown[0]!r}", field=f"{where}.arguments", path=path)
    return AcceptedCall(call["name"], {k: v if isinstance(v, list) else [v] for k, v in arguments.items()})
