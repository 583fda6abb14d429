"""Generation targets beyond `sql`, each with a real validator (see docs/copilot-targets.md).

| target   | produces                                | validated by                                                    |
|----------|-----------------------------------------|-----------------------------------------------------------------|
| `python` | a notebook cell (pandas / polars aware) | compile, ruff error rules, pandas/polars API check, opt. run    |
| `test`   | pytest tests for a notebook function    | pytest in a subprocess against the current definition           |
| `er`     | DuckDB DDL + Mermaid erDiagram          | DDL run in scratch DuckDB, diagram parsed and cross-checked     |
| `flow`   | BPMN 2.0 XML                            | XSD, graph checks, SpiffWorkflow parse and dry run              |
| `api`    | OpenAPI 3.1 YAML                        | openapi-spec-validator                                          |
| `alert`  | Prometheus alerting rules YAML          | JSON Schema for rule files + PromQL parser                      |
| `page`   | a PageDSL app (YAML)                    | PageDSL JSON Schema + cross-reference and SQL checks            |

The engine (`contextlab.copilot.engine`) defines the `Target` protocol; this package imports from it and,
once imported, adds its targets to `engine.TARGETS` (the engine imports this package at its end, so the
order of imports does not matter).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from contextlab.copilot import engine as _engine
from contextlab.copilot.targets.alert import AlertTarget
from contextlab.copilot.targets.bpmn import FlowTarget
from contextlab.copilot.targets.er import ERTarget
from contextlab.copilot.targets.openapi import APITarget
from contextlab.copilot.targets.page import PageTarget
from contextlab.copilot.targets.python import PythonTarget
from contextlab.copilot.targets.testing import PytestTarget

BUILTIN_TARGETS: dict[str, Callable[[], Any]] = {
    "python": PythonTarget,
    "test": PytestTarget,
    "er": ERTarget,
    "flow": FlowTarget,
    "api": APITarget,
    "alert": AlertTarget,
    "page": PageTarget,
}

__all__ = [
    "BUILTIN_TARGETS",
    "APITarget",
    "AlertTarget",
    "ERTarget",
    "FlowTarget",
    "PageTarget",
    "PytestTarget",
    "PythonTarget",
    "register",
]


def register(registry: MutableMapping[str, Callable[[], Any]]) -> None:
    """Add the built-in targets to `registry` without replacing targets already there."""
    for name, factory in BUILTIN_TARGETS.items():
        registry.setdefault(name, factory)


register(_engine.TARGETS)
