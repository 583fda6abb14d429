"""Serving published apps with Panel's own server (`pn.serve`), several apps side by side:

    /apps                     the published apps the viewer may open
    /apps/{app}               the app's first page
    /apps/{app}/{page}        a page by id (its route without the slash)

Who the viewer is comes from Panel's auth (basic auth or OAuth); which roles they hold comes from a users
file. Pages a viewer's roles do not allow answer HTTP 403 through Panel's `authorize_callback`.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import panel as pn
import yaml

from contextlab.apps.render import AppSession, Forbidden, PageNotFound, Viewer, find_page
from contextlab.apps.store import AppNotFound, AppStore

log = logging.getLogger(__name__)


@dataclass
class Users:
    """Who may sign in and which app roles each holds. File format (YAML):

    users:
      alice: {password: "…", roles: [employee]}
      bob:   {password: "…", roles: [employee, manager]}
    anonymous_roles: []     # roles of a viewer when no auth is configured
    """

    passwords: dict[str, str] = field(default_factory=dict)
    roles: dict[str, set[str]] = field(default_factory=dict)
    anonymous_roles: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: str | Path) -> Users:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Users:
        users = data.get("users") or {}
        if not isinstance(users, Mapping):
            raise ValueError("`users` must map a user name to {password, roles}")
        passwords, roles = {}, {}
        for name, spec in users.items():
            spec = spec or {}
            if spec.get("password"):
                passwords[str(name)] = str(spec["password"])
            roles[str(name)] = set(spec.get("roles") or [])
        return cls(passwords, roles, set(data.get("anonymous_roles") or []))

    def viewer(self, user: str | None) -> Viewer:
        if not user:
            return Viewer("anonymous", set(self.anonymous_roles))
        return Viewer(user, set(self.roles.get(user, set())))


def _split(path: str, prefix: str) -> tuple[str | None, str | None]:
    """/prefix/apps/<app>/<page> → (app, page)."""
    if prefix and path.startswith(prefix):
        path = path[len(prefix) :]
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "apps" or len(parts) == 1:
        return None, None
    return parts[1], (parts[2] if len(parts) > 2 else None)


class AppServer:
    """Panel apps for every published PageDSL app of `store`."""

    def __init__(
        self,
        store: AppStore,
        users: Users | None = None,
        *,
        env: str | None = None,
        flows: Any = None,
        prefix: str = "",
        tools: Mapping[str, tuple[Callable[[Viewer], Any], set[str]]] | None = None,
    ) -> None:
        self.store = store
        self.users = users or Users()
        self.env = env
        self.flows = flows
        self.prefix = prefix.rstrip("/")
        # Pages beside the apps (the console, the builder): route → (factory(viewer), roles that may open it).
        self.tools = dict(tools or {})

    # -------------------------------------------------------------- Panel callbacks

    def current_viewer(self) -> Viewer:
        return self.users.viewer(pn.state.user)

    def authorize(self, user_info: Mapping[str, Any] | None, path: str) -> bool:
        """Panel's authorize_callback: False (→ 403) when the viewer may not open the page at `path`."""
        user = (user_info or {}).get("user") or (user_info or {}).get("username") or pn.state.user
        tool = self._tool(path)
        if tool is not None:
            roles = self.users.viewer(user).roles
            return bool(roles & (self.tools[tool][1] | {"admin"}))
        app, page_id = _split(path, self.prefix)
        if app is None:
            return True
        try:
            doc = self.store.published(app).dsl
            page = find_page(doc, f"/{page_id}" if page_id else None)
        except (AppNotFound, PageNotFound):
            return True  # the page itself explains what is missing
        return self.users.viewer(user).may_open(page)

    def _tool(self, path: str) -> str | None:
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :]
        first = next((p for p in path.split("/") if p), None)
        return first if first in self.tools else None

    def url_for(self, app: str, route: str) -> str:
        return f"{self.prefix}/apps/{app}/{route.strip('/')}" if route.strip("/") else f"{self.prefix}/apps/{app}"

    def render(self, app: str, page_id: str | None) -> pn.viewable.Viewable:
        viewer = self.current_viewer()
        try:
            version = self.store.published(app)
        except AppNotFound as exc:
            return pn.pane.Alert(str(exc), alert_type="warning", css_classes=["cl-not-found"])
        doc = version.dsl
        session = AppSession(
            doc,
            self.store.data_dir,
            viewer,
            env=self.env,
            flows=self.flows,
            start_flow=self._starter(app),
            url_for=lambda route: self.url_for(app, route),
        )
        try:
            return session.page(f"/{page_id}" if page_id else None)
        except Forbidden as exc:
            return pn.pane.Alert(f"403 — {exc}", alert_type="danger", css_classes=["cl-forbidden"])
        except PageNotFound as exc:
            return pn.pane.Alert(str(exc), alert_type="warning", css_classes=["cl-not-found"])

    def _starter(self, app: str) -> Any:
        if self.flows is None:
            return None

        def start(flow: str, data: dict[str, Any], viewer: Viewer) -> Any:
            return self.flows.start_app_flow(app, flow, data, viewer.user)

        return start

    def index(self) -> pn.viewable.Viewable:
        viewer = self.current_viewer()
        lines = []
        for info in self.store.list():
            if info.published_version is None:
                continue
            doc = self.store.get(info.name, info.published_version).dsl
            pages = [p for p in doc["pages"] if viewer.may_open(p)]
            if pages:
                first = pages[0]["route"]
                lines.append(f"- [{info.title}]({self.url_for(info.name, first)}) · v{info.published_version}")
        body = "\n".join(lines) or "No published app is open to you."
        tools = [
            f"[{route.capitalize()}]({self.prefix}/{route})"
            for route, (_factory, roles) in self.tools.items()
            if viewer.roles & (roles | {"admin"})
        ]
        if tools:
            body += "\n\n" + " · ".join(tools)
        return pn.Column(pn.pane.Markdown(f"## ContextLab apps\n\n{body}"), css_classes=["cl-index"])

    # -------------------------------------------------------------- serving

    def routes(self) -> dict[str, Any]:
        """The `pn.serve` mapping: route pattern → function returning the page of the current request."""

        def app_page() -> pn.viewable.Viewable:
            params = pn.state.route_params
            return self.render(params.get("app", ""), params.get("page"))

        routes: dict[str, Any] = {"apps": self.index, "apps/{app}": app_page, "apps/{app}/{page}": app_page}
        for route, (factory, _roles) in self.tools.items():
            routes[route] = lambda factory=factory: factory(self.current_viewer())
        return routes

    def serve(
        self,
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        threaded: bool = False,
        basic_auth: bool = True,
        oauth: Mapping[str, Any] | None = None,
        cookie_secret: str | None = None,
        websocket_origin: list[str] | None = None,
        show: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Start Panel's server. With users that have passwords (and no `oauth`), Panel's basic auth is on."""
        pn.config.authorize_callback = self.authorize
        options: dict[str, Any] = dict(kwargs)
        provider = None
        if oauth:
            from panel.auth import OAuthProvider

            options.update({k: v for k, v in oauth.items() if k != "oauth_provider"})
            pn.config.oauth_provider = oauth["oauth_provider"]
            provider = nested_auth(OAuthProvider)()
        elif basic_auth and self.users.passwords:
            from panel.auth import BasicAuthProvider

            pn.config.basic_auth = dict(self.users.passwords)
            provider = nested_auth(BasicAuthProvider)()
        if provider is not None:
            options["auth_provider"] = provider
            options["extra_patterns"] = [
                *options.get("extra_patterns", []),
                (provider.real_login_url, provider.real_login_handler),
            ]
            pn.config.cookie_secret = cookie_secret or pn.config.cookie_secret or secrets.token_urlsafe(32)
        if self.prefix:
            options.setdefault("prefix", self.prefix)
        return pn.serve(
            self.routes(),
            port=port,
            address=address,
            threaded=threaded,
            show=show,
            title="ContextLab apps",
            websocket_origin=websocket_origin or [f"{address}:{port}" if port else "*"],
            **options,
        )


def nested_auth(base: type) -> type:
    """`base` (a Panel auth provider) made to work for pages below the top level.

    Panel sends a signed-out viewer to `'.' + login_url`, relative to the page, so from /apps/x/y it would
    land on /apps/x/login, which our page route answers. This provider gives a login URL that climbs back
    to the root from the request's depth, and the login handler is mounted at the real `/login`.
    """

    class Nested(base):
        @property
        def login_url(self) -> None:
            return None

        @property
        def login_handler(self) -> None:
            return None

        @property
        def real_login_url(self) -> str:
            return base.login_url.fget(self)

        @property
        def real_login_handler(self) -> Any:
            return base.login_handler.fget(self)

        @property
        def get_login_url(self) -> Any:
            target = self.real_login_url.lstrip("/")

            def login_url(handler: Any) -> str:
                depth = max(handler.request.path.count("/") - 1, 0)
                return "/" + "../" * depth + target

            return login_url

    Nested.__name__ = f"Nested{base.__name__}"
    return Nested


def dump_users(users: Users) -> str:
    """The users file format, for docs and tests."""
    body = {
        "users": {
            name: {"password": users.passwords.get(name, ""), "roles": sorted(roles)}
            for name, roles in users.roles.items()
        },
        "anonymous_roles": sorted(users.anonymous_roles),
    }
    return json.dumps(body, indent=2)
