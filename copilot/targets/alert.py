"""The `alert` target: a Prometheus alerting rule file (YAML), checked against a JSON Schema for rule files,
with every `expr` parsed and type-checked by the PromQL parser in `promql.py`."""

from __future__ import annotations

from typing import Any

import yaml

from contextlab.copilot.context import ContextClient
from contextlab.copilot.engine import ContextItem, Validation, extract_code
from contextlab.copilot.targets._common import YAMLDocument, available_tools, json_path, yaml_error
from contextlab.copilot.targets.promql import MATRIX, STRING, PromQLError, parse_promql

ALERT_TEMPLATE = """\
You write Prometheus alerting rules. Answer with one ```yaml block holding a rule file and nothing else:

groups:
  - name: <group name>
    rules:
      - alert: <AlertName in CamelCase>
        expr: <PromQL expression that returns the series to alert on>
        for: <duration, e.g. 5m>
        labels:
          severity: <critical|warning|info>
        annotations:
          summary: <one line, may use {{ '{{' }} $labels.instance {{ '}}' }} and {{ '{{' }} $value {{ '}}' }}>
          description: <what is wrong and what to do>

Use counters through rate()/increase() over a range such as [5m]; use only the metrics listed below when a
list is given.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""

DURATION = r"^(0|(?=\d)((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?)$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"

RULE_FILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Prometheus rule file",
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {"groups": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/group"}}},
    "$defs": {
        "duration": {"type": "string", "pattern": DURATION},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": LABEL_NAME},
            "additionalProperties": {"type": ["string", "number"]},
        },
        "annotations": {
            "type": "object",
            "propertyNames": {"pattern": LABEL_NAME},
            "additionalProperties": {"type": "string"},
        },
        "group": {
            "type": "object",
            "required": ["name", "rules"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": {"$ref": "#/$defs/duration"},
                "query_offset": {"$ref": "#/$defs/duration"},
                "limit": {"type": "integer", "minimum": 0},
                "labels": {"$ref": "#/$defs/labels"},
                "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
            },
        },
        "rule": {
            "type": "object",
            "required": ["expr"],
            "additionalProperties": False,
            "properties": {
                "alert": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                "expr": {"type": ["string", "number"], "minLength": 1},
                "for": {"$ref": "#/$defs/duration"},
                "keep_firing_for": {"$ref": "#/$defs/duration"},
                "labels": {"$ref": "#/$defs/labels"},
                "annotations": {"$ref": "#/$defs/annotations"},
            },
        },
    },
}


def _schema_message(error: Any) -> str:
    validator = error.validator
    if validator == "pattern" and error.schema.get("pattern") == DURATION:
        return f"{error.instance!r} is not a Prometheus duration (e.g. 30s, 5m, 1h30m)"
    if validator == "pattern" and error.schema.get("pattern") == LABEL_NAME:
        return f"{error.instance!r} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
    if validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        return error.message + " (allowed: " + ", ".join(sorted(error.schema.get("properties", {}))) + ")"
    return error.message


def check_templates(text: str) -> str | None:
    """Unbalanced `{{ ... }}` in an annotation or label template, as a message."""
    depth_at = None
    i = 0
    while i < len(text):
        if text.startswith("{{", i):
            if depth_at is not None:
                return f"`{{{{` at column {i + 1} opens a template inside the one opened at column {depth_at + 1}"
            depth_at = i
            i += 2
        elif text.startswith("}}", i):
            if depth_at is None:
                return f"`}}}}` at column {i + 1} closes no `{{{{`"
            depth_at = None
            i += 2
        else:
            i += 1
    if depth_at is not None:
        return f"the template `{{{{` at column {depth_at + 1} is never closed with `}}}}`"
    return None


class AlertTarget:
    """A Prometheus rule file with alerting rules: YAML that parses, valid against `RULE_FILE_SCHEMA`
    (groups with unique names, rules with `alert` or `record`, `expr`, durations for `for`, label names),
    at least one alerting rule, balanced `{{ }}` templates, and every `expr` parsed and type-checked as PromQL
    (errors carry the rule, the YAML line and the column in the expression)."""

    name = "alert"
    template_name = "copilot.alert"
    template = ALERT_TEMPLATE
    language = "yaml"

    def __init__(self, max_errors: int = 6) -> None:
        self.max_errors = max_errors

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        tools = available_tools(client)
        if client is None or "metrics__snapshot" not in tools:
            return []
        from contextlab.copilot.context import ToolFailed

        try:
            result = client.call_tool("metrics__snapshot", {})
        except ToolFailed:
            return []
        names = sorted({m.get("name") for m in result.get("metrics", []) if isinstance(m, dict) and m.get("name")})
        if not names:
            return []
        return [ContextItem("metrics__snapshot", "Metrics of the ContextLab server (names)", "\n".join(names))]

    def extract(self, text: str) -> str:
        return extract_code(text, ("yaml", "yml"))

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        from jsonschema import Draft202012Validator

        if not code.strip():
            return Validation(False, "The answer holds no rule file.")
        try:
            document = YAMLDocument(code)
        except yaml.YAMLError as exc:
            return Validation(False, yaml_error(exc))
        data = document.data
        if not isinstance(data, dict):
            return Validation(False, "The rule file must be a mapping with a `groups:` list.")
        problems: list[str] = []
        for error in sorted(Draft202012Validator(RULE_FILE_SCHEMA).iter_errors(data), key=lambda e: list(e.path)):
            path = list(error.path)
            problems.append(f"{json_path(path)} (line {document.line_of(path)}): {_schema_message(error)}")
            if len(problems) >= self.max_errors:
                break
        if problems:
            return Validation(
                False, "The rule file does not match the schema:\n" + "\n".join(f"- {p}" for p in problems)
            )
        alerts: list[str] = []
        seen_groups: dict[str, int] = {}
        for g, group in enumerate(data["groups"]):
            if group["name"] in seen_groups:
                problems.append(
                    f"groups[{g}].name (line {document.line_of(['groups', g, 'name'])}): group name {group['name']!r} "
                    f"is used twice (also groups[{seen_groups[group['name']]}])"
                )
            seen_groups.setdefault(group["name"], g)
            for r, rule in enumerate(group.get("rules") or []):
                path: list[Any] = ["groups", g, "rules", r]
                problems.extend(self._check_rule(rule, path, document))
                if "alert" in rule:
                    alerts.append(rule["alert"])
        if not problems and not alerts:
            problems.append("the file has no alerting rule (`- alert: Name` with `expr:`)")
        if problems:
            return Validation(
                False, "The rule file is invalid:\n" + "\n".join(f"- {p}" for p in problems[: self.max_errors])
            )
        return Validation(True, detail={"alerts": alerts, "groups": list(seen_groups)})

    def _check_rule(self, rule: dict[str, Any], path: list[Any], document: YAMLDocument) -> list[str]:
        where = f"{json_path(path)} (line {document.line_of(path)})"
        if ("alert" in rule) == ("record" in rule):
            return [f"{where}: a rule needs exactly one of `alert` (alerting rule) or `record` (recording rule)"]
        problems = []
        if "record" in rule:
            extra = [k for k in ("for", "keep_firing_for", "annotations") if k in rule]
            if extra:
                problems.append(f"{where}: a recording rule cannot have {', '.join(f'`{k}`' for k in extra)}")
        expr = str(rule["expr"])
        expr_line = document.line_of([*path, "expr"])
        try:
            node = parse_promql(expr)
        except PromQLError as exc:
            name = rule.get("alert") or rule.get("record")
            on_line = f" of expression line {exc.line}" if exc.line > 1 else ""
            snippet = exc.snippet().replace("\n", "\n        ")
            problems.append(
                f"{json_path([*path, 'expr'])} of `{name}` (line {expr_line}): PromQL error at column {exc.column}"
                f"{on_line}: {exc.message}\n        {snippet}"
            )
        else:
            if node.type in (MATRIX, STRING):
                problems.append(
                    f"{json_path([*path, 'expr'])} (line {expr_line}): a rule expression must return an instant "
                    f"vector or a scalar, not a {'range vector' if node.type == MATRIX else 'string'}"
                    + ("; wrap it in rate(...) or *_over_time(...)" if node.type == MATRIX else "")
                )
        for section in ("labels", "annotations"):
            for key, value in (rule.get(section) or {}).items():
                message = check_templates(str(value))
                if message:
                    line = document.line_of([*path, section, key])
                    problems.append(f"{json_path([*path, section, key])} (line {line}): {message}")
        return problems
