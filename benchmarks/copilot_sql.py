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
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from contextlab.copilot.context import ContextClient, Endpoint  # noqa: E402
from contextlab.copilot.engine import Copilot  # noqa: E402
from contextlab.copilot.llm import OFFLINE_MODEL, LLMRouter, MemoryUsage, ModelSpec  # noqa: E402
from contextlab.evaluation.copilot_eval import EvalServer, evaluate_sql, external_endpoint, summarize  # noqa: E402
from contextlab.evaluation.sql import load_sql_suite, packaged_suite  # noqa: E402


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
    parser.add_argument(
        "--no-examples", action="store_true", help="Serve no worked examples (schema-only context), for comparison."
    )
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
            server = EvalServer(database, workdir, examples=not args.no_examples)
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

        with_ctx, without_ctx = evaluate_sql(
            copilot, con, cases, spec.name, baseline=not args.no_baseline, progress=not args.quiet
        )
        extra = {
            "suite": str(suite_path),
            "database": str(database),
            "server": args.url or "started by the benchmark",
            "max_repairs": args.max_repairs,
            "max_tokens": args.max_tokens,
            "examples": not args.no_examples,
            "model_load_s": model_load_s,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        report = summarize(spec, cases, with_ctx, without_ctx, usage, extra, args.details)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
