"""MCP prompt effectiveness, measured: tool choice per description variant × model × suite.

For each case the model sees the question and the tools (with the variant's descriptions), and
its calls are scored by the AST checker (`evaluation.ast_checker`): right tool, right arguments.
Irrelevance cases expect no call at all. Models with native tool calling (OpenAI-compatible
endpoints) get the tools as function specs; others (the offline SmolLM2) get them in the system
prompt and answer with `<tool_call>` JSON, which `parse_tool_calls` reads.

`summarize` gives, per (variant, model, suite): tool-name accuracy, argument accuracy, irrelevance
abstention, call F1 on names, retrieval recall when top-k listing is on, tokens and latency.
`propose` says which variant to promote, with the failures that decided it; `promote` moves a
label through the prompts REST API and is only ever called explicitly.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

from contextlab.evaluation.ast_checker import check_calls
from contextlab.evaluation.bfcl import BFCL_VERSION_PREFIX, _last_user_text, bfcl_data_dir, bfcl_function_to_tool
from contextlab.evaluation.suite import ToolSelectionCase

IRRELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance")
_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)

TEXT_PROTOCOL = """You can call these functions. Each is given as JSON with its name, description and parameters.

{tools}

If one or more functions answer the request, reply with the calls only, as a JSON list inside
<tool_call></tool_call>, for example:
<tool_call>[{{"name": "function_name", "arguments": {{"param": "value"}}}}]</tool_call>
If no function fits the request, reply with <tool_call>[]</tool_call>."""


def load_irrelevance_cases(categories: Sequence[str] = ("irrelevance",), limit: int | None = None) -> list:
    """BFCL questions that none of the offered functions answers: the right reply is no call."""
    cases: list[ToolSelectionCase] = []
    for category in categories:
        if category not in IRRELEVANCE_CATEGORIES:
            raise ValueError(f"unknown irrelevance category {category!r}: use {', '.join(IRRELEVANCE_CATEGORIES)}")
        path = bfcl_data_dir() / f"{BFCL_VERSION_PREFIX}{category}.json"
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                entry = json.loads(line)
                cases.append(
                    ToolSelectionCase(
                        id=entry["id"],
                        query=_last_user_text(entry),
                        messages=[dict(m) for turn in entry["question"] for m in turn],
                        tools=[bfcl_function_to_tool(fn) for fn in entry["function"]],
                        accepted=[],
                        category=category,
                    )
                )
                if limit is not None and sum(c.category == category for c in cases) >= limit:
                    break
    return cases


# -- prompting ------------------------------------------------------------------------------------
def with_descriptions(tools: list[dict[str, Any]], overrides: dict[str, str]) -> list[dict[str, Any]]:
    """The tools with the variant's descriptions (tools it does not name keep theirs)."""
    return [{**t, "description": overrides.get(t["name"], t.get("description", ""))} for t in tools]


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t["name"], "description": t.get("description", ""), "parameters": t["inputSchema"]},
        }
        for t in tools
    ]


def text_protocol_prompt(tools: list[dict[str, Any]]) -> str:
    """The system prompt that offers tools to a model without native tool calling."""
    listed = "\n".join(
        json.dumps({"name": t["name"], "description": t.get("description", ""), "parameters": t["inputSchema"]})
        for t in tools
    )
    return TEXT_PROTOCOL.format(tools=listed)


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in a text-protocol answer; [] when the model declined; None when nothing parses.

    Accepts `<tool_call>` blocks (one list, or one call per block), a fenced JSON block, or bare
    JSON, with trailing prose ignored. Arguments given as a JSON string are decoded.
    """
    candidates = [m.group(1) for m in _CALL_BLOCK.finditer(text)] or [m.group(1) for m in _FENCE.finditer(text)]
    if not candidates:
        stripped = text.strip()
        candidates = [stripped] if any(c in stripped for c in "[{") else []
    calls: list[dict[str, Any]] = []
    parsed_any = False
    for candidate in candidates:
        value = _first_json(candidate)
        if value is _NOTHING:
            continue
        parsed_any = True
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item)
            if call is not None:
                calls.append(call)
    return calls if parsed_any else None


_NOTHING = object()


def _first_json(text: str) -> Any:
    decoder = json.JSONDecoder()
    text = text.strip()
    for start in range(len(text)):
        if text[start] in "[{":
            try:
                value, _end = decoder.raw_decode(text[start:])
                return value
            except ValueError:
                continue
    return _NOTHING


def _as_call(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    if "function" in item and isinstance(item["function"], dict):  # OpenAI-shaped
        item = item["function"]
    name = item.get("name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


# -- running --------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    """One case under one variant and model."""

    case_id: str
    category: str
    variant: str
    model: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    abstain_expected: bool = False
    name_correct: bool = False
    args_correct: bool = False
    parsed: bool = True
    error_type: str | None = None
    reason: str | None = None
    offered: int = 0
    retrieval_recall: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    case: ToolSelectionCase
    variant: str
    tools: list[dict[str, Any]]  # what the model is offered: the variant's text, top-k applied
    recall: float | None
    model: Any  # ModelSpec
    max_tokens: int


_ROUTERS: dict[str, Any] = {}


def _router(spec: Any) -> Any:
    # One router (and so one loaded model) per process and model: Dask workers and pool processes reuse it.
    from contextlab.copilot.llm import LLMRouter

    key = json.dumps(asdict(spec), sort_keys=True, default=str)
    if key not in _ROUTERS:
        _ROUTERS[key] = LLMRouter([spec])
    return _ROUTERS[key]


def run_case(job: _Job) -> CaseResult:
    """One case: offer the tools, ask the model, check its calls. Never raises for a model's answer."""
    case, tools = job.case, job.tools
    result = CaseResult(
        case.id,
        case.category,
        job.variant,
        job.model.name,
        expected=[a.name for a in case.accepted],
        abstain_expected=not case.accepted,
        offered=len(tools),
        retrieval_recall=job.recall,
    )
    router = _router(job.model)
    backend = router.backend(job.model)
    native = bool(getattr(backend, "supports_tools", False))
    messages = [m for m in case.messages if m.get("role") in ("user", "assistant", "system")]
    if not native:
        messages = [{"role": "system", "content": text_protocol_prompt(tools)}, *messages]
    started = time.perf_counter()
    try:
        completion = router.complete(
            messages,
            target="tool_choice",
            max_tokens=job.max_tokens,
            tools=openai_tools(tools) if native else None,
        )
    except Exception as exc:  # the model failed: a miss with the reason, not a crash
        result.latency_s = time.perf_counter() - started
        result.parsed = False
        result.error_type, result.reason = "model_error", f"{type(exc).__name__}: {exc}"
        return result
    result.latency_s = completion.latency_s
    result.prompt_tokens, result.completion_tokens = completion.prompt_tokens, completion.completion_tokens
    if native:
        calls = [{"name": c["name"], "arguments": c.get("arguments") or {}} for c in completion.tool_calls]
    else:
        parsed = parse_tool_calls(completion.text)
        result.parsed = parsed is not None
        calls = parsed or []
    result.calls = calls
    if not case.accepted:
        result.name_correct = result.args_correct = not calls
        if calls:
            result.error_type, result.reason = (
                "irrelevance:called",
                f"called {calls[0]['name']!r} although no tool fits",
            )
        return result
    names = sorted(c["name"] for c in calls)
    result.name_correct = names == sorted(result.expected)
    verdict = check_calls(calls, case)
    result.args_correct = verdict.valid
    if not verdict.valid:
        result.error_type = verdict.error_type or ("parse_error" if not result.parsed else None)
        result.reason = (
            verdict.reason if result.parsed else f"no tool call could be read from: {completion.text[:200]!r}"
        )
    return result


class _Listing:
    """Top-k listing as the gateway does it: the k tools of the whole pool most relevant to the query."""

    def __init__(self, cases: Sequence[ToolSelectionCase], overrides: dict[str, str], k: int) -> None:
        from contextlab.extension.tool_index import IndexedTool, ToolIndex

        self.k = k
        self.pool: dict[str, dict[str, Any]] = {}
        for case in cases:
            for tool in with_descriptions(case.tools, overrides):
                self.pool.setdefault(tool["name"], tool)
        self.index = ToolIndex(None)
        self.index.sync([IndexedTool.from_mcp(t) for t in self.pool.values()])

    def offer(self, case: ToolSelectionCase, overrides: dict[str, str]) -> tuple[list[dict[str, Any]], float | None]:
        own = {t["name"]: t for t in with_descriptions(case.tools, overrides)}
        names = [hit.name for hit in self.index.search(case.query, self.k)]
        # A name the case defines differently from the pool is offered with the case's own definition.
        offered = [own.get(name, self.pool[name]) for name in names]
        gold = {a.name for a in case.accepted}
        recall = sum(name in names for name in gold) / len(gold) if gold else None
        return offered, recall

    def close(self) -> None:
        self.index.close()


def evaluate(
    cases: Sequence[ToolSelectionCase],
    variants: dict[str, dict[str, str]],
    models: Sequence[Any],
    *,
    top_k: int | None = None,
    max_tokens: int = 256,
    executor: Executor | None = None,
    progress: bool = True,
) -> list[CaseResult]:
    """Every case under every (variant, model). `variants` maps a label to description overrides by tool name."""
    if not cases:
        raise ValueError("the suite has no cases")
    if not variants:
        raise ValueError("give at least one description variant (e.g. {'stable': {}})")
    known = {t["name"] for case in cases for t in case.tools}
    for label, overrides in variants.items():
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"variant {label!r} describes tools no case offers: {', '.join(unknown[:5])}")
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
        for model in models:
            jobs.extend(
                _Job(case, label, tools, recall, model, max_tokens)
                for case, (tools, recall) in zip(cases, offers, strict=True)
            )
    from tqdm.auto import tqdm

    mapper: Iterable[CaseResult] = executor.map(run_case, jobs) if executor is not None else map(run_case, jobs)
    return list(tqdm(mapper, total=len(jobs), disable=not progress, unit="case", desc="tool choice"))


# -- scoring --------------------------------------------------------------------------------------
def results_frame(results: Sequence[CaseResult]) -> Any:
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in results])


def summarize(results: Sequence[CaseResult]) -> Any:
    """Per (variant, model): the metrics the issue asks for, one row each."""
    import pandas as pd

    rows = []
    frame = results_frame(results)
    for (variant, model), group in frame.groupby(["variant", "model"], sort=False):
        relevant = group[~group["abstain_expected"]]
        irrelevant = group[group["abstain_expected"]]
        parallel = relevant[relevant["category"].str.contains("parallel")]
        recall = relevant["retrieval_recall"].dropna()
        rows.append(
            {
                "variant": variant,
                "model": model,
                "cases": len(group),
                "tool_name_accuracy": relevant["name_correct"].mean() if len(relevant) else None,
                "argument_accuracy": relevant["args_correct"].mean() if len(relevant) else None,
                "irrelevance_abstention": irrelevant["args_correct"].mean() if len(irrelevant) else None,
                "call_f1": _name_f1(parallel) if len(parallel) else None,
                "parse_rate": group["parsed"].mean(),
                "retrieval_recall": recall.mean() if len(recall) else None,
                "prompt_tokens": int(group["prompt_tokens"].sum()),
                "completion_tokens": int(group["completion_tokens"].sum()),
                "latency_p50_s": group["latency_s"].quantile(0.5),
                "latency_p95_s": group["latency_s"].quantile(0.95),
            }
        )
    return pd.DataFrame(rows)


def _name_f1(frame: Any) -> float:
    tp = fp = fn = 0
    for calls, expected in zip(frame["calls"], frame["expected"], strict=True):
        made = [c["name"] for c in calls]
        remaining = list(expected)
        for name in made:
            if name in remaining:
                remaining.remove(name)
                tp += 1
            else:
                fp += 1
        fn += len(remaining)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def propose(
    results: Sequence[CaseResult],
    *,
    current: str = "stable",
    min_margin: float = 0.02,
    min_cases: int = 10,
    failures: int = 10,
) -> dict[str, Any]:
    """Which variant to promote: best argument accuracy (then name accuracy, then abstention), averaged
    over models. It must beat `current` by `min_margin` on at least `min_cases` cases, else keep it."""
    summary = summarize(results)
    by_variant = (
        summary.groupby("variant", sort=False)[["argument_accuracy", "tool_name_accuracy", "irrelevance_abstention"]]
        .mean()
        .fillna(0.0)
    )
    counts = summary.groupby("variant", sort=False)["cases"].sum()
    ranked = sorted(by_variant.index, key=lambda v: tuple(-by_variant.loc[v]), reverse=False)
    best = ranked[0]
    frame = results_frame(results)
    decision = {
        "current": current,
        "best": best,
        "scores": {v: {k: round(float(x), 4) for k, x in by_variant.loc[v].items()} for v in by_variant.index},
        "promote": None,
        "reason": "",
    }
    if current not in by_variant.index:
        decision["reason"] = f"the current label {current!r} was not evaluated; nothing to compare against"
    elif best == current:
        decision["reason"] = f"{current} is already the best variant"
    elif counts[best] < min_cases:
        decision["reason"] = f"only {int(counts[best])} cases for {best}; need {min_cases} before promoting"
    else:
        margin = by_variant.loc[best, "argument_accuracy"] - by_variant.loc[current, "argument_accuracy"]
        if margin < min_margin:
            decision["reason"] = (
                f"{best} beats {current} by {margin:.3f} argument accuracy, below the {min_margin} margin"
            )
        else:
            decision["promote"] = best
            decision["reason"] = f"{best} beats {current} by {margin:.3f} argument accuracy"
    for variant in dict.fromkeys([best, current]):
        failed = frame[(frame["variant"] == variant) & ~frame["args_correct"]]
        decision.setdefault("failures", {})[variant] = (
            failed[["case_id", "model", "category", "error_type", "reason"]].head(failures).to_dict("records")
        )
    return decision


# -- the prompts API ------------------------------------------------------------------------------
def variants_from_server(
    server_url: str, token: str, labels: Sequence[str]
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]]]:
    """Each label's descriptions of the server's managed tools, through the prompts REST API.

    Returns (variants, versions): label → {tool: description} and label → {tool: version}. A tool
    without the label keeps its current text in that variant.
    """
    import httpx

    base = server_url.rstrip("/") + "/contextlab/api/prompts"
    headers = {"Authorization": f"token {token}"}
    listing = httpx.get(base, headers=headers, timeout=30)
    listing.raise_for_status()
    variants: dict[str, dict[str, str]] = {label: {} for label in labels}
    versions: dict[str, dict[str, int]] = {label: {} for label in labels}
    for item in listing.json().get("prompts", []):
        if not item.get("available") or not item.get("versions"):
            continue  # not a tool this server lists, or no managed versions
        detail = httpx.get(f"{base}/{item['name']}", headers=headers, timeout=30)
        detail.raise_for_status()
        data = detail.json()
        by_version = {v["version"]: v for v in data.get("versions", []) if v.get("kind", "tool") == "tool"}
        by_label = {entry["label"]: entry for entry in data.get("labels", [])}
        for label in labels:
            version = (by_label.get(label) or {}).get("version")
            if version in by_version:
                variants[label][item["name"]] = by_version[version]["description"]
                versions[label][item["name"]] = version
    return variants, versions


def promote(
    proposal: dict[str, Any], *, server_url: str, token: str, versions: dict[str, int], label: str = "stable"
) -> list[dict[str, Any]]:
    """Move `label` of each tool to the proposed variant's version, through the prompts REST API.

    `versions` maps tool name → the version number the proposed variant used. Never called by
    `propose`: promotion is an explicit step (`--promote` / `promote=True` in the notebook).
    """
    import httpx

    if not proposal.get("promote"):
        raise ValueError(f"nothing to promote: {proposal.get('reason', 'no proposal')}")
    base = server_url.rstrip("/") + "/contextlab/api/prompts"
    headers = {"Authorization": f"token {token}"}
    moved = []
    for tool, version in versions.items():
        reply = httpx.put(f"{base}/{tool}/labels/{label}", headers=headers, json={"version": version}, timeout=30)
        if reply.status_code >= 400:
            raise RuntimeError(f"could not move {label} of {tool} to v{version}: {reply.text}")
        moved.append({"tool": tool, "label": label, "version": version})
    return moved
