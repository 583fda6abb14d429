"""Tool calling as text, for models without native tool calls (the offline SmolLM2, or an endpoint marked so).

The format is SmolLM2's. Checked on the installed model: the chat template in the GGUF file
(`tokenizer.chat_template`) and in the dequantised tokenizer is plain ChatML, with no tool section
and no tool tokens. The SmolLM2 family's function-calling format (SmolLM2-1.7B-Instruct's model
card, trained on Argilla's Synth-APIGen data; Ollama's `smollm2` template) lists the tools in the
system message inside `<tools></tools>` and answers with one JSON list of calls inside
`<tool_call></tool_call>`, `[]` when no function fits. `TOOL_SYSTEM_PROMPT` is that prompt.

Measured here on BFCL questions: zero-shot, the 135M model never wrote `<tool_call>` (0 of 12); after
one demonstration turn (a call of the first offered tool with placeholder values of the right
types) it did for 11 of 20 answerable questions of the benchmark sample (and for none of 5
irrelevant ones). So `tool_messages` adds that turn unless asked not to.

`parse_tool_calls` reads an answer back into calls (`{"name", "arguments"}` dicts, the shape the AST
checker takes), tolerant of code fences, prose around the calls, a missing closing tag, stray
closing brackets, Python-style quotes and arguments given as a JSON string. `complete_with_tools`
asks a model through the router, natively when its backend supports tool calls, else in text.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from contextlab.copilot.llm_types import Completion

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# Stop at the end of the call list: what follows is the model talking about its call.
TEXT_PROTOCOL_STOP = [TOOL_CALL_CLOSE]

TOOL_SYSTEM_PROMPT = "\n".join(
    [
        "You are an expert in composing functions. You are given a question and a set of possible functions.",
        "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.",
        "If none of the functions can be used, point it out and refuse to answer.",
        "If the given question lacks the parameters required by the function, also point it out.",
        "",
        "You have access to the following tools:",
        "<tools>{tools}</tools>",
        "",
        "The output MUST strictly adhere to the following format, and NO other text MUST be included.",
        "The example format is as follows. Please make sure the parameter type is correct. "
        "If no function call is needed, please make the tool calls an empty list '[]'.",
        "<tool_call>[",
        '{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},',
        "... (more tool calls as required)",
        "]</tool_call>",
    ]
)

DEMONSTRATION_REQUEST = "Show me the format of a call."
_PLACEHOLDERS: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|$)", re.S)
_ARGUMENT_KEYS = ("arguments", "parameters", "args")
_CALL_KEY = re.compile(r"[\"']name[\"']\s*:")

Protocol = Literal["auto", "native", "text"]


# -- offering tools ---------------------------------------------------------------------------------------------------
def tool_spec(tool: Mapping[str, Any]) -> dict[str, Any]:
    """`{"name", "description", "parameters"}` of an MCP tool dict (`inputSchema`) or an OpenAI function spec."""
    if isinstance(tool.get("function"), Mapping):
        tool = tool["function"]
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tool needs a name: {json.dumps(tool, default=str)[:200]}")
    parameters = tool.get("inputSchema", tool.get("parameters")) or {"type": "object", "properties": {}}
    return {"name": name, "description": str(tool.get("description") or ""), "parameters": dict(parameters)}


def openai_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tools as OpenAI function specs, for backends with native tool calling."""
    return [{"type": "function", "function": tool_spec(tool)} for tool in tools]


def render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """One JSON object a line (name, description, JSON-schema parameters), as they go inside `<tools>`."""
    return "\n".join(json.dumps(tool_spec(tool), ensure_ascii=False) for tool in tools)


def tool_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """SmolLM2's function-calling system prompt offering `tools`."""
    return TOOL_SYSTEM_PROMPT.format(tools=render_tools(tools))


def demonstration(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """A user/assistant turn calling the first tool with typed placeholders (its required parameters,
    else its first one): it shows the answer's shape without hinting at any question's answer."""
    if not tools:
        return [
            {"role": "user", "content": DEMONSTRATION_REQUEST},
            {"role": "assistant", "content": f"{TOOL_CALL_OPEN}[]{TOOL_CALL_CLOSE}"},
        ]
    spec = tool_spec(tools[0])
    properties = spec["parameters"].get("properties") or {}
    names = [p for p in spec["parameters"].get("required") or [] if p in properties] or list(properties)[:1]
    arguments = {}
    for name in names:
        schema = properties[name] if isinstance(properties[name], Mapping) else {}
        enum = schema.get("enum")
        kind = schema.get("type")
        arguments[name] = enum[0] if enum else _PLACEHOLDERS.get(kind if isinstance(kind, str) else "", "...")
    call = json.dumps({"name": spec["name"], "arguments": arguments}, ensure_ascii=False)
    return [
        {"role": "user", "content": DEMONSTRATION_REQUEST},
        {"role": "assistant", "content": f"{TOOL_CALL_OPEN}[{call}]{TOOL_CALL_CLOSE}"},
    ]


def tool_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], *, demonstrate: bool = True
) -> list[dict[str, str]]:
    """The chat for a text-protocol model: the tool system prompt (followed by the chat's own system text),
    the demonstration turn, then the chat's user and assistant turns."""
    system = [str(m.get("content") or "") for m in messages if m.get("role") == "system"]
    chat = [
        {"role": str(m["role"]), "content": str(m.get("content") or "")}
        for m in messages
        if m.get("role") in ("user", "assistant")
    ]
    prompt = "\n\n".join([tool_system_prompt(tools), *[s for s in system if s.strip()]])
    return [{"role": "system", "content": prompt}, *(demonstration(tools) if demonstrate else []), *chat]


# -- reading answers --------------------------------------------------------------------------------------------------
@dataclass
class ParsedCalls:
    """What a text answer says: `calls` ({"name", "arguments"} dicts), and `status`:

    - "calls": at least one call was read;
    - "none": the model made no call (an empty list, or prose without a call);
    - "unreadable": it tried (a `<tool_call>` block, or call-shaped JSON) but nothing could be read; `detail` says why.
    """

    calls: list[dict[str, Any]] = field(default_factory=list)
    status: Literal["calls", "none", "unreadable"] = "none"
    detail: str = ""


def parse_tool_calls(text: str) -> ParsedCalls:
    """The calls in a text-protocol answer: `<tool_call>` blocks first, else fenced JSON, else JSON in the prose."""
    text = (text or "").strip()
    if not text:
        return ParsedCalls(detail="empty answer")
    blocks = [m.group(1) for m in _BLOCK.finditer(text)]
    if blocks:
        return _read_blocks(blocks, tried=True)
    fenced = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "json", "tool_call", "tool_code")]
    if fenced:
        parsed = _read_blocks(fenced, tried=True)
        if parsed.status == "calls" or all(_is_empty_list(body) for body in fenced):
            return parsed
    return _read_blocks([text], tried=False)


def _read_blocks(blocks: Sequence[str], *, tried: bool) -> ParsedCalls:
    """Calls from each block. `tried`: the blocks were written as calls (`<tool_call>` bodies, JSON fences), so
    anything unreadable there is a failed call; in prose only call-shaped text that does not read is one."""
    calls: list[dict[str, Any]] = []
    problems: list[str] = []
    for block in blocks:
        body = block.strip()
        if not body or _is_empty_list(body):
            continue
        found = [call for value in _values(body, literal=tried) for call in _calls_in(value)]
        calls.extend(found)
        if not found and (tried or _CALL_KEY.search(body)):
            problems.append(_problem(body))
    if calls:
        return ParsedCalls(calls, "calls", "; ".join(problems))
    if problems:
        return ParsedCalls([], "unreadable", "; ".join(problems))
    return ParsedCalls()


def _is_empty_list(body: str) -> bool:
    return re.fullmatch(r"\s*\[\s*\]\s*", body) is not None


def _values(body: str, *, literal: bool) -> list[Any]:
    """The call-holding values in `body`, left to right: the first whole list or object when it holds calls, else
    every value that reads on its own (so `[{...}, {...}}]` still gives both calls). `literal`: Python literals
    (single quotes, True) count too."""
    starts = [i for i, ch in enumerate(body) if ch in "[{"]
    values, position = [], 0
    for start in starts:
        if start < position:
            continue
        decoded = _decode_at(body, start, literal)
        if decoded is not None and _calls_in(decoded[0]):
            values.append(decoded[0])
            position = decoded[1]
    return values


def _problem(body: str) -> str:
    start = next((i for i, ch in enumerate(body) if ch in "[{"), None)
    if start is None:
        return f"no call in {body[:120]!r}"
    if _matching_end(body, start) is None:
        return f"truncated call: {body[:120]!r}"
    return f"not a readable call: {body[:120]!r}"


def _decode_at(body: str, start: int, literal: bool) -> tuple[Any, int] | None:
    """(value, end) of the JSON value at `start`, else (with `literal`) of the balanced Python literal there."""
    try:
        value, end = json.JSONDecoder().raw_decode(body, start)
        return value, end
    except ValueError:
        pass
    end = _matching_end(body, start) if literal else None
    if end is None:
        return None
    try:
        return ast.literal_eval(body[start:end]), end
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _matching_end(body: str, start: int) -> int | None:
    """The index after the bracket that closes the one at `start` (quotes respected), or None."""
    closing = {"[": "]", "{": "}"}
    stack: list[str] = []
    quote = ""
    escaped = False
    for index in range(start, len(body)):
        ch = body[index]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in closing:
            stack.append(closing[ch])
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return index + 1
    return None


def _calls_in(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [call for call in map(as_call, items) if call is not None]


def as_call(item: Any) -> dict[str, Any] | None:
    """`{"name", "arguments"}` from a call-shaped dict (`arguments`, `parameters` or `args`, possibly a JSON string;
    OpenAI's `{"function": {...}}` too), or None when it is not one."""
    if not isinstance(item, Mapping):
        return None
    if isinstance(item.get("function"), Mapping):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    arguments: Any = next((item[key] for key in _ARGUMENT_KEYS if key in item), {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        return None
    return {"name": name.strip(), "arguments": dict(arguments)}


# -- asking a model ---------------------------------------------------------------------------------------------------
@dataclass
class ToolChoice:
    """A model's answer to a request with tools: the completion, the calls read from it and how they were asked."""

    completion: Completion
    parsed: ParsedCalls
    protocol: Literal["native", "text"]


def uses_native_tools(backend: Any, protocol: Protocol = "auto") -> bool:
    """Whether `protocol` means native tool calls for this backend ("auto": when the backend supports them)."""
    if protocol not in ("auto", "native", "text"):
        raise ValueError(f"tool protocol {protocol!r}: use auto, native or text")
    if protocol == "auto":
        return bool(getattr(backend, "supports_tools", False))
    if protocol == "native" and not getattr(backend, "supports_tools", False):
        raise ValueError(f"the {getattr(backend, 'name', type(backend).__name__)} backend has no native tool calls")
    return protocol == "native"


def complete_with_tools(
    router: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    *,
    model: str | None = None,
    protocol: Protocol = "auto",
    max_tokens: int = 256,
    target: str = "tool_choice",
    demonstrate: bool = True,
) -> ToolChoice:
    """Ask `model` (an `LLMRouter` model name; None: the router's first choice) which tools to call.

    Native: the tools go as OpenAI function specs and the calls come back structured. Text: the chat
    gets SmolLM2's tool prompt and the answer is parsed. Router errors (`LLMError`, `PolicyRefused`) propagate.
    """
    spec = router.chain(target=target, model=model)[0]
    native = uses_native_tools(router.backend(spec), protocol)
    if native:
        chat = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in messages]
        completion = router.complete(
            chat, target=target, model=spec.name, max_tokens=max_tokens, tools=openai_tools(tools)
        )
        calls = [{"name": c["name"], "arguments": c.get("arguments") or {}} for c in completion.tool_calls]
        parsed = ParsedCalls(calls, "calls" if calls else "none")
        return ToolChoice(completion, parsed, "native")
    completion = router.complete(
        tool_messages(messages, tools, demonstrate=demonstrate),
        target=target,
        model=spec.name,
        max_tokens=max_tokens,
        stop=TEXT_PROTOCOL_STOP,
    )
    return ToolChoice(completion, parse_tool_calls(completion.text), "text")
