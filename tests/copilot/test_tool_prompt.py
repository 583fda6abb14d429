"""Text-protocol tool calling: SmolLM2's prompt, the answer parser, and native vs text through the real router."""

from __future__ import annotations

import json

import pytest

from contextlab.copilot.llm import LLMRouter, ModelSpec
from contextlab.copilot.tool_prompt import (
    DEMONSTRATION_REQUEST,
    ParsedCalls,
    as_call,
    complete_with_tools,
    demonstration,
    openai_tools,
    parse_tool_calls,
    render_tools,
    tool_messages,
    tool_system_prompt,
    uses_native_tools,
)
from tests.support.fake_llm import FakeLLM

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "inputSchema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
        },
        "required": ["city", "days", "unit"],
    },
}
TIME = {"name": "get_time", "description": "The time now.", "inputSchema": {"type": "object", "properties": {}}}


def calls(*pairs: tuple[str, dict]) -> list[dict]:
    return [{"name": name, "arguments": arguments} for name, arguments in pairs]


@pytest.mark.parametrize(
    ("text", "status", "expected"),
    [
        # the trained format: one JSON list in one block
        ('<tool_call>[{"name": "f", "arguments": {"x": 1}}]</tool_call>', "calls", calls(("f", {"x": 1}))),
        (
            '<tool_call>[\n{"name": "f", "arguments": {}},\n{"name": "g", "arguments": {"y": "z"}}\n]</tool_call>',
            "calls",
            calls(("f", {}), ("g", {"y": "z"})),
        ),
        # closing tag cut by the stop sequence, or never written
        ('<tool_call>[{"name": "f", "arguments": {"x": 1}}]', "calls", calls(("f", {"x": 1}))),
        # one call per block, and a single object instead of a list
        (
            '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
            "calls",
            calls(("f", {}), ("g", {})),
        ),
        # prose after the block, and before it
        (
            '<tool_call>[{"name": "f", "arguments": {"x": 1}}]</tool_call>\nThis calls f with x=1.',
            "calls",
            calls(("f", {"x": 1})),
        ),
        ('Sure, here it is: <tool_call>[{"name": "f", "arguments": {}}]</tool_call>', "calls", calls(("f", {}))),
        # a stray closing bracket (seen from SmolLM2-135M): each call still reads
        (
            '<tool_call>[{"name": "f", "arguments": {"a": "1"}}, {"name": "g", "arguments": {"b": "2"}}}]</tool_call>',
            "calls",
            calls(("f", {"a": "1"}), ("g", {"b": "2"})),
        ),
        # Python-style quotes and True inside a block
        (
            "<tool_call>[{'name': 'f', 'arguments': {'ok': True, 'n': None}}]</tool_call>",
            "calls",
            calls(("f", {"ok": True, "n": None})),
        ),
        # arguments as a JSON string, `parameters` instead of `arguments`, OpenAI's shape, no arguments at all
        ('<tool_call>[{"name": "f", "arguments": "{\\"x\\": 2}"}]</tool_call>', "calls", calls(("f", {"x": 2}))),
        ('<tool_call>[{"name": "f", "parameters": {"a": "b"}}]</tool_call>', "calls", calls(("f", {"a": "b"}))),
        (
            '<tool_call>[{"type": "function", "function": {"name": "f", "arguments": "{}"}}]</tool_call>',
            "calls",
            calls(("f", {})),
        ),
        ('<tool_call>[{"name": " f "}]</tool_call>', "calls", calls(("f", {}))),
        # code fences: json or unlabelled, with text around
        ('```json\n[{"name": "f", "arguments": {"a": 1}}]\n```\nHope this helps!', "calls", calls(("f", {"a": 1}))),
        ('Call:\n```\n{"name": "f", "arguments": {}}\n```', "calls", calls(("f", {}))),
        ('```json\n{"name": "f", "arguments": {"a": [1, 2]}}', "calls", calls(("f", {"a": [1, 2]}))),
        # bare JSON in prose, after an unrelated bracket
        ('See [1]. I will call {"name": "f", "arguments": {"y": [1, 2]}} now', "calls", calls(("f", {"y": [1, 2]}))),
        # nested JSON values in arguments stay whole
        (
            '<tool_call>[{"name": "f", "arguments": {"q": {"a": [{"b": 1}]}, "s": "x}]"}}]</tool_call>',
            "calls",
            calls(("f", {"q": {"a": [{"b": 1}]}, "s": "x}]"})),
        ),
        # declining: an empty list in any form, prose, code that is not a call, an empty answer
        ("<tool_call>[]</tool_call>", "none", []),
        ("<tool_call>[ ]", "none", []),
        ("[]", "none", []),
        ("```json\n[]\n```", "none", []),
        ("None of these functions can tell the weather; I cannot answer.", "none", []),
        ('```python\ndef f():\n    return {"location": {"type": "string"}}\n```', "none", []),
        ("The answer is 42. See [1] and {2}.", "none", []),
        ("", "none", []),
        # tried and failed: a truncated block, a block without a call, call-shaped prose cut short
        ('<tool_call>[{"name": "f", "arguments": {"x": ', "unreadable", []),
        ("<tool_call>I would call the weather tool</tool_call>", "unreadable", []),
        ('<tool_call>[{"arguments": {"x": 1}}]</tool_call>', "unreadable", []),
        ('I will call {"name": "f", "arguments": {"x": [1, 2', "unreadable", []),
    ],
)
def test_parse_tool_calls(text: str, status: str, expected: list[dict]) -> None:
    parsed = parse_tool_calls(text)
    assert (parsed.status, parsed.calls) == (status, expected)
    if status == "unreadable":
        assert parsed.detail


def test_unreadable_detail_says_truncated() -> None:
    assert "truncated" in parse_tool_calls('<tool_call>[{"name": "f", "arguments": {').detail
    assert parse_tool_calls("<tool_call>[{'name': 'f',, }]</tool_call>").status == "unreadable"


@pytest.mark.parametrize(
    "item",
    [
        {"name": "", "arguments": {}},
        {"name": 3, "arguments": {}},
        {"name": "f", "arguments": [1, 2]},
        {"name": "f", "arguments": "not json"},
        ["f", {}],
    ],
)
def test_as_call_rejects_what_is_not_a_call(item: object) -> None:
    assert as_call(item) is None


def test_the_system_prompt_is_smollm2s_function_calling_format() -> None:
    prompt = tool_system_prompt([WEATHER, TIME])
    assert prompt.startswith("You are an expert in composing functions.")
    assert "If no function call is needed, please make the tool calls an empty list '[]'." in prompt
    listed = prompt.split("<tools>")[1].split("</tools>")[0]
    specs = [json.loads(line) for line in listed.splitlines()]
    assert specs == [
        {"name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER["inputSchema"]},
        {"name": "get_time", "description": "The time now.", "parameters": {"type": "object", "properties": {}}},
    ]
    assert prompt.rstrip().endswith("]</tool_call>")
    assert render_tools(openai_tools([WEATHER])) == render_tools([WEATHER])  # OpenAI specs render the same


def test_the_demonstration_calls_the_first_tool_with_typed_placeholders() -> None:
    user, assistant = demonstration([WEATHER, TIME])
    assert user == {"role": "user", "content": DEMONSTRATION_REQUEST}
    assert parse_tool_calls(assistant["content"]) == ParsedCalls(
        calls(("get_weather", {"city": "...", "days": 1, "unit": "celsius"})), "calls"
    )
    _, assistant = demonstration([TIME])
    assert parse_tool_calls(assistant["content"]).calls == calls(("get_time", {}))
    _, assistant = demonstration([])
    assert parse_tool_calls(assistant["content"]).status == "none"


def test_tool_messages_keep_the_chat_and_its_system_text() -> None:
    chat = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Weather in Paris for 2 days?"},
        {"role": "assistant", "content": "In celsius?"},
        {"role": "user", "content": "Yes."},
    ]
    messages = tool_messages(chat, [WEATHER])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "<tools>" in messages[0]["content"] and messages[0]["content"].endswith("Answer in French.")
    assert messages[-3:] == chat[1:]
    assert [m["role"] for m in tool_messages(chat, [WEATHER], demonstrate=False)] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


def test_native_and_text_protocol_through_the_router() -> None:
    answer = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "unit": "celsius"}}]'

    def reply(body: dict):
        if body.get("tools"):
            return {"tool_calls": [{"name": "get_time", "arguments": {}}]}
        return answer + "</tool_call> and then some words"

    with FakeLLM(reply) as llm:
        router = LLMRouter([ModelSpec(name="m", backend="openai", model="x", base_url=llm.base_url, timeout_s=10)])
        question = [{"role": "user", "content": "Weather in Paris?"}]
        native = complete_with_tools(router, question, [WEATHER, TIME])
        text = complete_with_tools(router, question, [WEATHER, TIME], protocol="text")
    assert native.protocol == "native" and native.parsed == ParsedCalls(calls(("get_time", {})), "calls")
    assert llm.requests[0]["tools"] == openai_tools([WEATHER, TIME])
    assert text.protocol == "text"
    assert text.parsed.calls == calls(("get_weather", {"city": "Paris", "days": 2, "unit": "celsius"}))
    sent = llm.requests[1]
    assert "tools" not in sent and sent["stop"] == ["</tool_call>"]
    assert sent["messages"][0]["role"] == "system" and "get_weather" in sent["messages"][0]["content"]


def test_protocol_choice() -> None:
    class Native:
        supports_tools = True

    class Plain:
        name = "local"

    assert uses_native_tools(Native()) and not uses_native_tools(Plain())
    assert not uses_native_tools(Native(), "text")
    with pytest.raises(ValueError, match="local backend has no native tool calls"):
        uses_native_tools(Plain(), "native")
    with pytest.raises(ValueError, match="use auto, native or text"):
        uses_native_tools(Plain(), "xml")  # type: ignore[arg-type]
