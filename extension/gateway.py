"""The security gateway: who may see and call what, how often, and with what redaction.

Every decision goes through `Gateway`: callers are resolved from Jupyter users or ContextLab API
tokens, tools are filtered by token scopes and the ABAC policy before they are listed, calls are
admitted (scope, policy, rate limit) and their arguments and results pass the DLP redactor. The
SDK middleware in `service.py` and the lean forwarding path in `handlers.py` both call it, so the
two paths cannot drift apart.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp.shared.exceptions import MCPError

from contextlab.extension.dlp import Redactor
from contextlab.extension.policy import Decision, PolicyEngine
from contextlab.extension.principals import Caller, ToolTarget
from contextlab.extension.ratelimit import RateLimiter, RateLimitExceeded

FORBIDDEN = -32003
RATE_LIMITED = -32029
UPSTREAM_UNAVAILABLE = -32010
QUARANTINED = -32012


@dataclass
class CallNote:
    """What the gateway decided for the request in flight; the audit entry is built from it."""

    caller: Caller | None = None
    decision: str | None = None
    redactions: int = 0
    upstream: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    prompt_version: int | None = None  # the tool-description version the caller saw
    prompt_label: str | None = None  # the label that chose it (stable or canary)
    audited: bool = False  # the forwarding path already wrote this request's audit row

    def add_redactions(self, counts: Mapping[str, int]) -> None:
        for kind, count in counts.items():
            self.redactions += count
            self.kinds[kind] = self.kinds.get(kind, 0) + count


current_note: contextvars.ContextVar[CallNote | None] = contextvars.ContextVar("contextlab_call_note", default=None)


class Gateway:
    """Policy decisions, rate limits and redaction, shared by every request path."""

    def __init__(
        self,
        policy: PolicyEngine,
        *,
        limiter: RateLimiter | None = None,
        jupyter_scopes: Iterable[str] = ("*",),
        jupyter_attributes: Mapping[str, Mapping[str, Any]] | None = None,
        builtin_attributes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.policy = policy
        self.limiter = limiter or RateLimiter()
        self.jupyter_scopes = tuple(jupyter_scopes)
        self.jupyter_attributes = {k: dict(v) for k, v in (jupyter_attributes or {"*": {"roles": ["Owner"]}}).items()}
        self.builtin_attributes = {k: dict(v) for k, v in (builtin_attributes or {}).items()}
        self._redactor_for: str | None = None
        self._redactor: Redactor | None = None
        self._callers: dict[str, Caller] = {}

    # -- callers and targets ---------------------------------------------------------------------
    def jupyter_caller(self, username: str) -> Caller:
        caller = self._callers.get(username)
        if caller is None:
            attributes = self.jupyter_attributes.get(username) or self.jupyter_attributes.get("*") or {}
            caller = Caller(name=username, kind="jupyter", scopes=self.jupyter_scopes, attributes=attributes)
            self._callers[username] = caller
        return caller

    def builtin_target(self, name: str) -> ToolTarget:
        server, _, tool = name.partition("__")
        attributes = self.builtin_attributes.get(server) or self.builtin_attributes.get("*") or {}
        return ToolTarget(name=name, server=server, tool=tool, upstream=False, attributes=attributes)

    # -- decisions -------------------------------------------------------------------------------
    def may_list(self, caller: Caller, target: ToolTarget) -> bool:
        return caller.has_scope(target.scope) and self.policy.policy.decide(caller, target, "list").allowed

    def visible(self, caller: Caller, items: Iterable[tuple[Any, ToolTarget]]) -> list[Any]:
        return [item for item, target in items if self.may_list(caller, target)]

    def admit(self, caller: Caller, target: ToolTarget, *, kind: str = "tool") -> Decision:
        """Scope, policy and rate limit for one call; raises MCPError with the reason on refusal."""
        note = current_note.get()
        if not caller.has_scope(target.scope):
            self._note(note, f"deny:scope:{target.scope}")
            raise MCPError(
                FORBIDDEN,
                f"Forbidden: {caller.name} lacks the scope {target.scope!r} for {kind} {target.name!r}. "
                "Ask an admin for a token with that scope.",
            )
        decision = self.policy.policy.decide(caller, target, "call")
        self._note(note, decision.label)
        if not decision.allowed:
            if not self.policy.policy.decide(caller, target, "list").allowed:
                # The caller may not even know it exists: answer as for a missing tool.
                raise MCPError(-32602, f"Unknown {kind} {target.name!r}. Call {kind}s/list to see what you may use.")
            raise MCPError(
                FORBIDDEN, f"Forbidden by policy rule {decision.rule!r}: {decision.reason} ({kind} {target.name!r})."
            )
        try:
            self.limiter.check(caller, target, self.policy.policy.rate_limits)
        except RateLimitExceeded as exc:
            self._note(note, f"deny:rate_limit:{exc.rule}")
            raise MCPError(
                RATE_LIMITED,
                str(exc),
                data={"retryAfter": round(exc.retry_after, 3), "rule": exc.rule},
            ) from exc
        return decision

    @staticmethod
    def _note(note: CallNote | None, decision: str) -> None:
        if note is not None:
            note.decision = decision

    # -- DLP -------------------------------------------------------------------------------------
    @property
    def redactor(self) -> Redactor:
        policy = self.policy.policy
        if self._redactor is None or self._redactor_for != policy.sha256:
            self._redactor = Redactor(policy.dlp.detectors, policy.dlp.custom)
            self._redactor_for = policy.sha256
        return self._redactor

    def redact(self, value: Any, where: str) -> Any:
        """Redact `value` if the policy applies DLP to `where` ("arguments" or "results")."""
        if where not in self.policy.policy.dlp.apply_to:
            return value
        redacted, counts = self.redactor.redact(value)
        if counts:
            note = current_note.get()
            if note is not None:
                note.add_redactions(counts)
        return redacted
