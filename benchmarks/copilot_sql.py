"""Text-to-SQL with the Copilot on the demo shop: execution accuracy with and without schema context.

Every question of a text-to-SQL suite (default: the packaged `shop_sql.jsonl`, 75 analyst questions
over the demo DuckDB shop) goes through the real `contextlab.copilot.engine.Copilot` twice: once
with context (the schema from a real ContextLab server's `sql__schema` tool) and once without it
(`use_context=False`: the model sees only the question). Both runs validate each answer on the
server (`sql__query`) and feed errors back for up to `--max-repairs` repairs, as the Copilot does
for a user. The final SQL is then judged by execution match against the gold query
(`contextlab.evaluation.sql.execution_match`, on a read-only DuckDB connection in this process).

Prints ONE JSON object to stdout (progress goes to stderr):

- `cases`: questions run; `model`, `model_id`, `backend`
- `accuracy_with_context` / `accuracy_without_context`: fraction whose final suggestion (after any
  repairs) returns the gold result
- `first_suggestion_usable`: with context, fraction whose FIRST attempt was valid and matched
- `accuracy_after_repair`: with context, fraction whose final suggestion matched; by definition the
  same number as `accuracy_with_context`, reported beside `first_suggestion_usable` to show what
  repairs add
- `valid_rate_with_context` / `valid_rate_without_context`: fraction of final suggestions that
  passed validation (parsed, read-only, ran on the server)
- `repairs_used`: repair rounds spent with context (attempts beyond the first, summed);
  `cases_repaired`: questions that needed at least one
- `p50_s`, `p95_s`: per-question wall time of `Copilot.generate` with context (context, every
  attempt, validation); `model_load_s`: the one-off model load before the first question
- `errors`: generations that raised (no model answered, a bad request, a bug in the Copilot); they
  count as misses, and `--details` shows the exception
- `details` (with `--details`): per question, both runs' SQL, attempts and match reasons

Unless `--url` names a running ContextLab server, the script starts one itself (`python -m
jupyter_server` with the ContextLab extension and only the sql provider) on a temporary root and
stops it at the end. A `--url` server must serve the same database as `--db` (default: a fresh demo
workspace, whose data is generated deterministically).

    python benchmarks/copilot_sql.py --limit 20                  # the offline model (SmolLM2-135M)
    python benchmarks/copilot_sql.py --base-url http://127.0.0.1:8080/v1 --model-id qwen2.5-coder-7b \\
        --api-key-env OPENAI_API_KEY --details
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from contextlab.copilot.context import ContextClient, ContextUnavailable, Endpoint  # noqa: E402
from contextlab.copilot.engine import Copilot  # noqa: E402
from contextlab.copilot.llm import OFFLINE_MODEL, LLMRouter, MemoryUsage, ModelSpec  # noqa: E402
from contextlab.evaluation.sql import (  # noqa: E402
    MatchResult,
    SQLCase,
    execution_match,
    load_sql_suite,
    packaged_suite,
)

try:
    from tqdm import tqdm
except ImportError:  # progress is a nicety
    tqdm = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run a text-to-SQL suite through the ContextLab Copilot, with and without schema context, "
        "and print execution accuracy and latency as one JSON object.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", type=Path, help="DuckDB file to ask about (default: a fresh demo shop database).")
    parser.add_argument("--suite", type=Path, help="Suite file, JSON Lines (default: the packaged shop_sql.jsonl).")
    parser.add_argument("--limit", type=int, help="Run only the first N questions.")
    model = parser.add_argument_group(f"model (default: the offline model {OFFLINE_MODEL.name})")
    model.add_argument("--model", help="Model name to report (and the model id when --model-id is not given).")
    model.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1.")
    model.add_argument("--api-key-env", help="Environment variable that holds the endpoint's API key.")
    model.add_argument("--model-id", help="Model id sent to the endpoint.")
    model.add_argument("--timeout", type=float, help="Seconds allowed per model call (default: the model's own).")
    model.add_argument("--max-tokens", type=int, default=400, help="Tokens per answer (default: 400).")
    parser.add_argument("--max-repairs", type=int, default=2, help="Repair rounds after a failed validation.")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the runs without context (halves the time).")
    server = parser.add_argument_group("ContextLab server (default: start one on a temporary root)")
    server.add_argument("--url", help="A running server: its base URL or its MCP URL (…/contextlab/mcp).")
    server.add_argument("--token", help="Its Jupyter token or cl_ API token (default: $CONTEXTLAB_TOKEN).")
    parser.add_argument("--details", action="store_true", help="Add per-question details to the JSON.")
    parser.add_argument("--json-only", "--quiet", dest="quiet", action="store_true", help="No progress on stderr.")
    args = parser.parse_args(argv)
    if args.base_url is None and (args.model_id or args.api_key_env):
        parser.error("--model-id and --api-key-env need --base-url.")
    if args.base_url is None and args.model not in (None, OFFLINE_MODEL.name):
        parser.error(f"Without --base-url the model is the offline one ({OFFLINE_MODEL.name}).")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1.")
    if args.max_repairs < 0:
        parser.error("--max-repairs must be 0 or more.")
    if args.db is not None and not args.db.is_file():
        parser.error(f"--db {args.db}: no such file.")
    return args


# -- the ContextLab server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A Jupyter server with ContextLab and only the sql provider, serving one DuckDB file as `shop`."""

    database: Path
    workdir: Path
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
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
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


# -- the model ------------------------------------------------------------------------------------------


def model_spec(args: argparse.Namespace) -> ModelSpec:
    if args.base_url:
        spec = ModelSpec(
            name=args.model or args.model_id or "openai-compatible",
            backend="openai",
            model=args.model_id or args.model or "",
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            locality="private",
            timeout_s=120.0,
        )
    else:
        spec = OFFLINE_MODEL
    return replace(spec, timeout_s=args.timeout) if args.timeout else spec


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    suite_path = args.suite if args.suite is not None else packaged_suite()
    cases = load_sql_suite(suite_path)[: args.limit]
    spec = model_spec(args)
    say = (lambda *_: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="copilot-sql-")))
        if args.db is not None:
            database = args.db.resolve()
        else:
            from contextlab.workspace import create_demo_workspace

            database = create_demo_workspace(workdir / "root") / "data" / "shop.duckdb"
        if args.url:
            endpoint = external_endpoint(args.url, args.token)
        else:
            say(f"starting a ContextLab server on {database} ...")
            server = Server(database, workdir)
            server.start()
            stack.callback(server.stop)
            endpoint = Endpoint(server.mcp_url, server.token)
        con = stack.enter_context(
            duckdb.connect(str(database), read_only=True, config={"enable_external_access": False})
        )
        usage = MemoryUsage()
        router = LLMRouter([spec], usage=usage)
        copilot = Copilot(
            router,
            ContextClient(endpoint, timeout=60),
            user="benchmark",
            max_repairs=args.max_repairs,
            max_tokens=args.max_tokens,
        )
        load_started = time.perf_counter()
        backend = router.backend(spec)
        if hasattr(backend, "load"):  # the local model: load it before timing the first question
            say(f"loading {spec.name} ...")
            backend.load()
        model_load_s = round(time.perf_counter() - load_started, 3)

        runs = 1 if args.no_baseline else 2
        progress = tqdm(total=len(cases) * runs, file=sys.stderr, disable=args.quiet, unit="gen") if tqdm else None
        with_ctx: list[dict[str, Any]] = []
        without_ctx: list[dict[str, Any]] = []
        try:
            for case in cases:
                with_ctx.append(run_once(copilot, con, case, spec.name, use_context=True))
                if progress is not None:
                    progress.update()
                if not args.no_baseline:
                    without_ctx.append(run_once(copilot, con, case, spec.name, use_context=False))
                    if progress is not None:
                        progress.update()
                if progress is not None:
                    progress.set_postfix(
                        acc_ctx=f"{sum(r['match'] for r in with_ctx)}/{len(with_ctx)}",
                        acc_no_ctx=f"{sum(r['match'] for r in without_ctx)}/{len(without_ctx)}",
                    )
        finally:
            if progress is not None:
                progress.close()
        extra = {
            "suite": str(suite_path),
            "database": str(database),
            "server": args.url or "started by the benchmark",
            "max_repairs": args.max_repairs,
            "max_tokens": args.max_tokens,
            "model_load_s": model_load_s,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        report = summarize(spec, cases, with_ctx, without_ctx, usage, extra, args.details)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
