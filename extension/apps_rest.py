"""REST API for PageDSL apps (`{base_url}contextlab/api/apps…`), documented in `openapi.yaml`.

Reading needs any authenticated caller; writing needs an admin or a token with the `apps` scope. Saves are
compare-and-swap on `base_version`: a stale one answers 409 with the diff and the caller's document, so
nothing is lost. Invalid documents answer 422 with every issue (path, line, message).
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from contextlab.extension.rest import ADMIN_SCOPE, AdminHandler

APPS_SCOPE = "apps"


class AppsHandler(AdminHandler):
    """`GET apps`, `POST apps` (create or import), `POST apps/validate`, `GET|PUT|DELETE apps/<name>`,
    `GET apps/<name>/versions`, `POST apps/<name>/publish|unpublish|rollback|migrate`, `GET apps/<name>/er`."""

    @property
    def apps(self) -> Any:
        return self.extra["apps"]

    def require_writer(self) -> None:
        caller = self.caller
        if caller is None or not (caller.is_admin or ADMIN_SCOPE in caller.scopes or APPS_SCOPE in caller.scopes):
            raise web.HTTPError(403, "Changing apps needs an admin or a token with the 'apps' scope.")

    @property
    def author(self) -> str:
        return self.caller.name if self.caller is not None else "unknown"

    def problem(self, exc: Exception) -> None:
        from contextlab.apps import dsl
        from contextlab.apps.db import AppDataError
        from contextlab.apps.er import DestructiveChangeError, ERModelError
        from contextlab.apps.store import AppConflict, AppError, AppExists, AppNotFound

        if isinstance(exc, dsl.DSLValidationError):
            self.reply(
                {
                    "error": str(exc).splitlines()[0].rstrip(":"),
                    "status": 422,
                    "issues": [i.to_dict() for i in exc.issues],
                },
                422,
            )
        elif isinstance(exc, AppConflict):
            self.reply(
                {
                    "error": str(exc),
                    "status": 409,
                    "current_version": exc.current,
                    "base_version": exc.base,
                    "diff": exc.diff,
                    "attempted": exc.attempted,
                },
                409,
            )
        elif isinstance(exc, AppNotFound):
            self.reply({"error": str(exc), "status": 404}, 404)
        elif isinstance(exc, AppExists):
            self.reply({"error": str(exc), "status": 409}, 409)
        elif isinstance(exc, DestructiveChangeError):
            steps = [{"kind": s.kind, "target": s.target, "reason": s.reason} for s in exc.steps]
            self.reply(
                {
                    "error": str(exc),
                    "status": 409,
                    "reason": "confirm_required",
                    "confirm_required": True,
                    "steps": steps,
                },
                409,
            )
        elif isinstance(exc, ERModelError | AppError | AppDataError):
            self.reply({"error": str(exc), "status": 400}, 400)
        else:
            raise exc

    def document(self, body: Any) -> dict[str, Any]:
        """The app document of a request body: `{"dsl": {...}}` or `{"yaml": "..."}`."""
        from contextlab.apps import dsl

        if not isinstance(body, dict):
            raise web.HTTPError(400, 'Send a JSON object: {"dsl": {…}} or {"yaml": "…"}.')
        if isinstance(body.get("dsl"), dict):
            return body["dsl"]
        if isinstance(body.get("yaml"), str):
            from contextlab.apps.db import catalog

            doc, document = dsl.parse(body["yaml"])
            return dsl.check(doc, catalog=catalog(self.apps.data_dir, doc), document=document)  # issues get lines
        raise web.HTTPError(400, 'Send the app as "dsl" (an object) or "yaml" (text).')

    async def run(self, fn: Any, *args: Any, status: int = 200, **kwargs: Any) -> None:
        try:
            result = await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:  # mapped to a status by `problem`; anything else propagates as 500
            self.problem(exc)
            return
        self.reply(result, status)

    @web.authenticated
    @authorized
    async def get(self, name: str | None = None, action: str | None = None) -> None:
        if self.caller is None:
            raise web.HTTPError(403, "Sign in to read apps.")
        if name is None:
            await self.run(lambda: {"apps": [i.to_dict() for i in self.apps.list()]})
            return
        version = self.get_query_argument("version", None)
        number = int(version) if version and version.isdigit() else None
        if action == "versions":
            await self.run(lambda: {"versions": [v.summary() for v in self.apps.versions(name)]})
        elif action == "er":
            await self.run(self._er, name, number)
        elif action is None:
            if self.get_query_argument("format", "json") == "yaml":
                try:
                    text = await asyncio.to_thread(self.apps.export_text, name, number)
                except Exception as exc:
                    self.problem(exc)
                    return
                self.set_header("Content-Type", "application/yaml; charset=utf-8")
                self.set_header("Content-Disposition", f'attachment; filename="{name}.pagedsl.yaml"')
                self.finish(text)
                return
            await self.run(self._get, name, number)
        else:
            raise web.HTTPError(405, f"GET {action} is not an action; use POST.")

    def _get(self, name: str, version: int | None) -> dict[str, Any]:
        saved = self.apps.get(name, version)
        return {**saved.summary(), "dsl": saved.dsl, "info": self.apps.info(name).to_dict()}

    def _er(self, name: str, version: int | None) -> dict[str, Any]:
        from contextlab.apps.service import er_diagram

        return {"app": name, "mermaid": er_diagram(self.apps.get(name, version).dsl)}

    @web.authenticated
    @authorized
    async def post(self, name: str | None = None, action: str | None = None) -> None:
        body = self.json_body()
        if name == "validate":
            await self.run(self._validate, body)
            return
        self.require_writer()
        if name is None:
            if isinstance(body, dict) and isinstance(body.get("yaml"), str) and body.get("import"):
                await self.run(self._import, body["yaml"], status=201)
                return
            await self.run(
                lambda: self._create(self.document(body), (body or {}).get("message") or "created"), status=201
            )
            return
        body = body or {}
        if action == "publish":
            await self.run(lambda: self.apps.publish_app(name, body.get("version"), self.author).summary())
        elif action == "unpublish":
            await self.run(lambda: self.apps.unpublish(name) or self.apps.info(name).to_dict())
        elif action == "rollback":
            if not isinstance(body.get("version"), int):
                raise web.HTTPError(400, 'Say which version to roll back to: {"version": 3}.')
            await self.run(
                lambda: self.apps.rollback(name, body["version"], self.author, body.get("base_version")).summary()
            )
        elif action == "migrate":
            await self.run(self._migrate, name, bool(body.get("confirm")), bool(body.get("dry_run")))
        else:
            raise web.HTTPError(404, f"Unknown app action {action!r}.")

    def _create(self, doc: dict[str, Any], message: str) -> dict[str, Any]:
        from contextlab.apps.service import create_app

        return create_app(self.apps, doc, self.author, message).summary()

    def _import(self, text: str) -> dict[str, Any]:
        from contextlab.apps.service import create_app, save_app
        from contextlab.apps.store import AppNotFound

        doc = self.apps.import_check(text)
        try:
            current = self.apps.get(doc["app"]["name"])
        except AppNotFound:
            return create_app(self.apps, doc, self.author, "imported").summary()
        return save_app(self.apps, current.app, doc, self.author, current.version, "imported").summary()

    def _validate(self, body: Any) -> dict[str, Any]:
        from contextlab.apps import dsl
        from contextlab.apps.db import catalog

        try:
            doc = dsl.upgrade(self.document(body))
        except dsl.DSLValidationError as exc:
            return {"valid": False, "issues": [i.to_dict() for i in exc.issues]}
        issues = dsl.validate(doc, catalog=catalog(self.apps.data_dir, doc))
        return {"valid": not issues, "issues": [i.to_dict() for i in issues]}

    def _migrate(self, name: str, confirm: bool, dry_run: bool) -> dict[str, Any]:
        from contextlab.apps.service import apply_model, plan_model

        if dry_run:
            return plan_model(self.apps, name)
        return apply_model(self.apps, name, confirm=confirm)

    @web.authenticated
    @authorized
    async def put(self, name: str, action: str | None = None) -> None:
        self.require_writer()
        if action is not None:
            raise web.HTTPError(405, "PUT takes an app, not an action.")
        body = self.json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'Send a JSON object: {"dsl": {…}, "base_version": N}.')
        base = body.get("base_version")
        if not isinstance(base, int):
            raise web.HTTPError(400, "Say which version your edit starts from: base_version (an integer).")
        message, confirm = body.get("message") or "", bool(body.get("confirm"))
        await self.run(lambda: self._save(name, self.document(body), base, message, confirm))

    def _save(self, name: str, doc: dict[str, Any], base: int, message: str, confirm: bool) -> dict[str, Any]:
        from contextlab.apps.service import save_app

        return save_app(self.apps, name, doc, self.author, base, message, confirm=confirm).summary()

    @web.authenticated
    @authorized
    async def delete(self, name: str, action: str | None = None) -> None:
        self.require_writer()
        await self.run(lambda: self.apps.delete(name) or {"deleted": name})


class AppsPageHandler(JupyterHandler):
    """`{base_url}contextlab/apps/…`: the apps as served inside JupyterLab (through jupyter-server-proxy)."""

    @web.authenticated
    def get(self, rest: str = "") -> None:
        target = url_path_join(self.base_url, "contextlab-apps", "apps", rest or "")
        query = self.request.query
        self.redirect(f"{target}?{query}" if query else target)
