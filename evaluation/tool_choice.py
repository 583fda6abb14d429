"""MCP prompt effectiveness, measured: tool choice per description variant × model × suite.

Tool descriptions are prompts. For each case the model sees the question and the tools, with the
variant's descriptions, and its calls are scored by the AST checker (`evaluation.ast_checker`): right
tool, right arguments. Irrelevance cases expect no call at all. Models with native tool calling
(OpenAI-compatible endpoints) get the tools as function specs; the others (the offline SmolLM2, or
any model named in `text_protocol`) get them in SmolLM2's text format (`copilot.tool_prompt`).

- `evaluate` runs every case under every (variant, model), optionally through an `Executor` (a
  thread pool, or a Dask `Client.get_executor()`): the per-case work (`run_case`) is module-level and
  its input picklable; each process keeps one router (so one loaded model) per model.
- `summarize` gives, per (suite, variant, model): tool-name accuracy, argument accuracy, irrelevance
  abstention, call F1 on names (parallel cases), parse rate, retrieval recall@k when top-k listing is
  on, tokens and latency p50/p95. `results_frame` is the per-case table with the checker's reasons.
- `propose` says which variant to promote, with the failures that decided it. `promote` moves a label
  through the prompts REST API and is only ever called explicitly; `variants_from_server` reads each
  label's descriptions from that API.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

from contextlab.evaluation.ast_checker import check_calls
from contextlab.evaluation.bfcl import NO_CALL_CATEGORIES, load_bfcl_suite
from contextlab.evaluation.suite import ToolSelectionCase, ToolSelectionSuite

log = logging.getLogger(__name__)

IRRELEVANCE_CATEGORIES = NO_CALL_CATEGORIES
PLOT_METRICS = ("tool_name_accuracy", "argument_accuracy", "irrelevance_abstention")
# A variant's text for one tool: a description, or {"description": ..., "parameters": {name: text}}.
Override = str | Mapping[str, Any]


def load_irrelevance_cases(
    categories: Sequence[str] = ("irrelevance",), limit: int | None = None
) -> list[ToolSelectionCase]:
    """The first `limit` cases of each BFCL irrelevance category: questions no offered function answers."""
    unknown = [c for c in categories if c not in IRRELEVANCE_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown irrelevance category {unknown[0]!r}: use {', '.join(IRRELEVANCE_CATEGORIES)}")
    cases: list[ToolSelectionCase] = []
    for category in categories:
        cases.extend(load_bfcl_suite([category]).cases[:limit])
    return cases


# -- models ---------------------------------------------------------------------------------------------------------
def resolve_models(models: Sequence[Any], configured: Sequence[Any] = ()) -> list[Any]:
    """`ModelSpec`s for model names, dicts or specs: a name of a `configured` spec (the server's
    `copilot_models`, say) is that spec; otherwise the names `copilot_eval.resolve_model` knows
    (`local`/`smollm2`, `local+adapter@champion`, `openai:<id>`, `anthropic:<id>`)."""
    from contextlab.evaluation.copilot_eval import resolve_model

    by_name = {spec.name: spec for spec in configured}
    specs = [by_name[m] if isinstance(m, str) and m in by_name else resolve_model(m) for m in models]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"model(s) named twice: {', '.join(duplicates)}")
    return specs


# -- variants -------------------------------------------------------------------------------------------------------
def with_descriptions(tools: Sequence[Mapping[str, Any]], overrides: Mapping[str, Override]) -> list[dict[str, Any]]:
    """The tools with the variant's texts; tools it does not name keep theirs."""
    offered = []
    for tool in tools:
        override = overrides.get(tool["name"])
        if override is None:
            offered.append(dict(tool))
            continue
        if isinstance(override, str):
            override = {"description": override}
        changed = {**tool, "description": override.get("description", tool.get("description", ""))}
        parameters = override.get("parameters") or {}
        if parameters:
            schema = json.loads(json.dumps(tool.get("inputSchema") or {}))
            for name, text in parameters.items():
                prop = (schema.get("properties") or {}).get(name)
                if isinstance(prop, dict) and text:
                    prop["description"] = text
            changed["inputSchema"] = schema
        offered.append(changed)
    return offered


def first_sentence(text: str) -> str:
    """The first sentence of a description (up to the first ". "), ending with a period."""
    head = text.strip().split(". ")[0].strip()
    return head if not head or head.endswith(".") else head + "."


def first_sentence_variant(cases: Iterable[ToolSelectionCase]) -> dict[str, str]:
    """A variant that cuts every tool's description to its first sentence: a cheap rival to compare wording."""
    return {t["name"]: first_sentence(t.get("description", "")) for case in cases for t in case.tools}


def _check_variants(cases: Sequence[ToolSelectionCase], variants: Mapping[str, Mapping[str, Override]]) -> None:
    if not variants:
        raise ValueError("give at least one description variant (e.g. {'stable': {}}: the suite's own text)")
    known = {t["name"] for case in cases for t in case.tools}
    for label, overrides in variants.items():
        if not isinstance(overrides, Mapping):
            raise ValueError(f"variant {label!r} must map tool names to descriptions, got {type(overrides).__name__}")
        unknown = sorted(set(overrides) - known)
        if unknown:
            hints = [
                f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1)) else name
                for name in unknown[:5]
            ]
            raise ValueError(f"variant {label!r} describes tools no case offers: {', '.join(hints)}")
        for name, override in overrides.items():
            if not isinstance(override, str) and not (
                isinstance(override, Mapping) and isinstance(override.get("description", ""), str)
            ):
                raise ValueError(
                    f"variant {label!r}, tool {name!r}: give a description string or "
                    "{'description': ..., 'parameters': {...}}"
                )


# -- running --------------------------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    """One case under one variant and model: the calls made, the verdict and what it cost."""

    suite: str
    case_id: str
    category: str
    variant: str
    model: str
    protocol: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    abstain_expected: bool = False
    name_correct: bool = False
    args_correct: bool = False
    parsed: bool = True
    error_type: str | None = None
    reason: str | None = None
    answer: str = ""
    offered: int = 0
    retrieval_recall: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaseJob:
    """Everything one case run needs, picklable so a process pool or Dask worker can run it."""

    suite: str
    case: ToolSelectionCase
    variant: str
    tools: list[dict[str, Any]]  # what the model is offered: the variant's text, top-k applied
    recall: float | None
    model: Any  # ModelSpec
    protocol: str  # auto, native or text
    max_tokens: int


_ROUTERS: dict[str, Any] = {}
_ROUTERS_LOCK = threading.Lock()


def _router(spec: Any) -> Any:
    # One router (so one loaded model) per process and model, reused by every case a worker runs.
    from contextlab.copilot.llm import LLMRouter

    key = json.dumps(asdict(spec), sort_keys=True, default=str)
    with _ROUTERS_LOCK:
        if key not in _ROUTERS:
            _ROUTERS[key] = LLMRouter([spec])
        return _ROUTERS[key]


def warm_up(models: Sequence[Any], configured: Sequence[Any] = ()) -> dict[str, float]:
    """Load each local model in this process now (seconds per model), so no case's latency includes a load."""
    loaded = {}
    for spec in resolve_models(models, configured):
        backend = _router(spec).backend(spec)
        if hasattr(backend, "load"):
            started = time.perf_counter()
            backend.load()
            loaded[spec.name] = round(time.perf_counter() - started, 3)
    return loaded


def run_case(job: CaseJob) -> CaseResult:
    """One case: offer the tools, ask the model, check its calls. A failing model is a scored miss, never a raise."""
    from contextlab.copilot.tool_prompt import complete_with_tools

    case = job.case
    result = CaseResult(
        job.suite,
        case.id,
        case.category,
        job.variant,
        job.model.name,
        expected=[a.name for a in case.accepted],
        abstain_expected=not case.accepted,
        offered=len(job.tools),
        retrieval_recall=job.recall,
    )
    started = time.perf_counter()
    try:
        choice = complete_with_tools(
            _router(job.model),
            case.messages,
            job.tools,
            model=job.model.name,
            protocol=job.protocol,  # type: ignore[arg-type]
            max_tokens=job.max_tokens,
        )
    except Exception as exc:  # the model failed: a miss with the reason
        result.latency_s = round(time.perf_counter() - started, 4)
        result.parsed = False
        result.error_type, result.reason = "model_error", f"{type(exc).__name__}: {exc}"[:500]
        return result
    completion, parsed = choice.completion, choice.parsed
    result.protocol = choice.protocol
    result.answer = completion.text[:500]
    result.latency_s = completion.latency_s
    result.prompt_tokens, result.completion_tokens = completion.prompt_tokens, completion.completion_tokens
    result.parsed = parsed.status != "unreadable"
    result.calls = parsed.calls
    if not case.accepted:
        result.name_correct = result.args_correct = not parsed.calls
        if parsed.calls:
            result.error_type = "irrelevance:called"
            result.reason = f"called {parsed.calls[0]['name']!r} although no offered tool fits"
        return result
    result.name_correct = sorted(c["name"] for c in parsed.calls) == sorted(result.expected)
    verdict = check_calls(parsed.calls, case)
    result.args_correct = verdict.valid
    if verdict.valid:
        return result
    if parsed.status == "unreadable":
        result.error_type, result.reason = "parse_error", parsed.detail
    elif parsed.status == "none":
        result.error_type = "no_call"
        result.reason = f"made no call; answered {completion.text[:160]!r}"
    else:
        result.error_type, result.reason = verdict.error_type, verdict.reason
    return result


class _Listing:
    """Top-k listing as the gateway does it: the k tools of the suite's pool most relevant to the query."""

    def __init__(self, cases: Sequence[ToolSelectionCase], overrides: Mapping[str, Override], k: int) -> None:
        from contextlab.extension.tool_index import IndexedTool, ToolIndex

        self.k = k
        self.pool: dict[str, dict[str, Any]] = {}
        for case in cases:
            for tool in with_descriptions(case.tools, overrides):
                self.pool.setdefault(tool["name"], tool)
        self.index = ToolIndex(None, embedder=_embedder())
        self.index.sync([IndexedTool.from_mcp(t) for t in self.pool.values()])

    def offer(
        self, case: ToolSelectionCase, overrides: Mapping[str, Override]
    ) -> tuple[list[dict[str, Any]], float | None]:
        own = {t["name"]: t for t in with_descriptions(case.tools, overrides)}
        names = [hit.name for hit in self.index.search(case.query, self.k)]
        # A name the case defines differently from the pool is offered with the case's own definition.
        offered = [own.get(name, self.pool[name]) for name in names]
        gold = {a.name for a in case.accepted}
        recall = sum(name in names for name in gold) / len(gold) if gold else None
        return offered, recall

    def close(self) -> None:
        self.index.close()


_EMBEDDER: list[Any] = []


def _embedder() -> Any:
    # One embedder for every listing: its weights load once.
    from contextlab.extension.tool_index import WordLlamaEmbedder

    if not _EMBEDDER:
        _EMBEDDER.append(WordLlamaEmbedder())
    return _EMBEDDER[0]


def evaluate(
    suite: ToolSelectionSuite | Sequence[ToolSelectionCase],
    variants: Mapping[str, Mapping[str, Override]],
    models: Sequence[Any],
    *,
    top_k: int | None = None,
    max_tokens: int = 256,
    executor: Executor | None = None,
    progress: bool = True,
    text_protocol: Collection[str] = (),
    configured: Sequence[Any] = (),
    suite_name: str | None = None,
) -> list[CaseResult]:
    """Every case of `suite` under every (variant, model); results in (variant, model, case) order.

    `variants` maps a label (or version name) to description overrides by tool name; `{}` is the suite's
    own text. `models` are names (`local`, `openai:gpt-4o-mini`, a `configured` spec's name), dicts or
    `ModelSpec`s; those in `text_protocol` get the text protocol even when their backend calls tools
    natively. `top_k` offers each case only the k tools of the suite's pool that `ToolIndex` ranks
    first for its question (and reports retrieval recall). `executor` maps the cases (threads, Dask).
    """
    cases = list(suite.cases if isinstance(suite, ToolSelectionSuite) else suite)
    name = suite_name or (suite.name if isinstance(suite, ToolSelectionSuite) else "suite")
    if not cases:
        raise ValueError("the suite has no cases")
    _check_variants(cases, variants)
    specs = resolve_models(models, configured)
    if not specs:
        raise ValueError("give at least one model (e.g. ['local'] for the offline model)")
    unknown = sorted(set(text_protocol) - {spec.name for spec in specs})
    if unknown:
        raise ValueError(f"text_protocol names model(s) not evaluated: {', '.join(unknown)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    jobs = []
    for label, overrides in variants.items():
        listing = _Listing(cases, overrides, top_k) if top_k is not None else None
        try:
            offers = [
                listing.offer(case, overrides) if listing else (with_descriptions(case.tools, overrides), None)
                for case in cases
            ]
        finally:
            if listing is not None:
                listing.close()
        for spec in specs:
            protocol = "text" if spec.name in text_protocol else "auto"
            jobs.extend(
                CaseJob(name, case, label, tools, recall, spec, protocol, max_tokens)
                for case, (tools, recall) in zip(cases, offers, strict=True)
            )
    from tqdm.auto import tqdm

    mapper: Iterable[CaseResult] = executor.map(run_case, jobs) if executor is not None else map(run_case, jobs)
    return list(tqdm(mapper, total=len(jobs), disable=not progress, unit="case", desc="tool choice"))


# -- scoring --------------------------------------------------------------------------------------------------------
def results_frame(results: Sequence[CaseResult]) -> Any:
    """The per-case table (pandas): one row per case × variant × model, with the checker's error type and reason."""
    import pandas as pd

    columns = list(CaseResult.__dataclass_fields__)
    return pd.DataFrame([r.to_dict() for r in results], columns=columns)


def summarize(results: Sequence[CaseResult]) -> Any:
    """One row per (suite, variant, model) with the metrics; a metric with no case to measure it is None."""
    import pandas as pd

    if not results:
        raise ValueError("no results to summarise")
    rows = []
    frame = results_frame(results)
    for (suite, variant, model), group in frame.groupby(["suite", "variant", "model"], sort=False):
        relevant = group[~group["abstain_expected"]]
        irrelevant = group[group["abstain_expected"]]
        parallel = relevant[relevant["category"].str.contains("parallel") | (relevant["expected"].map(len) > 1)]
        recall = relevant["retrieval_recall"].dropna()
        rows.append(
            {
                "suite": suite,
                "variant": variant,
                "model": model,
                "cases": len(group),
                "tool_name_accuracy": _mean(relevant["name_correct"]),
                "argument_accuracy": _mean(relevant["args_correct"]),
                "irrelevance_abstention": _mean(irrelevant["args_correct"]),
                "call_f1": _name_f1(parallel) if len(parallel) else None,
                "parse_rate": float(group["parsed"].mean()),
                "model_errors": int((group["error_type"] == "model_error").sum()),
                "retrieval_recall": _mean(recall),
                "prompt_tokens": int(group["prompt_tokens"].sum()),
                "completion_tokens": int(group["completion_tokens"].sum()),
                "latency_p50_s": float(group["latency_s"].quantile(0.5)),
                "latency_p95_s": float(group["latency_s"].quantile(0.95)),
            }
        )
    return pd.DataFrame(rows)


def _mean(values: Any) -> float | None:
    return float(values.mean()) if len(values) else None


def _name_f1(frame: Any) -> float:
    """F1 of the called names against the expected ones, counted as multisets over the cases."""
    tp = fp = fn = 0
    for calls, expected in zip(frame["calls"], frame["expected"], strict=True):
        remaining = list(expected)
        for call in calls:
            if call["name"] in remaining:
                remaining.remove(call["name"])
                tp += 1
            else:
                fp += 1
        fn += len(remaining)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def plot_accuracy(summary: Any, metrics: Sequence[str] = PLOT_METRICS) -> Any:
    """Bars of each metric by variant (groups) and model (bars), one panel per metric; a matplotlib Figure.

    With several suites, a group is `suite / variant`. Missing values (no such cases) are drawn as empty.
    """
    from matplotlib.figure import Figure

    if len(summary) == 0:
        raise ValueError("the summary is empty")
    unknown = [m for m in metrics if m not in summary.columns]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: the summary has {list(summary.columns)}")
    several = summary["suite"].nunique() > 1 if "suite" in summary.columns else False
    groups = [f"{s} / {v}" if several else v for s, v in zip(_suites(summary), summary["variant"], strict=True)]
    order = list(dict.fromkeys(groups))
    models = list(dict.fromkeys(summary["model"]))
    panel_width = max(2.6, 0.5 * len(order) * len(models) + 1)
    fig = Figure(figsize=(panel_width * len(metrics) + 1, 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / len(models)
    for ax, metric in zip(axes, metrics, strict=True):
        for i, model in enumerate(models):
            values = []
            for group in order:
                row = [
                    value
                    for g, m, value in zip(groups, summary["model"], summary[metric], strict=True)
                    if g == group and m == model
                ]
                values.append(row[0] if row and row[0] is not None and row[0] == row[0] else 0.0)
            positions = [p + (i - (len(models) - 1) / 2) * width for p in range(len(order))]
            ax.bar(positions, values, width, label=model)
        ax.set_xticks(range(len(order)), order, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(metric.replace("_", " "))
    axes[0].set_ylabel("fraction of cases")
    axes[-1].legend(loc="upper right", fontsize=8, title="model")
    fig.tight_layout()
    return fig


def _suites(summary: Any) -> list[str]:
    return list(summary["suite"]) if "suite" in summary.columns else [""] * len(summary)


def propose(
    results: Sequence[CaseResult],
    *,
    current: str = "stable",
    min_margin: float = 0.02,
    min_cases: int = 10,
    failures: int = 10,
    versions: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Which variant to promote over `current`, averaged over models and suites.

    Ranked by argument accuracy, ties broken by tool-name accuracy, then irrelevance abstention. The
    best must beat `current` by `min_margin` argument accuracy on at least `min_cases` distinct cases,
    else the proposal is to keep `current` (`promote` is None). The answer carries the scores, the
    failures of both variants (case, model, error type, checker reason), the cases the best variant
    fixed and broke against `current`, and with `versions` (from `variants_from_server`) the prompt
    versions `promote` needs.
    """
    if not results:
        raise ValueError("no results to compare")
    summary = summarize(results)
    keys = ["argument_accuracy", "tool_name_accuracy", "irrelevance_abstention"]
    by_variant = summary.groupby("variant", sort=False)[keys].mean().fillna(0.0)
    frame = results_frame(results)
    counts = frame.groupby("variant", sort=False)["case_id"].nunique()
    ranked = sorted(by_variant.index, key=lambda v: tuple(-by_variant.loc[v, k] for k in keys))
    best = ranked[0]
    proposal: dict[str, Any] = {
        "current": current,
        "best": best,
        "promote": None,
        "decision": "keep current",
        "reason": "",
        "scores": {v: {k: round(float(by_variant.loc[v, k]), 4) for k in keys} for v in ranked},
        "cases": {v: int(counts[v]) for v in ranked},
        "min_margin": min_margin,
        "min_cases": min_cases,
    }
    if current not in by_variant.index:
        proposal["reason"] = f"the current label {current!r} was not evaluated; nothing to compare against"
    elif best == current:
        proposal["reason"] = f"{current} is already the best variant"
    elif counts[best] < min_cases:
        proposal["reason"] = f"only {int(counts[best])} cases for {best}; need {min_cases} before promoting"
    else:
        margin = by_variant.loc[best, "argument_accuracy"] - by_variant.loc[current, "argument_accuracy"]
        if margin < min_margin:
            proposal["reason"] = (
                f"{best} beats {current} by {margin:.3f} argument accuracy, below the {min_margin} margin"
            )
        else:
            proposal.update(promote=best, decision=f"promote {best}")
            proposal["reason"] = f"{best} beats {current} by {margin:.3f} argument accuracy"
    columns = ["case_id", "suite", "model", "category", "error_type", "reason", "answer"]
    failed = frame[~frame["args_correct"]]
    proposal["failures"] = {
        variant: failed[failed["variant"] == variant][columns].head(failures).to_dict("records")
        for variant in dict.fromkeys([best, current])
        if variant in by_variant.index
    }
    if current in by_variant.index and best != current:
        proposal["fixed"], proposal["broken"] = _changes(frame, current, best)
    if versions is not None and best in versions:
        proposal["versions"] = dict(versions[best])
    return proposal


def _changes(frame: Any, before: str, after: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The (suite, model, case) triples `after` got right and `before` wrong, and the other way round."""
    outcome = frame.pivot_table(
        index=["suite", "model", "case_id"], columns="variant", values="args_correct", aggfunc="first"
    )
    pairs = outcome[[before, after]].dropna().astype(bool)
    keys = list(pairs.index.names)
    fixed = [dict(zip(keys, k, strict=True)) for k in pairs.index[~pairs[before] & pairs[after]]]
    broken = [dict(zip(keys, k, strict=True)) for k in pairs.index[pairs[before] & ~pairs[after]]]
    return fixed, broken


# -- the prompts API ------------------------------------------------------------------------------------------------
def _prompts_api(server_url: str, token: str) -> tuple[str, dict[str, str]]:
    base = server_url.rstrip("/")
    if base.endswith("/contextlab/mcp"):
        base = base[: -len("/contextlab/mcp")]
    scheme = "Bearer" if token.startswith("cl_") else "token"
    return base + "/contextlab/api/prompts", {"Authorization": f"{scheme} {token}"}


def _reply(response: Any, what: str) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("error") or response.text
        except ValueError:
            detail = response.text
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {str(detail)[:300]}")
    return response.json()


def variants_from_server(
    server_url: str, token: str, labels: Sequence[str]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, int]]]:
    """Each label's text of the server's managed tools, through the prompts REST API.

    Returns (variants, versions): label → {tool: {"description", "parameters"}} and label → {tool: version}.
    A tool without the label keeps the text it is listed with; a label other than `stable` that no tool
    carries is logged as a warning, since its variant is then the listed text.
    """
    import httpx

    if not labels:
        raise ValueError("give at least one label, e.g. ['stable', 'canary']")
    base, headers = _prompts_api(server_url, token)
    with httpx.Client(headers=headers, timeout=30) as http:
        listing = _reply(http.get(base), f"listing prompts at {base}")
        variants: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in labels}
        versions: dict[str, dict[str, int]] = {label: {} for label in labels}
        for item in listing.get("prompts", []):
            if not item.get("available") or not item.get("versions"):
                continue  # not a tool this server lists, or no managed versions
            data = _reply(http.get(f"{base}/{item['name']}"), f"reading prompt {item['name']}")
            by_version = {v["version"]: v for v in data.get("versions", []) if v.get("kind", "tool") == "tool"}
            by_label = {entry["label"]: entry["version"] for entry in data.get("labels", [])}
            for label in labels:
                version = by_label.get(label)
                if version in by_version:
                    text = by_version[version]
                    variants[label][item["name"]] = {
                        "description": text.get("description", ""),
                        "parameters": dict(text.get("parameters") or {}),
                    }
                    versions[label][item["name"]] = version
    missing = [label for label in labels if label != "stable" and not versions[label]]
    if missing:
        log.warning(
            "no tool on %s carries the label(s) %s: their variants are the listed text. Set a label with "
            "`contextlab prompts set TOOL -d TEXT --no-promote --label NAME` or `contextlab prompts label`.",
            server_url,
            missing,
        )
    return variants, versions


def promote(
    proposal: Mapping[str, Any],
    *,
    server_url: str,
    token: str,
    label: str = "stable",
    versions: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Point `label` of each tool at the proposed variant's version, through the prompts REST API.

    The versions are `versions` (tool → version), else the ones `propose(..., versions=...)` recorded in
    the proposal. Every tool and version is checked before any label moves. `propose` never calls this:
    promotion is an explicit step (`promote = True` in the notebook).
    """
    import httpx

    if not proposal.get("promote"):
        raise ValueError(f"nothing to promote: {proposal.get('reason') or 'the proposal names no variant'}")
    chosen = dict(versions if versions is not None else proposal.get("versions") or {})
    if not chosen:
        raise ValueError(
            f"the proposal for {proposal['promote']!r} carries no prompt versions: build the variants with "
            "variants_from_server and pass its versions to propose(..., versions=...) or to promote(versions=...)"
        )
    base, headers = _prompts_api(server_url, token)
    moved = []
    with httpx.Client(headers=headers, timeout=30) as http:
        for tool, version in chosen.items():
            data = _reply(http.get(f"{base}/{tool}"), f"reading prompt {tool}")
            if version not in {v["version"] for v in data.get("versions", [])}:
                raise ValueError(f"{tool} has no version {version} on {server_url}; nothing was moved")
        for tool, version in chosen.items():
            _reply(
                http.put(f"{base}/{tool}/labels/{label}", json={"version": version}),
                f"moving {label} of {tool} to v{version} (moved so far: {moved or 'none'})",
            )
            moved.append({"tool": tool, "label": label, "version": version})
    return moved
