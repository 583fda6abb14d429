"""Worked examples for the Copilot: question → code pairs similar to a new request.

Two pools, searched together:

- **accepted**: suggestions this team accepted, ran successfully, or edited and ran (then the code
  they finally ran), unless the last word on them was a reject or a deleted cell; read from the
  state store;
- **workspace**: question → SQL pairs generated from each served DuckDB database
  (`contextlab.copilot.workspace_sql`), so a new workspace has examples before any feedback.

Ranking is wordllama embedding similarity (bundled weights, no network). Accepted examples win
ties over generated ones. A small model copies a close example far better than it writes SQL
from the schema alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.providers.base import Provider, ProviderError, ToolSpec
from contextlab.state import StateStore
from contextlab.state.models import FeedbackRow, SuggestionRow

ACCEPTED_BONUS = 0.05
_BAD = ("rejected", "deleted")


class Example(BaseModel):
    """The `Example` context type."""

    request: str
    code: str
    target: str
    source: Literal["accepted", "workspace"]
    database: str | None = None
    score: float = Field(description="Cosine similarity to the query, plus a small bonus for accepted examples.")


class ExamplePage(BaseModel):
    examples: list[Example]
    pool: int = Field(description="Examples searched.")


class ExamplesProvider(Provider):
    name = "examples"
    description = "Worked question → code examples (accepted suggestions and pairs generated from the workspace)."
    context_types = ["Example"]

    def __init__(
        self,
        store: StateStore | None,
        databases: dict[str, Path],
        *,
        generated_per_database: int = 400,
        embedder: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.databases = dict(databases)
        self.generated_per_database = generated_per_database
        self._embedder_factory = embedder
        self._embedder: object | None = None
        self._generated: dict[str, tuple[tuple[int, int], list[Example], np.ndarray]] = {}
        self._accepted: tuple[int, list[Example], np.ndarray] | None = None
        self._lock = threading.Lock()

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.search,
                "search",
                "Worked examples similar to a request: questions with the SQL (or code) that answered them, "
                "from suggestions this team accepted and from pairs generated from the workspace's databases.",
                "Similar worked examples",
            )
        ]

    def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=2000, description="The user's request.")],
        target: Annotated[str, Field(max_length=32, description="Copilot target, e.g. sql or python.")] = "sql",
        k: Annotated[int, Field(ge=1, le=20)] = 3,
        database: Annotated[str | None, Field(description="Only examples about this database.")] = None,
        source: Literal["accepted", "workspace"] | None = None,
    ) -> ExamplePage:
        if not query.strip():
            raise ProviderError("query is empty: give the request to find examples for.")
        if database is not None and database not in self.databases:
            raise ProviderError(f"unknown database {database!r}; served: {', '.join(sorted(self.databases))}.")
        pools: list[tuple[list[Example], np.ndarray]] = []
        if source in (None, "accepted"):
            pools.append(self._accepted_pool())
        if source in (None, "workspace") and target == "sql":
            for name in [database] if database else sorted(self.databases):
                pools.append(self._generated_pool(name))
        examples = [e for pool, _ in pools for e in pool]
        if not examples:
            return ExamplePage(examples=[], pool=0)
        vectors = np.vstack([v for pool, v in pools if len(pool)])
        scores = vectors @ self._embed([query])[0]
        ranked = []
        for example, score in zip(examples, scores, strict=True):
            if example.target != target or (database and example.database not in (None, database)):
                continue
            bonus = ACCEPTED_BONUS if example.source == "accepted" else 0.0
            ranked.append(example.model_copy(update={"score": round(float(score) + bonus, 4)}))
        ranked.sort(key=lambda e: -e.score)
        return ExamplePage(examples=ranked[:k], pool=len(ranked))

    # -- pools -----------------------------------------------------------------------------------
    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            from contextlab.extension.tool_index import WordLlamaEmbedder

            self._embedder = self._embedder_factory() if self._embedder_factory else WordLlamaEmbedder()
        return self._embedder.embed(texts)

    def _generated_pool(self, name: str) -> tuple[list[Example], np.ndarray]:
        path = self.databases[name]
        try:
            stat = path.stat()
        except FileNotFoundError:
            return [], np.zeros((0, 1), dtype=np.float32)
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._generated.get(name)
            if cached and cached[0] == key:
                return cached[1], cached[2]
        from contextlab.copilot.workspace_sql import generate_sql_examples

        pairs = generate_sql_examples(path, limit=self.generated_per_database)
        examples = [
            Example(request=p.request, code=p.code, target="sql", source="workspace", database=name, score=0.0)
            for p in pairs
        ]
        vectors = self._embed([e.request for e in examples]) if examples else np.zeros((0, 1), dtype=np.float32)
        with self._lock:
            self._generated[name] = (key, examples, vectors)
        return examples, vectors

    def _accepted_pool(self) -> tuple[list[Example], np.ndarray]:
        empty = ([], np.zeros((0, 1), dtype=np.float32))
        if self.store is None:
            return empty
        with Session(self.store.engine) as session:
            newest = session.scalar(select(FeedbackRow.id).order_by(FeedbackRow.id.desc()).limit(1)) or 0
            with self._lock:
                if self._accepted and self._accepted[0] == newest:
                    return self._accepted[1], self._accepted[2]
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
        # The last decisive word on each suggestion wins: accepted / edited / a successful run, or a
        # reject / deleted cell. An edit keeps the code the user ran.
        verdict: dict[str, tuple[str, str, str, bool]] = {}
        for sid, target, request, code, kind, executed, succeeded in rows:
            final = verdict.get(sid, (target, request, code, False))[2]
            if kind == "edited" and executed:
                verdict[sid] = (target, request, executed, True)
            elif kind == "accepted" or (kind == "ran" and succeeded):
                verdict[sid] = (target, request, executed or final if kind == "ran" else final, True)
            elif kind in _BAD:
                verdict[sid] = (target, request, final, False)
        examples = [
            Example(request=request, code=code, target=target, source="accepted", score=0.0)
            for target, request, code, good in verdict.values()
            if good
        ]
        vectors = self._embed([e.request for e in examples]) if examples else empty[1]
        with self._lock:
            self._accepted = (newest, examples, vectors)
        return examples, vectors
