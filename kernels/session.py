"""One kernel's Copilot: configuration, the cached engine, this kernel's suggestions and their feedback.

Everything that talks to the server or the models lives here, so the magics and the buttons only
parse, call and render. Errors the user can act on come out as `CellError` (one line, no traceback).
"""

from __future__ import annotations

import getpass
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from contextlab.copilot.context import ContextClient, ContextUnavailable, Endpoint, ToolFailed
from contextlab.copilot.engine import TARGETS, ContextItem, Copilot, CopilotError, Suggestion
from contextlab.copilot.llm import SENSITIVITY_ORDER, LLMError, LLMRouter, ModelSpec, PolicyRefused, RouterPolicy
from contextlab.kernels.api import ModelConfigError, ServerAPI, ServerUsage, load_model_config
from contextlab.kernels.edits import distance, find_marker, levenshtein, normalise
from contextlab.kernels.frames import frame_context

log = logging.getLogger("contextlab.kernels")

EXPLAIN_SYSTEM = (
    "You explain code to a data analyst. In plain words and at most six short sentences, say what the "
    "{language} code below does, which tables or data it reads, and anything surprising. No code."
)


class CellError(Exception):
    """An error shown as one line in the cell output, without a traceback (the cell still ends in error)."""

    def __init__(self, message: str, prefix: str = "Copilot") -> None:
        super().__init__(message)
        self.prefix = prefix

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{self.prefix}: {self}"]


@dataclass
class Settings:
    """What `%copilot config` shows and sets."""

    model: str | None = None
    project: str = "default"
    user: str = ""
    sensitivity: str = "internal"
    frames: int = 5
    max_repairs: int = 2

    def set(self, key: str, value: str, models: Callable[[], Mapping[str, ModelSpec]]) -> None:
        names = {f.name for f in fields(self)}
        if key not in names:
            raise CellError(f"Unknown setting {key!r}; settings: {', '.join(sorted(names))}.")
        if key == "model":
            if value in ("", "auto", "none", "None"):
                self.model = None
                return
            known = models()
            if value not in known:
                raise CellError(f"Unknown model {value!r}. Configured models: {', '.join(known) or 'none'}.")
            self.model = value
        elif key == "sensitivity":
            if value not in SENSITIVITY_ORDER:
                raise CellError(f"sensitivity must be one of {', '.join(SENSITIVITY_ORDER)}, not {value!r}.")
            self.sensitivity = value
        elif key in ("frames", "max_repairs"):
            try:
                number = int(value)
            except ValueError:
                raise CellError(f"{key} must be a whole number, not {value!r}.") from None
            if number < 0:
                raise CellError(f"{key} must be 0 or more.")
            setattr(self, key, number)
        else:
            if not value:
                raise CellError(f"{key} cannot be empty.")
            setattr(self, key, value)


@dataclass
class Request:
    """One `%%copilot` call, kept so it can be regenerated."""

    target: str
    text: str
    model: str | None = None
    use_context: bool = True
    validate: bool = True
    project: str = "default"
    sensitivity: str = "internal"
    explain: bool = False


@dataclass
class Record:
    """A suggestion in this kernel's history, the cell made from it, and what happened to it."""

    suggestion: Suggestion
    request: Request
    cell: str | None
    header: tuple[str, ...] = ()
    feedback: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    last_run: str | None = None
    explanation: str | None = None

    @property
    def id(self) -> str:
        return self.suggestion.id


def check_request(target: str | None, text: str) -> None:
    """The engine's own checks, made before anything is built or contacted."""
    if not target:
        raise CellError(f"Name a target: `%%copilot <target>`, one of {', '.join(sorted(TARGETS))}.")
    if target not in TARGETS:
        raise CellError(f"Unknown target {target!r}. Targets: {', '.join(sorted(TARGETS))}.")
    if not text or not text.strip():
        raise CellError(f"Write what you need below `%%copilot {target}`, e.g. 'top 5 customers by revenue'.")


def explain_error(exc: BaseException) -> str:
    if isinstance(exc, PolicyRefused):
        return f"No model may take this request. {exc}"
    if isinstance(exc, LLMError):
        return f"No model answered. {exc}"
    return str(exc)


class _RecentLog(logging.Handler):
    """The last log lines of the Copilot in this kernel (`%copilot log`), instead of stderr in a cell."""

    def __init__(self, size: int = 200) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # pragma: no cover - logging must never fail a cell
            pass


class CopilotSession:
    """The Copilot of one kernel."""

    def __init__(self, shell: Any, env: Mapping[str, str] | None = None) -> None:
        self.shell = shell
        self.env = os.environ if env is None else env
        self.settings = Settings(
            project=self.env.get("CONTEXTLAB_PROJECT") or "default",
            user=self.env.get("JUPYTERHUB_USER") or _login(),
        )
        self.history: list[Record] = []
        self.views: dict[str, Any] = {}
        self.sent_feedback: list[dict[str, Any]] = []
        self.models_source = ""
        self._lock = threading.RLock()
        self._api_key: tuple[str | None, str | None] | None = None
        self._api: ServerAPI | None = None
        self._client_key: tuple[str | None, str | None] | None = None
        self._client: ContextClient | None = None
        self._router: LLMRouter | None = None
        self._usage: ServerUsage | None = None
        self._copilot: Copilot | None = None
        self.log = _RecentLog()

    # -- connections (rebuilt when the kernel's environment points elsewhere) -----------------------
    def _endpoint_key(self) -> tuple[str | None, str | None]:
        return (
            self.env.get("CONTEXTLAB_MCP_URL"),
            self.env.get("CONTEXTLAB_TOKEN") or self.env.get("JUPYTER_TOKEN"),
        )

    @property
    def api(self) -> ServerAPI | None:
        with self._lock:
            key = self._endpoint_key()
            if key != self._api_key:
                if self._api is not None:
                    self._api.close()
                self._api, self._api_key = ServerAPI.from_env(self.env), key
                if self._usage is not None:
                    self._usage.api = self._api
            return self._api

    def client(self, *, required: bool = True) -> ContextClient | None:
        """The MCP client; None when no server is configured and none is required."""
        with self._lock:
            key = self._endpoint_key()
            if key[0] is None:
                if required:
                    try:
                        Endpoint.from_env()  # the engine's message says what to do
                    except ContextUnavailable as exc:
                        raise CellError(str(exc)) from None
                return None
            if key != self._client_key:
                self._client, self._client_key = ContextClient(Endpoint(key[0], key[1])), key
            return self._client

    @property
    def usage(self) -> ServerUsage:
        with self._lock:
            if self._usage is None:
                self._usage = ServerUsage(self.api)
            return self._usage

    def router(self) -> LLMRouter:
        """The LLM router, built once from the server's model configuration (or the fallbacks)."""
        with self._lock:
            if self._router is None:
                source = "the model configuration"
                try:
                    config, source = load_model_config(self.api, self.env)
                    models = [ModelSpec.from_dict(dict(m)) for m in config.get("models") or []]
                    policy = RouterPolicy(
                        budgets={k: float(v) for k, v in (config.get("budgets") or {}).items()},
                        target_latency=dict(config.get("target_latency") or {}),
                    )
                    self._router = LLMRouter(
                        models, default_chain=config.get("default_chain") or None, policy=policy, usage=self.usage
                    )
                except ModelConfigError as exc:
                    raise CellError(str(exc)) from None
                except (TypeError, ValueError) as exc:
                    raise CellError(f"The model configuration from {source} is invalid: {exc}") from None
                self.models_source = source
                log.info("models from %s: %s", source, ", ".join(self._router.models))
            return self._router

    def copilot(self, client: ContextClient | None, request: Request) -> Copilot:
        with self._lock:
            if self._copilot is None:
                self._copilot = Copilot(self.router(), client)
            engine = self._copilot
            engine.client = client
            engine.user = self.settings.user
            engine.project = request.project
            engine.max_repairs = self.settings.max_repairs
            return engine

    def reload(self) -> None:
        """Forget the cached router and engine (e.g. after the server's model configuration changed)."""
        with self._lock:
            if self._usage is not None:
                self._usage.flush()
            self._router = None
            self._copilot = None

    def request(self, target: str | None, text: str, **options: Any) -> Request:
        check_request(target, text)
        values = {
            "model": self.settings.model,
            "project": self.settings.project,
            "sensitivity": self.settings.sensitivity,
            **{k: v for k, v in options.items() if v is not None},
        }
        return Request(target=str(target), text=text.strip(), **values)

    # -- generation -----------------------------------------------------------------------------------
    def context(self, target: str, request_text: str = "") -> list[ContextItem]:
        """What a generation for `target` would put in the prompt now."""
        check_request(target, "-")
        spec = TARGETS[target]()
        try:
            items = list(spec.gather(self.client(required=True)))
        except (ContextUnavailable, ToolFailed) as exc:
            raise CellError(explain_error(exc)) from None
        return items + frame_context(self.shell.user_ns, request=request_text, limit=self.settings.frames)

    def generate(self, request: Request, on_token: Callable[[str], None] | None = None) -> Record:
        """A new suggestion, recorded in this kernel's history and reported to the server."""
        check_request(request.target, request.text)
        try:
            client = self.client(required=request.use_context)
            engine = self.copilot(client, request)
            if request.model is not None and request.model not in engine.router.models:
                raise CellError(
                    f"Unknown model {request.model!r}. Configured models: {', '.join(engine.router.models)}."
                )
            extra = (
                frame_context(self.shell.user_ns, request=request.text, limit=self.settings.frames)
                if request.use_context
                else []
            )
            suggestion = engine.generate(
                request.target,
                request.text,
                model=request.model,
                extra_context=extra,
                use_context=request.use_context,
                validate=request.validate,
                sensitivity=request.sensitivity,
                on_token=on_token,
            )
        except CellError:
            raise
        except (CopilotError, ContextUnavailable, ToolFailed, LLMError) as exc:
            log.info("generation failed: %s", exc)
            raise CellError(explain_error(exc)) from None
        except Exception as exc:
            log.exception("generation failed unexpectedly")
            raise CellError(f"Unexpected {type(exc).__name__}: {exc} (`%copilot log` has the details).") from None
        finally:
            if self._usage is not None:
                self._usage.flush()
        cell, header = cell_for(suggestion)
        record = Record(suggestion, request, cell, header)
        with self._lock:
            self.history.append(record)
        self._report("suggestions", {**suggestion.to_dict(), "user": self.settings.user, "project": request.project})
        return record

    def explain(self, record: Record, on_token: Callable[[str], None] | None = None) -> str:
        """The model's plain-words explanation of a suggestion's code."""
        if not record.suggestion.code:
            raise CellError("This suggestion holds no code to explain.")
        language = TARGETS[record.request.target]().language
        messages = [
            {"role": "system", "content": EXPLAIN_SYSTEM.format(language=language.upper())},
            {
                "role": "user",
                "content": f"The request was: {record.request.text}\n\n```{language}\n{record.suggestion.code}\n```",
            },
        ]
        try:
            completion = self.router().complete(
                messages,
                target="explain",
                sensitivity=record.request.sensitivity,
                project=record.request.project,
                user=self.settings.user,
                model=record.request.model,
                max_tokens=300,
                on_token=on_token,
            )
        except LLMError as exc:
            raise CellError(explain_error(exc)) from None
        except CellError:
            raise
        except Exception as exc:
            log.exception("explanation failed unexpectedly")
            raise CellError(f"Unexpected {type(exc).__name__}: {exc} (`%copilot log` has the details).") from None
        finally:
            if self._usage is not None:
                self._usage.flush()
        record.explanation = completion.text.strip()
        return record.explanation

    # -- feedback --------------------------------------------------------------------------------------
    def find(self, ident: str | None = None) -> Record:
        """The last suggestion, or the one whose id starts with `ident`."""
        with self._lock:
            if not self.history:
                raise CellError("No suggestion in this kernel yet; write a `%%copilot` cell first.")
            if not ident:
                return self.history[-1]
            matches = [r for r in self.history if r.id.startswith(ident)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CellError(f"No suggestion {ident!r} in this kernel (`%copilot history` lists them).")
        raise CellError(f"{ident!r} matches {len(matches)} suggestions; give more of the id.")

    def lookup(self, suggestion_id: str) -> Record | None:
        with self._lock:
            return next((r for r in self.history if r.id == suggestion_id), None)

    def feedback(
        self,
        suggestion_id: str,
        kind: str,
        *,
        edit_distance: float | None = None,
        executed_code: str | None = None,
        succeeded: bool | None = None,
    ) -> dict[str, Any]:
        body = {
            "suggestion_id": suggestion_id,
            "kind": kind,
            "edit_distance": edit_distance,
            "executed_code": executed_code,
            "succeeded": succeeded,
        }
        record = self.lookup(suggestion_id)
        if record is not None:
            record.feedback.append(kind)
        self.sent_feedback.append(body)
        self._report("feedback", body)
        return body

    def on_post_run_cell(self, result: Any) -> None:
        """Implicit feedback: a cell carrying a `copilot:<id>` marker ran (edited or not, and with what outcome)."""
        try:
            info = getattr(result, "info", None)
            cell = getattr(info, "raw_cell", None) or ""
            suggestion_id = find_marker(cell)
            if suggestion_id is None:
                return
            succeeded = bool(result.success)
            record = self.lookup(suggestion_id)
            if record is None:
                if not any(r.id.startswith(suggestion_id) for r in self.history):
                    # A suggestion from another kernel (the notebook was reopened): no code to compare with.
                    self.feedback(suggestion_id, "ran", executed_code=normalise(cell), succeeded=succeeded)
                return
            code = normalise(cell, drop_lines=record.header)
            original = normalise(record.suggestion.code, drop_lines=record.header)
            far = distance(original, code)
            previous = record.last_run if record.last_run is not None else original
            if code != previous:
                kind = "reverted" if code == original else "edited"
                self.feedback(record.id, kind, edit_distance=far, executed_code=code)
            self.feedback(record.id, "ran", edit_distance=far, executed_code=code, succeeded=succeeded)
            record.last_run = code
            record.runs.append(
                {"edit_distance": far, "levenshtein": levenshtein(original, code), "succeeded": succeeded}
            )
        except Exception:  # the hook runs after every cell: it must never disturb one
            log.exception("post_run_cell feedback failed")

    def _report(self, path: str, body: dict[str, Any]) -> None:
        api = self.api
        if api is None:
            log.info("no ContextLab server: %s kept in this kernel only", path)
            return
        if not api.report(path, body):
            log.info("%s queued for later delivery (%s)", path, api.last_error)

    def close(self) -> None:
        with self._lock:
            if self._usage is not None:
                self._usage.flush()
            if self._api is not None:
                self._api.flush(force=True)
                self._api.close()


def cell_for(suggestion: Suggestion) -> tuple[str | None, tuple[str, ...]]:
    """The text of the cell inserted for a suggestion, and the lines added around the code (for comparing runs).

    By the target's language: SQL becomes a `%%duckdb` cell, Python a plain code cell, Markdown a
    `%%markdown` cell; anything else (YAML, XML, ...) a `%%markdown` cell showing the code in a fenced block,
    so running it only displays it. Every cell carries a `copilot:<id>` marker comment. A suggestion that did
    not pass validation is still inserted, under a warning header that says why. No code: nothing inserted.
    """
    if not suggestion.code:
        return None, ()
    language = TARGETS[suggestion.target]().language if suggestion.target in TARGETS else suggestion.target
    marker = f"copilot:{suggestion.id}"
    before: list[str] = []
    after: list[str] = []
    if language == "sql":
        before += ["%%duckdb", f"-- {marker}"]
        warn = "-- COPILOT WARNING: {}"
    elif language == "python":
        before += [f"# {marker}"]
        warn = "# COPILOT WARNING: {}"
    else:
        before += ["%%markdown", f"<!-- {marker} -->"]
        warn = "**COPILOT WARNING:** {}"
    if not suggestion.valid:
        reason = " ".join(str(suggestion.validation.get("error") or "unknown reason").split())
        if len(reason) > 240:
            reason = reason[:239] + "…"
        before.append(warn.format(f"this code did not pass validation: {reason}"))
        before.append(warn.format("review and fix it before running it."))
    if language not in ("sql", "python", "markdown"):
        fence = "````" if "```" in suggestion.code else "```"
        before.append(f"{fence}{language}")
        after.append(fence)
    return "\n".join([*before, suggestion.code, *after]), tuple(before + after)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return ""
