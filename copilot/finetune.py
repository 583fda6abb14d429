"""Delta fine-tuning: accepted and edited Copilot suggestions → a LoRA adapter on the offline model,
measured against the base model (and the current champion), registered in MLflow, promoted only if better.

1. **Data.** `read_feedback` reads suggestions with their feedback from the state store (read-only
   SQL), the server's REST API (`GET contextlab/api/copilot/suggestions`) or a list of dicts;
   `examples_from_feedback` keeps what users kept: an accepted suggestion gives its code, an edited
   one the code the user ran instead; rejected, reverted and deleted ones are left out and counted.
   `build_dataset` drops duplicates (normalised request + answer) and splits train/validation by a
   seeded hash, so an example stays on its side as feedback grows; the fingerprint is a sha256 of it all.
2. **Training.** `train_adapter`: PEFT LoRA on the dequantised SmolLM2 on the CPU, loss on the answer
   tokens only, bounded steps. Each example is framed as the Copilot frames a request at inference
   time: the target's template rendered with the context recorded with the suggestion as the system
   message, the request as the user message, the answer in the fenced block the target extracts.
3. **Measurement.** `compare`: answer-token loss (and perplexity) plus exact match and similarity of
   greedy answers, base vs adapter (vs the registry's champion when there is one), on held-out examples.
4. **Registration.** `register_adapter`: params, metrics and artifacts to an MLflow run, the adapter as
   an MLflow pyfunc model version of `contextlab-local-adapter`, alias `candidate` always and
   `champion` only when it measured better than the base model and the current champion.

The Copilot then serves it as `local+adapter@champion` (see `contextlab.copilot.adapters`).
An adapter's `contextlab-adapter.json` holds what rebuilds it: the base GGUF file name and sha256,
library versions, LoRA and training settings, the dataset fingerprint and sizes.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contextlab.copilot.adapters import REGISTERED_NAME, registry_adapter, resolve_adapter
from contextlab.copilot.local import (
    ADAPTER_METADATA,
    AdapterError,
    check_adapter_base,
    find_gguf,
    gguf_sha256,
    load_transformers_model,
    source_fingerprint,
    usable_cpus,
)

log = logging.getLogger(__name__)

METADATA_FILE = ADAPTER_METADATA
EXPERIMENT = "contextlab/delta_finetune"
OFFLINE = "smollm2-135m-instruct"
METADATA_FORMAT = 1
MAX_STEPS = 2000  # a delta run stays a delta: about 5 hours at 9 s a step on 2 CPUs
KEPT = ("accepted", "edited")
EXCLUDED = ("rejected", "reverted", "deleted")
_IGNORE = -100  # label of a token that is not scored (prompt, padding)

__all__ = [
    "EXPERIMENT",
    "METADATA_FILE",
    "REGISTERED_NAME",
    "AdapterError",
    "Dataset",
    "Example",
    "NoTrainingData",
    "PromotionRule",
    "TrainConfig",
    "answer_text",
    "build_dataset",
    "chat",
    "compare",
    "delta_finetune",
    "examples_from_feedback",
    "feedback_examples",
    "read_feedback",
    "register_adapter",
    "schema_context",
    "suggestions_with_feedback",
    "train_adapter",
    "workspace_examples",
]


class NoTrainingData(ValueError):
    """Not enough accepted or edited suggestions to train on; the message says what to do."""


# -- data -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One instruction example: the request, the code the user kept, and the context the prompt held."""

    target: str
    request: str
    answer: str
    source: str = "feedback"  # feedback, workspace (generated from the database) or given
    kind: str = "accepted"  # accepted, edited or generated
    context: tuple[tuple[str, str, str], ...] = ()  # (source, title, text) as the Copilot put them in the prompt
    suggestion_id: str | None = None

    @property
    def key(self) -> str:
        """What makes two examples duplicates: the target, the normalised request and the normalised answer."""
        text = f"{self.target}\0{_normal_request(self.request)}\0{normal_code(self.answer)}"
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Dataset:
    train: list[Example]
    validation: list[Example]
    fingerprint: str  # sha256 of the examples on each side (context included) and of the split settings
    counts: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    validation_fraction: float = 0.2

    def summary(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            **self.counts,
        }


def suggestions_with_feedback(
    engine: Any,
    *,
    project: str | None = None,
    target: str | None = None,
    user: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Recorded suggestions, oldest first, each with its feedback rows in order (`feedback`), as JSON-ready
    dicts. Two SELECTs on `copilot_suggestions` and `copilot_feedback`; nothing is written."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from contextlab.state.models import FeedbackRow, SuggestionRow

    chosen = select(SuggestionRow).order_by(SuggestionRow.ts, SuggestionRow.id)
    for column, value in ((SuggestionRow.project, project), (SuggestionRow.target, target), (SuggestionRow.user, user)):
        if value is not None:
            chosen = chosen.where(column == value)
    if limit is not None:
        chosen = chosen.limit(limit)
    with Session(engine) as session:
        suggestions = list(session.scalars(chosen))
        ids = chosen.with_only_columns(SuggestionRow.id).subquery()
        rows = session.scalars(
            select(FeedbackRow).where(FeedbackRow.suggestion_id.in_(select(ids.c.id))).order_by(FeedbackRow.id)
        )
        feedback: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            feedback.setdefault(row.suggestion_id, []).append(_row_dict(row, exclude=("suggestion_id",)))
        return [{**_row_dict(s), "feedback": feedback.get(s.id, [])} for s in suggestions]


def read_feedback(
    source: Any,
    *,
    token: str | None = None,
    project: str | None = None,
    target: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Suggestions with their feedback, from wherever they are:

    - a state store: a `StateStore`, a SQLAlchemy engine, its URL (`sqlite:///…/.contextlab/state.db`) or
      the SQLite file;
    - the ContextLab server: its URL (`http://host:8888/`, or the MCP endpoint's), with `token` (else
      `$CONTEXTLAB_TOKEN`); an admin reads everyone's suggestions, anybody else their own;
    - records already in hand: a list of dicts shaped like `suggestions_with_feedback`'s (a record may
      give one `kind` and `executed_code` instead of a `feedback` list).
    """
    if isinstance(source, str | os.PathLike) and str(source).startswith(("http://", "https://")):
        return _read_rest(str(source), token, project, target, timeout)
    if isinstance(source, str | os.PathLike):
        from sqlalchemy import create_engine

        url = str(source) if "://" in str(source) else f"sqlite:///{Path(source).resolve()}"  # a state.db file
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            log.warning("no state store at %s, so no feedback yet", url)
            return []  # and no empty database created by looking
        engine = create_engine(url)
        try:
            return suggestions_with_feedback(engine, project=project, target=target)
        finally:
            engine.dispose()
    engine = getattr(source, "engine", None)
    if engine is not None or hasattr(source, "connect"):
        return suggestions_with_feedback(engine or source, project=project, target=target)
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        records = [_given_record(item) for item in source]
        return [
            r
            for r in records
            if (project is None or r.get("project") == project) and (target is None or r["target"] == target)
        ]
    raise TypeError(f"Cannot read feedback from {type(source).__name__}: give a store URL, a server URL or records.")


def examples_from_feedback(
    records: Iterable[Mapping[str, Any]], *, implicit_accept: bool = False
) -> tuple[list[Example], dict[str, int]]:
    """The examples users' feedback vouches for, and what was counted on the way.

    The last decisive feedback on a suggestion wins: `accepted` keeps the suggested code (or, when the
    user had edited it, the edited code), `edited` keeps the code the user ran instead, unless its run
    failed; `rejected`, `reverted` and `deleted` leave the suggestion out. With `implicit_accept`, a
    successful run of the unchanged suggestion counts as accepting it. Counts: `suggestions`, `accepted`,
    `edited`, `rejected`, `reverted`, `deleted`, `undecided` (no decisive feedback), `edited_failed`,
    `edited_without_code`, `unknown_target`.
    """
    from contextlab.copilot.engine import TARGETS

    counts = dict.fromkeys(
        ("suggestions", *KEPT, *EXCLUDED, "undecided", "edited_failed", "edited_without_code", "unknown_target"), 0
    )
    examples: list[Example] = []
    for record in records:
        counts["suggestions"] += 1
        verdict, answer = _verdict(record, implicit_accept)
        if verdict not in KEPT:
            counts[verdict] += 1
            continue
        if record["target"] not in TARGETS:
            counts["unknown_target"] += 1
            continue
        counts[verdict] += 1
        context = tuple(
            (str(c.get("source", "")), str(c.get("title", "")), str(c.get("text", "")))
            for c in record.get("context") or []
            if isinstance(c, Mapping)
        )
        examples.append(
            Example(
                target=record["target"],
                request=record["request"],
                answer=answer,
                source="feedback",
                kind=verdict,
                context=context,
                suggestion_id=record.get("id"),
            )
        )
    return examples, counts


def feedback_examples(
    source: Any, *, implicit_accept: bool = False, **read: Any
) -> tuple[list[Example], dict[str, int]]:
    """`examples_from_feedback(read_feedback(source, **read))`."""
    return examples_from_feedback(read_feedback(source, **read), implicit_accept=implicit_accept)


def workspace_examples(database: str | Path, limit: int = 200) -> list[Example]:
    """Question → SQL pairs generated from a DuckDB database's own tables, framed with its schema; they teach the
    model the workspace's tables before much feedback exists."""
    from contextlab.copilot.workspace_sql import generate_sql_examples

    context = (("sql__schema", "Database schema", schema_context(database)),)
    return [
        Example("sql", e.request, e.code, "workspace", "generated", context)
        for e in generate_sql_examples(database, limit=limit)
    ]


def schema_context(database: str | Path) -> str:
    """The schema text the Copilot puts in a SQL prompt, for the same framing at training time."""
    import duckdb

    from contextlab.copilot.engine import schema_text
    from contextlab.providers.sql import _read_tables

    with duckdb.connect(str(database), read_only=True) as con:
        tables = [t.model_dump(by_alias=True) for t in _read_tables(con)]
    return schema_text({"databases": [{"tables": tables}]})


def build_dataset(
    examples: Iterable[Example],
    *,
    validation_fraction: float = 0.2,
    min_examples: int = 4,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
) -> Dataset:
    """Deduplicate and split. Each example's side comes from a seeded hash of its key, so it stays on that
    side when new feedback arrives; at least one example goes to each side.

    Raises `NoTrainingData` (saying what to do) when fewer than `min_examples` distinct examples remain.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError("validation_fraction must be between 0 and 1.")
    counts = dict(counts or {})
    unique: dict[str, Example] = {}
    given = 0
    for example in examples:
        given += 1
        if example.request.strip() and example.answer.strip():
            unique.setdefault(example.key, example)  # the first one seen wins: the oldest feedback
    needed = max(2, min_examples)
    if len(unique) < needed:
        raise NoTrainingData(_not_enough(len(unique), needed, counts))
    scored = sorted(unique.items(), key=lambda item: (_bucket(seed, item[0]), item[0]))
    validation = [e for k, e in scored if _bucket(seed, k) < validation_fraction]
    train = [e for k, e in scored if _bucket(seed, k) >= validation_fraction]
    if not validation:
        validation.append(train.pop(0))  # the lowest bucket, so the choice is as stable as the split
    if not train:
        train.append(validation.pop())
    counts.update(examples=given, duplicates=given - len(unique), unique=len(unique))
    counts.update(train=len(train), validation=len(validation))
    fingerprint = _fingerprint(train, validation, seed, validation_fraction)
    return Dataset(train, validation, fingerprint, counts, seed, validation_fraction)


def chat(example: Example, schema: str = "") -> list[dict[str, str]]:
    """The messages the Copilot sends for this request: its target's built-in template rendered with the example's
    context (or, for a SQL example without recorded context, `schema`) as the system message, the request as the
    user's."""
    from contextlab.copilot.engine import _ENV, TARGETS, ContextItem

    context = [ContextItem(*item) for item in example.context]
    if not context and schema and example.target == "sql":
        context = [ContextItem("sql__schema", "Database schema", schema)]
    system = _ENV.from_string(TARGETS[example.target]().template).render(context=context, target=example.target)
    return [{"role": "system", "content": system}, {"role": "user", "content": example.request.strip()}]


def answer_text(example: Example) -> str:
    """The answer as the model should write it: in the fenced block the target's `extract` reads."""
    from contextlab.copilot.engine import TARGETS

    code = example.answer.strip()
    if "```" in code:  # targets whose code is several blocks already (er: sql + mermaid)
        return code
    return f"```{TARGETS[example.target]().language}\n{code}\n```"


def normal_code(code: str) -> str:
    """Code compared modulo layout: whitespace runs collapsed, a trailing `;` dropped."""
    return " ".join(code.split()).rstrip(";").strip()


def _normal_request(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(" ?.!")


def _verdict(record: Mapping[str, Any], implicit_accept: bool) -> tuple[str, str]:
    """(accepted | edited | rejected | reverted | deleted | undecided | edited_failed | edited_without_code, answer)."""
    feedback = record.get("feedback") or []  # in the order it was given (the store's: by id)
    suggested = record.get("code") or ""
    verdict, answer, edited = "undecided", "", None
    for item in feedback:
        kind = item.get("kind")
        code = item.get("executed_code")
        if kind == "edited":
            edited = code
            verdict, answer = ("edited", code) if code else ("edited_without_code", "")
        elif kind == "accepted":
            verdict, answer = ("edited", edited) if edited else ("accepted", suggested)
        elif kind in EXCLUDED:
            verdict, answer, edited = kind, "", None
        elif kind == "ran" and verdict == "edited" and code == answer and item.get("succeeded") is False:
            verdict = "edited_failed"
        elif kind == "ran" and verdict == "edited_failed" and code == edited and item.get("succeeded"):
            verdict, answer = "edited", edited
        elif kind == "ran" and implicit_accept and item.get("succeeded") and verdict == "undecided":
            if code is None or normal_code(code) == normal_code(suggested):
                verdict, answer = "accepted", suggested
    return verdict, answer


def _not_enough(found: int, needed: int, counts: Mapping[str, int]) -> str:
    if counts.get("suggestions") is not None and not counts.get("accepted") and not counts.get("edited"):
        why = "no accepted or edited suggestions yet"
    else:
        why = f"{counts.get('accepted', 0)} accepted and {counts.get('edited', 0)} edited suggestion(s)"
    left_out = [f"{counts[k]} {k}" for k in (*EXCLUDED, "undecided", "edited_failed") if counts.get(k)]
    return (
        f"only {found} usable example(s); at least {needed} are needed ({why}"
        + (f"; left out: {', '.join(left_out)}" if left_out else "")
        + "). Accept (or edit and run) some %%copilot suggestions first, or add question and SQL pairs generated "
        "from the workspace's database (workspace_examples)."
    )


def _bucket(seed: int, key: str) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)


def _fingerprint(train: Sequence[Example], validation: Sequence[Example], seed: int, fraction: float) -> str:
    def side(examples: Sequence[Example]) -> list[list[Any]]:
        return sorted([e.target, e.request, e.answer, [list(c) for c in e.context]] for e in examples)

    body = {"seed": seed, "validation_fraction": fraction, "train": side(train), "validation": side(validation)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _row_dict(row: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    out = {}
    for column in row.__table__.columns:
        if column.name in exclude:
            continue
        value = getattr(row, column.name)
        out[column.name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _given_record(item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise TypeError(f"A feedback record must be a dict, not {type(item).__name__}.")
    record = dict(item)
    missing = [k for k in ("target", "request", "code") if not isinstance(record.get(k), str)]
    if missing:
        raise ValueError(f"A feedback record needs {', '.join(missing)} (strings); got keys {sorted(record)}.")
    if "feedback" not in record and record.get("kind"):
        record["feedback"] = [{"kind": record["kind"], "executed_code": record.get("executed_code"), "id": 0}]
    return record


def _read_rest(url: str, token: str | None, project: str | None, target: str | None, timeout: float) -> list[dict]:
    import httpx

    from contextlab.kernels.api import api_base, auth_header

    base = api_base(url)
    params = {k: v for k, v in (("project", project), ("target", target)) if v is not None}
    headers = auth_header(token or os.environ.get("CONTEXTLAB_TOKEN") or os.environ.get("JUPYTER_TOKEN"))
    try:
        response = httpx.get(
            f"{base}contextlab/api/copilot/suggestions", params=params, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise ConnectionError(f"The ContextLab server at {base} cannot be reached: {exc}") from exc
    if response.status_code != 200:
        raise ConnectionError(
            f"GET {base}contextlab/api/copilot/suggestions: HTTP {response.status_code}: {response.text[:300]}"
        )
    return response.json()["suggestions"]


# -- training ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """LoRA and optimiser settings. `steps` optimiser steps of `batch_size` examples (at most `MAX_STEPS`)."""

    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 2e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_length: int = 512  # tokens per example, prompt and answer
    seed: int = 0
    threads: int | None = None  # torch threads; default: every CPU this process may use
    max_grad_norm: float = 1.0

    def check(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, not {self.steps}.")
        if self.batch_size < 1 or self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("batch_size and r must be at least 1, alpha positive, dropout in [0, 1).")
        if self.learning_rate <= 0 or self.max_length < 32 or not self.target_modules:
            raise ValueError("learning_rate must be positive, max_length at least 32, target_modules not empty.")


def train_adapter(
    dataset: Dataset,
    output_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    schema: str = "",
    model: str = OFFLINE,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], Any] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on `dataset.train` and save it with its metadata to `output_dir`; returns the metadata.

    The base weights come from the offline model's dequantised cache (built on first use); only the adapter
    trains. `on_step(step, loss)` is called after each step (e.g. to log the loss series).
    """
    config = config or TrainConfig()
    config.check()
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    gguf = find_gguf(model)  # before anything heavy: the metadata must name the base file
    threads = max(1, int(config.threads or usable_cpus()))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base, tokenizer = load_transformers_model(model, cache_dir=cache_dir, threads=threads)
        encoded = [_encode(tokenizer, e, schema, config.max_length) for e in dataset.train]
        torch.manual_seed(config.seed)  # LoRA's initial A matrices and dropout draw from it
        lora = LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        tuned = get_peft_model(base, lora)
        tuned.config.use_cache = False
        trainable = [p for p in tuned.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
        pad = _pad_id(tokenizer)
        order = _batch_order(len(encoded), config.batch_size, config.steps, config.seed)
        losses: list[float] = []
        step_seconds: list[float] = []
        tuned.train()
        bar = tqdm(order, total=config.steps, disable=not progress, unit="step", desc="LoRA", leave=True)
        for step, indices in enumerate(bar):
            started = time.perf_counter()
            input_ids, labels, mask = _batch([encoded[i] for i in indices], pad)
            loss = tuned(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(float(loss.detach()), 6))
            step_seconds.append(time.perf_counter() - started)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, losses[-1])
        bar.close()
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        tuned.save_pretrained(output)
    finally:
        torch.set_num_threads(previous_threads)
    source = source_fingerprint(gguf, model)
    seconds = sum(step_seconds)
    metadata = {
        "format": METADATA_FORMAT,
        "kind": "contextlab-lora-adapter",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": model,
        "base_gguf_file": gguf.name,
        "base_gguf_sha256": gguf_sha256(gguf),
        "base_gguf_size": source["size"],
        "base_distribution": {"name": source["distribution"], "version": source["version"]},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "contextlab": _version("contextlab"),
        },
        "lora": {
            "r": config.r,
            "alpha": config.alpha,
            "dropout": config.dropout,
            "target_modules": list(config.target_modules),
            "bias": "none",
            "task_type": "CAUSAL_LM",
        },
        "training": {
            **{k: v for k, v in asdict(config).items() if k not in ("r", "alpha", "dropout", "target_modules")},
            "threads": threads,
            "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / len(step_seconds), 3),
            "step_seconds": [round(s, 3) for s in step_seconds],
            "final_loss": losses[-1],
            "losses": losses,
            "answer_tokens": sum(sum(1 for x in labels if x != _IGNORE) for _, labels, _cut in encoded),
            "truncated": sum(1 for _, _, cut in encoded if cut),
        },
        "dataset": dataset.summary(),
        "prompt": {
            "framing": "copilot target template + recorded context as system, request as user",
            "schema_sha256": hashlib.sha256(schema.encode()).hexdigest() if schema else None,
        },
    }
    (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return metadata


def _encode(tokenizer: Any, example: Example, schema: str, max_length: int) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated): the chat-templated prompt and answer, loss on the answer tokens only.

    Too long: the answer keeps at most three quarters of `max_length`, and the prompt loses its middle (the
    bulk of the context) so its instructions and the request survive.
    """
    messages = chat(example, schema)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer_text(example)}], tokenize=False
    )
    tail = full[len(prompt) :] if full.startswith(prompt) else answer_text(example) + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole_answer = tokenizer(tail, add_special_tokens=False)["input_ids"]
    answer_ids = whole_answer[: max_length * 3 // 4]
    room = max_length - len(answer_ids)
    truncated = len(prompt_ids) > room or len(answer_ids) < len(whole_answer)
    if len(prompt_ids) > room:
        head = room // 3
        prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - (room - head) :]
    return prompt_ids + answer_ids, [_IGNORE] * len(prompt_ids) + answer_ids, truncated


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _batch(items: Sequence[tuple[list[int], list[int], bool]], pad: int) -> tuple[Any, Any, Any]:
    """Right-padded tensors: input ids, labels (padding ignored) and the attention mask."""
    import torch

    width = max(len(ids) for ids, _, _ in items)
    input_ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), _IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, labs, _) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return input_ids, labels, mask


def _batch_order(count: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Which examples each step sees: seeded shuffles of the whole set, one after another."""
    rng = random.Random(seed)
    size = min(batch_size, count)
    queue: list[int] = []
    batches = []
    for _ in range(steps):
        while len(queue) < size:
            epoch = list(range(count))
            rng.shuffle(epoch)
            queue.extend(epoch)
        batches.append(queue[:size])
        del queue[:size]
    return batches


def _version(distribution: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- measurement ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionRule:
    """A candidate beats a reference when its validation loss is lower by more than `min_loss_drop` and its
    greedy answers are no less similar to the references (within `similarity_tolerance`)."""

    min_loss_drop: float = 0.0
    similarity_tolerance: float = 0.0

    def __call__(self, candidate: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
        if not candidate["loss"] < reference["loss"] - self.min_loss_drop:
            return False
        if candidate.get("similarity") is None or reference.get("similarity") is None:
            return True
        return candidate["similarity"] >= reference["similarity"] - self.similarity_tolerance


def compare(
    adapter_dir: str | Path,
    validation: Sequence[Example],
    *,
    schema: str = "",
    champion: str | Path | None = None,
    tracking_uri: str | None = None,
    registered_name: str = REGISTERED_NAME,
    generate_cases: int = 8,
    max_new_tokens: int = 64,
    max_length: int = 512,
    rule: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None,
    model: str = OFFLINE,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Base vs adapter (vs champion) on the validation examples, all on one copy of the base model.

    Scores per side: `loss` (mean over answer tokens), `perplexity`, and over the first `generate_cases`
    examples answered greedily (at most `max_new_tokens`): `exact_match` (layout-normalised code equal to the
    reference) and `similarity` (difflib ratio). The champion is `champion` (a folder or registry reference),
    else the `@champion` of `registered_name` at `tracking_uri` when given. `better` applies `rule`
    (default `PromotionRule()`) to the adapter against the base model and against the champion.
    """
    import torch
    from peft import PeftModel

    if not validation:
        raise NoTrainingData("no validation examples to measure on; build the dataset with build_dataset first.")
    rule = rule or PromotionRule()
    threads = max(1, int(threads or usable_cpus()))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    champion_dir, champion_version, champion_note = _champion(champion, tracking_uri, registered_name, model)
    try:
        base, tokenizer = load_transformers_model(model, cache_dir=cache_dir, threads=threads)
        check_adapter_base(Path(adapter_dir), model)
        tuned = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name="adapter")
        sides = ["base", "adapter"]
        if champion_dir is not None:
            tuned.load_adapter(str(champion_dir), adapter_name="champion")
            sides.append("champion")
        tuned.eval()
        encoded = [_encode(tokenizer, e, schema, max_length) for e in validation]
        cases = list(validation[: max(0, generate_cases)])
        scores: dict[str, dict[str, Any]] = {}
        answers: dict[str, list[str]] = {}
        for side in sides:
            with _side(tuned, side):
                scores[side], answers[side] = _measure(tuned, tokenizer, encoded, cases, schema, max_new_tokens)
    finally:
        torch.set_num_threads(previous_threads)
    better_than_base = bool(rule(scores["adapter"], scores["base"]))
    better_than_champion = bool(rule(scores["adapter"], scores["champion"])) if "champion" in scores else None
    better = better_than_base and better_than_champion is not False
    if not better_than_base:
        reason = "it did not measure better than the base model"
    elif better_than_champion is False:
        reason = f"it did not measure better than the champion ({_champion_label(champion, champion_version)})"
    else:
        reason = "it measured better than the base model" + (
            f" and the champion ({_champion_label(champion, champion_version)})" if "champion" in scores else ""
        )
    return {
        "base": scores["base"],
        "adapter": scores["adapter"],
        "champion": scores.get("champion"),
        "champion_version": champion_version,
        "champion_note": champion_note,
        "better_than_base": better_than_base,
        "better_than_champion": better_than_champion,
        "better": better,
        "reason": reason,
        "rule": repr(rule),
        "validation_cases": len(validation),
        "examples": [
            {"request": e.request, "reference": e.answer, **{side: answers[side][i] for side in sides}}
            for i, e in enumerate(cases)
        ],
    }


def _champion(
    champion: str | Path | None, tracking_uri: str | None, name: str, model: str
) -> tuple[Path | None, str | None, str | None]:
    """(folder, registry version, why it was left out) of the adapter to beat besides the base model."""
    if champion is None and tracking_uri is None:
        return None, None, "no registry given"
    try:
        if champion is not None:
            folder, version = resolve_adapter(champion, tracking_uri=tracking_uri, name=name), None
        else:
            folder, version = registry_adapter(name, "@champion", tracking_uri=tracking_uri)
        check_adapter_base(folder, model)
    except AdapterError as exc:
        if champion is not None:
            raise
        return None, None, str(exc)  # no champion yet, or one trained on another base file
    return folder, version, None


def _champion_label(champion: str | Path | None, version: str | None) -> str:
    return f"version {version}" if version else str(champion)


@contextlib.contextmanager
def _side(tuned: Any, side: str) -> Any:
    if side == "base":
        with tuned.disable_adapter():
            yield
    else:
        tuned.set_adapter(side)
        yield


def _measure(
    model: Any,
    tokenizer: Any,
    encoded: Sequence[tuple[list[int], list[int], bool]],
    cases: Sequence[Example],
    schema: str,
    max_new_tokens: int,
) -> tuple[dict[str, Any], list[str]]:
    import torch

    from contextlab.copilot.engine import TARGETS

    total, tokens = 0.0, 0
    with torch.inference_mode():
        for ids, labels, _ in encoded:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=_IGNORE, reduction="sum"))
            tokens += int((target != _IGNORE).sum())
        answers, exact, similar = [], [], []
        for example in cases:
            inputs = tokenizer.apply_chat_template(
                chat(example, schema), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=_pad_id(tokenizer),
            )
            text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            code = TARGETS[example.target]().extract(text)
            answers.append(text)
            exact.append(normal_code(code) == normal_code(example.answer))
            similar.append(difflib.SequenceMatcher(None, normal_code(code), normal_code(example.answer)).ratio())
    loss = total / max(tokens, 1)
    scores = {
        "loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 4),
        "exact_match": round(sum(exact) / len(exact), 4) if exact else None,
        "similarity": round(sum(similar) / len(similar), 4) if similar else None,
        "answer_tokens": tokens,
        "generated": len(cases),
    }
    return scores, answers


# -- MLflow -----------------------------------------------------------------------------------------------------------


def register_adapter(
    adapter_dir: str | Path,
    comparison: Mapping[str, Any],
    *,
    tracking_uri: str,
    run_id: str | None = None,
    name: str = REGISTERED_NAME,
    experiment: str = EXPERIMENT,
) -> dict[str, Any]:
    """Log the adapter to an MLflow run (the open pipeline run `run_id`, or a new run in `experiment`) and register
    it as a version of `name`, with the alias `candidate`; `champion` moves to it only when `comparison` says it
    measured better than the base model and than the champion it was measured against.

    Logged: params (`finetune.*`: LoRA, training, dataset), metrics (`base_*`, `adapter_*`, `champion_*`,
    `train_loss` per step, `seconds_per_step`), artifacts (`adapter/`: the adapter as an MLflow pyfunc model,
    `contextlab-adapter.json`, `comparison.json`). Returns name, version, run id, whether it is champion and why.
    """
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    adapter_dir = Path(adapter_dir)
    metadata = json.loads((adapter_dir / METADATA_FILE).read_text())
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    own_run = run_id is None
    if own_run:
        run_id = client.create_run(
            _experiment_id(client, experiment, tracking_uri),
            run_name=f"delta_finetune-{metadata['dataset']['fingerprint'][:8]}",
        ).info.run_id
    assert run_id is not None
    try:
        now = int(time.time() * 1000)
        metrics = [Metric("train_loss", v, now, i) for i, v in enumerate(metadata["training"]["losses"])]
        metrics.append(Metric("seconds_per_step", metadata["training"]["seconds_per_step"], now, 0))
        for side in ("base", "adapter", "champion"):
            for key, value in (comparison.get(side) or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics.append(Metric(f"{side}_{key}", float(value), now, 0))
        tags = {
            "contextlab.dataset_fingerprint": metadata["dataset"]["fingerprint"],
            "contextlab.base_gguf_sha256": metadata["base_gguf_sha256"],
            "contextlab.base_gguf_file": metadata["base_gguf_file"],
        }
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in _params(metadata).items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        with tempfile.TemporaryDirectory(prefix="contextlab-adapter-") as tmp:
            package = Path(tmp) / "adapter"
            with warnings.catch_warnings():  # the signature describes the input; MLflow asks for an example too
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                mlflow.pyfunc.save_model(
                    str(package),
                    loader_module="contextlab.copilot.adapters",
                    data_path=str(adapter_dir),
                    signature=ModelSignature(  # requests in, answers out, max_tokens at call time
                        inputs=Schema([ColSpec("string")]),
                        outputs=Schema([ColSpec("string")]),
                        params=ParamSchema([ParamSpec("max_tokens", "long", 128)]),
                    ),
                    pip_requirements=[f"{k}=={metadata['versions'][k]}" for k in ("torch", "transformers", "peft")],
                    metadata={
                        "contextlab": {k: metadata[k] for k in ("base_model", "base_gguf_file", "base_gguf_sha256")}
                    },
                )
            client.log_artifacts(run_id, str(package), "adapter")
        client.log_artifact(run_id, str(adapter_dir / METADATA_FILE))
        client.log_dict(run_id, dict(comparison), "comparison.json")
        with contextlib.suppress(MlflowException):  # already registered
            client.create_registered_model(name, description="LoRA adapters of ContextLab's offline model.")
        version = client.create_model_version(
            name,
            f"{client.get_run(run_id).info.artifact_uri}/adapter",
            run_id=run_id,
            tags={
                "base_gguf_sha256": metadata["base_gguf_sha256"],
                "base_gguf_file": metadata["base_gguf_file"],
                "dataset_fingerprint": metadata["dataset"]["fingerprint"],
                "adapter_loss": str(comparison["adapter"]["loss"]),
                "base_loss": str(comparison["base"]["loss"]),
            },
            description=comparison.get("reason"),
        ).version
        client.set_registered_model_alias(name, "candidate", version)
        champion, reason = _promotion(client, name, comparison)
        if champion:
            client.set_registered_model_alias(name, "champion", version)
        client.set_tag(run_id, "contextlab.adapter_version", str(version))
        client.set_tag(run_id, "contextlab.adapter_champion", str(champion))
    except BaseException:
        if own_run:
            client.set_terminated(run_id, "FAILED")
        raise
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    return {
        "name": name,
        "version": int(version),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version}",
        "aliases": ["candidate", "champion"] if champion else ["candidate"],
        "champion": champion,
        "reason": reason,
    }


def _promotion(client: Any, name: str, comparison: Mapping[str, Any]) -> tuple[bool, str]:
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        current = None
    if not comparison.get("better"):
        return False, f"kept as candidate: {comparison.get('reason') or 'it did not measure better'}"
    if current is not None and str(current) != str(comparison.get("champion_version")):
        return False, (
            f"kept as candidate: it was not measured against the current champion (version {current}); pass "
            "tracking_uri to compare() so the champion is measured on the same validation examples"
        )
    return True, f"promoted to champion: {comparison['reason']}"


def _experiment_id(client: Any, experiment: str, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):  # beside the database, as the pipeline runner does
        root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment.rsplit("/", 1)[-1]
        root.mkdir(parents=True, exist_ok=True)
        location = root.resolve().as_uri()
    return client.create_experiment(experiment, artifact_location=location)


def _params(metadata: Mapping[str, Any]) -> dict[str, str]:
    flat = {
        "base_model": metadata["base_model"],
        "base_gguf_file": metadata["base_gguf_file"],
        **{f"lora_{k}": v for k, v in metadata["lora"].items()},
        **{k: v for k, v in metadata["training"].items() if k not in ("losses", "step_seconds")},
        **{f"dataset_{k}": v for k, v in metadata["dataset"].items()},
        **{f"version_{k}": v for k, v in metadata["versions"].items()},
    }
    return {f"finetune.{k}": (v if isinstance(v, str) else json.dumps(v))[:6000] for k, v in flat.items()}


# -- the whole loop ---------------------------------------------------------------------------------------------------


def delta_finetune(
    source: Any,
    output_dir: str | Path,
    *,
    tracking_uri: str,
    config: TrainConfig | None = None,
    schema: str = "",
    extra_examples: Iterable[Example] = (),
    implicit_accept: bool = False,
    validation_fraction: float = 0.2,
    min_examples: int = 4,
    generate_cases: int = 8,
    max_new_tokens: int = 64,
    rule: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None,
    registered_name: str = REGISTERED_NAME,
    run_id: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Feedback → dataset → adapter in `output_dir` → comparison (champion included) → MLflow registration."""
    config = config or TrainConfig()
    examples, counts = feedback_examples(source, implicit_accept=implicit_accept)
    extra = list(extra_examples)
    counts["extra"] = len(extra)
    dataset = build_dataset(
        [*examples, *extra],
        validation_fraction=validation_fraction,
        min_examples=min_examples,
        seed=config.seed,
        counts=counts,
    )
    output = Path(output_dir)
    if output.exists():
        shutil.rmtree(output)
    metadata = train_adapter(dataset, output, config=config, schema=schema, progress=progress)
    comparison = compare(
        output,
        dataset.validation,
        schema=schema,
        tracking_uri=tracking_uri,
        registered_name=registered_name,
        generate_cases=generate_cases,
        max_new_tokens=max_new_tokens,
        max_length=config.max_length,
        rule=rule,
        threads=config.threads,
    )
    registration = register_adapter(output, comparison, tracking_uri=tracking_uri, run_id=run_id, name=registered_name)
    return {
        "dataset": dataset.summary(),
        "adapter_dir": str(output),
        "training": metadata["training"],
        "comparison": comparison,
        "registration": registration,
    }
