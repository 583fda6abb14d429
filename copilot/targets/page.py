"""The `page` target: a no-code app as a PageDSL document (YAML), validated against the PageDSL schema and its
cross-reference checks (`contextlab.apps.dsl`), with errors that carry their path and YAML line."""

from __future__ import annotations

from typing import Any

import yaml

from contextlab.copilot.context import ContextClient, ToolFailed
from contextlab.copilot.engine import ContextItem, Validation, extract_code
from contextlab.copilot.targets._common import YAMLDocument, available_tools, schema_context, yaml_error

PAGE_TEMPLATE = """\
You design small business apps in ContextLab's PageDSL {{ '1.0' }}. Answer with one ```yaml block holding one
complete app and nothing else. The shape (a support-ticket app):

```yaml
dsl: "1.0"
app: {name: tickets, title: Support tickets}
roles: [agent, lead]
data:
  tables:
    tickets:
      fields:
        id: {type: integer, key: true, generated: true}
        subject: {type: varchar, required: true, max_length: 120}
        priority: {type: varchar, enum: [low, normal, high], default: normal}
        hours: {type: decimal, precision: 8, scale: 2, min: 0}
        status: {type: varchar, enum: [open, closed], default: open}
        opened_at: {type: timestamp, default: now}
queries:
  open_tickets:
    sql: SELECT id, subject, priority FROM tickets WHERE status = 'open' AND priority = $priority
    params: {priority: {type: varchar, default: normal}}
  by_priority:
    sql: SELECT priority, count(*) AS n FROM tickets GROUP BY priority
pages:
  - id: new
    title: New ticket
    route: /new
    roles: [agent, lead]
    components:
      - {id: ticket_form, type: form, table: tickets, fields: [subject, priority, hours],
         on_submit: [{notify: Ticket saved}], position: {x: 0, y: 0, w: 6, h: 5}}
      - {id: open_list, type: table, query: open_tickets, page_size: 20, position: {x: 6, y: 0, w: 6, h: 5}}
  - id: overview
    route: /overview
    roles: [lead]
    components:
      - {id: pick, type: filter, param: priority, widget: select, options: [low, normal, high],
         targets: [open_list2], position: {x: 0, y: 0, w: 4, h: 1}}
      - {id: open_list2, type: table, query: open_tickets, position: {x: 0, y: 1, w: 8, h: 5}}
      - {id: chart, type: chart, query: by_priority, mark: bar, x: priority, y: n, position: {x: 8, y: 1, w: 4, h: 5}}
```

Rules: component types are table, form, chart, indicator, markdown, button, filter, tasks; names use letters,
digits and _; field types are integer, bigint, double, decimal, varchar, text, boolean, date, timestamp;
queries are DuckDB SELECTs over the modelled tables with `$name` parameters declared under `params` (never
put values into the SQL text); every role used by a page is listed under `roles`; positions fit a 12-column
grid without overlapping.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""


class PageTarget:
    """A PageDSL app (YAML): parses, passes the JSON Schema and the cross-reference checks (components →
    queries/tables/flows, SQL that parses and reads modelled or existing tables, declared parameters and
    roles, a layout that fits). Context: existing apps (`apps__list`) and the workspace schema."""

    name = "page"
    template_name = "copilot.page"
    template = PAGE_TEMPLATE
    language = "yaml"
    max_tokens = 1800

    def __init__(self, max_errors: int = 8) -> None:
        self.max_errors = max_errors

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        tools = available_tools(client)
        items = schema_context(client, tools)
        for item in items:
            item.title = "Existing workspace tables (model new tables for the app's own data)"
        if client is not None and "apps__list" in tools:
            try:
                listing = client.call_tool("apps__list", {})
            except ToolFailed:
                listing = {}
            apps = listing.get("apps") or []
            if apps:
                text = "\n".join(
                    f"- {a['name']}: {a.get('title', '')} (tables: {', '.join(a.get('tables', [])) or 'none'})"
                    for a in apps
                )
                items.append(ContextItem("apps__list", "Existing apps (pick a new app name)", text))
        return items

    def extract(self, text: str) -> str:
        return extract_code(text, ("yaml", "yml"))

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        from contextlab.apps import dsl

        if not code.strip():
            return Validation(False, "The answer holds no app definition.")
        try:
            document = YAMLDocument(code)
        except yaml.YAMLError as exc:
            return Validation(False, yaml_error(exc))
        doc: Any = document.data
        if not isinstance(doc, dict):
            return Validation(False, "An app is a YAML mapping with `dsl`, `app` and `pages`.")
        try:
            doc = dsl.upgrade(doc)
        except dsl.DSLValidationError as exc:
            return Validation(False, str(exc))
        issues = dsl.validate(doc, document=document)
        if issues:
            lines = "\n".join(f"- {issue}" for issue in issues[: self.max_errors])
            return Validation(False, f"The app does not validate:\n{lines}")
        comps = dsl.components(doc)
        return Validation(
            True,
            detail={
                "app": doc["app"]["name"],
                "pages": [p["route"] for p in doc["pages"]],
                "tables": sorted((doc.get("data") or {}).get("tables") or {}),
                "components": len(comps),
            },
        )
