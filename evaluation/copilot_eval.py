"""Copilot evaluation: execution accuracy of generated SQL with and without context, first-suggestion
usability, repairs and latency, plus validator pass rates for the other targets.

Shared by `benchmarks/copilot_sql.py` and the `copilot_eval` pipeline notebook. `EvalServer` starts a
ContextLab server with only the sql provider on one DuckDB file, for runs that have no server at hand.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from contextlab.copilot.context import ContextUnavailable, Endpoint
from contextlab.copilot.engine import Copilot
from contextlab.copilot.llm import OFFLINE_MODEL, MemoryUsage, ModelSpec
from contextlab.evaluation.sql import MatchResult, SQLCase, execution_match


def resolve_model(model: str | dict[str, Any] | ModelSpec) -> ModelSpec:
    """A model for an evaluation run, from a name or a spec.

    `smollm2` / `local` is the offline model, `local+adapter@champion` the same with the LoRA adapter
    the MLflow registry's alias points at (or `local+adapter:/path/to/adapter`); `openai:<id>` and
    `anthropic:<id>` use those SDKs with `OPENAI_API_KEY` (and `OPENAI_BASE_URL` for any
    OpenAI-compatible endpoint) or `ANTHROPIC_API_KEY`;
    a dict is a full `ModelSpec` (name, backend, model, base_url, api_key_env, …).
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec.from_dict(dict(model))
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model {model!r}: give a name such as smollm2, openai:gpt-4o-mini, or a ModelSpec dict.")
    name = model.strip()
    base, plus, adapter = name.partition("+adapter")
    if plus and base in (OFFLINE_MODEL.name, "local"):  # local+adapter@champion, local+adapter:/path/to/adapter
        reference = adapter.removeprefix(":")
        if not reference:
            raise ValueError(f"model {name!r}: say which adapter, e.g. local+adapter@champion or local+adapter:/path.")
        return ModelSpec(**{**OFFLINE_MODEL.__dict__, "name": name, "adapter": reference})
    if name in (OFFLINE_MODEL.name, "local"):
        return OFFLINE_MODEL if name == OFFLINE_MODEL.name else ModelSpec(**{**OFFLINE_MODEL.__dict__, "name": name})
    vendor, _, model_id = name.partition(":")
    if vendor == "openai" and model_id:
        return ModelSpec(
            name=name,
            backend="openai",
            model=model_id,
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            api_key_env="OPENAI_API_KEY",
            timeout_s=120.0,
        )
    if vendor == "anthropic" and model_id:
        return ModelSpec(
            name=name, backend="anthropic", model=model_id, api_key_env="ANTHROPIC_API_KEY", timeout_s=120.0
        )
    raise ValueError(
        f"unknown model {name!r}: use smollm2 (offline), openai:<model id>, anthropic:<model id>, "
        "or a ModelSpec dict such as {'name': 'vllm', 'backend': 'openai', 'model': '…', 'base_url': '…'}."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EvalServer:
    """A Jupyter server with ContextLab serving one DuckDB file as `shop` (sql provider, plus the worked
    examples provider unless `examples=False`)."""

    database: Path
    workdir: Path
    examples: bool = True
    port: int = 0
    token: str = ""
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}contextlab/mcp"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 90) -> None:
        root, home = self.workdir / "root", self.workdir / "home"
        for folder in (root, home / "config", home / "runtime", home / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        self.port, self.token = free_port(), uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
        env.update(
            JUPYTER_CONFIG_DIR=str(home / "config"),
            JUPYTER_RUNTIME_DIR=str(home / "runtime"),
            JUPYTER_DATA_DIR=str(home / "data"),
            JUPYTER_PLATFORM_DIRS="1",
            JUPYTER_TOKEN=self.token,
            PYTHONUNBUFFERED="1",
        )
        args = [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--ServerApp.root_dir={root}",
            f"--ServerApp.port={self.port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            "--ServerApp.jpserver_extensions={'contextlab.extension': True}",
            "--ContextLab.providers=sql",
            *(["--ContextLab.providers=examples"] if self.examples else []),
            "--ContextLab.sql_databases=" + json.dumps({"shop": str(self.database.resolve())}),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"The ContextLab server exited early:\n{self._log_tail()}")
            if "extension failed loading" in self._log_tail():
                raise RuntimeError(f"ContextLab failed to load:\n{self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(
                    f"{self.base_url}contextlab/api/status", headers={"Authorization": f"token {self.token}"}, timeout=5
                )
                if response.status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"The ContextLab server did not become ready in {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def external_endpoint(url: str, token: str | None) -> Endpoint:
    url = url.rstrip("/")
    if not url.endswith("/contextlab/mcp"):
        url += "/contextlab/mcp"
    return Endpoint(url, token or os.environ.get("CONTEXTLAB_TOKEN") or os.environ.get("JUPYTER_TOKEN") or None)


# -- one question ---------------------------------------------------------------------------------------


def run_once(
    copilot: Copilot, con: duckdb.DuckDBPyConnection, case: SQLCase, model: str, *, use_context: bool
) -> dict[str, Any]:
    """One generation and its judgement: final match, first-attempt usability, latency, attempts."""
    started = time.perf_counter()
    try:
        suggestion = copilot.generate("sql", case.question, model=model, use_context=use_context)
    except ContextUnavailable:
        raise  # the server is gone: no later question can do better
    except Exception as exc:  # no model answered, a bad request, or a Copilot bug: a miss, not a crash
        return {
            "error": f"{type(exc).__name__}: {exc}",
            "latency_s": round(time.perf_counter() - started, 4),
            "valid": False,
            "match": False,
            "first_usable": False,
            "attempts": 0,
            "code": "",
        }
    latency = time.perf_counter() - started
    final = execution_match(con, suggestion.code, case.gold_sql) if suggestion.code else _NO_SQL
    first = suggestion.attempts[0]
    if len(suggestion.attempts) == 1:
        first_match = final
    else:
        first_match = execution_match(con, first.code, case.gold_sql) if first.code else _NO_SQL
    return {
        "latency_s": round(latency, 4),
        "valid": suggestion.valid,
        "match": final.match,
        "reason": final.reason,
        "first_usable": first.ok and first_match.match,
        "attempts": len(suggestion.attempts),
        "code": suggestion.code,
        "attempt_codes": [a.code for a in suggestion.attempts],
        "attempt_errors": [a.error for a in suggestion.attempts],
        "attempt_latency_s": [a.latency_s for a in suggestion.attempts],
    }


_NO_SQL = MatchResult(False, "the answer holds no SQL")


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fraction(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def summarize(
    spec: ModelSpec,
    cases: list[SQLCase],
    with_ctx: list[dict[str, Any]],
    without_ctx: list[dict[str, Any]],
    usage: MemoryUsage,
    extra: dict[str, Any],
    details: bool,
) -> dict[str, Any]:
    latencies = [r["latency_s"] for r in with_ctx]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    accuracy = fraction([r["match"] for r in with_ctx])
    report: dict[str, Any] = {
        "cases": len(with_ctx),
        "model": spec.name,
        "model_id": spec.model,
        "backend": spec.backend,
        "accuracy_with_context": accuracy,
        "accuracy_without_context": fraction([r["match"] for r in without_ctx]),
        "first_suggestion_usable": fraction([r["first_usable"] for r in with_ctx]),
        "accuracy_after_repair": accuracy,
        "valid_rate_with_context": fraction([r["valid"] for r in with_ctx]),
        "valid_rate_without_context": fraction([r["valid"] for r in without_ctx]),
        "repairs_used": sum(max(r["attempts"] - 1, 0) for r in with_ctx),
        "cases_repaired": sum(1 for r in with_ctx if r["attempts"] > 1),
        "p50_s": round(p50, 3) if p50 is not None else None,
        "p95_s": round(p95, 3) if p95 is not None else None,
        "errors": sum(1 for r in [*with_ctx, *without_ctx] if "error" in r),
        "prompt_tokens": sum(r.prompt_tokens for r in usage.records),
        "completion_tokens": sum(r.completion_tokens for r in usage.records),
        **extra,
    }
    if details:
        report["details"] = [
            {
                "id": case.id,
                "question": case.question,
                "gold_sql": case.gold_sql,
                "with_context": with_ctx[i],
                **({"without_context": without_ctx[i]} if i < len(without_ctx) else {}),
            }
            for i, case in enumerate(cases[: len(with_ctx)])
        ]
    return report


def evaluate_sql(
    copilot: Copilot,
    con: duckdb.DuckDBPyConnection,
    cases: list[SQLCase],
    model: str,
    *,
    baseline: bool = True,
    progress: bool = True,
    on_case: Callable[[int, dict[str, Any], dict[str, Any] | None], Any] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each case with context (and without, when `baseline`), judged by execution match.

    Returns the with-context and without-context result lists (one dict per case, see `run_once`).
    """
    from tqdm.auto import tqdm

    with_ctx: list[dict[str, Any]] = []
    without_ctx: list[dict[str, Any]] = []
    bar = tqdm(total=len(cases) * (2 if baseline else 1), disable=not progress, unit="gen", desc=model)
    try:
        for index, case in enumerate(cases):
            with_ctx.append(run_once(copilot, con, case, model, use_context=True))
            bar.update()
            if baseline:
                without_ctx.append(run_once(copilot, con, case, model, use_context=False))
                bar.update()
            bar.set_postfix(
                ctx=f"{sum(r['match'] for r in with_ctx)}/{len(with_ctx)}",
                no_ctx=f"{sum(r['match'] for r in without_ctx)}/{len(without_ctx)}",
            )
            if on_case is not None:
                on_case(index, with_ctx[-1], without_ctx[-1] if baseline else None)
    finally:
        bar.close()
    return with_ctx, without_ctx


def case_table(cases: list[SQLCase], with_ctx: list[dict[str, Any]], without_ctx: list[dict[str, Any]]) -> Any:
    """One row per question: match with and without context, first-attempt usability, attempts, latency."""
    import pandas as pd

    rows = []
    for i, case in enumerate(cases[: len(with_ctx)]):
        run = with_ctx[i]
        base = without_ctx[i] if i < len(without_ctx) else {}
        rows.append(
            {
                "id": case.id,
                "question": case.question,
                "match_with_context": run["match"],
                "match_without_context": base.get("match"),
                "first_usable": run["first_usable"],
                "valid": run["valid"],
                "attempts": run["attempts"],
                "latency_s": run["latency_s"],
                "reason": run.get("reason") or run.get("error"),
                "sql": run["code"],
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TargetCase:
    """A user-written case for any target: validated output, optionally with required fragments."""

    id: str
    target: str
    request: str
    must_contain: tuple[str, ...] = ()


def load_target_suite(path: str | Path) -> list[TargetCase]:
    """JSON Lines: `{"target": "python", "request": "...", "must_contain": ["def "]}` (id optional)."""
    cases = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("target"), str):
            raise ValueError(f"{path}:{number}: each line needs a string 'target'")
        request = data.get("request") or data.get("question")
        if not isinstance(request, str) or not request.strip():
            raise ValueError(f"{path}:{number}: each line needs a non-empty 'request'")
        must = data.get("must_contain", [])
        if not isinstance(must, list) or not all(isinstance(m, str) for m in must):
            raise ValueError(f"{path}:{number}: 'must_contain' is a list of strings")
        cases.append(TargetCase(str(data.get("id", f"case-{number}")), data["target"], request, tuple(must)))
    return cases


def evaluate_targets(
    copilot: Copilot, cases: Iterable[TargetCase], model: str, *, use_context: bool = True
) -> list[dict[str, Any]]:
    """Each case through the target's real validator: valid, first attempt valid, fragments present."""
    results = []
    for case in cases:
        started = time.perf_counter()
        try:
            suggestion = copilot.generate(case.target, case.request, model=model, use_context=use_context)
        except ContextUnavailable:
            raise
        except Exception as exc:  # a miss, not a crash
            results.append(
                {
                    "id": case.id,
                    "target": case.target,
                    "valid": False,
                    "first_valid": False,
                    "contains": False,
                    "attempts": 0,
                    "latency_s": time.perf_counter() - started,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            continue
        contains = all(fragment in suggestion.code for fragment in case.must_contain)
        results.append(
            {
                "id": case.id,
                "target": case.target,
                "valid": suggestion.valid,
                "first_valid": bool(suggestion.attempts and suggestion.attempts[0].ok),
                "contains": contains,
                "attempts": len(suggestion.attempts),
                "latency_s": time.perf_counter() - started,
                "error": None if suggestion.valid else (suggestion.attempts[-1].error if suggestion.attempts else None),
            }
        )
    return results
