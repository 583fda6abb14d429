"""The kernel's client for the ContextLab REST API: suggestions, feedback, LLM usage, model configuration.

The kernel knows its server from `CONTEXTLAB_MCP_URL` (the MCP endpoint, `{base}contextlab/mcp`) and
`CONTEXTLAB_TOKEN`; the REST API lives under the same base URL. Reports (suggestions, feedback, usage)
must never disturb a notebook: a report that cannot be delivered stays queued in memory, is retried
with the next one, and the failure is logged (see `%copilot log`), never shown in a cell.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from contextlab.copilot.llm import OFFLINE_MODEL, UsageRecord, summarise

log = logging.getLogger("contextlab.kernels")

API = "contextlab/api/copilot/"
MCP_SUFFIX = "contextlab/mcp"


class APIUnavailable(Exception):
    """The server could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_base(mcp_url: str) -> str:
    """The Jupyter server's base URL (ending in `/`) from the MCP endpoint URL."""
    url = mcp_url.split("?", 1)[0].rstrip("/")
    if url.endswith(MCP_SUFFIX):
        return url[: -len(MCP_SUFFIX)]
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/", "", ""))


def auth_header(token: str | None) -> dict[str, str]:
    """ContextLab API tokens (`cl_…`) are bearer tokens; anything else is a Jupyter token."""
    if not token:
        return {}
    return {"Authorization": f"Bearer {token}" if token.startswith("cl_") else f"token {token}"}


class ServerAPI:
    """Blocking calls to `{base}contextlab/api/copilot/…`, and a queue for reports that must not be lost."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 5.0,
        max_pending: int = 2000,
        backoff: float = 30.0,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.token = token
        self.timeout = timeout
        self._http = httpx.Client(headers=auth_header(token), timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)))
        self._pending: deque[tuple[str, dict[str, Any]]] = deque(maxlen=max_pending)
        self._lock = threading.RLock()
        self.backoff = backoff
        self._quiet_until = 0.0  # after a transport failure, reports just queue for `backoff` seconds
        self.last_error: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerAPI | None:
        env = os.environ if env is None else env
        url = env.get("CONTEXTLAB_MCP_URL")
        if not url:
            return None
        return cls(api_base(url), env.get("CONTEXTLAB_TOKEN") or env.get("JUPYTER_TOKEN") or None)

    def url(self, path: str) -> str:
        return f"{self.base_url}{API}{path}"

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json=body)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, self.url(path), **kwargs)
        except httpx.HTTPError as exc:
            raise APIUnavailable(f"{method} {self.url(path)}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("error") or response.text
            except ValueError:
                detail = response.text
            raise APIUnavailable(
                f"{method} {self.url(path)}: HTTP {response.status_code}: {str(detail)[:300]}", response.status_code
            )
        try:
            data = response.json()
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {"value": data}

    # -- reports: queued, retried, never raised ---------------------------------------------------
    @property
    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self._pending)

    def report(self, path: str, body: dict[str, Any]) -> bool:
        """Queue a report and try to deliver the queue in order; True when this one was delivered."""
        with self._lock:
            self._pending.append((path, body))
            return any(sent is body for sent in self._deliver())

    def flush(self, *, force: bool = False) -> int:
        """Deliver queued reports in order; stop at the first one the server cannot take now. Returns what is left."""
        with self._lock:
            self._deliver(force=force)
            return len(self._pending)

    def _deliver(self, *, force: bool = False) -> list[dict[str, Any]]:
        delivered: list[dict[str, Any]] = []
        if not force and time.monotonic() < self._quiet_until:
            return delivered  # the server was unreachable a moment ago: do not make every cell wait for it
        while self._pending:
            path, body = self._pending[0]
            try:
                self.post(path, body)
            except APIUnavailable as exc:
                self.last_error = str(exc)
                if _never_accepted(path, exc):
                    # The server read it and will not take it, now or later (duplicate, invalid): drop it.
                    log.info("report dropped: %s", exc)
                    self._pending.popleft()
                    continue
                if exc.status is None:
                    self._quiet_until = time.monotonic() + self.backoff
                log.info("report kept for later (%d queued): %s", len(self._pending), exc)
                break
            self._pending.popleft()
            delivered.append(body)
        return delivered

    def close(self) -> None:
        self._http.close()


def _never_accepted(path: str, exc: APIUnavailable) -> bool:
    status = exc.status
    if status is None or status >= 500 or status in (401, 403, 408, 429):
        return False  # unreachable, failing, or not allowed right now: worth retrying
    if status == 404:  # feedback for a suggestion the server does not know; else the route is missing
        return path == "feedback" and "No suggestion" in str(exc)
    return 400 <= status < 500


class ServerUsage:
    """The router's usage sink in a kernel: records are buffered and posted to the server in batches.

    `spent(project)` asks the server (which knows every kernel's spending) and adds what this kernel has
    not delivered yet; without a server it falls back to this kernel's own records.
    """

    def __init__(self, api: ServerAPI | None, *, batch: int = 20) -> None:
        self.api = api
        self.batch = batch
        self.records: list[UsageRecord] = []  # everything this kernel recorded (for %copilot usage offline)
        self._unsent: list[UsageRecord] = []
        self._lock = threading.Lock()

    def record(self, usage: UsageRecord) -> None:
        with self._lock:
            self.records.append(usage)
            self._unsent.append(usage)
            full = len(self._unsent) >= self.batch
        if full:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered records to the API's report queue (which retries what it cannot deliver)."""
        with self._lock:
            batch, self._unsent = self._unsent, []
        if batch and self.api is not None:
            self.api.report("usage", {"records": [usage_dict(r) for r in batch]})
        elif self.api is not None:
            self.api.flush()

    def _undelivered(self) -> list[UsageRecord]:
        with self._lock:
            unsent = list(self._unsent)
        queued = []
        if self.api is not None:
            for path, body in self.api.pending:
                if path == "usage":
                    queued.extend(body["records"])
        return unsent + [_record_from_dict(r) for r in queued]

    def spent(self, project: str) -> float:
        if self.api is not None:
            try:
                reply = self.api.get("usage", {"project": project})
                server = float(reply.get("spent") or 0.0)
                return server + sum(r.cost for r in self._undelivered() if r.project == project)
            except (APIUnavailable, TypeError, ValueError) as exc:
                log.info("spent(%s) from this kernel's records only: %s", project, exc)
        with self._lock:
            return sum(r.cost for r in self.records if r.project == project)

    def summary(self) -> tuple[list[dict[str, Any]], str]:
        """Usage rows per user, project and model, and where they come from."""
        self.flush()
        if self.api is not None:
            try:
                reply = self.api.get("usage")
                rows = reply.get("summary")
                if isinstance(rows, list):
                    pending = self._undelivered()
                    note = "server"
                    if pending:
                        note += f" ({len(pending)} record(s) from this kernel not delivered yet)"
                    return rows, note
            except APIUnavailable as exc:
                log.info("usage summary from this kernel only: %s", exc)
        with self._lock:
            rows = summarise(asdict(r) for r in self.records)
        return rows, "this kernel only (the server is not reachable)"


def usage_dict(record: UsageRecord) -> dict[str, Any]:
    data = asdict(record)
    data["ts"] = record.ts.isoformat()
    return data


def _record_from_dict(data: dict[str, Any]) -> UsageRecord:
    fields = {k: v for k, v in data.items() if k != "ts" and k in UsageRecord.__dataclass_fields__}
    return UsageRecord(**fields)


# -- model configuration ------------------------------------------------------------------------------


class ModelConfigError(Exception):
    """The model configuration file is unreadable or malformed; the message names the file."""


def read_models_file(path: str | Path) -> dict[str, Any]:
    """A `CONTEXTLAB_MODELS` file (YAML or JSON): `{models: [...], default_chain, budgets, target_latency}`
    or just a list of models."""
    import yaml

    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelConfigError(f"CONTEXTLAB_MODELS={path}: cannot read it ({exc.strerror or exc}).") from exc
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"CONTEXTLAB_MODELS={path}: not valid YAML/JSON ({exc}).") from exc
    if isinstance(data, list):
        data = {"models": data}
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelConfigError(f"CONTEXTLAB_MODELS={path}: expected an object with a 'models' list.")
    return data


def load_model_config(api: ServerAPI | None, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """The model configuration for this kernel, and where it came from.

    1. the server's `copilot/models`, when it lists a model other than the built-in offline one;
    2. else the file named by `CONTEXTLAB_MODELS` (budgets and latency preferences the server sets still apply);
    3. else the server's answer (the offline model), or the offline model alone.
    """
    env = os.environ if env is None else env
    server: dict[str, Any] | None = None
    if api is not None:
        try:
            server = api.get("models")
        except APIUnavailable as exc:
            log.info("model configuration not available from the server: %s", exc)
    server_models = server.get("models") if isinstance(server, dict) else None
    if isinstance(server_models, list) and any(m.get("name") != OFFLINE_MODEL.name for m in server_models):
        return server, "server"
    path = env.get("CONTEXTLAB_MODELS")
    if path:
        data = read_models_file(path)
        if server:
            for key in ("budgets", "target_latency"):
                data.setdefault(key, server.get(key) or {})
        return data, f"CONTEXTLAB_MODELS={path}"
    if isinstance(server_models, list) and server_models:
        return server, "server (offline model only)"
    return {"models": [asdict(OFFLINE_MODEL)]}, "offline default (no server configuration, no CONTEXTLAB_MODELS)"
