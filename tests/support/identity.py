"""A test identity provider with several users on one server: the token authenticates, a header names the user."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User


class HeaderUserIdentityProvider(IdentityProvider):
    async def get_user(self, handler: Any) -> User | None:
        if handler.request.headers.get("Authorization") != f"token {self.token}":
            return None
        handler._token_authenticated = True  # token requests are exempt from XSRF checks, as in Jupyter
        return User(username=handler.request.headers.get("X-Test-User", "anonymous"))
