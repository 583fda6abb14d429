"""The tool-selection suite: questions, the MCP tools offered with each, and the calls accepted as right.

A suite is stored as JSON Lines. The first line is a header naming the suite and the format
version; every other line is one case. Keeping one case per line lets a reader point at the
exact line of a broken case, and lets large suites be diffed and streamed.

```
{"format": "contextlab.tool-selection-suite", "version": 1, "name": "bfcl"}
{"id": "simple_python_0", "query": "...", "messages": [...], "tools": [...], "accepted": [...], "category": "..."}
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITE_FORMAT = "contextlab.tool-selection-suite"
SUITE_FORMAT_VERSION = 1


class SuiteFormatError(ValueError):
    """A suite file or dict that does not follow the format; says where (file, line, field) and what is wrong."""

    def __init__(self, message: str, *, field: str = "", path: str | Path | None = None, line: int | None = None):
        self.detail = message
        self.field = field
        self.path = str(path) if path is not None else None
        self.line = line
        where = ":".join(part for part in (self.path, str(line) if line is not None else None) if part)
        prefix = f"{where}: " if where else ""
        location = f"{field}: " if field else ""
        super().__init__(f"{prefix}{location}{message}")


@dataclass(frozen=True)
class AcceptedCall:
    """One expected call, BFCL style: each parameter maps to the list of values accepted for it.

    An empty string `""` in a parameter's list means the parameter may be omitted. A parameter
    absent from `arguments` must not be passed at all.
    """

    name: str
    arguments: dict[str, list[Any]]

    def to_dict(self) -> dict[str, Any]:
        """The call as a JSON-ready dict."""
        return {"name": self.name, "arguments": self.arguments}

    @classmethod
    def from_dict(cls, data: Any, *, field: str = "accepted") -> AcceptedCall:
        """Build an accepted call from its dict, raising `SuiteFormatError` naming `field` if malformed."""
        _expect(data, dict, field)
        name = _expect(data.get("name"), str, f"{field}.name")
        if not name:
            raise SuiteFormatError("must not be empty", field=f"{field}.name")
        arguments = _expect(data.get("arguments"), dict, f"{field}.arguments")
        for param, values in arguments.items():
            _expect(values, list, f"{field}.arguments.{param}", what="a list of accepted values")
        return cls(name=name, arguments=arguments)


@dataclass
class ToolSelectionCase:
    """One question: the chat so far, the MCP tools on offer and the calls that answer it.

    `query` is the text of the last user message; `messages` holds every turn flattened into
    one list of `{"role", "content"}` dicts; `tools` are MCP tool dicts (`name`, `description`,
    `inputSchema`); `accepted` holds one `AcceptedCall` per call the answer needs.
    """

    id: str
    query: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    accepted: list[AcceptedCall]
    category: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The case as a JSON-ready dict."""
        return {
            "id": self.id,
            "query": self.query,
            "messages": self.messages,
            "tools": self.tools,
            "accepted": [call.to_dict() for call in self.accepted],
            "category": self.category,
        }

    @classmethod
    def from_dict(cls, data: Any, *, field: str = "case") -> ToolSelectionCase:
        """Build a case from its dict, raising `SuiteFormatError` naming the malformed field."""
        _expect(data, dict, field)
        case_id = _expect(data.get("id"), str, f"{field}.id")
        if not case_id:
            raise SuiteFormatError("must not be empty", field=f"{field}.id")
        query = _expect(data.get("query"), str, f"{field}.query")
        messages = _expect(data.get("messages"), list, f"{field}.messages")
        for index, message in enumerate(messages):
            _expect(message, dict, f"{field}.messages[{index}]")
            _expect(message.get("role"), str, f"{field}.messages[{index}].role")
            if "content" not in message:
                raise SuiteFormatError("is missing", field=f"{field}.messages[{index}].content")
        tools = _expect(data.get("tools"), list, f"{field}.tools")
        names: set[str] = set()
        for index, tool in enumerate(tools):
            where = f"{field}.tools[{index}]"
            _expect(tool, dict, where)
            name = _expect(tool.get("name"), str, f"{where}.name")
            if name in names:
                raise SuiteFormatError(f"duplicate tool name {name!r}", field=f"{where}.name")
            names.add(name)
            if "description" in tool:
                _expect(tool["description"], str, f"{where}.description")
            _expect(tool.get("inputSchema"), dict, f"{where}.inputSchema")
        accepted_data = _expect(data.get("accepted"), list, f"{field}.accepted")
        if not accepted_data:
            raise SuiteFormatError("must list at least one call", field=f"{field}.accepted")
        accepted = [
            AcceptedCall.from_dict(call, field=f"{field}.accepted[{i}]") for i, call in enumerate(accepted_data)
        ]
        for index, call in enumerate(accepted):
            if call.name not in names:
                raise SuiteFormatError(
                    f"names {call.name!r}, which is not one of the case's tools",
                    field=f"{field}.accepted[{index}].name",
                )
        category = _expect(data.get("category", ""), str, f"{field}.category")
        return cls(id=case_id, query=query, messages=messages, tools=tools, accepted=accepted, category=category)


@dataclass
class ToolSelectionSuite:
    """A named list of tool-selection cases, stored as JSON Lines (a header line, then one case a line)."""

    name: str
    cases: list[ToolSelectionCase] = field(default_factory=list)

    def header(self) -> dict[str, Any]:
        """The first line of the suite file."""
        return {"format": SUITE_FORMAT, "version": SUITE_FORMAT_VERSION, "name": self.name}

    def to_dict(self) -> dict[str, Any]:
        """The whole suite as one JSON-ready dict: the header fields plus `cases`."""
        return {**self.header(), "cases": [case.to_dict() for case in self.cases]}

    @classmethod
    def from_dict(cls, data: Any) -> ToolSelectionSuite:
        """Build a suite from `to_dict()` output, raising `SuiteFormatError` naming the malformed field."""
        name = _check_header(data)
        cases_data = _expect(data.get("cases"), list, "cases")
        cases = [ToolSelectionCase.from_dict(case, field=f"cases[{i}]") for i, case in enumerate(cases_data)]
        _check_unique_ids(cases, lines=None, path=None)
        return cls(name=name, cases=cases)

    def save(self, path: str | Path) -> None:
        """Write the suite as JSON Lines: the header, then one case a line."""
        lines = [json.dumps(self.header(), ensure_ascii=False)]
        lines.extend(json.dumps(case.to_dict(), ensure_ascii=False) for case in self.cases)
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ToolSelectionSuite:
        """Read a suite written by `save`; a malformed file raises `SuiteFormatError` with file, line and field."""
        name: str | None = None
        cases: list[ToolSelectionCase] = []
        lines: list[int] = []
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as error:
                    raise SuiteFormatError(
                        f"invalid JSON ({error.msg} at column {error.colno})", path=path, line=number
                    ) from None
                try:
                    if name is None:
                        name = _check_header(data)
                    else:
                        cases.append(ToolSelectionCase.from_dict(data))
                        lines.append(number)
                except SuiteFormatError as error:
                    raise SuiteFormatError(error.detail, field=error.field, path=path, line=number) from None
        if name is None:
            raise SuiteFormatError("empty file: expected a header line", path=path, line=1)
        _check_unique_ids(cases, lines=lines, path=path)
        return cls(name=name, cases=cases)


def _expect(value: Any, kind: type, field: str, *, what: str | None = None) -> Any:
    if type(value) is not kind:
        expected = what or {dict: "an object", list: "a list", str: "a string"}.get(kind, kind.__name__)
        got = "missing" if value is None else f"got {type(value).__name__}"
        raise SuiteFormatError(f"expected {expected}, {got}", field=field)
    return value


def _check_header(data: Any) -> str:
    _expect(data, dict, "header")
    if data.get("format") != SUITE_FORMAT:
        raise SuiteFormatError(f"expected {SUITE_FORMAT!r}, got {data.get('format')!r}", field="format")
    if data.get("version") != SUITE_FORMAT_VERSION:
        raise SuiteFormatError(
            f"unsupported version {data.get('version')!r} (this reader knows {SUITE_FORMAT_VERSION})", field="version"
        )
    return _expect(data.get("name"), str, "name")


def _check_unique_ids(cases: list[ToolSelectionCase], *, lines: list[int] | None, path: str | Path | None) -> None:
    seen: dict[str, int] = {}
    for index, case in enumerate(cases):
        if case.id in seen:
            first = seen[case.id]
            if lines is not None:
                raise SuiteFormatError(
                    f"duplicate case id {case.id!r} (first on line {lines[first]})",
                    field="case.id",
                    path=path,
                    line=lines[index],
                )
            raise SuiteFormatError(
                f"duplicate case id {case.id!r} (first at cases[{first}])", field=f"cases[{index}].id"
            )
        seen[case.id] = index
