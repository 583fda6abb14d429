"""Thin REST handlers for the gateway's admin API: registry, tokens, audit, policy and tool reviews.

Each handler parses, calls a service and serialises; `openapi.yaml` beside this module documents
them. Only admins (Jupyter users with the Owner/Admin role, or tokens with the `admin` scope) may
use them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from pydantic import ValidationError
from tornado import web

from contextlab.extension.copilot_records import CopilotRecords, RecordError
from contextlab.extension.events import EventBus
from contextlab.extension.gateway import Gateway
from contextlab.extension.handlers import AUTH_RESOURCE, GatewayAuthMixin
from contextlab.extension.prompts import SERVED, DescriptionContent, PromptError, PromptStore, merge_content
from contextlab.extension.registry import Registry, RegistryError, UpstreamSpec, parse_manifest
from contextlab.extension.router import Router, ToolReviews
from contextlab.extension.service import INSTRUCTIONS_PROMPT, ContextService
from contextlab.extension.sse import EventsHandler
from contextlab.extension.tokens import TokenRecord, TokenService, parse_expires
from contextlab.state import StateStore

ADMIN_SCOPE = "admin"


class AdminHandler(GatewayAuthMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, service: ContextService, tokens: TokenService, store: StateStore, **extra: Any) -> None:
        self.service = service
        self.gateway = service.gateway
        self.tokens = tokens
        self.store = store
        self.extra = extra

    @property
    def registry(self) -> Registry:
        return self.extra["registry"]

    @property
    def router(self) -> Router:
        return self.extra["router"]

    @property
    def reviews(self) -> ToolReviews:
        return self.extra["reviews"]

    def require_admin(self) -> None:
        caller = self.caller
        # `admin` must be granted by name: a `*` scope covers tools, not the admin API.
        if caller is None or not (caller.is_admin or ADMIN_SCOPE in caller.scopes):
            raise web.HTTPError(403, "This API needs an admin: the Owner/Admin role or a token with the 'admin' scope.")

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise web.HTTPError(400, f"The body is not valid JSON: {exc}") from exc

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "status": status_code}))

    def fail(self, exc: RegistryError) -> None:
        self.reply({"error": str(exc), "status": exc.status}, exc.status)


class RegistryListHandler(AdminHandler):
    """`GET` lists the upstream servers; `POST` registers one (JSON body = a manifest entry)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.require_admin()
        self.reply({"servers": self.registry.list()})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_admin()
        body = self.json_body()
        try:
            spec = UpstreamSpec.model_validate(body)
        except ValidationError as exc:
            self.fail(RegistryError(_validation_message(exc), 422))
            return
        try:
            record = self.registry.add(spec, source=self.get_query_argument("source", "api"))
        except RegistryError as exc:
            self.fail(exc)
            return
        self.reply(record, 201)


class RegistryItemHandler(AdminHandler):
    """`GET`, `PATCH` (partial update) and `DELETE` one upstream server."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.require_admin()
        try:
            record = self.registry.get(name)
        except RegistryError as exc:
            self.fail(exc)
            return
        upstream = self.router.upstreams.get(name)
        catalog = upstream.catalog if upstream else None
        record["breaker"] = upstream.breaker.state if upstream else None
        record["catalog_error"] = upstream.catalog_error if upstream else None
        record["tools"] = [f"{name}__{t['name']}" for t in catalog.tools] if catalog else []
        record["rejected_tools"] = catalog.rejected if catalog else []
        record["quarantined_tools"] = catalog.quarantined if catalog else []
        self.reply(record)

    @web.authenticated
    @authorized
    async def patch(self, name: str) -> None:
        self.require_admin()
        body = self.json_body()
        if not isinstance(body, dict):
            self.fail(RegistryError("The body must be a JSON object of the fields to change.", 400))
            return
        try:
            self.reply(self.registry.update(name, body))
        except RegistryError as exc:
            self.fail(exc)

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        self.require_admin()
        try:
            self.registry.remove(name)
        except RegistryError as exc:
            self.fail(exc)
            return
        self.set_status(204)
        self.finish()


class RegistryActionHandler(AdminHandler):
    """`POST …/{name}/enable`, `…/disable` and `…/health`."""

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str) -> None:
        self.require_admin()
        try:
            if action in ("enable", "disable"):
                self.reply(self.registry.set_enabled(name, action == "enable"))
                return
            self.registry.get(name)
        except RegistryError as exc:
            self.fail(exc)
            return
        if name not in self.router.upstreams:
            self.fail(RegistryError(f"{name!r} is disabled; enable it to check its health.", 409))
            return
        health = await self.router.check_health([name])
        await self.router.refresh(force=True)
        self.reply(health[name])


class RegistryHealthHandler(AdminHandler):
    """`POST` checks every enabled upstream now."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_admin()
        self.reply(await self.router.check_health())


class RegistryManifestHandler(AdminHandler):
    """`POST` applies a manifest (YAML or JSON body) and returns what was added, updated, unchanged."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_admin()
        text = (self.request.body or b"").decode("utf-8", "replace")
        try:
            specs = parse_manifest(text, source=self.get_query_argument("source", "<request body>"))
            self.reply(self.registry.apply_manifest(specs))
        except RegistryError as exc:
            self.fail(exc)


class ReviewsHandler(AdminHandler):
    """`GET` the tool-poisoning reviews; `POST …/{server}/{tool}/approve` releases a quarantined tool."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.require_admin()
        self.reply({"reviews": self.reviews.list(self.get_query_argument("status", None))})

    @web.authenticated
    @authorized
    async def post(self, server: str, tool: str) -> None:
        self.require_admin()
        try:
            review = self.reviews.approve(server, tool, reviewer=self.caller.name if self.caller else "?")
        except KeyError as exc:
            self.fail(RegistryError(str(exc.args[0]), 404))
            return
        await self.router.refresh(force=True)
        self.reply(review)


class TokensHandler(AdminHandler):
    """`GET` lists tokens (never their secrets); `POST` creates one and returns its secret once."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.require_admin()
        include = self.get_query_argument("all", "0") in ("1", "true")
        self.reply({"tokens": [_token_dict(t) for t in self.tokens.list(include_revoked=include)]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_admin()
        body = self.json_body()
        if not isinstance(body, dict) or not body.get("name"):
            self.fail(RegistryError('The body needs at least {"name": ..., "scopes": [...]}.', 400))
            return
        try:
            expires = parse_expires(str(body["expires"])) if body.get("expires") else None
            secret, record = self.tokens.create(
                str(body["name"]), body.get("scopes") or [], expires_in=expires, attributes=body.get("attributes")
            )
        except ValueError as exc:
            self.fail(RegistryError(str(exc), 422))
            return
        self.reply({"token": secret, **_token_dict(record)}, 201)

    @web.authenticated
    @authorized
    async def delete(self, token_id: str) -> None:
        self.require_admin()
        try:
            record = self.tokens.revoke(token_id)
        except KeyError:
            self.fail(RegistryError(f"No token with id {token_id!r}.", 404))
            return
        self.reply(_token_dict(record))


class AuditHandler(AdminHandler):
    """`GET ?since=1h&tool=sql__query&outcome=denied&principal=alice&limit=100`, newest first."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.require_admin()
        since = self.get_query_argument("since", None)
        try:
            since_ts = datetime.now(UTC) - parse_since(since) if since else None
            limit = int(self.get_query_argument("limit", "100"))
        except ValueError as exc:
            self.fail(RegistryError(str(exc), 400))
            return
        if self.get_query_argument("flush", "0") in ("1", "true") and self.service.audit is not None:
            self.service.audit.flush()
        rows = self.store.audit(
            target=self.get_query_argument("tool", None),
            method=self.get_query_argument("method", None),
            outcome=self.get_query_argument("outcome", None),
            principal=self.get_query_argument("principal", None),
            since=since_ts,
            limit=max(1, min(limit, 10_000)),
        )
        self.reply({"entries": rows})


class PolicyHandler(AdminHandler):
    """`GET` the policy in force (and the last load error); `POST …/reload` re-reads the file now."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.require_admin()
        self.reply(self.gateway.policy.status())

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_admin()
        loaded = self.gateway.policy.reload(force=True)
        status = self.gateway.policy.status()
        self.reply({"reloaded": loaded, **status}, 422 if status["error"] else 200)


def parse_since(text: str) -> timedelta:
    """`90s`, `15m`, `1h`, `7d`, `2w` → a timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"Cannot read the duration {text!r}; use a number and a unit: 90s, 15m, 1h, 7d, 2w.")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def _token_dict(record: TokenRecord) -> dict[str, Any]:
    return record.to_dict()


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in exc.errors())


class EventsStreamHandler(GatewayAuthMixin, EventsHandler):
    """`{base_url}contextlab/api/events` as SSE, for Jupyter users and API tokens alike.

    Jupyter users and admins see every tenant's events; a token sees its own tenant's and global ones.
    """

    def initialize(self, bus: EventBus, tokens: TokenService, gateway: Gateway, heartbeat: float = 15.0) -> None:
        super().initialize(bus=bus, tenant_of=self._tenant, heartbeat=heartbeat)
        self.tokens = tokens
        self.gateway = gateway

    def _tenant(self, _handler: Any) -> str | None:
        caller = self.caller
        if caller is None or caller.kind == "jupyter" or caller.is_admin:
            return None
        return caller.tenant


class PromptsHandler(AdminHandler):
    """Tool descriptions as versioned prompts: list, show, new version, diff, labels, rollback."""

    @property
    def prompts(self) -> PromptStore:
        return self.extra["prompts"]

    @web.authenticated
    @authorized
    async def get(self, name: str | None = None, action: str | None = None) -> None:
        self.require_admin()
        catalog = {tool["name"]: (tool, target) for tool, target in await self._catalog()}
        if name is None:
            self.reply(self._listing(catalog))
            return
        try:
            if action == "diff":
                self.reply(self._diff(name))
                return
            versions = self.prompts.versions(name)
            if not versions and name not in catalog:
                raise PromptError(_unknown_tool(name), 404)
        except PromptError as exc:
            self.fail(exc)
            return
        tool, target = catalog.get(name, ({}, None))
        self.reply(
            {
                "name": name,
                "server": target.server if target is not None else None,
                "published": DescriptionContent.of_tool(tool).to_dict() if tool else None,
                "versions": [v.to_dict() for v in versions],
                "labels": [label.to_dict() for label in self.prompts.labels(name)],
            }
        )

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str | None = None) -> None:
        self.require_admin()
        if action not in ("versions", "rollback"):
            raise web.HTTPError(405, "POST to prompts/<name>/versions or prompts/<name>/rollback.")
        body = self.json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The body must be a JSON object.")
        author = self.caller.name if self.caller is not None else "admin"
        try:
            if action == "versions":
                self.reply((await self._new_version(name, body, author)).to_dict(), 201)
            else:  # rollback
                to = body.get("to")
                if to is not None and not isinstance(to, int):
                    raise PromptError('"to" must be a version number.', 422)
                label = self.prompts.rollback(name, author=author, label=str(body.get("label") or SERVED), to=to)
                self.reply(label.to_dict())
        except PromptError as exc:
            self.fail(exc)

    @web.authenticated
    @authorized
    async def put(self, name: str, action: str, label: str) -> None:
        self.require_admin()
        body = self.json_body() or {}
        version, weight = body.get("version") if isinstance(body, dict) else None, None
        try:
            if not isinstance(version, int):
                raise PromptError('The body needs "version": the version number the label should point at.', 422)
            weight = body.get("weight")
            if weight is not None and not isinstance(weight, int | float):
                raise PromptError('"weight" is a percentage (0–100).', 422)
            author = self.caller.name if self.caller is not None else "admin"
            self.reply(self.prompts.set_label(name, label, version, author=author, weight=weight).to_dict())
        except PromptError as exc:
            self.fail(exc)

    @web.authenticated
    @authorized
    async def delete(self, name: str, action: str, label: str) -> None:
        self.require_admin()
        try:
            self.prompts.delete_label(name, label, author=self.caller.name if self.caller is not None else "admin")
        except PromptError as exc:
            self.fail(exc)
            return
        self.set_status(204)
        self.finish()

    def fail(self, exc: RegistryError | PromptError) -> None:
        self.reply({"error": str(exc), "status": exc.status}, exc.status)

    def _listing(self, catalog: dict[str, tuple[dict[str, Any], Any]]) -> dict[str, Any]:
        summary = self.prompts.summary()
        rows = []
        for name in sorted(set(catalog) | set(summary)):
            tool, target = catalog.get(name, ({}, None))
            managed = summary.get(name, {})
            rows.append(
                {
                    "name": name,
                    "server": target.server if target is not None else None,
                    "available": name in catalog,
                    "description": str(tool.get("description") or ""),
                    "versions": managed.get("versions", 0),
                    "labels": managed.get("labels", {}),
                }
            )
        sync = self.extra.get("prompt_sync")
        return {"prompts": rows, "mlflow": sync.status() if sync is not None else None}

    def _diff(self, name: str) -> dict[str, Any]:
        versions = self.prompts.versions(name)
        if not versions:
            raise PromptError(f"Prompt {name!r} has no versions yet; nothing to compare.", 404)
        new = _int_argument(self, "to", versions[-1].version)
        old = _int_argument(self, "from", max(1, new - 1))
        return {"name": name, "from": old, "to": new, "diff": self.prompts.diff(name, old, new)}

    async def _new_version(self, name: str, body: dict[str, Any], author: str) -> Any:
        unknown = sorted(set(body) - {"description", "parameters", "message", "canary_weight", "promote", "labels"})
        if unknown:
            raise PromptError(f"Unknown field(s): {', '.join(unknown)}.", 422)
        description, parameters = body.get("description"), body.get("parameters") or {}
        if description is not None and not isinstance(description, str):
            raise PromptError('"description" must be a string.', 422)
        if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
            raise PromptError('"parameters" must map parameter names to description strings.', 422)
        if description is None and not parameters:
            raise PromptError('Give a new "description", new "parameters" descriptions, or both.', 422)
        weight = body.get("canary_weight")
        if weight is not None and not isinstance(weight, int | float):
            raise PromptError('"canary_weight" is a percentage (0–100).', 422)
        tool = next((t for t, _ in await self._catalog() if t["name"] == name), None)
        versions = self.prompts.versions(name)
        if tool is None and not versions:
            raise PromptError(_unknown_tool(name), 404)
        published = DescriptionContent.of_tool(tool) if tool is not None else versions[0].content
        current = versions[-1].content if versions else published
        known = set(((tool or {}).get("inputSchema") or {}).get("properties") or {}) or set(current.parameters)
        content = merge_content(current, description, parameters, known)
        return self.prompts.create_version(
            name,
            content,
            author=author,
            message=str(body.get("message") or ""),
            baseline=published,
            promote=bool(body.get("promote", True)),
            canary_weight=weight,
            labels=tuple(body.get("labels") or ()),
            kind=_prompt_kind(name),
        )

    async def _catalog(self) -> list[tuple[dict[str, Any], Any]]:
        return [*await self.service.tool_catalog(), *self.service.prompt_catalog()]


def _prompt_kind(name: str) -> str:
    if name == INSTRUCTIONS_PROMPT:
        return "instructions"
    return "template" if name.startswith("copilot.") else "tool"


def _unknown_tool(name: str) -> str:
    return f"No tool named {name!r}. `contextlab prompts list` shows the tools and their description versions."


def _int_argument(handler: APIHandler, name: str, default: int) -> int:
    value = handler.get_query_argument(name, None)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise PromptError(f"Query argument {name!r} must be a version number, not {value!r}.", 400) from None


class CopilotHandler(AdminHandler):
    """What kernels report and read: suggestions, feedback, LLM usage, and the model configuration.

    Any authenticated caller may use it (kernels run as the user); the caller is the recorded principal.
    """

    @property
    def records(self) -> CopilotRecords:
        return self.extra["copilot_records"]

    @web.authenticated
    @authorized
    async def get(self, what: str) -> None:
        caller = self._require_caller()
        if what == "models":
            self.reply(self.extra["copilot_config"]())
            return
        if what == "templates":
            self.reply(self._template(caller, self.get_query_argument("name", "")))
            return
        mine = not (caller.is_admin or ADMIN_SCOPE in caller.scopes)
        if what == "suggestions":  # with their feedback: the delta fine-tuning's data (admins see everyone's)
            from contextlab.copilot.finetune import suggestions_with_feedback

            found = suggestions_with_feedback(
                self.records.store.engine,
                project=self.get_query_argument("project", None),
                target=self.get_query_argument("target", None),
                user=caller.name if mine else self.get_query_argument("user", None),
            )
            self.reply({"suggestions": found})
            return
        if what != "usage":
            raise web.HTTPError(405, "GET copilot/models, copilot/templates, copilot/suggestions or copilot/usage.")
        project = self.get_query_argument("project", None)
        self.reply(
            self.records.usage(project=project, user=caller.name if mine else self.get_query_argument("user", None))
        )

    @web.authenticated
    @authorized
    async def post(self, what: str) -> None:
        caller = self._require_caller()
        body = self.json_body()
        try:
            if what == "suggestions":
                self.reply({"id": self.records.add_suggestion(body, caller.name)}, 201)
            elif what == "feedback":
                self.reply({"id": self.records.add_feedback(body, caller.name)}, 201)
            elif what == "usage":
                self.reply({"recorded": self.records.add_usage(body, caller.name)}, 201)
            else:
                raise web.HTTPError(405, "POST copilot/suggestions, copilot/feedback or copilot/usage.")
        except RecordError as exc:
            self.reply({"error": str(exc), "status": exc.status}, exc.status)

    def _template(self, caller: Any, name: str) -> dict[str, Any]:
        """The template text this caller should use (a managed version, canary included) or none."""
        version, label = self.extra["prompts"].resolve(name, caller.name)
        if version is None:
            return {"name": name, "version": None, "label": None, "template": None}
        return {"name": name, "version": version.version, "label": label, "template": version.content.description}

    def _require_caller(self) -> Any:
        if self.caller is None:
            raise web.HTTPError(403, "Authenticate with the Jupyter token or a ContextLab API token.")
        return self.caller


class PipelinesHandler(AdminHandler):
    """Pipeline history, read-only: `GET runs?status=failed&pipeline=…&tag=key:value&since=7d&limit=&offset=`,
    `GET runs/<id>`, `GET schedules`. Any authenticated caller may read it."""

    @web.authenticated
    @authorized
    async def get(self, run_id: str | None = None) -> None:
        pipelines = self.extra["pipelines"]
        if self.extra["what"] == "schedules":
            self.reply({"schedules": self.extra["scheduler"].list()})
            return
        if run_id is not None:
            record = pipelines.get(run_id)
            if record is None:
                raise web.HTTPError(404, f"No pipeline run {run_id}.")
            if self.extra["what"] == "notebook":
                await self._notebook(record)
                return
            self.reply(record)
            return
        tags = {}
        for item in self.get_query_arguments("tag"):
            key, sep, value = item.partition(":")
            if not sep or not key:
                self.fail(RegistryError(f"tag {item!r}: use key:value.", 400))
                return
            tags[key] = value
        since = self.get_query_argument("since", None)
        try:
            page = pipelines.history(
                status=self.get_query_arguments("status") or None,
                pipeline=self.get_query_argument("pipeline", None),
                schedule=self.get_query_argument("schedule", None),
                tags=tags,
                since=datetime.now(UTC) - parse_since(since) if since else None,
                limit=int(self.get_query_argument("limit", "50")),
                offset=int(self.get_query_argument("offset", "0")),
            )
        except ValueError as exc:
            self.fail(RegistryError(str(exc), 400))
            return
        self.reply({"runs": page.runs, "total": page.total, "limit": page.limit, "offset": page.offset})

    async def _notebook(self, record: dict[str, Any]) -> None:
        """The executed notebook as HTML (`?format=ipynb` for the file itself)."""
        from contextlab.pipelines.runner import render_html

        path = record.get("output_path")
        if not path or not Path(path).exists():
            raise web.HTTPError(404, f"Run {record['id']} has no output notebook ({record['status']}).")
        if self.get_query_argument("format", "html") == "ipynb":
            self.finish(Path(path).read_bytes(), set_content_type="application/x-ipynb+json")
            return
        html = await asyncio.to_thread(render_html, path)
        self.finish(html, set_content_type="text/html; charset=utf-8")
