"""The LLM router: which model answers, under which policy, with fallback and usage accounting.

Models are declared once (`ModelSpec`: backend, endpoint, locality, price). For each request the
router builds a chain of candidates and tries them in order:

1. an explicit `model=` goes first, but policy may still refuse it (the message says which rule);
2. **sensitivity**: context from a confidential source may only go to `local` or `private` models,
   from a secret source only to `local` ones;
3. **cost**: a project over its budget is routed to local models; at 80% an alert is raised once;
4. **latency**: a target's preferred latency class puts faster models first;
5. **resilience**: a backend error or timeout moves on to the next candidate.

Every attempt, good or failed, is recorded with a `UsageSink` (tokens, cost, latency, user,
project, model).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from contextlab.copilot.llm_types import Completion

log = logging.getLogger(__name__)

Locality = Literal["local", "private", "public"]
SENSITIVITY_ORDER = ("public", "internal", "confidential", "secret")
ALLOWED_LOCALITIES: dict[str, set[str]] = {
    "public": {"local", "private", "public"},
    "internal": {"local", "private", "public"},
    "confidential": {"local", "private"},
    "secret": {"local"},
}


class LLMError(Exception):
    """No model could answer; the message says what was tried and why each failed."""


class PolicyRefused(LLMError):
    """Policy allows no model for this request; the message names the rule."""


class BackendError(Exception):
    """One backend failed (connection, HTTP error, timeout, garbage); the router may fall back."""


class Backend(Protocol):
    name: str

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> Completion: ...


@dataclass(frozen=True)
class ModelSpec:
    """A model the router may use.

    For the offline model (`backend="local"`), `adapter` serves it with a LoRA adapter from delta
    fine-tuning: a folder or a registry reference such as `@champion` (see `contextlab.copilot.adapters`).
    A `model` (or `name`) of the form `local+adapter@champion` / `local+adapter:/path` says the same, and
    `base_url` is then the MLflow tracking URI of the registry (default `$MLFLOW_TRACKING_URI`, else the
    workspace's `.contextlab/mlflow.db`).
    """

    name: str
    backend: Literal["openai", "anthropic", "local"]
    model: str = ""
    base_url: str | None = None
    api_key_env: str | None = None
    locality: Locality = "public"
    cost_per_1k_input: float = 0.0
    cost_per_1k_output: float = 0.0
    timeout_s: float = 60.0
    latency: Literal["fast", "slow"] = "fast"
    adapter: str | None = None  # local models: a LoRA adapter folder, or @alias in the MLflow registry

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Model {data.get('name')!r}: unknown field(s) {', '.join(unknown)}.")
        if data.get("backend") not in ("openai", "anthropic", "local"):
            raise ValueError(f"Model {data.get('name')!r}: backend must be openai, anthropic or local.")
        if data.get("locality", "public") not in ("local", "private", "public"):
            raise ValueError(f"Model {data.get('name')!r}: locality must be local, private or public.")
        return cls(**data)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.cost_per_1k_input + completion_tokens / 1000 * self.cost_per_1k_output


OFFLINE_MODEL = ModelSpec(name="smollm2", backend="local", model="smollm2-135m-instruct", locality="local")


def adapter_spec(name: str) -> ModelSpec | None:
    """The offline model with the adapter a name asks for (`local+adapter@champion`, `local+adapter:/path`),
    or None for any other name."""
    from contextlab.copilot.adapters import adapter_reference

    reference = adapter_reference(name)
    if reference is None:
        return None
    return ModelSpec(name=name, backend="local", model=OFFLINE_MODEL.model, locality="local", adapter=reference)


@dataclass
class UsageRecord:
    user: str
    project: str
    model: str
    backend: str
    target: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    ok: bool
    error: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


class UsageSink(Protocol):
    def record(self, usage: UsageRecord) -> None: ...

    def spent(self, project: str) -> float: ...


class MemoryUsage:
    """Usage kept in memory (tests, or a kernel with no server)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self._lock = threading.Lock()

    def record(self, usage: UsageRecord) -> None:
        with self._lock:
            self.records.append(usage)

    def spent(self, project: str) -> float:
        with self._lock:
            return sum(r.cost for r in self.records if r.project == project)

    def summary(self) -> list[dict[str, Any]]:
        return summarise(asdict(r) for r in self.records)


def summarise(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Totals per (user, project, model): calls, failures, tokens, cost, mean latency."""
    totals: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["user"], row["project"], row["model"])
        entry = totals.setdefault(
            key,
            {
                "user": key[0],
                "project": key[1],
                "model": key[2],
                "calls": 0,
                "failures": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost": 0.0,
                "latency_s": 0.0,
            },
        )
        entry["calls"] += 1
        entry["failures"] += 0 if row["ok"] else 1
        entry["prompt_tokens"] += row["prompt_tokens"]
        entry["completion_tokens"] += row["completion_tokens"]
        entry["cost"] += row["cost"]
        entry["latency_s"] += row["latency_s"]
    for entry in totals.values():
        entry["latency_s"] = round(entry["latency_s"] / entry["calls"], 3)
        entry["cost"] = round(entry["cost"], 6)
    return sorted(totals.values(), key=lambda e: (e["project"], e["user"], e["model"]))


@dataclass
class RouterPolicy:
    """Budgets per project (in the models' cost unit), the alert fraction, and latency per target."""

    budgets: dict[str, float] = field(default_factory=dict)
    alert_fraction: float = 0.8
    target_latency: dict[str, str] = field(default_factory=dict)


class LLMRouter:
    """Chooses models by policy, falls back on failure, and records usage."""

    def __init__(
        self,
        models: Sequence[ModelSpec],
        *,
        default_chain: Sequence[str] | None = None,
        policy: RouterPolicy | None = None,
        usage: UsageSink | None = None,
        backend_factory: Callable[[ModelSpec], Backend] | None = None,
        on_alert: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        if len(self.models) != len(models):
            raise ValueError("Two models share a name.")
        self.default_chain = list(default_chain or self.models)
        unknown = [n for n in self.default_chain if n not in self.models]
        if unknown:
            raise ValueError(f"The default chain names unknown model(s): {', '.join(unknown)}.")
        self.policy = policy or RouterPolicy()
        self.usage = usage or MemoryUsage()
        self.backend_factory = backend_factory or make_backend
        self.on_alert = on_alert
        self._backends: dict[str, Backend] = {}
        self._alerted: set[str] = set()
        self._lock = threading.Lock()

    def chain(
        self, *, target: str = "", sensitivity: str = "internal", project: str = "default", model: str | None = None
    ) -> list[ModelSpec]:
        """The models to try, in order, for a request; PolicyRefused if none may take it."""
        if sensitivity not in ALLOWED_LOCALITIES:
            raise ValueError(f"Unknown sensitivity {sensitivity!r}; use one of {', '.join(SENSITIVITY_ORDER)}.")
        if model is not None and model not in self.models:
            self._add_adapter_model(model)
        allowed = ALLOWED_LOCALITIES[sensitivity]
        over_budget = self._over_budget(project)
        names = ([model] if model else []) + [n for n in self.default_chain if n != model]
        chosen, refused = [], []
        for name in names:
            spec = self.models[name]
            if spec.locality not in allowed:
                refused.append((name, f"{spec.locality} models may not receive {sensitivity} context"))
                continue
            if over_budget and spec.locality != "local":
                refused.append((name, f"project {project!r} is over its budget; only local models may answer"))
                continue
            chosen.append(spec)
        if model is not None and (not chosen or chosen[0].name != model):
            raise PolicyRefused(f"Policy refuses model {model!r}: {refused[0][1]}.")
        if not chosen:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in refused)
            raise PolicyRefused(f"Policy allows no configured model for this request: {reasons}.")
        if model is None and self.policy.target_latency.get(target) == "fast":
            chosen.sort(key=lambda s: s.latency != "fast")  # stable: keeps the configured order otherwise
        return chosen

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        target: str = "",
        sensitivity: str = "internal",
        project: str = "default",
        user: str = "",
        model: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """Answer with the first model of the chain that succeeds.

        `tools` (OpenAI function specs) go to backends that support tool calls; others answer in text.
        """
        failures = []
        for spec in self.chain(target=target, sensitivity=sensitivity, project=project, model=model):
            started = time.perf_counter()
            try:
                backend = self.backend(spec)
                extra = {"tools": tools} if tools and getattr(backend, "supports_tools", False) else {}
                completion = backend.complete(
                    messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stop=stop,
                    on_token=on_token,
                    timeout=spec.timeout_s,
                    **extra,
                )
            except (BackendError, RuntimeError) as exc:  # RuntimeError: a backend that cannot run here
                latency = time.perf_counter() - started
                failures.append(f"{spec.name}: {exc}")
                self._record(spec, target, project, user, 0, 0, latency, ok=False, error=str(exc))
                log.warning("model %s failed (%s); trying the next one", spec.name, exc)
                continue
            self._record(
                spec,
                target,
                project,
                user,
                completion.prompt_tokens,
                completion.completion_tokens,
                completion.latency_s,
                ok=True,
            )
            completion.model = spec.name
            return completion
        raise LLMError("Every model failed: " + "; ".join(failures) + ".")

    def _add_adapter_model(self, name: str) -> None:
        """Serve `local+adapter@…` names without configuring them first; any other unknown name is an error."""
        try:
            spec = adapter_spec(name)
        except RuntimeError as exc:  # a malformed adapter name
            raise LLMError(str(exc)) from exc
        if spec is None:
            raise LLMError(f"Unknown model {name!r}. Configured models: {', '.join(self.models) or 'none'}.")
        with self._lock:
            self.models.setdefault(name, spec)

    def backend(self, spec: ModelSpec) -> Backend:
        with self._lock:
            backend = self._backends.get(spec.name)
            if backend is None:
                backend = self._backends[spec.name] = self.backend_factory(spec)
            return backend

    def _over_budget(self, project: str) -> bool:
        budget = self.policy.budgets.get(project)
        if budget is None:
            return False
        spent = self.usage.spent(project)
        if spent >= budget * self.policy.alert_fraction and project not in self._alerted:
            self._alerted.add(project)
            details = {"project": project, "spent": round(spent, 6), "budget": budget}
            log.warning("project %s has spent %.4g of its LLM budget of %.4g", project, spent, budget)
            if self.on_alert is not None:
                self.on_alert("copilot.budget", details)
        return spent >= budget

    def _record(
        self,
        spec: ModelSpec,
        target: str,
        project: str,
        user: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency: float,
        *,
        ok: bool,
        error: str | None = None,
    ) -> None:
        self.usage.record(
            UsageRecord(
                user=user,
                project=project,
                model=spec.name,
                backend=spec.backend,
                target=target,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=spec.cost(prompt_tokens, completion_tokens),
                latency_s=round(latency, 4),
                ok=ok,
                error=error[:500] if error else None,
            )
        )


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, LM Studio) via the `openai` SDK."""

    name = "openai"
    supports_tools = True

    def __init__(self, spec: ModelSpec) -> None:
        import openai

        self.spec = spec
        key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self.client = openai.OpenAI(
            base_url=spec.base_url, api_key=key or "not-needed", timeout=spec.timeout_s, max_retries=0
        )
        self._errors = (openai.APIError, openai.APIConnectionError, openai.APITimeoutError)

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        timeout: float | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        started = time.perf_counter()
        pieces: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage = None
        finish = "stop"
        extra = {"tools": tools} if tools else {}
        try:
            stream = self.client.chat.completions.create(
                model=self.spec.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                stop=stop or None,
                stream=True,
                stream_options={"include_usage": True},
                timeout=timeout,
                **extra,
            )
            for chunk in stream:
                if getattr(chunk, "usage", None):
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    delta = choice.delta
                    text = delta.content if delta else None
                    if text:
                        pieces.append(text)
                        if on_token is not None:
                            on_token(text)
                    for part in (delta.tool_calls if delta else None) or []:
                        call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                        call["id"] = part.id or call["id"]
                        if part.function is not None:
                            call["name"] += part.function.name or ""
                            call["arguments"] += part.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except self._errors as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # a reply that is not a chat completion stream
            raise BackendError(f"unreadable reply from {self.spec.base_url}: {exc}") from exc
        text = "".join(pieces)
        prompt_tokens = usage.prompt_tokens if usage else sum(len(m.get("content", "")) for m in messages) // 4
        completion_tokens = usage.completion_tokens if usage else max(1, len(text) // 4)
        return Completion(
            text=text,
            model=self.spec.model,
            backend=self.name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=round(time.perf_counter() - started, 4),
            finish_reason=finish,
            tool_calls=[_parsed_call(calls[i]) for i in sorted(calls)],
        )


class AnthropicBackend:
    """Anthropic's Messages API via the `anthropic` SDK (streamed; the system message goes in `system`)."""

    name = "anthropic"

    def __init__(self, spec: ModelSpec) -> None:
        import anthropic

        self.spec = spec
        key = os.environ.get(spec.api_key_env or "ANTHROPIC_API_KEY", "")
        self.client = anthropic.Anthropic(
            base_url=spec.base_url, api_key=key or "not-set", timeout=spec.timeout_s, max_retries=0
        )
        self._errors = (anthropic.APIError, anthropic.APIConnectionError, anthropic.APITimeoutError)

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> Completion:
        started = time.perf_counter()
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        chat = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
        pieces: list[str] = []
        prompt_tokens = completion_tokens = 0
        finish = "stop"
        try:
            events = self.client.messages.create(
                model=self.spec.model,
                max_tokens=max_tokens,  # the 2.x SDK's Messages API takes no sampling temperature
                system=system or anthropic_not_given(),
                messages=chat,  # type: ignore[arg-type]
                stop_sequences=stop or anthropic_not_given(),
                stream=True,
                timeout=timeout,
            )
            for event in events:
                if event.type == "message_start":
                    prompt_tokens = event.message.usage.input_tokens
                elif event.type == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
                    pieces.append(event.delta.text)
                    if on_token is not None:
                        on_token(event.delta.text)
                elif event.type == "message_delta":
                    completion_tokens = event.usage.output_tokens
                    finish = event.delta.stop_reason or finish
        except self._errors as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(f"unreadable reply from {self.spec.base_url or 'Anthropic'}: {exc}") from exc
        return Completion(
            text="".join(pieces),
            model=self.spec.model,
            backend=self.name,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=round(time.perf_counter() - started, 4),
            finish_reason="stop" if finish in ("end_turn", "stop_sequence") else finish,
        )


def _parsed_call(call: dict[str, Any]) -> dict[str, Any]:
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except json.JSONDecodeError as exc:
        raise BackendError(f"the model called {call['name']!r} with arguments that are not JSON: {exc}") from exc
    return {"id": call["id"], "name": call["name"], "arguments": arguments if isinstance(arguments, dict) else {}}


def anthropic_not_given() -> Any:
    import anthropic

    return anthropic.NOT_GIVEN


def make_backend(spec: ModelSpec) -> Backend:
    """The backend object for a model spec (imports the SDK it needs on first use)."""
    if spec.backend == "openai":
        return OpenAIBackend(spec)
    if spec.backend == "local":
        from contextlab.copilot.adapters import adapter_backend, adapter_reference
        from contextlab.copilot.local import LocalModelBackend

        named = adapter_reference(spec.model) or adapter_reference(spec.name)
        model = OFFLINE_MODEL.model if named or not spec.model else spec.model
        adapter = spec.adapter or named
        if adapter:
            return adapter_backend(adapter, model=model, tracking_uri=spec.base_url)
        return LocalModelBackend(model)
    if spec.backend == "anthropic":
        return AnthropicBackend(spec)
    raise LLMError(f"Unknown backend {spec.backend!r}.")
