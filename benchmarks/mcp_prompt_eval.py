"""MCP prompt effectiveness on BFCL with the offline model: tool choice per description variant (× adapter).

A seeded sample of BFCL cases (`--cases` per category) runs through `contextlab.evaluation.tool_choice`
under two description variants: `stable` (BFCL's own text) and `short` (every description cut to its
first sentence). Each answer is scored by the AST checker. The offline model (SmolLM2-135M) has no
native tool calls, so it gets SmolLM2's text protocol (`contextlab.copilot.tool_prompt`). `--adapter
PATH` (a LoRA adapter folder from delta fine-tuning, or a registry reference such as `@champion`) adds
the same model with that adapter, for base vs adapter; `--model` adds other models (`openai:<id>`, ...).

Prints ONE JSON object to stdout (progress goes to stderr):

- `config`: categories, cases per category, seed, max tokens, top-k, models, variants
- `summary`: one row per (variant, model): `tool_name_accuracy`, `argument_accuracy` (full AST match),
  `irrelevance_abstention`, `call_f1` (names, parallel cases), `parse_rate` (answers whose calls could
  be read), `retrieval_recall` (with `--top-k`), tokens, latency p50/p95
- `by_category`: argument accuracy (abstention for irrelevance) per variant × model × category
- `error_types`: how the misses failed, per variant × model (checker error types, `no_call`, `parse_error`)
- `proposal`: which variant `propose` would promote over `stable` (`--min-cases`, `--min-margin`),
  with its reason and the first failures
- `wall_s`, `model_load_s`; with `--details`, every case's calls, answer and verdict

    python benchmarks/mcp_prompt_eval.py                          # about 5 minutes on 2 cores
    python benchmarks/mcp_prompt_eval.py --cases 2 --categories simple_python irrelevance
    python benchmarks/mcp_prompt_eval.py --adapter ~/adapters/workspace-v3   # base vs adapter
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contextlab.evaluation.bfcl import DEFAULT_CATEGORIES, NO_CALL_CATEGORIES, load_bfcl_suite  # noqa: E402
from contextlab.evaluation.suite import ToolSelectionSuite  # noqa: E402
from contextlab.evaluation.tool_choice import (  # noqa: E402
    evaluate,
    first_sentence_variant,
    propose,
    results_frame,
    summarize,
    warm_up,
)

CATEGORIES = ["simple_python", "multiple", "parallel", "irrelevance", "live_simple"]


def sample_suite(categories: list[str], per_category: int, seed: int) -> ToolSelectionSuite:
    """`per_category` cases of each category, drawn with a fixed seed (the same sample every run)."""
    rng = random.Random(seed)
    cases = []
    for category in categories:
        pool = load_bfcl_suite([category]).cases
        cases.extend(rng.sample(pool, min(per_category, len(pool))))
    return ToolSelectionSuite(name="bfcl-v4-sample", cases=cases)


def _round(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5, help="cases per category (default 5)")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=CATEGORIES,
        choices=[*DEFAULT_CATEGORIES, *NO_CALL_CATEGORIES],
        help=f"BFCL categories (default: {' '.join(CATEGORIES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--max-tokens", type=int, default=96, help="tokens per answer (default 96)")
    parser.add_argument("--top-k", type=int, default=None, help="offer only the k best-ranked tools of the sample")
    parser.add_argument(
        "--model", action="append", default=[], help="models to run (default: local); repeat for several"
    )
    parser.add_argument(
        "--adapter",
        default=None,
        help="also run the offline model with this LoRA adapter (a folder, or @champion / @candidate)",
    )
    parser.add_argument("--min-cases", type=int, default=10, help="cases a variant needs to be proposed")
    parser.add_argument("--min-margin", type=float, default=0.02, help="argument-accuracy gain needed")
    parser.add_argument("--details", action="store_true", help="include every case's answer and verdict")
    args = parser.parse_args()

    models = args.model or ["local"]
    if args.adapter:
        models.append(f"local+adapter:{args.adapter}")
    suite = sample_suite(args.categories, args.cases, args.seed)
    variants = {"stable": {}, "short": first_sentence_variant(suite.cases)}
    print(f"{len(suite.cases)} cases × {len(variants)} variants × {len(models)} models", file=sys.stderr)
    model_load_s = warm_up(models)
    started = time.perf_counter()
    results = evaluate(suite, variants, models, top_k=args.top_k, max_tokens=args.max_tokens, progress=True)
    wall = time.perf_counter() - started

    frame = results_frame(results)
    summary = summarize(results)
    by_category = {}
    for (variant, model, category), group in frame.groupby(["variant", "model", "category"], sort=False):
        by_category.setdefault(f"{variant} x {model}", {})[category] = round(float(group["args_correct"].mean()), 4)
    errors = {
        f"{variant} x {model}": dict(Counter(group["error_type"].dropna()).most_common())
        for (variant, model), group in frame.groupby(["variant", "model"], sort=False)
    }
    proposal = propose(results, current="stable", min_cases=args.min_cases, min_margin=args.min_margin, failures=5)
    report = {
        "config": {
            "categories": args.categories,
            "cases_per_category": args.cases,
            "cases": len(suite.cases),
            "seed": args.seed,
            "max_tokens": args.max_tokens,
            "top_k": args.top_k,
            "models": models,
            "variants": list(variants),
        },
        "summary": [
            {k: _round(v) for k, v in row.items()} for row in summary.drop(columns=["suite"]).to_dict("records")
        ],
        "by_category": by_category,
        "error_types": errors,
        "proposal": {k: proposal[k] for k in ("decision", "reason", "scores", "cases", "failures")},
        "model_load_s": model_load_s,
        "wall_s": round(wall, 1),
    }
    if args.details:
        columns = ["case_id", "category", "variant", "model", "calls", "answer", "args_correct", "error_type", "reason"]
        report["details"] = frame[columns].to_dict("records")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
