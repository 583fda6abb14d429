"""Helpers shared by the generation targets: optional MCP context, fenced blocks, bounded subprocesses,
and YAML documents whose errors point at a line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from contextlab.copilot.context import ContextClient, ToolFailed
from contextlab.copilot.engine import ContextItem, SQLTarget

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of a model answer as (language tag in lower case, body)."""
    return [(lang.lower(), body.strip()) for lang, body in FENCE.findall(text)]


def available_tools(client: ContextClient | None) -> set[str]:
    """The endpoint's tool names; none without a client. Unreachable endpoints raise (ContextUnavailable)."""
    if client is None:
        return set()
    return set(client.list_tools())


def schema_context(client: ContextClient | None, tools: set[str] | None = None) -> list[ContextItem]:
    """The DuckDB schema from `sql__schema` when the endpoint offers it; nothing otherwise."""
    if client is None:
        return []
    if "sql__schema" not in (available_tools(client) if tools is None else tools):
        return []
    try:
        return SQLTarget().gather(client)
    except ToolFailed:
        return []


@dataclass
class Run:
    """What a bounded subprocess did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


def run_bounded(
    args: Sequence[str],
    *,
    timeout_s: float,
    cwd: str | None = None,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Run `args` with a time limit; on timeout the whole process group is killed."""
    process = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(input_text, timeout=timeout_s)
        return Run(process.returncode, stdout, stderr, False)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = process.communicate()
        return Run(None, stdout, stderr, True)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a checking subprocess: this one's, without bytecode files, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONSTARTUP", None)
    env.update(extra)
    return env


class YAMLDocument:
    """A YAML text, loaded safely, that can tell the line of a path such as ("groups", 0, "rules")."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = yaml.safe_load(text)
        self._root = yaml.compose(text, Loader=yaml.SafeLoader)

    def line_of(self, path: Sequence[Any]) -> int | None:
        """1-based line of the deepest node on `path` that exists (a mapping entry's key line)."""
        node = self._root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        line = key.start_mark.line + 1
                        node = value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def yaml_error(exc: yaml.YAMLError) -> str:
    """A YAML parse error with its line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"The YAML does not parse{where}: {problem}" + (f" ({context})" if context else "") + "."


def json_path(path: Sequence[Any]) -> str:
    """("groups", 0, "rules", 1, "expr") -> groups[0].rules[1].expr"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document root)"
