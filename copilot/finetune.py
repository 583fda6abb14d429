"""Delta fine-tuning: accepted and edited Copilot suggestions → a LoRA adapter on the offline model,
measured against the base model, registered in MLflow, and promoted only if it measured better.

1. `build_dataset`: feedback rows (accepted, edited → the code the user ran, successful runs) minus
   rejected and deleted ones, optionally plus question → SQL pairs generated from the workspace's
   database (`workspace_sql`), deduplicated and split train/validation by a hash (stable across runs).
2. `train_adapter`: PEFT LoRA on SmolLM2 (CPU), loss on the answer tokens only, bounded steps.
   Each example is framed exactly as the Copilot frames a request at inference time.
3. `compare`: validation loss and greedy-generation similarity, base vs adapter.
4. `register_adapter`: artifacts and metadata to an MLflow run, a model version in the registry,
   alias `candidate` always and `champion` only when it beat the base (and the previous champion).

An adapter's `contextlab-adapter.json` holds what rebuilds it: the base GGUF file name and sha256,
library versions, LoRA and training settings, the dataset fingerprint and sizes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REGISTERED_NAME = "contextlab-local-adapter"
METADATA_FILE = "contextlab-adapter.json"
GOOD = ("accepted", "edited", "ran")
BAD = ("rejected", "deleted")


class NoTrainingData(ValueError):
    """Not enough accepted or edited suggestions to train on; the message says what to do."""


class AdapterError(RuntimeError):
    """An adapter that cannot be found or does not match the installed base model."""


@dataclass(frozen=True)
class Example:
    target: str
    request: str
    answer: str
    source: str  # feedback or workspace

    @property
    def key(self) -> str:
        normal = " ".join(self.request.lower().split()) + "\0" + " ".join(self.answer.split())
        return hashlib.sha256(normal.encode()).hexdigest()


@dataclass
class Dataset:
    train: list[Example]
    validation: list[Example]
    fingerprint: str
    counts: dict[str, int] = field(default_factory=dict)


# -- data ---------------------------------------------------------------------------------------
def feedback_examples(state_url: str) -> tuple[list[Example], dict[str, int]]:
    """Examples from the state store's suggestions and feedback (read only). The last decisive
    feedback on a suggestion wins; an edit contributes the code the user ran."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from contextlab.state.models import FeedbackRow, SuggestionRow

    if state_url.startswith("sqlite:///") and not Path(state_url.removeprefix("sqlite:///")).exists():
        return [], {}  # no store yet: no feedback
    engine = create_engine(state_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(
                    SuggestionRow.id,
                    SuggestionRow.target,
                    SuggestionRow.request,
                    SuggestionRow.code,
                    FeedbackRow.kind,
                    FeedbackRow.executed_code,
                    FeedbackRow.succeeded,
                )
                .join(FeedbackRow, FeedbackRow.suggestion_id == SuggestionRow.id)
                .order_by(FeedbackRow.id)
            ).all()
    finally:
        engine.dispose()
    verdict: dict[str, tuple[str, str, str, str]] = {}
    for sid, target, request, code, kind, executed, succeeded in rows:
        if kind == "edited" and executed:
            verdict[sid] = ("edited", target, request, executed)
        elif kind == "accepted" or (kind == "ran" and succeeded):
            answer = verdict[sid][3] if sid in verdict and verdict[sid][0] == "edited" else code
            verdict[sid] = ("accepted", target, request, answer)
        elif kind in BAD:
            verdict[sid] = (kind, target, request, code)
    counts = {"accepted": 0, "edited": 0, "rejected": 0, "deleted": 0}
    examples = []
    for kind, target, request, answer in verdict.values():
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("accepted", "edited"):
            examples.append(Example(target, request, answer, "feedback"))
    return examples, counts


def build_dataset(
    examples: Iterable[Example],
    *,
    validation_fraction: float = 0.2,
    min_examples: int = 4,
    seed: int = 0,
    counts: dict[str, int] | None = None,
) -> Dataset:
    """Deduplicate and split. The split is by a hash of each example, so an example stays on its side
    when new feedback arrives."""
    unique: dict[str, Example] = {}
    for example in examples:
        if example.request.strip() and example.answer.strip():
            unique.setdefault(example.key, example)
    if len(unique) < min_examples:
        raise NoTrainingData(
            f"only {len(unique)} usable example(s); at least {min_examples} are needed. Accept (or edit and run) "
            "some %%copilot suggestions first, or include examples generated from the workspace's database "
            "(include_workspace_examples = True)."
        )
    train, validation = [], []
    for key, example in sorted(unique.items()):
        bucket = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (validation if bucket < validation_fraction else train).append(example)
    if not validation:
        validation.append(train.pop())
    if not train:
        train.append(validation.pop())
    fingerprint = hashlib.sha256("\n".join(sorted(unique)).encode()).hexdigest()
    return Dataset(
        train,
        validation,
        fingerprint,
        {
            **(counts or {}),
            "unique": len(unique),
            "train": len(train),
            "validation": len(validation),
            "duplicates": sum(1 for _ in examples) if isinstance(examples, list) else 0,
        },
    )


def workspace_examples(database: str | Path, limit: int = 200) -> list[Example]:
    from contextlab.copilot.workspace_sql import generate_sql_examples

    return [Example("sql", e.request, e.code, "workspace") for e in generate_sql_examples(database, limit=limit)]


def schema_context(database: str | Path) -> str:
    """The schema text the Copilot puts in a SQL prompt, for the same framing at training time."""
    import duckdb

    from contextlab.copilot.engine import schema_text
    from contextlab.providers.sql import _read_tables

    with duckdb.connect(str(database), read_only=True) as con:
        tables = [t.model_dump(by_alias=True) for t in _read_tables(con)]
    return schema_text({"databases": [{"tables": tables}]})


def chat(example: Example, schema: str = "") -> list[dict[str, str]]:
    """The messages the Copilot sends for this request (its built-in template and schema context)."""
    from contextlab.copilot.engine import _ENV, TARGETS, ContextItem

    target = TARGETS.get(example.target)
    template = target().template if target is not None else "You write {{ target }} code."
    context = [ContextItem("sql__schema", "Database schema", schema)] if schema and example.target == "sql" else []
    system = _ENV.from_string(template).render(context=context, target=example.target)
    return [{"role": "system", "content": system}, {"role": "user", "content": example.request}]


def answer_text(example: Example) -> str:
    fence = "sql" if example.target == "sql" else "python"
    return f"```{fence}\n{example.answer.strip()}\n```"


# -- training -----------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 2e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_length: int = 512
    seed: int = 0
    threads: int | None = None


def _encode(tokenizer: Any, example: Example, schema: str, max_length: int) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(chat(example, schema), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer_text(example) + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[-max_length:]
    labels = ([-100] * len(prompt_ids) + answer_ids)[-max_length:]
    return ids, labels


def _batches(items: list[tuple[list[int], list[int]]], size: int, pad: int) -> Iterable[tuple[Any, Any, Any]]:
    import torch

    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            mask[row, : len(ids)] = 1
        yield input_ids, labels, mask


def answer_loss(model: Any, tokenizer: Any, examples: Sequence[Example], schema: str, max_length: int = 512) -> float:
    """Mean loss per answer token (the lower, the likelier the model finds the reference answers)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_encode(tokenizer, e, schema, max_length) for e in examples]
    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for input_ids, labels, mask in _batches(encoded, 4, pad):
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            tokens += int((target != -100).sum())
    return total / max(tokens, 1)


def train_adapter(
    dataset: Dataset,
    output_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    schema: str = "",
    model: str = "smollm2-135m-instruct",
    progress: bool = True,
    on_step: Callable[[int, float], Any] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter and save it (with its metadata) to `output_dir`. Returns the metadata."""
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from contextlab.copilot.local import LocalModelBackend, find_gguf, source_fingerprint

    config = config or TrainConfig()
    if config.steps < 1 or config.steps > 10_000 or config.batch_size < 1:
        raise ValueError("steps must be 1..10000 and batch_size ≥ 1")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    backend = LocalModelBackend(model, threads=config.threads)
    backend.load()
    base, tokenizer = backend._model, backend._tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    tuned = get_peft_model(base, lora)
    encoded = [_encode(tokenizer, e, schema, config.max_length) for e in dataset.train]
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=config.learning_rate)
    tuned.train()
    losses: list[float] = []
    order: list[int] = []
    started = time.perf_counter()
    bar = tqdm(range(config.steps), disable=not progress, unit="step", desc="LoRA")
    for step in bar:
        if len(order) < config.batch_size:
            fresh = list(range(len(encoded)))
            random.shuffle(fresh)
            order.extend(fresh)
        batch = [encoded[order.pop()] for _ in range(min(config.batch_size, len(encoded)))]
        input_ids, labels, mask = next(iter(_batches(batch, len(batch), pad)))
        loss = tuned(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            on_step(step, losses[-1])
    seconds = time.perf_counter() - started
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tuned.save_pretrained(output_dir)
    gguf = find_gguf(model)
    source = source_fingerprint(gguf, model)
    metadata = {
        "base_model": model,
        "base_gguf_file": gguf.name,
        "base_gguf_sha256": _sha256(gguf),
        "base_source": source,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "lora": {
            "r": config.r,
            "alpha": config.alpha,
            "dropout": config.dropout,
            "target_modules": list(config.target_modules),
        },
        "training": {
            **asdict(config),
            "target_modules": list(config.target_modules),
            "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / config.steps, 3),
            "final_loss": losses[-1],
            "losses": losses,
        },
        "dataset": {"fingerprint": dataset.fingerprint, **dataset.counts},
        "schema_in_prompt": bool(schema),
    }
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
    backend.close()
    return metadata


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- comparison ---------------------------------------------------------------------------------
def compare(
    adapter_dir: str | Path,
    validation: Sequence[Example],
    *,
    schema: str = "",
    generate_cases: int = 8,
    max_new_tokens: int = 96,
    model: str = "smollm2-135m-instruct",
) -> dict[str, Any]:
    """Base vs adapter on the validation examples: answer loss, and greedy answers' exact match and
    similarity (difflib ratio of normalised code) on the first `generate_cases`."""
    from contextlab.copilot.local import LocalModelBackend

    out: dict[str, Any] = {}
    for label, adapter in (("base", None), ("adapter", str(adapter_dir))):
        backend = LocalModelBackend(model, adapter=adapter)
        backend.load()
        loss = answer_loss(backend._model, backend._tokenizer, validation, schema)
        exact, similar = [], []
        for example in validation[:generate_cases]:
            text = backend.complete(chat(example, schema), max_tokens=max_new_tokens).text
            from contextlab.copilot.engine import extract_code

            code = extract_code(text, ("sql", "python", "duckdb")).strip().rstrip(";")
            reference = example.answer.strip().rstrip(";")
            exact.append(" ".join(code.split()).lower() == " ".join(reference.split()).lower())
            similar.append(difflib.SequenceMatcher(None, code, reference).ratio())
        out[label] = {
            "loss": loss,
            "exact_match": sum(exact) / len(exact) if exact else None,
            "similarity": sum(similar) / len(similar) if similar else None,
        }
        backend.close()
    out["better"] = is_better(out["adapter"], out["base"])
    return out


def is_better(candidate: dict[str, Any], reference: dict[str, Any], tolerance: float = 0.0) -> bool:
    """Lower answer loss, and greedy answers no less similar (when both were generated)."""
    if candidate["loss"] >= reference["loss"]:
        return False
    if candidate.get("similarity") is not None and reference.get("similarity") is not None:
        return candidate["similarity"] >= reference["similarity"] - tolerance
    return True


# -- MLflow -------------------------------------------------------------------------------------
def register_adapter(
    adapter_dir: str | Path,
    comparison: dict[str, Any],
    *,
    tracking_uri: str,
    run_id: str | None = None,
    name: str = REGISTERED_NAME,
    experiment: str = "contextlab/delta_finetune",
) -> dict[str, Any]:
    """Log the adapter to an MLflow run (the given one, or a new one), register a model version,
    alias it `candidate`, and `champion` too when it measured better. Returns what was done."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    if run_id is None:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, run_name="delta_finetune").info.run_id
        own_run = True
    else:
        own_run = False
    client.log_artifacts(run_id, str(adapter_dir), "adapter")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapters of the ContextLab offline model.")
    source = f"{client.get_run(run_id).info.artifact_uri}/adapter"
    version = client.create_model_version(name, source, run_id=run_id)
    metadata = json.loads((Path(adapter_dir) / METADATA_FILE).read_text())
    for key, value in (
        ("base_gguf_sha256", metadata["base_gguf_sha256"]),
        ("base_gguf_file", metadata["base_gguf_file"]),
        ("dataset_fingerprint", metadata["dataset"]["fingerprint"]),
        ("adapter_loss", f"{comparison['adapter']['loss']:.5f}"),
        ("base_loss", f"{comparison['base']['loss']:.5f}"),
    ):
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, "candidate", version.version)
    promoted = bool(comparison.get("better"))
    reason = "it beat the base model" if promoted else "it did not beat the base model"
    if promoted:
        try:
            champion = client.get_model_version_by_alias(name, "champion")
            champion_loss = float(champion.tags.get("adapter_loss", "inf"))
            if champion_loss <= comparison["adapter"]["loss"]:
                promoted, reason = False, f"the current champion v{champion.version} has a lower loss"
        except MlflowException:
            pass
    if promoted:
        client.set_registered_model_alias(name, "champion", version.version)
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    return {"name": name, "version": int(version.version), "run_id": run_id, "champion": promoted, "reason": reason}


def resolve_adapter(reference: str, *, tracking_uri: str | None = None, name: str = REGISTERED_NAME) -> Path:
    """A local folder for `reference`: a path, or `@alias` / `name@alias` in the MLflow registry
    (downloaded once into the model cache)."""
    if not reference.startswith("@") and "@" not in reference:
        path = Path(reference).expanduser()
        if not (path / "adapter_config.json").exists():
            raise AdapterError(f"{path} is not a LoRA adapter folder (no adapter_config.json).")
        return path
    registered, _, alias = reference.rpartition("@")
    registered = registered or name
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _workspace_tracking_uri()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        version = client.get_model_version_by_alias(registered, alias)
    except MlflowException as exc:
        raise AdapterError(
            f"no adapter {registered}@{alias} in the MLflow registry at {uri}: run the delta_finetune pipeline, "
            "or use local+adapter@candidate."
        ) from exc
    from contextlab.copilot.local import default_cache_dir

    key = hashlib.sha256(f"{uri}\0{version.source}".encode()).hexdigest()[:16]  # one folder per store and version
    target = default_cache_dir("adapters") / registered / f"v{version.version}-{key}"
    if not (target / "adapter_config.json").exists():
        import mlflow.artifacts

        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(target), tracking_uri=uri)
        nested = target / "adapter"
        if (nested / "adapter_config.json").exists():
            for item in nested.iterdir():
                item.replace(target / item.name)
            nested.rmdir()
    return target


def _workspace_tracking_uri() -> str:
    workspace = Path(os.environ.get("CONTEXTLAB_WORKSPACE") or ".").resolve()
    return f"sqlite:///{workspace / '.contextlab' / 'mlflow.db'}"


def load_adapter(base: Any, reference: str, model: str) -> tuple[Any, Path]:
    """Wrap `base` with the adapter after checking it was trained on the installed GGUF file."""
    from peft import PeftModel

    from contextlab.copilot.local import find_gguf

    path = resolve_adapter(reference)
    metadata_file = path / METADATA_FILE
    if metadata_file.exists():
        metadata = json.loads(metadata_file.read_text())
        gguf = find_gguf(model)
        if metadata.get("base_gguf_sha256") and metadata["base_gguf_sha256"] != _sha256(gguf):
            raise AdapterError(
                f"adapter {path} was trained on {metadata.get('base_gguf_file')} "
                f"(sha256 {metadata['base_gguf_sha256'][:12]}…), not on the installed {gguf.name}: "
                "train a new one with the delta_finetune pipeline."
            )
    tuned = PeftModel.from_pretrained(base, str(path))
    tuned.eval()
    return tuned, path
