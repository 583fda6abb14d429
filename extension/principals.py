"""Who is calling and what they are calling: the two sides every gateway decision looks at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

SENSITIVITY_LEVELS = ("public", "internal", "confidential", "secret")
ROLES = ("Owner", "Admin", "Operator", "Viewer")


@dataclass(frozen=True)
class Caller:
    """An authenticated principal: a Jupyter user or a ContextLab API token.

    `scopes` are glob patterns over tool scopes (see `ToolTarget.scope`); `("*",)` is full access.
    `attributes` carry at least `roles` (a list of `ROLES`) and may carry `org`, `project`, `tenant`.
    """

    name: str
    kind: str = "jupyter"
    scopes: tuple[str, ...] = ("*",)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    token_id: str | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        roles = self.attributes.get("roles") or ()
        return (roles,) if isinstance(roles, str) else tuple(roles)

    @property
    def tenant(self) -> str | None:
        return self.attributes.get("tenant") or self.attributes.get("org")

    @property
    def is_admin(self) -> bool:
        return bool({"Owner", "Admin"} & set(self.roles))

    def has_scope(self, scope: str) -> bool:
        return any(fnmatchcase(scope, pattern) for pattern in self.scopes)


@dataclass(frozen=True)
class ToolTarget:
    """A tool as the gateway sees it: its public (namespaced) name, its server and their attributes.

    `attributes` carry the server's `org`, `project`, `sensitivity` (one of `SENSITIVITY_LEVELS`)
    and `owner`.
    """

    name: str
    server: str
    tool: str
    upstream: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """The scope a token needs: `sql:query` for a built-in tool, `upstream:github__create_issue` upstream."""
        return f"upstream:{self.name}" if self.upstream else f"{self.server}:{self.tool}"

    @property
    def sensitivity(self) -> str:
        return str(self.attributes.get("sensitivity") or "internal")
