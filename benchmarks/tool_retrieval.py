"""Top-k tool retrieval (`contextlab.extension.tool_index`) on the BFCL tool pool.

The pool is every function definition in the BFCL v4 data files (installed `bfcl_eval` package)
as MCP tools, and the cases are BFCL's single-turn questions with the pool names of the tools
their answers call; both come from `contextlab.evaluation.bfcl.load_bfcl_tool_pool` (a small
private loader stands in when that package is missing). BFCL gives many names several
definitions (`get_current_weather` has dozens); the pool keeps each as `name`, `name--2`, ...
and a case's gold is the definition it shipped (the strict `recall_at_*`, `mrr`, `ndcg_at_10`).
`function_recall_at_1/5/10` and `function_mrr` judge at the level of BFCL functions instead: the
ranking is collapsed so that each function appears once, at the rank of its best definition, and
the gold is the set of functions the answer calls. `recall_at_5_any_variant` counts a gold tool as
found when any definition of the same BFCL name is among the (uncollapsed) top 5.

Prints one JSON object: pool_size, cases, recall_at_1/5/10, mrr, ndcg_at_10, p50_ms and p99_ms
(`ToolIndex.search` with k=40, query embedding included), build_seconds (a full build
from an empty folder: text, embeddings, LanceDB write; the one-off embedder load and lancedb
import are apart, as embedder_load_seconds and lancedb_import_seconds), incremental_update_ms
(a `sync` of the whole pool after one description changed; `..._fresh_objects_ms` with every
IndexedTool built anew, so no cached fingerprint),
upsert_one_ms, reopen_seconds, and token_reduction: 1 - tokens a client reads with retrieval
(the `search_tools` definition plus the top-k tool definitions, mean over cases) / tokens of the
full `tools/list` result. Tokens are counted with tiktoken's cl100k_base when installed, else
with the wordllama tokenizer (Llama-2 BPE), else as characters / 4; `tokenizer` says which.
`allowed` repeats the searches with a random allow-list (policy prefilter); `--rerank`,
`--ablation` (BM25 alone, embeddings alone, equal fusion weights) and `--lancedb-native`
(LanceDB's own vector, full-text and hybrid queries on the same table) add sections.

    python benchmarks/tool_retrieval.py [--k 5] [--rerank] [--ablation] [--lancedb-native]
    python benchmarks/tool_retrieval.py --limit-cases 300 --json-only
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# LanceDB's hybrid query logs a deprecation line per query from inside its own code; keep errors only.
os.environ.setdefault("LANCEDB_LOG", "error")

from contextlab.extension.tool_index import (  # noqa: E402
    IndexedTool,
    SentenceTransformerEmbedder,
    ToolIndex,
    WordLlamaEmbedder,
)

# The meta-tool a client keeps seeing when the full listing is replaced by retrieval.
SEARCH_TOOLS = {
    "name": "search_tools",
    "description": "Find the tools most relevant to a task among every tool you may use. Returns their "
    "definitions; call them by name.",
    "inputSchema": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What you want to do, in plain words."},
            "k": {"type": "integer", "description": "How many tools to return.", "default": 5},
        },
        "required": ["query"],
    },
}


@dataclass(frozen=True)
class Case:
    id: str
    query: str
    gold: list[str]


# --------------------------------------------------------------------------------------------
# Data


def load_pool(limit_cases: int | None) -> tuple[list[dict[str, Any]], list[Case], str]:
    """(MCP tool dicts, cases, which loader). Prefers the shared `contextlab.evaluation.bfcl` loader."""
    try:
        from contextlab.evaluation.bfcl import load_bfcl_tool_pool
    except ImportError:
        tools, cases = _load_bfcl_private()
        source = "benchmark's private loader"
    else:
        pool = load_bfcl_tool_pool()
        tools = list(pool.tools)
        cases = [Case(str(c.id), c.query, list(c.gold)) for c in pool.cases]
        source = "contextlab.evaluation.bfcl.load_bfcl_tool_pool"
    if limit_cases:
        cases = cases[:limit_cases]
    return tools, cases, source


def _bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")  # the package itself does not import (installed --no-deps)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bfcl_eval is not installed: pip install --no-deps bfcl-eval")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _load_bfcl_private() -> tuple[list[dict[str, Any]], list[Case]]:
    """Every function of BFCL v4 as an MCP tool (first definition of each name wins), and the
    single-turn cases that have a possible answer (gold = the function names it calls)."""
    data = _bfcl_data_dir()
    tools: dict[str, dict[str, Any]] = {}

    def add(function: dict[str, Any]) -> None:
        if function.get("name") and function["name"] not in tools:
            schema = dict(function.get("parameters") or {"type": "object", "properties": {}})
            if schema.get("type") == "dict":
                schema["type"] = "object"
            tools[function["name"]] = {
                "name": function["name"],
                "description": function.get("description", ""),
                "inputSchema": schema,
            }

    cases: list[Case] = []
    for path in sorted(glob.glob(str(data / "BFCL_v4_*.json"))):
        answers: dict[str, Any] = {}
        answer_path = data / "possible_answer" / Path(path).name
        if answer_path.exists():
            for line in answer_path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    answers[row["id"]] = row["ground_truth"]
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # format_sensitivity.json is one JSON document, not lines of cases
            functions = row.get("function") or []
            for function in functions:
                add(function)
            truth = answers.get(row.get("id"))
            if not functions or not isinstance(truth, list) or not truth or not isinstance(truth[0], dict):
                continue  # no functions listed (multi-turn, memory, web search) or no single-turn answer
            gold = list(dict.fromkeys(name for call in truth for name in call))
            query = "\n".join(
                message["content"]
                for turn in row["question"]
                for message in turn
                if message.get("role") == "user" and isinstance(message.get("content"), str)
            )
            if query.strip() and gold:
                cases.append(Case(row["id"], query, gold))
    for path in sorted(glob.glob(str(data / "multi_turn_func_doc" / "*.json"))):
        for line in Path(path).read_text().splitlines():
            if line.strip():
                add(json.loads(line))
    return list(tools.values()), cases


# --------------------------------------------------------------------------------------------
# Metrics


def _metrics() -> dict[str, Callable[..., float]]:
    """Shared metrics from `contextlab.evaluation.metrics` when present, else local equivalents."""
    try:
        from contextlab.evaluation import metrics as shared

        return {
            "recall_at_k": shared.recall_at_k,
            "reciprocal_rank": shared.reciprocal_rank,
            "ndcg_at_k": shared.ndcg_at_k,
        }
    except ImportError:
        return {"recall_at_k": recall_at_k, "reciprocal_rank": reciprocal_rank, "ndcg_at_k": ndcg_at_k}


def recall_at_k(ranked: Sequence[str], gold: Sequence[str], k: int) -> float:
    gold_set = set(gold)
    return len(gold_set.intersection(ranked[:k])) / len(gold_set) if gold_set else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: Sequence[str]) -> float:
    gold_set = set(gold)
    return next((1.0 / i for i, name in enumerate(ranked, 1) if name in gold_set), 0.0)


def ndcg_at_k(ranked: Sequence[str], gold: Sequence[str], k: int) -> float:
    gold_set = set(gold)
    dcg = sum(1.0 / math.log2(i + 1) for i, name in enumerate(ranked[:k], 1) if name in gold_set)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(gold_set), k) + 1))
    return dcg / ideal if ideal else 0.0


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --------------------------------------------------------------------------------------------
# Tokens


def _token_counter(embedder: Any) -> tuple[Callable[[str], int], str]:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base")
        return (lambda text: len(encoding.encode(text))), "tiktoken cl100k_base"
    except Exception:  # not installed, or its BPE file is not cached (fetching it would need the network)
        pass
    try:
        counter = embedder if isinstance(embedder, WordLlamaEmbedder) else WordLlamaEmbedder()
        counter.count_tokens("probe")
        return counter.count_tokens, "wordllama tokenizer (Llama-2 BPE)"
    except Exception:
        return (lambda text: math.ceil(len(text) / 4)), "characters / 4"


def _listing(tools: Sequence[dict[str, Any]]) -> str:
    """The JSON text of a tools/list result as a client receives it (name, title, description,
    inputSchema; the loader's private `_meta` left out)."""
    fields = ("name", "title", "description", "inputSchema")
    shown = [{key: tool[key] for key in fields if key in tool} for tool in tools]
    return json.dumps({"tools": shown}, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Runs


FUNCTION_DEPTH = 40  # hits fetched per query when function-level metrics collapse definitions


def evaluate(
    index: ToolIndex,
    cases: Sequence[Case],
    k: int,
    rerank: bool,
    allowed: set[str] | None = None,
    family: dict[str, str] | None = None,
) -> tuple[dict[str, float], list[list[str]], list[float]]:
    """Metrics over the cases. With `family` (pool name -> BFCL name) also `recall_at_5_any_variant`:
    a gold tool counts as found when any definition BFCL gives under the same name is in the top 5."""
    metrics = _metrics()
    depth = max(k, 10, FUNCTION_DEPTH if family else 0)
    totals = {"recall_at_1": 0.0, "recall_at_5": 0.0, "recall_at_10": 0.0, "mrr": 0.0, "ndcg_at_10": 0.0}
    if family:
        totals["recall_at_5_any_variant"] = 0.0
        for key in ("function_recall_at_1", "function_recall_at_5", "function_recall_at_10", "function_mrr"):
            totals[key] = 0.0
    rankings, latencies = [], []
    for case in cases:
        started = time.perf_counter()
        hits = index.search(case.query, k=depth, allowed=allowed, rerank=rerank)
        latencies.append((time.perf_counter() - started) * 1000)
        ranked = [hit.name for hit in hits]
        rankings.append(ranked)
        for n in (1, 5, 10):
            totals[f"recall_at_{n}"] += metrics["recall_at_k"](ranked, case.gold, n)
        totals["mrr"] += metrics["reciprocal_rank"](ranked, case.gold)
        totals["ndcg_at_10"] += metrics["ndcg_at_k"](ranked, case.gold, 10)
        if family:
            gold_families = {family.get(name, name) for name in case.gold}
            found = gold_families & {family.get(name, name) for name in ranked[:5]}
            totals["recall_at_5_any_variant"] += len(found) / len(gold_families)
            # Function level: definitions of one BFCL function collapse into their first (best) rank.
            functions = list(dict.fromkeys(family.get(name, name) for name in ranked))
            for n in (1, 5, 10):
                totals[f"function_recall_at_{n}"] += metrics["recall_at_k"](functions, sorted(gold_families), n)
            totals["function_mrr"] += metrics["reciprocal_rank"](functions, sorted(gold_families))
    summary = {name: round(value / max(len(cases), 1), 4) for name, value in totals.items()}
    summary["p50_ms"] = round(statistics.median(latencies), 3)
    summary["p99_ms"] = round(_percentile(latencies, 99), 3)
    return summary, rankings, latencies


def measure_lancedb_native(
    index: ToolIndex, cases: Sequence[Case], k: int, queries: int, allowed: set[str] | None, seed: int
) -> dict[str, Any]:
    """LanceDB's own query path on the same table, for a random sample of the cases: flat vector
    search, native full-text search, and hybrid (both, fused by LanceDB's RRF reranker), k=max(k, 10);
    then hybrid with the allow-list as a prefilter (`where name IN (...)`). `mirror` and
    `mirror_allowed` are `ToolIndex.search` on the same sample, for comparison."""
    from lancedb.index import FTS
    from lancedb.query import MatchQuery
    from lancedb.rerankers import RRFReranker

    table = index._table  # the store of record the index wrote
    started = time.perf_counter()
    table.create_index("text", config=FTS(), replace=True)
    fts_build = time.perf_counter() - started
    reranker = RRFReranker()
    depth = max(k, 10)
    sample = random.Random(seed).sample(list(cases), min(queries, len(cases)))
    out: dict[str, Any] = {"fts_index_seconds": round(fts_build, 3), "queries": len(sample)}
    where = None
    if allowed is not None:
        where = "name IN (" + ", ".join("'" + name.replace("'", "''") + "'" for name in sorted(allowed)) + ")"

    def run(name: str, query: Callable[[Case, Any], Any], columns: list[str]) -> None:
        latencies, recall5 = [], 0.0
        for case in sample:
            started = time.perf_counter()
            vector = index.embedder.embed([case.query])[0]
            rows = query(case, vector).limit(depth).select(columns).to_list()
            latencies.append((time.perf_counter() - started) * 1000)
            recall5 += recall_at_k([row["name"] for row in rows], case.gold, 5)
        out[name] = {
            "recall_at_5": round(recall5 / max(len(sample), 1), 4),
            "p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(_percentile(latencies, 99), 3),
        }

    def hybrid(case: Case, vector: Any) -> Any:
        return (
            table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
            .vector(vector)
            .text(MatchQuery(case.query, "text"))
            .rerank(reranker)
        )

    for label, allow in (("mirror", None), ("mirror_allowed", allowed)):
        if label == "mirror_allowed" and allow is None:
            continue
        mirror, _, _ = evaluate(index, sample, k, rerank=False, allowed=allow)
        out[label] = {key: mirror[key] for key in ("recall_at_5", "p50_ms", "p99_ms")}
    run("vector", lambda case, vector: table.search(vector, vector_column_name="vector"), ["name", "_distance"])
    run("fts", lambda case, vector: table.search(MatchQuery(case.query, "text")), ["name", "_score"])
    run("hybrid", hybrid, ["name"])
    if where is not None:
        run("hybrid_allowed", lambda case, vector: hybrid(case, vector).where(where, prefilter=True), ["name"])
    return out


def make_embedder(name: str) -> Any:
    if name == "wordllama":
        return WordLlamaEmbedder()
    if name == "minilm":
        return SentenceTransformerEmbedder()
    raise SystemExit(f"unknown embedder {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=5, help="Tools returned per query for the token figure (>=1).")
    parser.add_argument("--rerank", action="store_true", help="Also measure search(..., rerank=True).")
    parser.add_argument("--embedder", default="wordllama", choices=["wordllama", "minilm"], help="Embedder.")
    parser.add_argument("--limit-cases", type=int, default=None, help="Use only the first N cases.")
    parser.add_argument("--rrf-k", type=int, default=60, help="Reciprocal-rank-fusion constant.")
    parser.add_argument("--path", default=None, help="LanceDB folder to build in (default: a fresh temp folder).")
    parser.add_argument(
        "--allowed-fraction",
        type=float,
        default=0.8,
        help="Also time searches with a random allow-list of this share of the pool (gold always allowed); 0: skip.",
    )
    parser.add_argument("--lancedb-native", action="store_true", help="Also measure LanceDB's own query path.")
    parser.add_argument(
        "--ablation", action="store_true", help="Also measure BM25 alone, embeddings alone and equal fusion weights."
    )
    parser.add_argument("--native-queries", type=int, default=300, help="Queries for --lancedb-native.")
    parser.add_argument("--updates", type=int, default=5, help="Single-description updates timed (median).")
    parser.add_argument("--json-only", action="store_true", help="No progress or per-phase lines on stderr.")
    parser.add_argument("--seed", type=int, default=7, help="Seed for the allow-list sample.")
    args = parser.parse_args()
    if args.k < 1:
        parser.error("--k must be >= 1")

    def note(message: str) -> None:
        if not args.json_only:
            print(message, file=sys.stderr, flush=True)

    raw_tools, cases, source = load_pool(args.limit_cases)
    tools = [IndexedTool.from_mcp(tool) for tool in raw_tools]
    note(f"pool: {len(tools)} tools, {len(cases)} cases ({source})")

    embedder = make_embedder(args.embedder)
    started = time.perf_counter()
    embedder.embed(["warm up"])
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    import lancedb  # noqa: F401 - a one-off import (about a second), kept out of build_seconds

    import_seconds = time.perf_counter() - started

    scratch = None if args.path else tempfile.TemporaryDirectory(prefix="contextlab-tool-bench-")
    folder = Path(args.path) if args.path else Path(scratch.name)
    started = time.perf_counter()
    index = ToolIndex(folder, embedder=embedder, rrf_k=args.rrf_k)
    _build(index, tools, quiet=args.json_only)
    build_seconds = time.perf_counter() - started
    note(f"built in {build_seconds:.2f} s: {index.stats()['last_sync']}")

    family = {
        tool["name"]: tool["_meta"]["bfcl_name"]
        for tool in raw_tools
        if isinstance(tool.get("_meta"), dict) and tool["_meta"].get("bfcl_name")
    }
    summary, rankings, _ = evaluate(index, cases, args.k, rerank=False, family=family)
    note(f"plain: {summary}")

    # Token reduction: what a client reads with retrieval vs. the full listing.
    count_tokens, tokenizer = _token_counter(embedder)
    by_name = {tool["name"]: tool for tool in raw_tools}
    full_tokens = count_tokens(_listing([SEARCH_TOOLS, *raw_tools]))
    reduced = [
        count_tokens(_listing([SEARCH_TOOLS, *(by_name[name] for name in ranked[: args.k])])) for ranked in rankings
    ]
    mean_reduced = statistics.fmean(reduced) if reduced else 0.0

    # Incremental updates: one description changes, the whole pool is synced again.
    update_ms, upsert_ms, fresh_ms = [], [], []
    rng = random.Random(args.seed)
    current = list(tools)
    for n in range(args.updates):
        i = rng.randrange(len(current))
        current[i] = replace(current[i], description=current[i].description + f" (revision {n + 1})")
        started = time.perf_counter()
        result = index.sync(current)
        update_ms.append((time.perf_counter() - started) * 1000)
        assert (result.updated, result.added, result.removed) == (1, 0, 0), result
        # the same with every tool object built anew (no cached fingerprints), as a service rebuilding its list would
        k = rng.randrange(len(current))
        current = [replace(tool) for tool in current]
        current[k] = replace(current[k], description=current[k].description + f" (rebuilt {n + 1})")
        started = time.perf_counter()
        index.sync(current)
        fresh_ms.append((time.perf_counter() - started) * 1000)
        j = rng.randrange(len(current))
        current[j] = replace(current[j], description=current[j].description + " (upserted)")
        started = time.perf_counter()
        index.upsert([current[j]])
        upsert_ms.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    reopened = ToolIndex(folder, embedder=embedder, rrf_k=args.rrf_k)
    reopen_seconds = time.perf_counter() - started
    unchanged = reopened.sync(current)
    assert unchanged.embedded == 0 and len(reopened) == len(tools), unchanged

    result: dict[str, Any] = {
        "pool_size": len(tools),
        "cases": len(cases),
        **summary,
        "build_seconds": round(build_seconds, 3),
        "incremental_update_ms": round(statistics.median(update_ms), 2) if update_ms else None,
        "token_reduction": round(1 - mean_reduced / full_tokens, 5) if full_tokens else None,
        "k": args.k,
        "incremental_update_fresh_objects_ms": round(statistics.median(fresh_ms), 2) if fresh_ms else None,
        "upsert_one_ms": round(statistics.median(upsert_ms), 2) if upsert_ms else None,
        "reopen_seconds": round(reopen_seconds, 3),
        "reopen_embedded": unchanged.embedded,
        "embedder": embedder.name,
        "embedder_load_seconds": round(load_seconds, 3),
        "lancedb_import_seconds": round(import_seconds, 3),
        "tokenizer": tokenizer,
        "full_listing_tokens": full_tokens,
        "retrieval_listing_tokens_mean": round(mean_reduced, 1),
        "loader": source,
    }
    allowed: set[str] = set()
    if args.allowed_fraction > 0:
        names = [tool.name for tool in tools]
        allowed = set(rng.sample(names, int(len(names) * args.allowed_fraction)))
        allowed.update(name for case in cases for name in case.gold)
        allowed_summary, allowed_rankings, _ = evaluate(index, cases, args.k, rerank=False, allowed=allowed)
        leaked = sum(name not in allowed for ranked in allowed_rankings for name in ranked)
        result["allowed"] = {
            "fraction": args.allowed_fraction,
            "size": len(allowed),
            "p50_ms": allowed_summary["p50_ms"],
            "p99_ms": allowed_summary["p99_ms"],
            "recall_at_5": allowed_summary["recall_at_5"],
            "disallowed_returned": leaked,
        }
    if args.rerank:
        rerank_summary, _, _ = evaluate(index, cases, args.k, rerank=True, family=family)
        note(f"rerank: {rerank_summary}")
        result["rerank"] = rerank_summary
    if args.ablation:
        from contextlab.extension import tool_index

        weights = (tool_index.BM25_WEIGHT, tool_index.VECTOR_WEIGHT)
        try:
            for label, (bm25_weight, vector_weight) in (
                ("bm25_only", (1.0, 0.0)),
                ("vector_only", (0.0, 1.0)),
                ("equal_weights", (1.0, 1.0)),
            ):
                tool_index.BM25_WEIGHT, tool_index.VECTOR_WEIGHT = bm25_weight, vector_weight
                ablation, _, _ = evaluate(index, cases, args.k, rerank=False, family=family)
                note(f"{label}: {ablation}")
                result.setdefault("ablation", {})[label] = ablation
        finally:
            tool_index.BM25_WEIGHT, tool_index.VECTOR_WEIGHT = weights
    if args.lancedb_native:
        note("measuring LanceDB's own query path")
        result["lancedb_native"] = measure_lancedb_native(
            index, cases, args.k, args.native_queries, allowed if args.allowed_fraction > 0 else None, args.seed
        )
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result, indent=2))
    index.close()
    reopened.close()
    if scratch is not None:
        scratch.cleanup()


def _build(index: ToolIndex, tools: Sequence[IndexedTool], quiet: bool) -> None:
    """A full build from empty, in one sync, with a progress bar over the embedding on stderr."""
    from tqdm import tqdm

    embedder = index.embedder
    inner = embedder.embed
    bar = tqdm(total=len(tools), desc="embedding tools", unit="tool", file=sys.stderr, disable=quiet)

    def embed(texts: Sequence[str]) -> Any:
        out = []
        for start in range(0, len(texts), 256):
            out.append(inner(texts[start : start + 256]))
            bar.update(min(256, len(texts) - start))
        import numpy as np

        return np.concatenate(out) if out else inner(texts)

    embedder.embed = embed  # type: ignore[method-assign]
    try:
        index.sync(tools)
    finally:
        del embedder.embed
        bar.close()


if __name__ == "__main__":
    main()
